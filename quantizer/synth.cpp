#include "quantizer/synth.hpp"

#include <xxhash.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <regex>

#include <fmt/format.h>

#include "base/atomic_file.hpp"
#include "base/error.hpp"
#include "format/model_config.hpp"
#include "format/packed_file.hpp"

namespace ferry {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

json llama_config(uint64_t hidden, uint64_t inter, uint64_t layers, uint64_t heads, uint64_t kv,
                  uint64_t vocab, double theta, bool tied) {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"hidden_size", hidden},
          {"intermediate_size", inter},
          {"num_hidden_layers", layers},
          {"num_attention_heads", heads},
          {"num_key_value_heads", kv},
          {"vocab_size", vocab},
          {"max_position_embeddings", 8192},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", theta},
          {"rope_scaling", nullptr},
          {"hidden_act", "silu"},
          {"attention_bias", false},
          {"mlp_bias", false},
          {"tie_word_embeddings", tied},
          {"torch_dtype", "bfloat16"}};
}

json qwen2_config(uint64_t hidden, uint64_t inter, uint64_t layers, uint64_t heads, uint64_t kv,
                  uint64_t vocab, bool tied) {
  json c = llama_config(hidden, inter, layers, heads, kv, vocab, 1e6, tied);
  c["architectures"] = {"Qwen2ForCausalLM"};
  c["model_type"] = "qwen2";
  c["rms_norm_eps"] = 1e-6;
  c["max_position_embeddings"] = 32768;
  c.erase("attention_bias");
  c.erase("mlp_bias");
  return c;
}

// Qwen3: Qwen2's layout without q/k/v biases, with q_norm/k_norm and an explicit head_dim.
json qwen3_config(uint64_t hidden, uint64_t inter, uint64_t layers, uint64_t heads, uint64_t kv,
                  uint64_t head_dim, uint64_t vocab, bool tied) {
  json c = qwen2_config(hidden, inter, layers, heads, kv, vocab, tied);
  c["architectures"] = {"Qwen3ForCausalLM"};
  c["model_type"] = "qwen3";
  c["head_dim"] = head_dim;
  c["attention_bias"] = false;
  c["max_position_embeddings"] = 40960;
  c["use_sliding_window"] = false;
  c["sliding_window"] = nullptr;
  return c;
}

// Mistral: the Llama layout; sliding_window null as in v0.2 and later (v0.1's 4096 would bound
// the context), head_dim given explicitly as Mistral Nemo does.
json mistral_config(uint64_t hidden, uint64_t inter, uint64_t layers, uint64_t heads, uint64_t kv,
                    uint64_t head_dim, uint64_t vocab) {
  json c = llama_config(hidden, inter, layers, heads, kv, vocab, 1e6, false);
  c["architectures"] = {"MistralForCausalLM"};
  c["model_type"] = "mistral";
  c["head_dim"] = head_dim;
  c["max_position_embeddings"] = 32768;
  c["sliding_window"] = nullptr;
  c.erase("attention_bias");
  c.erase("mlp_bias");
  return c;
}

json with_llama3_rope(json c, uint64_t original_max) {
  c["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", original_max}};
  return c;
}

struct Preset {
  SynthPresetInfo info;
  json (*make)();
};

// Real shapes from the models' published config.json files.
const std::vector<Preset>& presets() {
  static const std::vector<Preset> p = {
      {{"llama-tiny", "Llama, hidden 256, 4 layers, GQA 8/4, vocab 512 (~8 MB bf16)"},
       [] { return llama_config(256, 768, 4, 8, 4, 512, 10000, false); }},
      {{"llama3-tiny", "Llama 3 style with llama3 rope scaling, hidden 256, 4 layers, tied"},
       [] { return with_llama3_rope(llama_config(256, 768, 4, 8, 2, 512, 500000, true), 256); }},
      {{"qwen2-tiny",
        "Qwen2, hidden 320 (not a multiple of 128), q/k/v biases, GQA 5/1, vocab 512"},
       [] { return qwen2_config(320, 896, 4, 5, 1, 512, false); }},
      {{"qwen3-tiny",
        "Qwen3, hidden 320, q_norm/k_norm, head_dim 96 (q width 384 != hidden), GQA 4/2, vocab "
        "512"},
       [] { return qwen3_config(320, 768, 4, 4, 2, 96, 512, true); }},
      {{"mistral-tiny", "Mistral, hidden 256, 4 layers, GQA 8/2, head_dim 48, vocab 512"},
       [] { return mistral_config(256, 768, 4, 8, 2, 48, 512); }},
      {{"qwen2-small",
        "Qwen2, hidden 1024, 8 layers, GQA 16/2, vocab 32000 (~300 MB bf16): benchmarks"},
       [] { return qwen2_config(1024, 2816, 8, 16, 2, 32000, false); }},
      {{"qwen2-7b",
        "Qwen2-7B shapes: hidden 3584, 28 layers, GQA 28/4, vocab 152064 (~15 GB bf16)"},
       [] { return qwen2_config(3584, 18944, 28, 28, 4, 152064, false); }},
      {{"qwen2-32b",
        "DeepSeek-R1-Distill-Qwen-32B shapes: hidden 5120, 64 layers, GQA 40/8 (~65 GB bf16)"},
       [] { return qwen2_config(5120, 27648, 64, 40, 8, 152064, false); }},
      {{"qwen3-32b",
        "Qwen3-32B shapes: hidden 5120, 64 layers, GQA 64/8, head_dim 128 (~66 GB bf16)"},
       [] { return qwen3_config(5120, 25600, 64, 64, 8, 128, 151936, false); }},
      {{"llama3-8b",
        "Llama-3-8B shapes: hidden 4096, 32 layers, GQA 32/8, vocab 128256 (~16 GB bf16)"},
       [] {
         return with_llama3_rope(llama_config(4096, 14336, 32, 32, 8, 128256, 500000, false), 8192);
       }},
      {{"llama-70b", "Llama-3-70B shapes: hidden 8192, 80 layers, GQA 64/8 (~141 GB bf16)"},
       [] {
         return with_llama3_rope(llama_config(8192, 28672, 80, 64, 8, 128256, 500000, false), 8192);
       }},
  };
  return p;
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Element i of tensor `stream`: an Irwin-Hall(4) sample (sum of four 15-bit uniforms, a close
// Gaussian stand-in that vectorizes, unlike Box-Muller), scaled to `std` around `mean`; one value
// in 4096 is multiplied by 8, mimicking the outlier features of trained weights.
float synth_value(uint64_t seed, uint64_t stream, uint64_t i, float mean, float std) {
  const uint64_t r = splitmix64(seed * 0x100000001b3ull ^ (stream << 40) ^ i);
  const float sum =
      float((r & 0x7fff) + ((r >> 15) & 0x7fff) + ((r >> 30) & 0x7fff) + ((r >> 45) & 0x7fff));
  // mean of the sum 4 * 16383.5, std sqrt(4/12) * 32768
  float z = (sum - 65534.0f) * (1.0f / 18918.6f);
  if ((r >> 60) == 0 && ((r >> 48) & 0xff) == 0) z *= 8.0f;
  return mean + std * z;
}

struct Shard {
  std::string file;
  std::vector<TensorDecl> tensors;
  std::vector<WeightSpec> specs;
  uint64_t bytes = 0;
};

std::vector<Shard> plan_shards(const ModelConfig& c, uint64_t shard_bytes) {
  std::vector<Shard> shards(1);
  for (const WeightSpec& w : model_weights(c)) {
    if (w.role == WeightRole::lm_head && c.tied_embeddings) continue;
    uint64_t n = 2;
    for (uint64_t s : w.shape) n *= s;
    if (shards.back().bytes > 0 && shards.back().bytes + n > shard_bytes) shards.emplace_back();
    Shard& s = shards.back();
    s.tensors.push_back({w.name, DType::BF16, w.shape, s.bytes, s.bytes + n});
    s.specs.push_back(w);
    s.bytes += n;
  }
  for (size_t i = 0; i < shards.size(); ++i)
    shards[i].file = shards.size() == 1
                         ? "model.safetensors"
                         : fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, shards.size());
  return shards;
}

std::pair<float, float> value_spread(WeightRole role) {
  switch (role) {
    case WeightRole::norm:
      return {1.0f, 0.05f};
    default:
      return {0.0f, 0.02f};
  }
}

struct Chunk {
  size_t tensor;
  uint64_t first, count;  // elements
};

void write_shard(const std::filesystem::path& dir, const Shard& shard, uint64_t seed,
                 unsigned threads, std::atomic<uint64_t>& done,
                 const std::function<void()>& report) {
  const std::string header = safetensors_header(shard.tensors, {{"format", "pt"}});
  AtomicFile out(dir / shard.file, header.size() + shard.bytes);
  out.pwrite_all(header.data(), header.size(), 0);
  std::vector<Chunk> chunks;
  constexpr uint64_t kChunk = 1 << 21;  // elements: 4 MB of bf16 per unit
  for (size_t t = 0; t < shard.tensors.size(); ++t)
    for (uint64_t e = 0, n = shard.tensors[t].nbytes() / 2; e < n; e += kChunk)
      chunks.push_back({t, e, std::min(kChunk, n - e)});
  std::atomic<size_t> next{0};
  auto work = [&] {
    std::vector<uint16_t> buf(kChunk);
    for (size_t i; (i = next.fetch_add(1)) < chunks.size();) {
      const Chunk& c = chunks[i];
      const WeightSpec& spec = shard.specs[c.tensor];
      const auto [mean, std] = value_spread(spec.role);
      const uint64_t stream = XXH3_64bits(spec.name.data(), spec.name.size());
      for (uint64_t k = 0; k < c.count; ++k)
        buf[k] = float_to_bf16(synth_value(seed, stream, c.first + k, mean, std));
      out.pwrite_all(buf.data(), c.count * 2,
                     header.size() + shard.tensors[c.tensor].begin + c.first * 2);
      done += c.count * 2;
    }
  };
  run_threads(threads, work, report);
  out.commit();
}

void write_text(const std::filesystem::path& p, const std::string& text) {
  AtomicFile f(p, text.size());
  f.pwrite_all(text.data(), text.size(), 0);
  f.commit();
}

// The names synth writes. An existing output directory that holds nothing else (an earlier
// synth's output) is replaced as a whole; one that holds anything else is refused.
bool is_synth_file(const std::string& name) {
  for (const char* f :
       {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
        "model.safetensors", "model.safetensors.index.json"})
    if (name == f) return true;
  return std::regex_match(name, std::regex(R"(model-\d{5}-of-\d{5}\.safetensors)"));
}

// Throws unless `dir` is absent, or a directory holding only regular files synth writes.
void check_synth_output(const fs::path& dir) {
  std::error_code ec;
  const fs::file_status st = fs::status(dir, ec);
  if (!fs::exists(st)) return;
  if (!fs::is_directory(st))
    throw Error(
        fmt::format("{}: exists and is not a directory; give a new directory", dir.string()));
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec))
    if (!is_synth_file(e.path().filename().string()) || !e.is_regular_file(ec))
      throw Error(fmt::format(
          "{}: holds {}, which ferry synth does not write; give a new or empty directory, or one "
          "with only an earlier synth's output (it is replaced)",
          dir.string(), e.path().filename().string()));
  if (ec) throw Error(fmt::format("{}: cannot list: {}", dir.string(), ec.message()));
}

// The output is built in a hidden sibling directory and renamed into place at the end, so a failed
// run leaves nothing at DIR (a SIGKILL leaves only the hidden ".NAME.synth-*" sibling), and an
// earlier synth's output there is replaced whole: no stale shard or index survives beside the new
// files. Missing parent directories are created, and removed again on failure.
class StagingDir {
 public:
  explicit StagingDir(fs::path target) : target_(std::move(target)) {
    try {
      create_parents();
      create_staging();
    } catch (...) {
      clean_up();  // the destructor does not run when a constructor throws
      throw;
    }
  }
  ~StagingDir() { clean_up(); }
  StagingDir(const StagingDir&) = delete;
  StagingDir& operator=(const StagingDir&) = delete;

  const fs::path& path() const { return staging_; }

  // Moves the finished checkpoint to the target: a rename when it is absent or empty, an atomic
  // exchange with an earlier output (whose content, now at the staging path, is then removed).
  void commit() {
    check_synth_output(target_);  // again: a file dropped there meanwhile must not be deleted
    if (::rename(staging_.c_str(), target_.c_str()) == 0)
      staging_.clear();
    else if (errno == ENOTEMPTY || errno == EEXIST)
      exchange();
    else
      fail("rename", errno);
    committed_ = true;
    const int dfd = ::open(target_.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) ::fsync(dfd), ::close(dfd);
  }

 private:
  [[noreturn]] void fail(const char* what, int err) const {
    throw Error(fmt::format("{}: {} failed: {}", target_.string(), what, std::strerror(err)));
  }

  void create_parents() {
    std::vector<fs::path> missing;  // deepest first
    for (fs::path p = target_.parent_path(); !fs::exists(p) && p != p.parent_path();
         p = p.parent_path())
      missing.push_back(p);
    for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
      if (::mkdir(it->c_str(), 0777) != 0 && errno != EEXIST) {
        const int err = errno;
        throw Error(fmt::format("{}: cannot create directory {}: {}", target_.string(),
                                it->string(), std::strerror(err)));
      }
      created_parents_.insert(created_parents_.begin(), *it);
    }
  }

  // mkdir, not mkdtemp: the directory gets the umask's permissions, as a plain mkdir -p would.
  void create_staging() {
    std::random_device rd;
    for (int attempt = 0; staging_.empty(); ++attempt) {
      const fs::path p =
          target_.parent_path() /
          fmt::format(".{}.synth-{}-{:08x}", target_.filename().string(), ::getpid(), rd());
      if (::mkdir(p.c_str(), 0777) == 0)
        staging_ = p;
      else if (errno != EEXIST || attempt > 100)
        fail("creating a directory beside it", errno);
    }
  }

  void clean_up() {
    std::error_code ec;
    if (!staging_.empty()) fs::remove_all(staging_, ec);
    staging_.clear();
    if (!committed_)
      for (const fs::path& p : created_parents_) fs::remove(p, ec);  // deepest first; if empty
    created_parents_.clear();
  }

  void exchange() {
    if (::renameat2(AT_FDCWD, staging_.c_str(), AT_FDCWD, target_.c_str(), RENAME_EXCHANGE) == 0)
      return;
    if (errno != EINVAL && errno != ENOSYS) fail("rename", errno);
    move_aside_and_rename();  // filesystems without RENAME_EXCHANGE
  }

  // Old content to a second hidden name, the new one into place; the old is removed after.
  void move_aside_and_rename() {
    const fs::path old = staging_.string() + "-old";
    if (::rename(target_.c_str(), old.c_str()) != 0) fail("rename", errno);
    if (::rename(staging_.c_str(), target_.c_str()) != 0) {
      const int err = errno;
      ::rename(old.c_str(), target_.c_str());
      fail("rename", err);
    }
    staging_ = old;
  }

  fs::path target_, staging_;
  std::vector<fs::path> created_parents_;  // deepest first
  bool committed_ = false;
};

// The absolute, symlink-resolved output directory (the staging sibling must sit beside the real
// one, on the same filesystem), without a trailing '/'.
fs::path output_dir(const fs::path& dir) {
  if (dir.empty())
    throw Error(Setting::output, "the output directory path is empty; name the directory to write");
  std::error_code ec;
  fs::path p = fs::weakly_canonical(fs::absolute(dir), ec);
  if (ec) throw Error(fmt::format("{}: cannot resolve: {}", dir.string(), ec.message()));
  if (!p.has_filename()) p = p.parent_path();
  return p;
}

void write_sources(const fs::path& dir, const json& config) {
  const SynthTokenizer tok = synth_tokenizer(config);
  json full_config = config;
  full_config["bos_token_id"] = tok.bos_token_id;
  full_config["eos_token_id"] = tok.eos_token_id;
  write_text(dir / "config.json", full_config.dump(2));
  write_text(dir / "generation_config.json",
             json{{"bos_token_id", tok.bos_token_id}, {"eos_token_id", tok.eos_token_id}}.dump(2));
  write_text(dir / "tokenizer.json", tok.tokenizer_json);
  write_text(dir / "tokenizer_config.json", tok.tokenizer_config_json);
}

}  // namespace

const std::vector<SynthPresetInfo>& synth_presets() {
  static const std::vector<SynthPresetInfo> infos = [] {
    std::vector<SynthPresetInfo> v;
    for (const Preset& p : presets()) v.push_back(p.info);
    return v;
  }();
  return infos;
}

json synth_config(std::string_view name, std::optional<uint64_t> layers) {
  for (const Preset& p : presets()) {
    if (p.info.name != name) continue;
    json c = p.make();
    if (layers) {
      if (*layers == 0) throw Error(Setting::layers, "a model needs at least 1 layer");
      c["num_hidden_layers"] = *layers;
    }
    return c;
  }
  std::string names;
  for (const Preset& p : presets()) names += (names.empty() ? "" : ", ") + std::string(p.info.name);
  throw Error(fmt::format("unknown preset '{}'; presets: {}", name, names));
}

SynthReport synth_checkpoint(const std::filesystem::path& out_dir, const SynthOptions& opt,
                             const ProgressFn& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  const json config = synth_config(opt.preset, opt.layers);
  const ModelConfig mc = parse_model_config(config, opt.preset);
  check_thread_request(opt.threads);
  const fs::path target = output_dir(out_dir);
  check_synth_output(target);
  StagingDir staging(target);
  const fs::path& dir = staging.path();
  write_sources(dir, config);

  const std::vector<Shard> shards = plan_shards(mc, opt.shard_bytes);
  SynthReport r;
  for (const Shard& s : shards) r.bytes += s.bytes;
  std::atomic<uint64_t> done{0};
  json weight_map = json::object();
  for (const Shard& s : shards) {
    write_shard(dir, s, opt.seed, thread_count(opt.threads), done,
                [&] { progress("write", done, r.bytes); });
    for (const TensorDecl& t : s.tensors) weight_map[t.name] = s.file;
  }
  if (shards.size() > 1)
    write_text(dir / "model.safetensors.index.json",
               json{{"metadata", {{"total_size", r.bytes}}}, {"weight_map", weight_map}}.dump(2));
  staging.commit();
  r.shards = int(shards.size());
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace ferry
