// ferry bench: prefill and decode throughput of a model (a .ferry file, or one synthesized in
// memory with --synthetic) for every combination of cache budget, policy and format asked for,
// beside the bound of DESIGN.md's performance model computed from bandwidths measured first, on
// the same machine, in the same run. Prints a table; --json, --csv and --plot write files.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "quantizer/error.hpp"
#include "quantizer/synth_packed.hpp"
#include "runtime/bandwidth.hpp"
#include "runtime/engine.hpp"
#include "tools/commands.hpp"
#include "tools/progress.hpp"
#ifdef FERRY_HAVE_CUDA
#include "runtime/cuda_device.hpp"
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

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

int32_t argmax(const std::vector<float>& v) {
  return int32_t(std::max_element(v.begin(), v.end()) - v.begin());
}

// One configuration: a fresh engine over the same file bytes, a prompt of random ids, then
// greedy decode.
using DeviceFor = std::function<DeviceFactory(const CacheOptions&)>;

BenchRow run_config(const PackedFile& file, const BenchConfig& c, const EngineOptions& base,
                    uint64_t prompt, uint64_t gen, const Bandwidths& bw, const DeviceFor& device) {
  EngineOptions o = base;
  if (c.budget != "none") o.cache = parse_cache_options(c.budget, c.policy, c.format, 2);
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
    const int32_t next = argmax(e.state.logits);
    e.eval(std::span(&next, 1), prompt + i);
  }
  const double decode_s = seconds_since(t1);
  BenchRow r{c, 0, double(prompt) / prefill_s, double(gen) / decode_s};
  // bf16 entries are read at 2 bytes a weight instead of ~0.53: count what the kernels read.
  double w = weight_bytes_per_token(file);
  if (e.paged())
    w += double(e.paged()->weight_bytes()) -
         double(paging_schedule(e.file, e.weights, CacheFormat::int4).whole_bytes());
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
  const double bound_s = std::max(w / (bw.read_gbps * 1e9), streamed / (bw.upload_gbps * 1e9));
  r.bound_tps = 1 / bound_s;
  r.ratio = r.bound_tps / r.decode_tps;
  return r;
}

void print_table(const std::vector<BenchRow>& rows) {
  std::printf("%-8s %-6s %-6s %11s %10s %9s %10s %6s %6s %10s %7s\n", "budget", "policy", "format",
              "prefill t/s", "decode t/s", "GB/token", "upload GB", "hits", "wait", "bound t/s",
              "x bound");
  for (const BenchRow& r : rows)
    std::printf("%-8s %-6s %-6s %11.1f %10.2f %9.3f %10.3f %5.0f%% %5.0f%% %10.2f %7.2f\n",
                r.config.budget.c_str(), r.config.policy.c_str(), r.config.format.c_str(),
                r.prefill_tps, r.decode_tps, r.gb_per_token, r.upload_gb_per_token,
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

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  if (!out) throw Error(fmt::format("{}: cannot write", path));
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
  write_text(png + ".dat", d);
  const std::string script = fmt::format(
      "set terminal pngcairo size 900,540\nset output '{}'\nset title '{}'\n"
      "set xlabel 'cache budget (GB)'\nset ylabel 'decode tokens/s'\nset yrange [0:*]\n"
      "set xrange [0:*]\nset key outside right\nset grid\nplot {}\n",
      png, title, plots);
  write_text(png + ".gp", script);
  if (std::system(fmt::format("gnuplot '{}.gp'", png).c_str()) != 0)
    throw Error("--plot: gnuplot failed (scripts/setup.sh installs gnuplot-nox)");
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
  add_engine_options(o);
  o.add_options()("synthetic",
                  "synthesize a packed model of this preset in memory (ferry synth --list)",
                  cxxopts::value<std::string>())("layers", "with --synthetic: number of layers",
                                                 cxxopts::value<uint64_t>())(
      "scheme", "with --synthetic: INT4 scheme",
      cxxopts::value<std::string>()->default_value("asym-clip"))(
      "budgets",
      "cache budgets, comma-separated: sizes, percentages of the weights, all, or none (weights "
      "read in place)",
      cxxopts::value<std::string>()->default_value("none"))(
      "policy", "cache policies: lru,pin", cxxopts::value<std::string>()->default_value("lru"))(
      "format", "cache formats: int4,bf16", cxxopts::value<std::string>()->default_value("int4"))(
      "prompt", "prompt tokens (prefill)", cxxopts::value<uint64_t>()->default_value("128"))(
      "gen", "tokens to decode", cxxopts::value<uint64_t>()->default_value("32"))(
      "json", "write the results as JSON", cxxopts::value<std::string>())(
      "csv", "write the results as CSV", cxxopts::value<std::string>())(
      "plot", "draw decode tokens/s per run into a PNG (gnuplot)", cxxopts::value<std::string>())(
      "h,help", "this help");
  o.parse_positional({"model"});
  const auto a = o.parse(argc, argv);
  if (a.count("help")) return std::puts(o.help().c_str()), 0;
  const bool gpu = a["device"].as<std::string>() != "cpu";
  // Checks --device and --vram-limit (and probes the GPU) before anything is synthesized.
  device_factory(a, CacheOptions{});
  const DeviceFor device = [&a, gpu](const CacheOptions& c) {
    return gpu ? device_factory(a, c) : DeviceFactory{};
  };
  if (a.count("synthetic") == a.count("model"))
    throw Error("give either MODEL.ferry or --synthetic PRESET");
  const uint64_t prompt = a["prompt"].as<uint64_t>(), gen = a["gen"].as<uint64_t>();
  if (prompt == 0 || gen == 0) throw Error("--prompt and --gen must be at least 1");

  ProgressBar bar;
  std::string name;
  PackedFile file = [&] {
    if (a.count("model")) return name = a["model"].as<std::string>(), PackedFile::open(name);
    SynthOptions s;
    s.preset = name = a["synthetic"].as<std::string>();
    if (a.count("layers")) s.layers = a["layers"].as<uint64_t>();
    const auto scheme = parse_scheme(a["scheme"].as<std::string>());
    if (!scheme) throw Error("--scheme: unknown scheme " + a["scheme"].as<std::string>());
    auto image = synth_packed_image(
        s, *scheme, [&](auto phase, uint64_t d, uint64_t t) { bar.update(phase, d, t); });
    bar.finish();
    return PackedFile::from_mapping(std::move(image));
  }();
  EngineOptions base;
  base.ctx = prompt + gen;
  base.kv = kv_type(a);
  base.batch = prefill_batch(a);
  base.threads = a["threads"].as<unsigned>();

  const Bandwidths bw = measure_bandwidths(gpu, base.threads);
  std::vector<BenchConfig> configs;
  for (const auto& b : split(a["budgets"].as<std::string>()))
    for (const auto& p : split(a["policy"].as<std::string>()))
      for (const auto& f : split(a["format"].as<std::string>()))
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
      rows.push_back(run_config(file, configs[i], base, prompt, gen, bw, device));
    } catch (const Error& e) {  // e.g. a budget below the minimum: the sweep goes on
      std::fprintf(stderr, "  skipped: %s\n", e.what());
    }
  }
  print_table(rows);
  if (a.count("json"))
    write_text(a["json"].as<std::string>(), to_json(name, bw, rows).dump(2) + "\n");
  if (a.count("csv")) write_text(a["csv"].as<std::string>(), to_csv(rows));
  if (a.count("plot")) plot(a["plot"].as<std::string>(), rows, "ferry bench: " + name);
  return 0;
}

}  // namespace ferry
