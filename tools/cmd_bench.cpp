// ferry bench: prefill and decode throughput of a model (a .ferry file, or one synthesized in
// memory with --synthetic) for every combination of cache budget, policy and format asked for,
// beside the bound of DESIGN.md's performance model computed from bandwidths measured first, on
// the same machine, in the same run. Prints a table; --json, --csv and --plot write files.
#include <unistd.h>

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

namespace ferry {
namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

struct BenchConfig {
  std::string budget;  // as given: "all", "50%", "6G"
  std::string policy, format;
};

struct BenchRow {
  BenchConfig config;
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
BenchRow run_config(const PackedFile& file, const BenchConfig& c, const EngineOptions& base,
                    uint64_t prompt, uint64_t gen, const HostBandwidth& bw) {
  EngineOptions o = base;
  if (c.budget != "none") o.cache = parse_cache_options(c.budget, c.policy, c.format, 2);
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
  BenchRow r{c, double(prompt) / prefill_s, double(gen) / decode_s};
  const double w = weight_bytes_per_token(file);
  r.gb_per_token = w / 1e9;
  double streamed = 0;  // bytes copied into the cache per decoded token
  if (e.paged()) {
    const CacheStats s = e.paged()->stats();
    streamed = double(s.uploaded_bytes - before.uploaded_bytes) / double(gen);
    r.upload_gb_per_token = streamed / 1e9;
    const uint64_t uses = s.acquires - before.acquires;
    r.hit_rate = uses ? double(s.hits - before.hits) / double(uses) : 0;
    r.wait_fraction = (s.wait_seconds - before.wait_seconds) / decode_s;
  }
  // DESIGN.md's model on the CPU backend: every weight is read from memory once per token, and
  // the streamed ones are also copied into the cache first.
  const double bound_s = std::max(w / (bw.read_gbps * 1e9), streamed / (bw.memcpy_gbps * 1e9));
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

json to_json(const std::string& model, const HostBandwidth& bw, const std::vector<BenchRow>& rows) {
  json j = {{"model", model},
            {"device", "cpu"},
            {"bandwidth_gbps", {{"host_read", bw.read_gbps}, {"host_memcpy", bw.memcpy_gbps}}},
            {"runs", json::array()}};
  for (const BenchRow& r : rows)
    j["runs"].push_back({{"budget", r.config.budget},
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
      "budget,policy,format,prefill_tokens_per_s,decode_tokens_per_s,gb_read_per_token,"
      "gb_uploaded_per_token,hit_rate,wait_fraction,bound_tokens_per_s,ratio_to_bound\n";
  for (const BenchRow& r : rows)
    s += fmt::format("{},{},{},{:.3f},{:.3f},{:.5f},{:.5f},{:.4f},{:.4f},{:.3f},{:.3f}\n",
                     r.config.budget, r.config.policy, r.config.format, r.prefill_tps, r.decode_tps,
                     r.gb_per_token, r.upload_gb_per_token, r.hit_rate, r.wait_fraction,
                     r.bound_tps, r.ratio);
  return s;
}

// gnuplot (Debian's gnuplot-nox): decode tokens/s per run, one point set per policy and format,
// and the bound.
void plot(const std::string& png, const std::vector<BenchRow>& rows, const std::string& title) {
  const std::string data = png + ".dat";
  std::string d;
  for (size_t i = 0; i < rows.size(); ++i)
    d += fmt::format("{} \"{} {} {}\" {:.4f} {:.4f}\n", i, rows[i].config.budget,
                     rows[i].config.policy, rows[i].config.format, rows[i].decode_tps,
                     rows[i].bound_tps);
  write_text(data, d);
  const std::string script = fmt::format(
      "set terminal pngcairo size 900,540\nset output '{}'\nset title '{}'\n"
      "set ylabel 'decode tokens/s'\nset yrange [0:*]\nset boxwidth 0.5\nset style fill solid\n"
      "set xrange [-0.5:{}]\nset xtics rotate by -30\nplot '{}' using 1:3:xtic(2) with boxes title "
      "'measured', '' "
      "using 1:4 with linespoints title 'bound (memory bandwidth)'\n",
      png, title, double(rows.size()) - 0.5, data);
  write_text(png + ".gp", script);
  if (std::system(fmt::format("gnuplot '{}.gp'", png).c_str()) != 0)
    throw Error("--plot: gnuplot failed (scripts/setup.sh installs gnuplot-nox)");
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
      "device", "cpu (cuda: when the CUDA backend lands)",
      cxxopts::value<std::string>()->default_value("cpu"))("json", "write the results as JSON",
                                                           cxxopts::value<std::string>())(
      "csv", "write the results as CSV", cxxopts::value<std::string>())(
      "plot", "draw decode tokens/s per run into a PNG (gnuplot)", cxxopts::value<std::string>())(
      "h,help", "this help");
  o.parse_positional({"model"});
  const auto a = o.parse(argc, argv);
  if (a.count("help")) return std::puts(o.help().c_str()), 0;
  if (a["device"].as<std::string>() != "cpu")
    throw Error("--device: only cpu runs in this build; the CUDA forward pass has not landed yet");
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
  base.batch = a["batch"].as<uint64_t>();
  base.threads = a["threads"].as<unsigned>();

  CpuPool pool(base.threads);
  const HostBandwidth bw = measure_host_bandwidth(pool);
  std::fprintf(stderr, "host memory: read %.1f GB/s, memcpy %.1f GB/s (%u threads)\n", bw.read_gbps,
               bw.memcpy_gbps, pool.size());
  std::vector<BenchConfig> configs;
  for (const auto& b : split(a["budgets"].as<std::string>()))
    for (const auto& p : split(a["policy"].as<std::string>()))
      for (const auto& f : split(a["format"].as<std::string>()))
        if (b != "none") {
          configs.push_back({b, p, f});
        } else if (configs.empty() || configs.back().budget != "none") {
          configs.push_back({b, "-", "-"});  // no cache: policy and format do not apply
        }
  std::vector<BenchRow> rows;
  for (size_t i = 0; i < configs.size(); ++i) {
    std::fprintf(stderr, "[%zu/%zu] budget %s, policy %s, format %s\n", i + 1, configs.size(),
                 configs[i].budget.c_str(), configs[i].policy.c_str(), configs[i].format.c_str());
    try {
      rows.push_back(run_config(file, configs[i], base, prompt, gen, bw));
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
