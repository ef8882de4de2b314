// End-to-end conversion: HF checkpoint -> .ferry, through the library and the ferry binary.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/bytes.hpp"
#include "base/error.hpp"
#include "format/packed_file.hpp"
#include "kernels/dequant.hpp"
#include "quantizer/checkpoint.hpp"
#include "quantizer/convert.hpp"
#include "quantizer/synth.hpp"
#include "tests/test_util.hpp"

namespace ferry {
namespace {

using test::entries;
using test::read_file;
using test::run_ferry;
using test::ScratchDir;

const ProgressFn kNoProgress = [](std::string_view, uint64_t, uint64_t) {};

std::vector<float> source_floats(const TensorView& t) {
  std::vector<float> v(t.numel());
  for (uint64_t i = 0; i < v.size(); ++i) v[i] = load_float(t.data, t.dtype, i);
  return v;
}

// Dequantizes a packed linear weight back to [rows, cols] floats.
std::vector<float> dequant_packed(const PackedFile& p, const std::string& name, uint64_t rows,
                                  uint64_t cols) {
  const TensorView* q = p.file.find(name + ".q4");
  const TensorView* q8 = p.file.find(name + ".q8");
  const TensorView* s = p.file.find(name + ".scales");
  const TensorView* m = p.file.find(name + ".mins");
  EXPECT_TRUE(q || q8);
  EXPECT_NE(s, nullptr);
  std::vector<uint16_t> scales(s->numel()), mins(m ? m->numel() : 0);
  std::memcpy(scales.data(), s->data, s->nbytes);
  if (q8) {
    std::vector<float> out(rows * cols);
    dequant_int8_f32_cpu({reinterpret_cast<const int8_t*>(q8->data), scales.data(), rows, cols},
                         out.data());
    return out;
  }
  if (m) std::memcpy(mins.data(), m->data, m->nbytes);
  std::vector<float> out(rows * cols);
  dequant_int4_f32_cpu({q->data, scales.data(), m ? mins.data() : nullptr, rows, cols}, out.data());
  return out;
}

double relative_rms(const std::vector<float>& ref, const std::vector<float>& got) {
  double e = 0, r = 0;
  for (size_t i = 0; i < ref.size(); ++i)
    e += std::pow(double(ref[i]) - got[i], 2), r += double(ref[i]) * ref[i];
  return std::sqrt(e / r);
}

TEST(Convert, TinyStoriesAsymClipRoundTrips) {
  FERRY_REQUIRE_SHARED_MODEL(dir, "tinystories-656k");
  ScratchDir tmp;
  const ConvertReport r =
      convert_checkpoint(dir, tmp / "t.ferry", {.scheme = Scheme::asym_clip}, kNoProgress);
  EXPECT_EQ(r.config.layers, 2u);
  EXPECT_TRUE(r.config.tied_embeddings);
  const PackedFile p = PackedFile::open(tmp / "t.ferry");
  EXPECT_EQ(p.scheme, Scheme::asym_clip);
  EXPECT_TRUE(p.verify_checksums(2).empty());
  EXPECT_EQ(p.file.metadata().at(meta::kConfig), read_text_file(dir / "config.json"));
  EXPECT_EQ(p.file.metadata().at(meta::kTokenizer), read_text_file(dir / "tokenizer.json"));

  const Checkpoint src = Checkpoint::open(dir);
  // The embedding (stored only as lm_head.weight, aliased) is kept in bf16, bit for bit.
  const std::vector<float> emb = source_floats(*src.find("model.embed_tokens.weight"));
  const TensorView& e = p.file.require_tensor("model.embed_tokens.weight", DType::BF16,
                                              std::vector<uint64_t>{2048, 128});
  for (size_t i = 0; i < emb.size(); ++i)
    ASSERT_EQ(load_float(e.data, DType::BF16, i), bf16_to_float(float_to_bf16(emb[i])));
  // Every quantized weight dequantizes to the error the report and the metadata state.
  for (const WeightReport& w : r.weights) {
    if (!w.quantized) continue;
    const std::vector<float> ref =
        source_floats(*src.find(w.name == "lm_head.weight" ? "lm_head.weight" : w.name));
    const double err = relative_rms(ref, dequant_packed(p, w.name, w.shape[0], w.shape[1]));
    EXPECT_NEAR(err, w.error.relative_rms(), 1e-6) << w.name;
    EXPECT_NEAR(err, p.quant_error.at(w.name), 1e-6 * err + 1e-7) << w.name;
    EXPECT_LT(err, 0.15) << w.name;
  }
  // A tied lm_head is stored quantized, in INT8 by default since format version 2 (INT4 before).
  EXPECT_TRUE(p.file.find("lm_head.weight.q8") != nullptr) << "a tied lm_head is stored quantized";
}

TEST(Convert, Bf16SchemeKeepsEveryWeightExactly) {
  FERRY_REQUIRE_SHARED_MODEL(dir, "tinystories-656k");
  ScratchDir tmp;
  ConvertOptions opt;
  opt.scheme = Scheme::bf16;
  convert_checkpoint(dir, tmp / "b.ferry", opt, kNoProgress);
  const PackedFile p = PackedFile::open(tmp / "b.ferry");
  const Checkpoint src = Checkpoint::open(dir);
  // TinyStories is tied and stores its embedding only as lm_head.weight: the packed file holds
  // it once, as the embedding, and no lm_head.
  EXPECT_EQ(p.file.find("lm_head.weight"), nullptr);
  for (const TensorView* t : src.tensors()) {
    const TensorView* out =
        p.file.find(t->name == "lm_head.weight" ? "model.embed_tokens.weight" : t->name);
    ASSERT_NE(out, nullptr) << t->name;
    ASSERT_EQ(out->dtype, DType::BF16);
    for (uint64_t i = 0; i < t->numel(); ++i)
      ASSERT_EQ(load_float(out->data, DType::BF16, i),
                bf16_to_float(float_to_bf16(load_float(t->data, t->dtype, i))));
  }
}

TEST(Convert, ShardedQwen2WithPaddedRows) {
  ScratchDir tmp;
  SynthOptions so;
  so.preset = "qwen2-tiny";  // hidden 320: 2.5 blocks of 128 per row
  so.shard_bytes = 3'000'000;
  synth_checkpoint(tmp / "hf", so, kNoProgress);
  ASSERT_TRUE(std::filesystem::exists(tmp / "hf" / "model.safetensors.index.json"));
  ConvertOptions opt;
  opt.scheme = Scheme::sym;
  opt.threads = 3;
  opt.chunk_bytes = 4096;  // many small units: exercises the parallel writer
  const ConvertReport r = convert_checkpoint(tmp / "hf", tmp / "q.ferry", opt, kNoProgress);
  const PackedFile p = PackedFile::open(tmp / "q.ferry");
  EXPECT_TRUE(p.verify_checksums(2).empty());
  p.file.require_tensor("model.layers.0.self_attn.q_proj.weight.q4", DType::U8,
                        std::vector<uint64_t>{320, 3 * 64});
  p.file.require_tensor("model.layers.0.self_attn.k_proj.bias", DType::BF16,
                        std::vector<uint64_t>{64});
  EXPECT_EQ(p.file.find("model.layers.0.self_attn.q_proj.weight.mins"), nullptr)
      << "sym stores no mins";
  const Checkpoint src = Checkpoint::open(tmp / "hf");
  const std::vector<float> ref = source_floats(*src.find("model.layers.2.mlp.down_proj.weight"));
  EXPECT_NEAR(relative_rms(ref, dequant_packed(p, "model.layers.2.mlp.down_proj.weight", 320, 896)),
              p.quant_error.at("model.layers.2.mlp.down_proj.weight"), 1e-6);
  // Same input, other thread count and unit size: byte-identical output.
  opt.threads = 1;
  opt.chunk_bytes = 1 << 20;
  convert_checkpoint(tmp / "hf", tmp / "q1.ferry", opt, kNoProgress);
  EXPECT_EQ(read_file(tmp / "q.ferry"), read_file(tmp / "q1.ferry"));
  EXPECT_GT(r.total.relative_rms(), 0.0);
}

TEST(Convert, LayerTensorsAreContiguous) {
  ScratchDir tmp;
  synth_checkpoint(tmp / "hf", {}, kNoProgress);
  convert_checkpoint(tmp / "hf", tmp / "q.ferry", {}, kNoProgress);
  const PackedFile p = PackedFile::open(tmp / "q.ferry");
  int last_layer = -1;
  for (const TensorView& t : p.file.tensors()) {  // file order
    if (!t.name.starts_with("model.layers.")) continue;
    const int layer = std::stoi(t.name.substr(13));
    EXPECT_GE(layer, last_layer) << t.name;
    last_layer = layer;
  }
  EXPECT_EQ(last_layer, 3);
}

// --- the command line: errors leave no output and do not touch an existing one ---------------

struct CliCase {
  const char* what;
  void (*break_it)(const std::filesystem::path& hf);
  const char* expected;
};

void edit_config(const std::filesystem::path& hf, const char* key, const nlohmann::json& value) {
  nlohmann::json c = nlohmann::json::parse(read_text_file(hf / "config.json"));
  c[key] = value;
  const std::string s = c.dump();
  test::write_file(hf / "config.json", std::vector<uint8_t>(s.begin(), s.end()));
}

void write_text(const std::filesystem::path& p, const std::string& text) {
  test::write_file(p, std::vector<uint8_t>(text.begin(), text.end()));
}

const CliCase kCliCases[] = {
    {"missing config", [](const auto& hf) { std::filesystem::remove(hf / "config.json"); },
     "config.json: cannot read"},
    {"malformed config",
     [](const auto& hf) {
       test::write_file(hf / "config.json", {'{', 'x'});
     },
     "not valid JSON"},
    {"unsupported architecture",
     [](const auto& hf) { edit_config(hf, "architectures", {"GPT2LMHeadModel"}); },
     "unsupported architecture 'GPT2LMHeadModel'"},
    {"negative rope_theta", [](const auto& hf) { edit_config(hf, "rope_theta", -1.0); },
     "rope_theta -1 must be a finite number above 1"},
    {"rope type longrope",
     [](const auto& hf) {
       edit_config(hf, "rope_scaling", {{"rope_type", "longrope"}, {"factor", 4.0}});
     },
     "rope type 'longrope' (rope_scaling) is not implemented"},
    {"rope type dynamic, transformers 5",
     [](const auto& hf) {
       edit_config(hf, "rope_parameters",
                   {{"rope_type", "dynamic"}, {"rope_theta", 1e6}, {"factor", 2.0}});
     },
     "rope type 'dynamic' (rope_parameters) is not implemented"},
    {"partial rotary", [](const auto& hf) { edit_config(hf, "partial_rotary_factor", 0.5); },
     "partial_rotary_factor 0.5 is not supported"},
    {"sliding window in force",
     [](const auto& hf) {
       edit_config(hf, "use_sliding_window", true);
       edit_config(hf, "sliding_window", 4096);
     },
     "sliding_window is 4096 tokens, shorter than max_position_embeddings 32768: ferry does not "
     "implement sliding-window attention"},
    {"gelu", [](const auto& hf) { edit_config(hf, "hidden_act", "gelu"); },
     "hidden_act 'gelu' is not supported"},
    {"o_proj bias", [](const auto& hf) { edit_config(hf, "attention_bias", true); },
     "attention_bias=true"},
    {"mlp_bias a string", [](const auto& hf) { edit_config(hf, "mlp_bias", "yes"); },
     "\"mlp_bias\" must be true or false"},
    {"rms_norm_eps of 2", [](const auto& hf) { edit_config(hf, "rms_norm_eps", 2.0); },
     "rms_norm_eps 2 must be in [0, 1)"},
    {"shape disagrees with config",
     [](const auto& hf) { edit_config(hf, "intermediate_size", 512); },
     "expected F32/F16/BF16 [512, 320], got BF16 [896, 320]"},
    {"missing tokenizer", [](const auto& hf) { std::filesystem::remove(hf / "tokenizer.json"); },
     "tokenizer.json: cannot read"},
    {"missing shard",
     [](const auto& hf) { std::filesystem::remove(hf / "model-00002-of-00002.safetensors"); },
     "model-00002-of-00002.safetensors"},
    {"truncated shard",
     [](const auto& hf) {
       std::filesystem::resize_file(hf / "model-00001-of-00002.safetensors", 100000);
     },
     "model-00001-of-00002.safetensors"},
    {"too few layers in config", [](const auto& hf) { edit_config(hf, "num_hidden_layers", 3); },
     "is not part of a Qwen2ForCausalLM model"},
    // The tokenizer files are embedded and parsed only by `ferry run`: checked at quantize time.
    {"malformed tokenizer", [](const auto& hf) { write_text(hf / "tokenizer.json", "garbage"); },
     "tokenizer.json: not valid JSON"},
    {"tokenizer not an object", [](const auto& hf) { write_text(hf / "tokenizer.json", "[1, 2]"); },
     "tokenizer.json: not a JSON object"},
    {"malformed tokenizer_config",
     [](const auto& hf) { write_text(hf / "tokenizer_config.json", "garbage"); },
     "tokenizer_config.json: not valid JSON"},
    {"malformed generation_config",
     [](const auto& hf) { write_text(hf / "generation_config.json", "{\"eos_token_id\": "); },
     "generation_config.json: not valid JSON"},
};

TEST(ConvertCli, BadInputsGiveOneClearLineAndKeepThePreviousOutput) {
  for (const CliCase& c : kCliCases) {
    SCOPED_TRACE(c.what);
    ScratchDir tmp;
    SynthOptions so;
    so.shard_bytes = 5'000'000;  // two shards
    synth_checkpoint(tmp / "hf", so, kNoProgress);
    const std::vector<uint8_t> previous = {'o', 'l', 'd'};
    test::write_file(tmp / "out.ferry", previous);
    c.break_it(tmp / "hf");
    const test::RunResult r =
        run_ferry({"quantize", (tmp / "hf").string(), "-o", (tmp / "out.ferry").string()});
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("ferry: error: "), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(c.expected), std::string::npos) << r.output;
    EXPECT_EQ(read_file(tmp / "out.ferry"), previous);
    EXPECT_EQ(std::distance(std::filesystem::directory_iterator(tmp.path), {}), 2)
        << "no stray files";
  }
}

TEST(ConvertCli, OptionalJsonFilesMayBeAbsent) {
  ScratchDir tmp;
  synth_checkpoint(tmp / "hf", {}, kNoProgress);
  std::filesystem::remove(tmp / "hf" / "tokenizer_config.json");
  std::filesystem::remove(tmp / "hf" / "generation_config.json");
  const auto r =
      run_ferry({"quantize", (tmp / "hf").string(), "-o", (tmp / "m.ferry").string(), "-q"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

size_t lines(const std::string& s) {
  return size_t(std::count(s.begin(), s.end(), '\n'));
}

// An unusable -o is one line, exit 1, before any work (no progress), and the path is left as it
// was: renaming the output over a FIFO or device node would have replaced the node.
TEST(ConvertCli, UnusableOutputPathIsRefusedBeforeAnyWork) {
  ScratchDir tmp;
  synth_checkpoint(tmp / "hf", {}, kNoProgress);
  ASSERT_EQ(mkfifo((tmp / "fifo").c_str(), 0644), 0);
  std::filesystem::create_directory(tmp / "dir");
  test::write_file(tmp / "file", {'x'});
  const struct {
    std::string out;
    std::string expected;
  } cases[] = {
      {(tmp / "fifo").string(), "fifo: exists and is not a regular file"},
      {(tmp / "dir").string(), "dir: is a directory"},
      {(tmp / "dir").string() + "/", "ends in '/'"},
      {"", "the output path is empty"},
      {(tmp / "missing" / "m.ferry").string(),
       "directory " + (tmp / "missing").string() + " does not exist"},
      {(tmp / "file" / "m.ferry").string(), (tmp / "file").string() + " is not a directory"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.out);
    const auto r = run_ferry({"quantize", (tmp / "hf").string(), "-o", c.out});
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find(c.expected), std::string::npos) << r.output;
    EXPECT_EQ(r.output.rfind("ferry: error: ", 0), 0u) << r.output;
    EXPECT_EQ(lines(r.output), 1u) << r.output;
  }
  struct stat st {};
  ASSERT_EQ(lstat((tmp / "fifo").c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode)) << "the FIFO was replaced";
  EXPECT_TRUE(std::filesystem::is_empty(tmp / "dir"));
  EXPECT_EQ(read_file(tmp / "file"), std::vector<uint8_t>{'x'});
  EXPECT_EQ(entries(tmp.path), (std::vector<std::string>{"dir", "fifo", "file", "hf"}))
      << "no stray files";
}

TEST(ConvertCli, UnwritableOutputDirectoryIsRefusedBeforeAnyWork) {
  if (geteuid() == 0) GTEST_SKIP() << "root writes to any directory: run as a normal user";
  ScratchDir tmp;
  synth_checkpoint(tmp / "hf", {}, kNoProgress);
  std::filesystem::create_directory(tmp / "ro");
  std::filesystem::permissions(
      tmp / "ro", std::filesystem::perms::owner_read | std::filesystem::perms::owner_exec);
  const auto r =
      run_ferry({"quantize", (tmp / "hf").string(), "-o", (tmp / "ro" / "m.ferry").string()});
  std::filesystem::permissions(tmp / "ro", std::filesystem::perms::owner_all);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("cannot write to directory"), std::string::npos) << r.output;
  EXPECT_EQ(lines(r.output), 1u) << r.output;
}

// -o naming a file the conversion reads (by path, hard link or symbolic link) would replace the
// checkpoint with its own conversion: refused, every input byte for byte as it was.
TEST(ConvertCli, OutputThatIsAnInputFileIsRefused) {
  ScratchDir tmp;
  SynthOptions so;
  so.shard_bytes = 5'000'000;  // two shards and an index
  synth_checkpoint(tmp / "hf", so, kNoProgress);
  const std::filesystem::path hf = tmp / "hf";
  std::filesystem::create_hard_link(hf / "model-00002-of-00002.safetensors", tmp / "hard.ferry");
  std::filesystem::create_symlink(hf / "config.json", tmp / "soft.ferry");
  std::map<std::string, std::vector<uint8_t>> before;
  for (const std::string& f : entries(hf)) before[f] = read_file(hf / f);
  for (const std::filesystem::path& out :
       {hf / "model-00001-of-00002.safetensors", hf / "model.safetensors.index.json",
        hf / "config.json", hf / "tokenizer.json", hf / "tokenizer_config.json",
        hf / "generation_config.json", hf / "." / "tokenizer.json", tmp / "hard.ferry",
        tmp / "soft.ferry"}) {
    SCOPED_TRACE(out);
    const auto r = run_ferry({"quantize", hf.string(), "-o", out.string()});
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("is the input file"), std::string::npos) << r.output;
    EXPECT_EQ(lines(r.output), 1u) << r.output;
  }
  for (const auto& [f, bytes] : before) EXPECT_TRUE(read_file(hf / f) == bytes) << f;
  EXPECT_EQ(entries(hf).size(), before.size()) << "no stray files";
  EXPECT_TRUE(std::filesystem::is_symlink(tmp / "soft.ferry"));
}

// A tied lm_head reads the embedding's bytes: counted once in "read N".
TEST(ConvertCli, TiedEmbeddingBytesAreCountedOnce) {
  ScratchDir tmp;
  SynthOptions so;
  so.preset = "llama3-tiny";  // tied: stores model.embed_tokens.weight only
  synth_checkpoint(tmp / "hf", so, kNoProgress);
  const uint64_t stored = Checkpoint::open(tmp / "hf").total_bytes();
  const ConvertReport rep = convert_checkpoint(tmp / "hf", tmp / "a.ferry", {}, kNoProgress);
  EXPECT_EQ(rep.input_bytes, stored);
  const auto r = run_ferry({"quantize", (tmp / "hf").string(), "-o", (tmp / "m.ferry").string()});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("read " + human_bytes(double(stored)) + ", wrote"), std::string::npos)
      << r.output;
}

// `f` with the tensor `from` stored a second time as `to`, last, under `metadata`.
void write_with_copy(const SafetensorsFile& f, const std::map<std::string, std::string>& metadata,
                     const std::string& from, const std::string& to,
                     const std::filesystem::path& out) {
  std::vector<TensorDecl> decls;
  std::vector<const TensorView*> data;
  uint64_t offset = 0;
  auto add = [&](const std::string& name, const TensorView& t) {
    decls.push_back({name, t.dtype, t.shape, offset, offset + t.nbytes});
    data.push_back(&t);
    offset += t.nbytes;
  };
  for (const TensorView& t : f.tensors()) add(t.name, t);
  add(to, *f.find(from));
  const std::string header = safetensors_header(decls, metadata);
  std::vector<uint8_t> bytes(header.begin(), header.end());
  for (const TensorView* t : data) bytes.insert(bytes.end(), t->data, t->data + t->nbytes);
  test::write_file(out, bytes);
}

// The file as ferry wrote a tied model in bf16 before it stored the shared matrix once: the same
// tensors plus lm_head.weight, a copy of the embedding, last (model_weights() order).
void write_with_lm_head_copy(const PackedFile& p, const std::filesystem::path& out) {
  std::map<std::string, std::string> m = p.file.metadata();
  nlohmann::ordered_json sums = nlohmann::ordered_json::parse(m.at(meta::kChecksums));
  sums["lm_head.weight"] = sums["model.embed_tokens.weight"];
  m[meta::kChecksums] = sums.dump();
  write_with_copy(p.file, m, "model.embed_tokens.weight", "lm_head.weight", out);
}

// The generated text of a greedy `ferry run` (stdout; the figures line on stderr follows it).
std::string greedy_text(const std::filesystem::path& model, std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {"run", model.string(), "-p", "Once upon a time", "-n", "24"};
  args.insert(args.end(), extra.begin(), extra.end());
  const auto r = run_ferry(args);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  const size_t figures = r.output.rfind("\nprompt ");
  EXPECT_NE(figures, std::string::npos) << r.output;
  return r.output.substr(0, figures);
}

// A tied model in bf16 stores the shared matrix once: no lm_head tensor, the embedding's bytes
// fewer, and the same greedy tokens as the file with a copy (as ferry wrote it before, which
// still loads), read in place or through the paging cache (whose host store then holds the
// embedding's matrix as lm_head).
TEST(ConvertCli, TiedBf16StoresTheSharedMatrixOnce) {
  ScratchDir tmp;
  SynthOptions so;
  so.preset = "llama3-tiny";  // tied
  synth_checkpoint(tmp / "hf", so, kNoProgress);
  const auto q = run_ferry(
      {"quantize", (tmp / "hf").string(), "-o", (tmp / "tied.ferry").string(), "-s", "bf16"});
  ASSERT_EQ(q.exit_code, 0) << q.output;
  const PackedFile p = PackedFile::open(tmp / "tied.ferry");
  EXPECT_TRUE(p.config.tied_embeddings);
  EXPECT_EQ(p.file.find("lm_head.weight"), nullptr);
  EXPECT_EQ(p.file.find("lm_head.weight.q4"), nullptr);
  EXPECT_TRUE(p.verify_checksums(2).empty());
  // "read N, wrote M (Xx smaller)": bf16 of a bf16 checkpoint is about its size, not larger.
  const uint64_t stored = Checkpoint::open(tmp / "hf").total_bytes();
  const uint64_t tied_size = std::filesystem::file_size(tmp / "tied.ferry");
  EXPECT_LT(double(tied_size), 1.01 * double(stored) + 65536) << q.output;

  write_with_lm_head_copy(p, tmp / "copy.ferry");
  const uint64_t embed = p.file.find("model.embed_tokens.weight")->nbytes;
  EXPECT_GE(std::filesystem::file_size(tmp / "copy.ferry"), tied_size + embed);
  const PackedFile old = PackedFile::open(tmp / "copy.ferry");
  ASSERT_NE(old.file.find("lm_head.weight"), nullptr);
  EXPECT_TRUE(old.verify_checksums(2).empty());

  const std::string reference = greedy_text(tmp / "copy.ferry");
  EXPECT_GT(reference.size(), std::string("Once upon a time").size()) << reference;
  EXPECT_EQ(greedy_text(tmp / "tied.ferry"), reference);
  EXPECT_EQ(greedy_text(tmp / "tied.ferry", {"--cache-budget", "50%"}), reference);
  EXPECT_EQ(greedy_text(tmp / "tied.ferry", {"--cache-budget", "50%", "--cache-policy", "pin"}),
            reference);
  EXPECT_EQ(greedy_text(tmp / "copy.ferry", {"--cache-budget", "50%"}), reference);

  // --keep-lm-head asks for a bf16 lm_head: tied, that is the embedding again, stored once; the
  // INT4 schemes still quantize a tied lm_head (to INT8 by default, format version 2 on).
  ASSERT_EQ(run_ferry({"quantize", (tmp / "hf").string(), "-o", (tmp / "keep.ferry").string(),
                       "--keep-lm-head", "-q"})
                .exit_code,
            0);
  const PackedFile keep = PackedFile::open(tmp / "keep.ferry");
  EXPECT_EQ(keep.file.find("lm_head.weight"), nullptr);
  EXPECT_EQ(keep.file.find("lm_head.weight.q4"), nullptr);
  EXPECT_EQ(keep.file.find("lm_head.weight.q8"), nullptr);
  ASSERT_EQ(run_ferry({"quantize", (tmp / "hf").string(), "-o", (tmp / "q.ferry").string(), "-q"})
                .exit_code,
            0);
  EXPECT_NE(PackedFile::open(tmp / "q.ferry").file.find("lm_head.weight.q8"), nullptr);
  EXPECT_EQ(greedy_text(tmp / "keep.ferry", {"--cache-budget", "50%"}),
            greedy_text(tmp / "keep.ferry"));
}

// A tied checkpoint that also stores lm_head.weight (transformers ties the two at load, so its
// bytes are the embedding's) converts to bf16 without it.
TEST(Convert, TiedCheckpointWithAnLmHeadCopyConverts) {
  ScratchDir tmp;
  SynthOptions so;
  so.preset = "llama3-tiny";  // tied, one shard
  synth_checkpoint(tmp / "hf", so, kNoProgress);
  {
    const SafetensorsFile f = SafetensorsFile::open(tmp / "hf" / "model.safetensors");
    write_with_copy(f, f.metadata(), "model.embed_tokens.weight", "lm_head.weight",
                    tmp / "model.safetensors");
  }
  std::filesystem::rename(tmp / "model.safetensors", tmp / "hf" / "model.safetensors");
  ConvertOptions opt;
  opt.scheme = Scheme::bf16;
  convert_checkpoint(tmp / "hf", tmp / "b.ferry", opt, kNoProgress);
  EXPECT_EQ(PackedFile::open(tmp / "b.ferry").file.find("lm_head.weight"), nullptr);
  convert_checkpoint(tmp / "hf", tmp / "q.ferry", {}, kNoProgress);
  EXPECT_NE(PackedFile::open(tmp / "q.ferry").file.find("lm_head.weight.q8"), nullptr);
}

TEST(ConvertCli, TinyStoriesReadsItsSafetensorsBytesOnce) {
  FERRY_REQUIRE_SHARED_MODEL(dir, "tinystories-656k");
  ScratchDir tmp;
  const ConvertReport r = convert_checkpoint(dir, tmp / "t.ferry", {}, kNoProgress);
  EXPECT_EQ(r.input_bytes, Checkpoint::open(dir).total_bytes());
  EXPECT_LE(r.input_bytes, std::filesystem::file_size(dir / "model.safetensors"));
}

TEST(ConvertCli, QuantizeThenInspectJson) {
  ScratchDir tmp;
  ASSERT_EQ(run_ferry({"synth", "--preset", "llama3-tiny", "-o", (tmp / "hf").string()}).exit_code,
            0);
  const auto q = run_ferry({"quantize", (tmp / "hf").string(), "-o", (tmp / "m.ferry").string()});
  ASSERT_EQ(q.exit_code, 0) << q.output;
  EXPECT_NE(q.output.find("quantize: 100%"), std::string::npos)
      << "plain progress lines off a terminal";
  EXPECT_NE(q.output.find("overall relative RMS error"), std::string::npos);
  const auto i = run_ferry({"inspect", "--json", (tmp / "m.ferry").string()});
  ASSERT_EQ(i.exit_code, 0) << i.output;
  const nlohmann::json j = nlohmann::json::parse(i.output);
  EXPECT_EQ(j["kind"], "ferry");
  EXPECT_EQ(j["scheme"], "asym-hqq");  // the default
  EXPECT_EQ(j["model"]["rope_scaling"], "llama3");
  EXPECT_EQ(j["checksums"]["mismatched"].size(), 0u);
  EXPECT_GT(j["checksums"]["verified"].get<int>(), 40);
  EXPECT_EQ(j["checksums"]["verified"], j["checksums"]["total"]);
  const auto h = run_ferry({"inspect", "--json", (tmp / "hf").string()});
  ASSERT_EQ(h.exit_code, 0) << h.output;
  EXPECT_EQ(nlohmann::json::parse(h.output)["kind"], "hf-checkpoint");
}

// Mistral 7B v0.1's case at a small scale: a window shorter than the trained context is packed
// only with --max-context within the window, and runs are then held to that limit.
TEST(ConvertCli, SlidingWindowModelIsPackedOnlyWithinItsWindow) {
  ScratchDir tmp;
  ASSERT_EQ(run_ferry({"synth", "--preset", "mistral-tiny", "-o", (tmp / "hf").string()}).exit_code,
            0);
  edit_config(tmp / "hf", "sliding_window", 64);
  const std::string hf = (tmp / "hf").string(), out = (tmp / "m.ferry").string();
  const auto refused = run_ferry({"quantize", hf, "-o", out, "-q"});
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_NE(refused.output.find("pass --max-context 64 (or less)"), std::string::npos)
      << refused.output;
  const auto past = run_ferry({"quantize", hf, "-o", out, "-q", "--max-context", "65"});
  EXPECT_EQ(past.exit_code, 1);
  EXPECT_NE(past.output.find("--max-context 65 is past"), std::string::npos) << past.output;
  EXPECT_FALSE(std::filesystem::exists(out));

  const auto packed = run_ferry({"quantize", hf, "-o", out, "-q", "--max-context", "48"});
  ASSERT_EQ(packed.exit_code, 0) << packed.output;
  const auto i = run_ferry({"inspect", "--json", out});
  ASSERT_EQ(i.exit_code, 0) << i.output;
  EXPECT_EQ(nlohmann::json::parse(i.output)["model"]["max_context"], 48);
  const auto long_run = run_ferry({"run", out, "-p", "Hello", "-n", "4", "--ctx", "49"});
  EXPECT_EQ(long_run.exit_code, 1);
  EXPECT_NE(long_run.output.find("packed for contexts up to 48 tokens"), std::string::npos)
      << long_run.output;
  const auto run = run_ferry({"run", out, "-p", "Hello", "-n", "4"});
  EXPECT_EQ(run.exit_code, 0) << run.output;
}

TEST(ConvertCli, InspectDetectsACorruptedTensor) {
  ScratchDir tmp;
  synth_checkpoint(tmp / "hf", {}, kNoProgress);
  convert_checkpoint(tmp / "hf", tmp / "m.ferry", {}, kNoProgress);
  std::vector<uint8_t> bytes = read_file(tmp / "m.ferry");
  bytes[bytes.size() - 1000] ^= 0x10;  // inside lm_head's packed codes
  test::write_file(tmp / "m.ferry", bytes);
  const auto r = run_ferry({"inspect", (tmp / "m.ferry").string()});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("fail their checksum (first: lm_head.weight"), std::string::npos)
      << r.output;
  // "verified" counts the matching tensors only: total = verified + mismatched.
  const auto js = run_ferry({"inspect", "--json", (tmp / "m.ferry").string()});
  EXPECT_EQ(js.exit_code, 1);
  // stderr's error line lands inside the buffered stdout JSON: take it out.
  std::string out = js.output;
  const size_t err = out.find("ferry: error: ");
  ASSERT_NE(err, std::string::npos) << out;
  out.erase(err, out.find('\n', err) + 1 - err);
  const nlohmann::json c = nlohmann::json::parse(out)["checksums"];
  ASSERT_EQ(c["mismatched"].size(), 1u) << js.output;
  const std::string bad = c["mismatched"][0];
  EXPECT_TRUE(bad.starts_with("lm_head.weight")) << bad;
  const int total = c["total"];
  EXPECT_EQ(c["verified"].get<int>(), total - 1);
  EXPECT_NE(r.output.find(fmt::format("checksums (xxh3-64): {} of {} match, 1 mismatched: {}\n",
                                      total - 1, total, bad)),
            std::string::npos)
      << r.output;
}

// Killed at any moment, a conversion leaves the previous file or the complete new one.
TEST(ConvertCli, SigkillNeverLeavesAPartialFile) {
  ScratchDir tmp;
  SynthOptions so;
  so.preset = "qwen2-small";
  so.layers = 2;  // ~170 MB of bf16: the conversion runs long enough to be killed mid-write
  synth_checkpoint(tmp / "hf", so, kNoProgress);
  const std::filesystem::path out = tmp / "m.ferry";
  ASSERT_EQ(run_ferry({"quantize", (tmp / "hf").string(), "-o", out.string(), "-s", "sym", "-q"})
                .exit_code,
            0);
  const std::vector<uint8_t> old_bytes = read_file(out);
  ASSERT_EQ(run_ferry({"quantize", (tmp / "hf").string(), "-o", (tmp / "new.ferry").string(), "-q"})
                .exit_code,
            0);
  const std::vector<uint8_t> new_bytes = read_file(tmp / "new.ferry");
  std::filesystem::remove(tmp / "new.ferry");
  int killed_mid_way = 0;
  for (int delay_ms : {5, 30, 80, 150, 300, 500, 800}) {
    const pid_t pid = fork();
    if (pid == 0) {
      const int devnull = open("/dev/null", O_WRONLY);
      dup2(devnull, 1), dup2(devnull, 2);
      execl(FERRY_BINARY, FERRY_BINARY, "quantize", (tmp / "hf").c_str(), "-o", out.c_str(), "-q",
            nullptr);
      _exit(127);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    const std::vector<uint8_t> now = read_file(out);
    const bool was_killed = WIFSIGNALED(status);
    killed_mid_way += was_killed;
    EXPECT_TRUE(now == old_bytes || now == new_bytes)
        << "partial output after a kill at " << delay_ms << " ms";
    if (now == new_bytes) test::write_file(out, old_bytes);
    for (const auto& e : std::filesystem::directory_iterator(tmp.path))
      EXPECT_TRUE(e.path().filename() == "hf" || e.path().filename() == "m.ferry")
          << "stray file " << e.path();
  }
  EXPECT_GE(killed_mid_way, 3)
      << "the conversion finished before most kills: the test proves little";
}

// Peak memory stays bounded by threads x chunk, not by the model size.
TEST(ConvertCli, PeakResidentMemoryIsBounded) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "sanitizer builds inflate RSS (shadow memory): measured in the normal build only";
#endif
  ScratchDir tmp;
  SynthOptions so;
  so.preset = "qwen2-small";  // ~300 MB of bf16 weights
  synth_checkpoint(tmp / "hf", so, kNoProgress);
  const uint64_t input = Checkpoint::open(tmp / "hf").total_bytes();
  ASSERT_GT(input, 250'000'000u);
  const auto r = run_ferry(
      {"quantize", (tmp / "hf").string(), "-o", (tmp / "m.ferry").string(), "-q", "-t", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // Bound: 2 threads x 5 x 4 MB chunks + the binary and its libraries; far below the input.
  EXPECT_LT(r.max_rss_kb * 1024, 100'000'000)
      << "peak RSS " << r.max_rss_kb << " kB for " << input << " input bytes";
}

TEST(ConvertCli, FullDiskIsReportedBeforeAnyWork) {
  ScratchDir tmp;
  std::filesystem::create_directories(tmp / "small");
  if (mount("tmpfs", (tmp / "small").c_str(), "tmpfs", 0, "size=1M") != 0)
    GTEST_SKIP() << "cannot mount a small tmpfs here (needs root and CAP_SYS_ADMIN): skipped";
  synth_checkpoint(tmp / "hf", {}, kNoProgress);
  const auto r =
      run_ferry({"quantize", (tmp / "hf").string(), "-o", (tmp / "small" / "m.ferry").string()});
  const bool empty = std::filesystem::is_empty(tmp / "small");
  umount((tmp / "small").c_str());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("not enough disk space"), std::string::npos) << r.output;
  EXPECT_TRUE(empty);
}

}  // namespace
}  // namespace ferry

namespace ferry {
namespace {

TEST(RunCli, TinyStoriesBf16TellsTheReferenceStory) {
  FERRY_REQUIRE_SHARED_MODEL(dir, "tinystories-656k");
  ScratchDir tmp;
  ASSERT_EQ(
      run_ferry({"quantize", dir.string(), "-o", (tmp / "b.ferry").string(), "-s", "bf16", "-q"})
          .exit_code,
      0);
  const auto r = run_ferry({"run", (tmp / "b.ferry").string(), "-n", "40"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // SOURCE.md: "Once upon a time, there was a little girl named Lily. She had a toy car that
  // she loved very much. ..."
  EXPECT_EQ(
      r.output.rfind("Once upon a time, there was a little girl named Lily. She had a toy car", 0),
      0u)
      << r.output;
  EXPECT_NE(r.output.find("tok/s"), std::string::npos);
  EXPECT_NE(r.output.find("GB/s of weights read"), std::string::npos);
  const auto over = run_ferry({"run", (tmp / "b.ferry").string(), "-n", "40", "--ctx", "16"});
  EXPECT_EQ(over.exit_code, 1);
  EXPECT_NE(over.output.find("exceed the context of 16; raise --ctx"), std::string::npos)
      << over.output;
}

}  // namespace
}  // namespace ferry
