// ferry bench: prefill and decode throughput of a model (a .ferry file, or one synthesized in
// memory with --synthetic) for every combination of cache budget, policy and format asked for,
// beside the bound of DESIGN.md's performance model (runtime/perf_model.hpp) computed from
// bandwidths measured first, on the same machine, in the same run. Prints a table, a row as each
// configuration is measured; --json, --csv and --plot write files (tools/bench_report.hpp).
//
// This file is the options and their order: everything the command line can get wrong is checked
// before the model is synthesized and the bandwidths measured (a sweep can take hours, and a typo
// found at its end costs them); then the sweep (tools/bench_sweep.hpp), then the files.
#include <algorithm>
#include <cstdio>

#include <fmt/format.h>

#include "base/error.hpp"
#include "quantizer/synth_packed.hpp"
#include "runtime/machine/host_memory.hpp"
#include "tools/bench_report.hpp"
#include "tools/bench_sweep.hpp"
#include "tools/commands.hpp"
#include "tools/option_names.hpp"
#include "tools/progress.hpp"

namespace ferry {
namespace {

void add_bench_options(cxxopts::Options& o) {
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
      "parallel",
      "sequences decoded at once to sweep, comma-separated (1,4,16,64): each step reads every "
      "weight once for all of them",
      cxxopts::value<std::string>()->default_value("1"))(
      "prompt", "prompt tokens (prefill)", cxxopts::value<uint64_t>()->default_value("128"))(
      "gen", "tokens to decode", cxxopts::value<uint64_t>()->default_value("32"))(
      "repeat",
      "time the prefill and the decode this many times each and report tokens over seconds of "
      "all passes (llama-bench's -r; one 128-token prefill lasts ~0.1 s, which a busy machine "
      "can skew by 20%)",
      cxxopts::value<uint64_t>()->default_value("1"))("json", "write the results as JSON",
                                                      cxxopts::value<std::string>())(
      "csv", "write the results as CSV", cxxopts::value<std::string>())(
      "plot",
      "draw decode tokens/s per run into this PNG with gnuplot; its data and script are written "
      "beside it as PNG.dat and PNG.gp",
      cxxopts::value<std::string>())("h,help", "this help");
  o.parse_positional({"model"});
}

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

// Whether parse_cache_options, the one grammar of the cache's options, takes these. Its messages
// name run's options (--cache-budget), which bench does not take: bench says its own.
bool cache_options_parse(const std::string& budget, const std::string& policy,
                         const std::string& format) {
  try {
    const CacheOptions c = parse_cache_options(budget, policy, format, 0);
    return c.budget_auto || c.budget_fraction > 0 || c.budget_bytes > 0;  // "0" parses as a size
  } catch (const Error&) {
    return false;
  }
}

struct Sweep {
  std::vector<std::string> budgets, policies, formats;
  std::vector<uint64_t> parallels;
};

// --parallel: whole numbers from 1 to 4096 (the engine's KV slots).
std::vector<uint64_t> parallel_list(const cxxopts::ParseResult& a) {
  std::vector<uint64_t> out;
  for (const std::string& v : sweep_list(a, "parallel", "1,4,16,64")) {
    size_t used = 0;
    uint64_t n = 0;
    try {
      n = std::stoull(v, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != v.size() || v[0] == '-' || n == 0 || n > 4096)
      throw Error("--parallel: '" + v + "' is not a whole number of sequences from 1 to 4096");
    out.push_back(n);
  }
  return out;
}

Sweep sweep_options(const cxxopts::ParseResult& a) {
  Sweep s{sweep_list(a, "budgets", "none,all,50%,6G"), sweep_list(a, "policy", "lru,pin"),
          sweep_list(a, "format", "int4,bf16"), parallel_list(a)};
  for (const std::string& b : s.budgets)
    if (b != "none" && !cache_options_parse(b, "lru", "int4"))
      throw Error("--budgets: '" + b +
                  "' is not a budget: give none, all, auto, a share of the weights in (0, 100]% "
                  "such as 50%, or a size such as 6G");
  for (const std::string& p : s.policies)
    if (!cache_options_parse("all", p, "int4"))
      throw Error("--policy: '" + p + "' is not lru or pin");
  for (const std::string& f : s.formats)
    if (!cache_options_parse("all", "lru", f))
      throw Error("--format: '" + f + "' is not int4 or bf16");
  return s;
}

void check_model_options(const cxxopts::ParseResult& a) {
  if (a.count("synthetic") == a.count("model"))
    throw Error("give either MODEL.ferry or --synthetic PRESET");
  for (const char* synth_only : {"layers", "scheme"})
    if (a.count(synth_only) && !a.count("synthetic"))
      throw Error(fmt::format(
          "--{} applies only with --synthetic: a .ferry file has its own layers and scheme",
          synth_only));
}

// --prompt, --gen and the engine's options; the context is sized from the first two unless --ctx
// asks for more.
SweepSetup setup_options(const cxxopts::ParseResult& a) {
  SweepSetup s;
  s.prompt = a["prompt"].as<uint64_t>(), s.gen = a["gen"].as<uint64_t>();
  if (s.prompt == 0 || s.gen == 0) throw Error("--prompt and --gen must be at least 1");
  s.repeat = a["repeat"].as<uint64_t>();
  if (s.repeat == 0 || s.repeat > 1000)
    throw Error(fmt::format("--repeat {} is out of range: give 1 to 1000 timed passes", s.repeat));
  s.base.ctx = s.prompt + s.gen;
  if (a.count("ctx")) {
    const uint64_t ctx = a["ctx"].as<uint64_t>();
    if (ctx < s.prompt + s.gen)
      throw Error(fmt::format(
          "--ctx {} is smaller than --prompt + --gen ({}): raise it, or leave it out (bench sizes "
          "the context from them)",
          ctx, s.prompt + s.gen));
    s.base.ctx = ctx;
  }
  s.base.kv = kv_type(a);
  s.base.batch = prefill_batch(a);
  if (s.base.batch == 0) throw Error("--batch must be at least 1 (prompt tokens per forward pass)");
  s.base.threads = thread_option(a);
  s.lookahead = a["lookahead"].as<uint32_t>();
  s.verify = !a.count("no-verify");
  return s;
}

void check_cache_companions(const cxxopts::ParseResult& a, const Sweep& s, bool gpu) {
  const bool cached = gpu || std::any_of(s.budgets.begin(), s.budgets.end(),
                                         [](const std::string& b) { return b != "none"; });
  for (const char* companion : {"lookahead", "no-verify"})
    if (a.count(companion) && !cached)
      throw Error(
          fmt::format("--{} needs a cache: add a budget other than none to --budgets", companion));
}

ReportPaths report_options(const cxxopts::ParseResult& a) {
  const auto path = [&a](const char* option) {
    return a.count(option) ? a[option].as<std::string>() : std::string();
  };
  return {path("json"), path("csv"), path("plot")};
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

Scheme synth_scheme(const cxxopts::ParseResult& a) {
  const auto scheme = parse_scheme(a["scheme"].as<std::string>());
  if (!scheme) throw Error("--scheme: unknown scheme " + a["scheme"].as<std::string>());
  if (!scheme_is_int4(*scheme))
    throw Error(
        "--scheme: a synthesized model is INT4: choose sym, sym-clip, asym, asym-clip or asym-hqq");
  return *scheme;
}

// The image lives in anonymous memory: one larger than what is free would swap or be killed
// after minutes of filling, so refuse it before the first byte. Returns its bytes.
double check_synth_fits(const SynthOptions& s, Scheme scheme) {
  const double need = synth_bytes(s, scheme), have = double(host_memory_available());
  if (have > 0 && need > have)
    throw Error(fmt::format(
        "--synthetic {}{} needs {:.1f} GB of memory, the machine has {:.1f} GB available; {}",
        s.preset, s.layers ? fmt::format(" --layers {}", *s.layers) : "", need / 1e9, have / 1e9,
        s.layers ? "lower --layers" : "choose a smaller preset or lower --layers"));
  return need;
}

PackedFile synthesize(const cxxopts::ParseResult& a) {
  SynthOptions s;
  s.preset = a["synthetic"].as<std::string>();
  if (a.count("layers")) s.layers = a["layers"].as<uint64_t>();
  const Scheme scheme = synth_scheme(a);
  const double need = check_synth_fits(s, scheme);
  std::fprintf(
      stderr, "synthesizing %s in memory (%s)\n", s.preset.c_str(),
      (need < 1e9 ? fmt::format("{:.1f} MB", need / 1e6) : fmt::format("{:.2f} GB", need / 1e9))
          .c_str());
  ProgressBar bar;
  auto image = synth_packed_image(
      s, scheme, [&](auto phase, uint64_t d, uint64_t t) { bar.update(phase, d, t); });
  bar.finish();
  return PackedFile::from_mapping(std::move(image));
}

std::string model_name(const cxxopts::ParseResult& a) {
  return a.count("model") ? a["model"].as<std::string>() : a["synthetic"].as<std::string>();
}

void check_measured(size_t measured, size_t configs) {
  if (measured == 0)
    throw Error(configs == 1
                    ? "the configuration was skipped (the reason is above): nothing was measured"
                    : fmt::format("all {} configurations were skipped (the reasons are above): "
                                  "nothing was measured",
                                  configs));
  if (measured < configs)
    std::fprintf(stderr, "%zu of %zu configurations were skipped (the reasons are above)\n",
                 configs - measured, configs);
}

int bench(const cxxopts::ParseResult& a) {
  check_model_options(a);
  SweepSetup setup = setup_options(a);
  const bool gpu = a["device"].as<std::string>() != "cpu";
  const Sweep sweep = sweep_options(a);
  check_cache_companions(a, sweep, gpu);
  const ReportPaths reports = report_options(a);
  check_report_paths(reports);
  device_factory(a, CacheOptions{});  // checks --device and --vram-limit (and probes the GPU)
  setup.device = [&a, gpu](const CacheOptions& c) {
    return gpu ? device_factory(a, c) : DeviceFactory{};
  };

  const std::string name = model_name(a);
  const PackedFile file = a.count("model") ? PackedFile::open(name) : synthesize(a);
  const std::vector<BenchConfig> configs =
      sweep_configs(sweep.budgets, sweep.policies, sweep.formats, sweep.parallels, gpu);
  check_sweep_memory(file, configs, setup);
  const Bandwidths bw = measure_bandwidths(gpu, setup.base.threads);
  BenchTable table;
  const std::vector<BenchRow> rows =
      run_sweep(file, configs, setup, bw, [&table](const BenchRow& r) { table.print(r); });
  check_measured(rows.size(), configs.size());
  finish_stdout();  // the table stays on screen whatever becomes of the files below
  return write_reports(reports, name, bw, rows) ? 1 : 0;
}

}  // namespace

int cmd_bench(int argc, char** argv) {
  cxxopts::Options o("ferry bench",
                     "Throughput of a model per cache budget, policy and format, against the "
                     "bound of the performance model.");
  add_bench_options(o);
  const auto a = parse_command(o, argc, argv);
  if (a.count("help")) return std::puts(o.help().c_str()), 0;
  try {
    return bench(a);
  } catch (const Error& e) {
    if (e.setting == Setting::none) throw;
    throw Error(cli_message(e, "bench"));  // the library's words, after bench's option
  }
}

}  // namespace ferry
