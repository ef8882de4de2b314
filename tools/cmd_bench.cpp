// ferry bench: prefill and decode throughput of a model (a .ferry file, or one synthesized in
// memory with --synthetic) for every combination of cache budget, policy and format asked for,
// beside the bound of DESIGN.md's performance model computed from bandwidths measured first, on
// the same machine, in the same run. Prints a table; --json, --csv and --plot write files.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "quantizer/synth_packed.hpp"
#include "runtime/engine.hpp"
#include "runtime/machine/bandwidth.hpp"
#include "runtime/machine/host_memory.hpp"
#include "tools/commands.hpp"
#include "tools/progress.hpp"
#ifdef FERRY_HAVE_CUDA
#include "runtime/machine/cuda_device.hpp"
#endif

namespace ferry {
namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

struct BenchConfig {
  std::string budget;  // as given: "all", "50%", "6G"
  std::string policy, format;
};

// The bandwidths of the performance model, measured on this machine in this run (GB/s, 1e9).
struct Bandwidths {
  std::string device = "cpu";
  double read_gbps = 0;    // weights read by the kernels: host memory read / device (HBM) copy
  double upload_gbps = 0;  // cache fills: host memcpy / pinned host-to-device at 64 MB chunks
  double memcpy_gbps = 0;  // host memcpy (CPU) or device-to-device copy (GPU)
  struct Chunk {
    uint64_t bytes = 0;
    double pinned_gbps = 0, pageable_gbps = 0;
  };
  std::vector<Chunk> h2d;  // GPU only: host-to-device by chunk size
};

struct BenchRow {
  BenchConfig config;
  double budget_gb = 0;  // the cache arena (the whole linear weights without a cache)
  double prefill_tps = 0, decode_tps = 0;
  double gb_per_token = 0;         // weights read per decoded token
  double upload_gb_per_token = 0;  // of them, copied into the cache during decode
  double hit_rate = 0, wait_fraction = 0;
  double bound_tps = 0;  // the performance model's ceiling for decode
  double ratio = 0;      // decode time per token / bound time per token (>= 1)
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t b = 0;
  for (size_t e; (e = s.find(',', b)) != std::string::npos; b = e + 1)
    out.push_back(s.substr(b, e - b));
  out.push_back(s.substr(b));
  return out;
}

// A sweep list (--budgets, --policy, --format): entries split at commas, spaces around them
// dropped ("all, 50%" is a natural way to type it). An empty entry is an error rather than
// skipped: "lru,,pin" or a stray comma is a typo, and a sweep that silently drops it measures
// something other than what was asked.
std::vector<std::string> sweep_list(const cxxopts::ParseResult& a, const std::string& option,
                                    const char* example) {
  const std::string text = a[option].as<std::string>();
  if (text.find_first_not_of(" \t") == std::string::npos)
    throw Error(
        fmt::format("--{} is empty: give comma-separated values such as {}", option, example));
  std::vector<std::string> out;
  for (std::string e : split(text)) {
    const size_t b = e.find_first_not_of(" \t"), end = e.find_last_not_of(" \t");
    if (b == std::string::npos)
      throw Error(fmt::format("--{}: empty entry in '{}': give comma-separated values such as {}",
                              option, text, example));
    out.push_back(e.substr(b, end - b + 1));
  }
  return out;
}

// The grammar of parse_cache_options, checked with bench's option name in the messages (that
// function's say --cache-budget, which bench does not take).
void check_budget(const std::string& b) {
  if (b == "none" || b == "all" || b == "auto") return;
  if (b.back() == '%') {
    char* end = nullptr;
    const double pct = std::strtod(b.c_str(), &end);
    if (end != b.c_str() + b.size() - 1 || !(pct > 0 && pct <= 100))
      throw Error("--budgets: '" + b + "' is not a percentage in (0, 100]");
    return;
  }
  try {
    if (parse_size(b, "--budgets") > 0) return;
  } catch (const Error&) {
  }
  throw Error("--budgets: '" + b +
              "' is not a budget: give none, all, auto, a share of the weights such as 50%, or a "
              "size such as 6G");
}

// Checked before the sweep, which can take hours: a mistyped path must not cost the results.
// `what` names the file in the messages ("--json", or "--plot b.png: its gnuplot data").
void check_output(const std::string& what, const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path p(path);
  if (path.empty()) throw Error(what + ": the path is empty");
  if (fs::is_directory(p, ec))
    throw Error(fmt::format("{}: '{}' is a directory: give a file name in it", what, path));
  if (!p.has_filename())
    throw Error(fmt::format("{}: '{}' ends in /, a directory: give a file name", what, path));
  if (fs::exists(p, ec)) {
    if (access(path.c_str(), W_OK) != 0)
      throw Error(fmt::format("{}: cannot write '{}': {}", what, path, std::strerror(errno)));
    return;
  }
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  if (!fs::is_directory(dir, ec))
    throw Error(fmt::format("{}: directory '{}' does not exist: create it or write elsewhere", what,
                            dir.string()));
  if (access(dir.c_str(), W_OK) != 0)
    throw Error(fmt::format("{}: cannot create files in '{}': {}", what, dir.string(),
                            std::strerror(errno)));
}

// gnuplot on the PATH: --plot runs it after the sweep, when finding it missing is too late.
bool have_gnuplot() {
  const char* path = std::getenv("PATH");
  for (std::string_view dirs = path ? path : ""; !dirs.empty();) {
    const size_t colon = std::min(dirs.find(':'), dirs.size());
    const std::string dir(dirs.substr(0, colon));
    if (!dir.empty() && access((dir + "/gnuplot").c_str(), X_OK) == 0) return true;
    dirs.remove_prefix(std::min(colon + 1, dirs.size()));
  }
  return false;
}

// Bytes of the synthesized image. Planning it exactly builds the whole header (a JSON entry per
// tensor), which for --layers 1000000 alone takes minutes; every layer adds the same tensors, so
// above two layers extrapolate from one and two (a slight underestimate: the names of later
// layers have more digits).
double synth_bytes(SynthOptions s, Scheme scheme) {
  if (!s.layers || *s.layers <= 2) return double(synth_packed_bytes(s, scheme));
  const double layers = double(*s.layers);
  s.layers = 1;
  const double one = double(synth_packed_bytes(s, scheme));
  s.layers = 2;
  const double two = double(synth_packed_bytes(s, scheme));
  return one + (layers - 1) * (two - one);
}

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

int32_t argmax(std::span<const float> v) {
  return int32_t(std::max_element(v.begin(), v.end()) - v.begin());
}

// One configuration: a fresh engine over the same file bytes, a prompt of random ids, then
// greedy decode.
using DeviceFor = std::function<DeviceFactory(const CacheOptions&)>;

BenchRow run_config(const PackedFile& file, const BenchConfig& c, const EngineOptions& base,
                    uint64_t prompt, uint64_t gen, const Bandwidths& bw, const DeviceFor& device,
                    uint32_t lookahead, bool verify) {
  EngineOptions o = base;
  if (c.budget != "none") {
    o.cache = parse_cache_options(c.budget, c.policy, c.format, lookahead);
    o.cache.verify = verify;
  }
  if (device) o.device = device(o.cache);
  Engine e(PackedFile::from_mapping(file.file.mapping()), o);
  std::mt19937 rng(1);
  std::vector<int32_t> ids(prompt);
  for (int32_t& t : ids) t = int32_t(rng() % e.config().vocab);
  const auto t0 = Clock::now();
  e.eval(ids, 0);
  const double prefill_s = seconds_since(t0);
  const CacheStats before = e.paged() ? e.paged()->stats() : CacheStats{};
  const auto t1 = Clock::now();
  for (uint64_t i = 0; i < gen; ++i) {
    const int32_t next = argmax(e.logits());
    e.eval(std::span(&next, 1), prompt + i);
  }
  const double decode_s = seconds_since(t1);
  BenchRow r{c, 0, double(prompt) / prefill_s, double(gen) / decode_s};
  // bf16 entries are read at 2 bytes a weight instead of ~0.53: count what the kernels read.
  double w = weight_bytes_per_token(file);
  if (e.paged())
    w += double(e.paged()->weight_bytes()) -
         double(paging_schedule(e.file(), e.weights(), CacheFormat::int4).whole_bytes());
  r.gb_per_token = w / 1e9;
  double streamed = 0;  // bytes copied into the cache per decoded token
  r.budget_gb = e.paged() ? double(e.paged()->stats().arena_bytes) / 1e9 : w / 1e9;
  if (e.paged()) {
    const CacheStats s = e.paged()->stats();
    streamed = double(s.uploaded_bytes - before.uploaded_bytes) / double(gen);
    r.upload_gb_per_token = streamed / 1e9;
    const uint64_t uses = s.acquires - before.acquires;
    r.hit_rate = uses ? double(s.hits - before.hits) / double(uses) : 0;
    r.wait_fraction = (s.wait_seconds - before.wait_seconds) / decode_s;
  }
  // DESIGN.md's model: every weight is read once per token (from host memory on the CPU, from
  // HBM on a GPU), and the streamed ones are also copied into the cache first (host memcpy, or
  // PCIe from pinned memory); copy and compute overlap, so the slower of the two bounds a token.
  // Attention reads every layer's k and v rows once per token too, here at the decode steps'
  // mean position: small at short contexts, but Qwen2-32B at 4k positions reads 1.1 GB of f16
  // cache a token beside its 17 GB of weights, and at 32k 8.6 GB, half the weights' bytes.
  const double kv_read =
      kv_bytes_per_position(e.config(), o.kv) * (double(prompt) + double(gen + 1) / 2);
  const double bound_s =
      std::max((w + kv_read) / (bw.read_gbps * 1e9), streamed / (bw.upload_gbps * 1e9));
  r.bound_tps = 1 / bound_s;
  r.ratio = r.bound_tps / r.decode_tps;
  return r;
}

// Bytes per token in GB, or in MB when the largest is below 0.1 GB: a small model's 3 MB would
// print as 0.003 GB, and its uploads as 0.000.
void print_table(const std::vector<BenchRow>& rows) {
  double most = 0;
  for (const BenchRow& r : rows) most = std::max(most, r.gb_per_token);
  const bool mb = most < 0.1;
  const double scale = mb ? 1e3 : 1;
  std::printf("%-8s %-6s %-6s %11s %10s %9s %10s %6s %6s %10s %7s\n", "budget", "policy", "format",
              "prefill t/s", "decode t/s", mb ? "MB/token" : "GB/token",
              mb ? "upload MB" : "upload GB", "hits", "wait", "bound t/s", "x bound");
  for (const BenchRow& r : rows)
    std::printf("%-8s %-6s %-6s %11.1f %10.2f %9.3f %10.3f %5.0f%% %5.0f%% %10.2f %7.2f\n",
                r.config.budget.c_str(), r.config.policy.c_str(), r.config.format.c_str(),
                r.prefill_tps, r.decode_tps, scale * r.gb_per_token, scale * r.upload_gb_per_token,
                100 * r.hit_rate, 100 * r.wait_fraction, r.bound_tps, r.ratio);
}

json to_json(const std::string& model, const Bandwidths& bw, const std::vector<BenchRow>& rows) {
  json h2d = json::array();
  for (const Bandwidths::Chunk& c : bw.h2d)
    h2d.push_back({{"chunk_bytes", c.bytes},
                   {"pinned_gbps", c.pinned_gbps},
                   {"pageable_gbps", c.pageable_gbps}});
  json j = {{"model", model},
            {"device", bw.device},
            {"bandwidth_gbps",
             {{"read", bw.read_gbps}, {"upload", bw.upload_gbps}, {"copy", bw.memcpy_gbps}}},
            {"h2d_by_chunk", h2d},
            {"runs", json::array()}};
  for (const BenchRow& r : rows)
    j["runs"].push_back({{"budget", r.config.budget},
                         {"budget_gb", r.budget_gb},
                         {"policy", r.config.policy},
                         {"format", r.config.format},
                         {"prefill_tokens_per_s", r.prefill_tps},
                         {"decode_tokens_per_s", r.decode_tps},
                         {"gb_read_per_token", r.gb_per_token},
                         {"gb_uploaded_per_token", r.upload_gb_per_token},
                         {"hit_rate", r.hit_rate},
                         {"wait_fraction", r.wait_fraction},
                         {"bound_tokens_per_s", r.bound_tps},
                         {"ratio_to_bound", r.ratio}});
  return j;
}

// `what` names the file in the messages as the user gave it (--plot's side files name the PNG).
// fflush and fclose are checked too: a full disk shows only there, the text being buffered.
void write_text(const std::string& path, const std::string& text, const std::string& what) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) throw Error(fmt::format("{}: cannot open '{}': {}", what, path, std::strerror(errno)));
  int err = 0;
  if (std::fwrite(text.data(), 1, text.size(), f) != text.size()) err = errno ? errno : EIO;
  if (std::fflush(f) != 0 && !err) err = errno;
  if (std::fclose(f) != 0 && !err) err = errno;
  if (err) throw Error(fmt::format("{}: writing '{}' failed: {}", what, path, std::strerror(err)));
}

std::string to_csv(const std::vector<BenchRow>& rows) {
  std::string s =
      "budget,budget_gb,policy,format,prefill_tokens_per_s,decode_tokens_per_s,gb_read_per_token,"
      "gb_uploaded_per_token,hit_rate,wait_fraction,bound_tokens_per_s,ratio_to_bound\n";
  for (const BenchRow& r : rows)
    s += fmt::format("{},{:.4f},{},{},{:.3f},{:.3f},{:.5f},{:.5f},{:.4f},{:.4f},{:.3f},{:.3f}\n",
                     r.config.budget, r.budget_gb, r.config.policy, r.config.format, r.prefill_tps,
                     r.decode_tps, r.gb_per_token, r.upload_gb_per_token, r.hit_rate,
                     r.wait_fraction, r.bound_tps, r.ratio);
  return s;
}

// gnuplot (Debian's gnuplot-nox): decode tokens/s against the cache budget (GB of arena), one
// line per policy and format, each with its bound dashed in the same colour. Runs without a
// cache sit at the size of the whole weights.
void plot(const std::string& png, std::vector<BenchRow> rows, const std::string& title) {
  std::stable_sort(rows.begin(), rows.end(),
                   [](const BenchRow& a, const BenchRow& b) { return a.budget_gb < b.budget_gb; });
  std::vector<std::string> series;  // "policy format", in order of first appearance
  for (const BenchRow& r : rows) {
    const std::string k = r.config.policy + " " + r.config.format;
    if (std::find(series.begin(), series.end(), k) == series.end()) series.push_back(k);
  }
  std::string d, plots;
  for (size_t i = 0; i < series.size(); ++i) {
    for (const BenchRow& r : rows)
      if (r.config.policy + " " + r.config.format == series[i])
        d += fmt::format("{:.5f} {:.4f} {:.4f}\n", r.budget_gb, r.decode_tps, r.bound_tps);
    d += "\n\n";  // gnuplot: the next data block (index i + 1)
    const std::string name = series[i] == "- -" ? "no cache" : series[i];
    plots += fmt::format(
        "{}'{}.dat' index {} using 1:2 with linespoints lw 2 lc {} title '{}', "
        "'' index {} using 1:3 with lines dt 2 lc {} title '{} bound'",
        i ? ", " : "", png, i, i + 1, name, i, i + 1, name);
  }
  write_text(png + ".dat", d, "--plot " + png + ": its gnuplot data");
  const std::string script = fmt::format(
      "set terminal pngcairo size 900,540\nset output '{}'\nset title '{}'\n"
      "set xlabel 'cache budget (GB)'\nset ylabel 'decode tokens/s'\nset yrange [0:*]\n"
      "set xrange [0:*]\nset key outside right\nset grid\nplot {}\n",
      png, title, plots);
  write_text(png + ".gp", script, "--plot " + png + ": its gnuplot script");
  if (std::system(fmt::format("gnuplot '{}.gp'", png).c_str()) != 0)
    throw Error(fmt::format("--plot {}: gnuplot failed on {}.gp (its message is above)", png, png));
}

// The bandwidths of the performance model, printed as they are measured.
Bandwidths measure_bandwidths(bool gpu, unsigned threads) {
  Bandwidths bw;
  if (!gpu) {
    CpuPool pool(threads);
    const HostBandwidth h = measure_host_bandwidth(pool);
    bw.read_gbps = h.read_gbps;
    bw.upload_gbps = bw.memcpy_gbps = h.memcpy_gbps;
    std::fprintf(stderr, "host memory: read %.1f GB/s, memcpy %.1f GB/s (%u threads)\n",
                 h.read_gbps, h.memcpy_gbps, pool.size());
    return bw;
  }
#ifdef FERRY_HAVE_CUDA
  const GpuInfo g = probe_gpu();
  bw.device = fmt::format("cuda: {} (sm_{}{})", g.name, g.major, g.minor);
  // The prefetcher uploads one weight part per call: 1 to 64 MB covers a 7B's smallest (k_proj,
  // ~0.3 MB) to a 32B's largest (gate/up, 75 MB packed) within a factor of two.
  std::vector<uint64_t> chunks;
  for (uint64_t mb = 1; mb <= 64; mb *= 2) chunks.push_back(mb << 20);
  for (const CopyBandwidth& c : measure_h2d(chunks, 256ull << 20))
    bw.h2d.push_back({c.chunk_bytes, c.pinned_gbps, c.pageable_gbps});
  bw.memcpy_gbps = measure_d2d_gbps(1ull << 30);
  bw.read_gbps = bw.memcpy_gbps;  // a copy reads and writes: the same bus traffic as reading
  bw.upload_gbps = bw.h2d.back().pinned_gbps;
  std::fprintf(stderr, "%s\nhost to device by chunk:   pinned  pageable (GB/s)\n",
               bw.device.c_str());
  for (const Bandwidths::Chunk& c : bw.h2d)
    std::fprintf(stderr, "  %6llu MB %16.1f %9.1f\n", (unsigned long long)(c.bytes >> 20),
                 c.pinned_gbps, c.pageable_gbps);
  std::fprintf(stderr, "device to device: %.0f GB/s\n", bw.memcpy_gbps);
  return bw;
#else
  throw Error("this build of ferry has no CUDA backend; use --device cpu");
#endif
}

}  // namespace

int cmd_bench(int argc, char** argv) {
  cxxopts::Options o("ferry bench",
                     "Throughput of a model per cache budget, policy and format, against the "
                     "bound of the performance model.");
  o.positional_help("MODEL.ferry | --synthetic PRESET");
  add_engine_options(o, false);  // --budgets, --policy, --format sweep the cache's options
  o.add_options()("synthetic",
                  "synthesize a packed model of this preset in memory (ferry synth --list)",
                  cxxopts::value<std::string>())("layers", "with --synthetic: number of layers",
                                                 cxxopts::value<uint64_t>())(
      "scheme", "with --synthetic: INT4 scheme",
      cxxopts::value<std::string>()->default_value("asym-clip"))(
      "budgets",
      "cache budgets to sweep, comma-separated: sizes, percentages of the weights, all, auto, or "
      "none (weights read in place). Bench's replacement for --cache-budget",
      cxxopts::value<std::string>()->default_value("none"))(
      "policy", "cache policies to sweep: lru,pin (replaces --cache-policy)",
      cxxopts::value<std::string>()->default_value("lru"))(
      "format", "cache formats to sweep: int4,bf16 (replaces --cache-format)",
      cxxopts::value<std::string>()->default_value("int4"))(
      "prompt", "prompt tokens (prefill)", cxxopts::value<uint64_t>()->default_value("128"))(
      "gen", "tokens to decode", cxxopts::value<uint64_t>()->default_value("32"))(
      "json", "write the results as JSON", cxxopts::value<std::string>())(
      "csv", "write the results as CSV", cxxopts::value<std::string>())(
      "plot",
      "draw decode tokens/s per run into this PNG with gnuplot; its data and script are written "
      "beside it as PNG.dat and PNG.gp",
      cxxopts::value<std::string>())("h,help", "this help");
  o.parse_positional({"model"});
  const auto a = parse_command(o, argc, argv);
  if (a.count("help")) return std::puts(o.help().c_str()), 0;

  // Everything the command line can get wrong is checked here, before the model is synthesized
  // and the bandwidths measured: a sweep can take hours, and a typo found at its end costs them.
  //
  if (a.count("synthetic") == a.count("model"))
    throw Error("give either MODEL.ferry or --synthetic PRESET");
  for (const char* synth_only : {"layers", "scheme"})
    if (a.count(synth_only) && !a.count("synthetic"))
      throw Error(fmt::format(
          "--{} applies only with --synthetic: a .ferry file has its own layers and scheme",
          synth_only));
  const uint64_t prompt = a["prompt"].as<uint64_t>(), gen = a["gen"].as<uint64_t>();
  if (prompt == 0 || gen == 0) throw Error("--prompt and --gen must be at least 1");
  EngineOptions base;
  base.ctx = prompt + gen;  // the KV cache the run needs; --ctx may only make it larger
  if (a.count("ctx")) {
    if (a["ctx"].as<uint64_t>() < prompt + gen)
      throw Error(fmt::format(
          "--ctx {} is smaller than --prompt + --gen ({}): raise it, or leave it out (bench sizes "
          "the context from them)",
          a["ctx"].as<uint64_t>(), prompt + gen));
    base.ctx = a["ctx"].as<uint64_t>();
  }
  base.kv = kv_type(a);
  base.batch = prefill_batch(a);
  if (base.batch == 0) throw Error("--batch must be at least 1 (prompt tokens per forward pass)");
  base.threads = thread_option(a);

  const bool gpu = a["device"].as<std::string>() != "cpu";
  const std::vector<std::string> budgets = sweep_list(a, "budgets", "none,all,50%,6G"),
                                 policies = sweep_list(a, "policy", "lru,pin"),
                                 formats = sweep_list(a, "format", "int4,bf16");
  for (const std::string& b : budgets) check_budget(b);
  for (const std::string& p : policies)
    if (p != "lru" && p != "pin") throw Error("--policy: '" + p + "' is not lru or pin");
  for (const std::string& f : formats)
    if (f != "int4" && f != "bf16") throw Error("--format: '" + f + "' is not int4 or bf16");
  const bool cached = gpu || std::any_of(budgets.begin(), budgets.end(),
                                         [](const std::string& b) { return b != "none"; });
  for (const char* companion : {"lookahead", "no-verify"})
    if (a.count(companion) && !cached)
      throw Error(
          fmt::format("--{} needs a cache: add a budget other than none to --budgets", companion));
  const uint32_t lookahead = a["lookahead"].as<uint32_t>();
  const bool verify = !a.count("no-verify");

  for (const char* out : {"json", "csv"})
    if (a.count(out)) check_output(fmt::format("--{}", out), a[out].as<std::string>());
  if (a.count("plot")) {
    const std::string png = a["plot"].as<std::string>();
    // The path is quoted with ' in the gnuplot script and on gnuplot's command line.
    if (png.find('\'') != std::string::npos)
      throw Error("--plot: '" + png + "' contains a single quote, which gnuplot cannot take");
    check_output("--plot", png);
    check_output("--plot " + png + ": its gnuplot data", png + ".dat");
    check_output("--plot " + png + ": its gnuplot script", png + ".gp");
    if (!have_gnuplot())
      throw Error(
          "--plot needs gnuplot, which is not on the PATH (scripts/setup.sh installs "
          "gnuplot-nox)");
  }

  // Checks --device and --vram-limit (and probes the GPU) before anything is synthesized.
  device_factory(a, CacheOptions{});
  const DeviceFor device = [&a, gpu](const CacheOptions& c) {
    return gpu ? device_factory(a, c) : DeviceFactory{};
  };

  std::string name;
  PackedFile file = [&] {
    if (a.count("model")) return name = a["model"].as<std::string>(), PackedFile::open(name);
    SynthOptions s;
    s.preset = name = a["synthetic"].as<std::string>();
    if (a.count("layers")) s.layers = a["layers"].as<uint64_t>();
    const auto scheme = parse_scheme(a["scheme"].as<std::string>());
    if (!scheme) throw Error("--scheme: unknown scheme " + a["scheme"].as<std::string>());
    if (!scheme_is_int4(*scheme))
      throw Error("--scheme: a synthesized model is INT4: choose sym, sym-clip, asym or asym-clip");
    // The image lives in anonymous memory: one larger than what is free would swap or be killed
    // after minutes of filling, so refuse it before the first byte.
    const double need = synth_bytes(s, *scheme), have = double(host_memory_available());
    if (have > 0 && need > have)
      throw Error(fmt::format(
          "--synthetic {}{} needs {:.1f} GB of memory, the machine has {:.1f} GB available; {}",
          name, s.layers ? fmt::format(" --layers {}", *s.layers) : "", need / 1e9, have / 1e9,
          s.layers ? "lower --layers" : "choose a smaller preset or lower --layers"));
    std::fprintf(
        stderr, "synthesizing %s in memory (%s)\n", name.c_str(),
        (need < 1e9 ? fmt::format("{:.1f} MB", need / 1e6) : fmt::format("{:.2f} GB", need / 1e9))
            .c_str());
    ProgressBar bar;
    auto image = synth_packed_image(
        s, *scheme, [&](auto phase, uint64_t d, uint64_t t) { bar.update(phase, d, t); });
    bar.finish();
    return PackedFile::from_mapping(std::move(image));
  }();

  const Bandwidths bw = measure_bandwidths(gpu, base.threads);
  std::vector<BenchConfig> configs;
  for (const auto& b : budgets)
    for (const auto& p : policies)
      for (const auto& f : formats)
        if (b != "none" || gpu) {  // on a GPU the weights always page: none means auto
          if (b == "none") {
            configs.push_back({"auto", p, f});
            continue;
          }
          configs.push_back({b, p, f});
        } else if (configs.empty() || configs.back().budget != "none") {
          configs.push_back({b, "-", "-"});  // no cache: policy and format do not apply
        }
  std::vector<BenchRow> rows;
  for (size_t i = 0; i < configs.size(); ++i) {
    std::fprintf(stderr, "[%zu/%zu] budget %s, policy %s, format %s\n", i + 1, configs.size(),
                 configs[i].budget.c_str(), configs[i].policy.c_str(), configs[i].format.c_str());
    try {
      rows.push_back(
          run_config(file, configs[i], base, prompt, gen, bw, device, lookahead, verify));
    } catch (const Error& e) {  // e.g. a budget below the minimum: the sweep goes on
      // The cache's messages name run's option; bench's is --budgets.
      std::string why = e.what();
      for (size_t at; (at = why.find("--cache-budget")) != std::string::npos;)
        why.replace(at, 14, "--budgets");
      std::fprintf(stderr, "  skipped: %s\n", why.c_str());
    }
  }
  if (rows.empty())
    throw Error(configs.size() == 1
                    ? "the configuration was skipped (the reason is above): nothing was measured"
                    : fmt::format("all {} configurations were skipped (the reasons are above): "
                                  "nothing was measured",
                                  configs.size()));
  print_table(rows);
  if (rows.size() < configs.size())
    std::fprintf(stderr, "%zu of %zu configurations were skipped (the reasons are above)\n",
                 configs.size() - rows.size(), configs.size());
  finish_stdout();  // the table stays on screen whatever becomes of the files below

  // Each file is written even when another fails, each failure on its own line.
  int failures = 0;
  const auto write_out = [&failures](const std::function<void()>& write) {
    try {
      write();
    } catch (const Error& e) {
      std::fprintf(stderr, "ferry: error: %s\n", e.what());
      ++failures;
    }
  };
  if (a.count("json"))
    write_out([&] {
      write_text(a["json"].as<std::string>(), to_json(name, bw, rows).dump(2) + "\n", "--json");
    });
  if (a.count("csv"))
    write_out([&] { write_text(a["csv"].as<std::string>(), to_csv(rows), "--csv"); });
  if (a.count("plot"))
    write_out([&] { plot(a["plot"].as<std::string>(), rows, "ferry bench: " + name); });
  return failures ? 1 : 0;
}

}  // namespace ferry
