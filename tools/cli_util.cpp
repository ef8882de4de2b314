// GCC 12 reports a false -Wrestrict inside std::string::assign as inlined into cxxopts'
// SplitInteger (GCC bug 105651, fixed in GCC 13); only this file instantiates that path at -O2.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12
#pragma GCC diagnostic ignored "-Wrestrict"
#endif
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>

#include <fmt/format.h>

#include "base/error.hpp"
#include "tools/commands.hpp"
#include "tools/progress.hpp"
#ifdef FERRY_HAVE_CUDA
#include "runtime/forward_cuda.hpp"
#endif

namespace ferry {

uint64_t parse_size(std::string_view text, std::string_view option) {
  double value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  std::string unit(end, text.data() + text.size());
  for (char& c : unit) c = char(std::toupper(static_cast<unsigned char>(c)));
  struct Unit {
    const char* name;
    double scale;
  };
  constexpr Unit kUnits[] = {{"", 1},         {"B", 1},     {"K", 1e3},    {"KB", 1e3},
                             {"M", 1e6},      {"MB", 1e6},  {"G", 1e9},    {"GB", 1e9},
                             {"T", 1e12},     {"TB", 1e12}, {"KIB", 1024}, {"MIB", 1 << 20},
                             {"GIB", 1 << 30}};
  if (ec == std::errc() && value >= 0 && std::isfinite(value))
    for (const Unit& u : kUnits)
      if (unit == u.name && value * u.scale < 1.8e19)
        return uint64_t(std::llround(value * u.scale));
  throw Error(
      fmt::format("{}: '{}' is not a size (examples: 4096, 512M, 2G, 1.5GiB)", option, text));
}

namespace {

// Whether cxxopts reads `value` as the value of --option on its own.
bool reads(cxxopts::Options& o, const std::string& option, const std::string& value) {
  const std::string arg = "--" + option + "=" + value;
  const char* argv[] = {o.program().c_str(), arg.c_str()};
  try {
    o.parse(2, argv);
    return true;
  } catch (const cxxopts::exceptions::exception&) {
    return false;
  }
}

// What --option takes, in words, found by what cxxopts reads (it keeps the value types to itself).
std::string expected_value(cxxopts::Options& o, const std::string& option,
                           const std::string& value) {
  if (reads(o, option, "0.5")) return "is not a number";
  if (reads(o, option, "-1")) return "is not a whole number";
  if (reads(o, option, "2")) {
    const char* max = reads(o, option, "4294967296") ? "18446744073709551615"
                      : reads(o, option, "65536")    ? "4294967295"
                                                     : "65535";
    if (!value.empty() && value.find_first_not_of("0123456789") == std::string::npos)
      return fmt::format("is too large (at most {})", max);
    return fmt::format("is not a whole number from 0 to {}", max);
  }
  if (reads(o, option, "true")) return "is not true or false";
  return "is not a valid value";
}

// The long name of the option with short name `c` ("" when there is none).
std::string long_name(cxxopts::Options& o, char c, bool* takes_value = nullptr) {
  for (const std::string& g : o.groups())
    for (const cxxopts::HelpOptionDetails& d : o.group_help(g).options)
      if (d.s == std::string(1, c) && !d.l.empty()) {
        if (takes_value) *takes_value = !d.has_implicit;
        return d.l.front();
      }
  return "";
}

// cxxopts says only "Argument '-1' failed to parse", naming no option. The shortest prefix of
// argv that fails to parse ends at the bad value; the option is that argument itself
// (--tokens=-1, -n-1) or the one before it (--tokens -1, -n -1). Returns {option, value}, or
// nothing when the value belongs to no option (a positional argument).
std::optional<std::pair<std::string, std::string>> bad_value(cxxopts::Options& o, int argc,
                                                             char** argv) {
  auto throws = [&](int n, auto* kind) {
    try {
      o.parse(n, argv);
      return false;
    } catch (const std::remove_pointer_t<decltype(kind)>&) {
      return true;
    } catch (const cxxopts::exceptions::exception&) {
      return false;
    }
  };
  const cxxopts::exceptions::incorrect_argument_type* bad = nullptr;
  const cxxopts::exceptions::missing_argument* missing = nullptr;
  int n = 2;
  while (n <= argc && !throws(n, bad)) ++n;
  if (n > argc) return std::nullopt;
  const std::string arg = argv[n - 1];
  if (n >= 3 && throws(n - 1, missing)) {  // the previous argument is the option
    const std::string prev = argv[n - 2];
    if (prev.starts_with("--")) return std::pair{prev.substr(2), arg};
    const std::string name = long_name(o, prev.back());
    return name.empty() ? std::nullopt : std::optional{std::pair{name, arg}};
  }
  if (const size_t eq = arg.find('='); arg.starts_with("--") && eq != std::string::npos)
    return std::pair{arg.substr(2, eq - 2), arg.substr(eq + 1)};
  if (arg.size() > 2 && arg[0] == '-' && arg[1] != '-')  // -n5, -qn5: the rest is the value
    for (size_t i = 1; i + 1 < arg.size(); ++i) {
      bool takes_value = false;
      const std::string name = long_name(o, arg[i], &takes_value);
      if (name.empty()) return std::nullopt;
      if (takes_value) return std::pair{name, arg.substr(i + 1)};
    }
  return std::nullopt;
}

}  // namespace

cxxopts::ParseResult parse_command(cxxopts::Options& o, int argc, char** argv) {
  cxxopts::ParseResult a;
  try {
    a = o.parse(argc, argv);
  } catch (const cxxopts::exceptions::incorrect_argument_type&) {
    const auto bad = bad_value(o, argc, argv);
    if (!bad) throw;
    const auto& [option, value] = *bad;
    throw cxxopts::exceptions::parsing(
        fmt::format("--{}: '{}' {}", option, value, expected_value(o, option, value)));
  }
  // cxxopts leaves positional arguments beyond the declared ones in unmatched(): a second model
  // path would otherwise be ignored without a word.
  if (!a.unmatched().empty())
    throw Error(fmt::format("{}: unexpected argument '{}'; see {} --help", o.program(),
                            a.unmatched().front(), o.program()));
  return a;
}

void finish_stdout() {
  if (std::fflush(stdout) != 0 || std::ferror(stdout))
    throw Error(fmt::format("cannot write the output: {}", std::strerror(errno)));
}

void add_engine_options(cxxopts::Options& o, bool cache_options) {
  o.add_options()("model", "packed model (.ferry)", cxxopts::value<std::string>())(
      "ctx",
      "context size (KV cache) in tokens (default: 1024, or the model's trained context if "
      "shorter)",
      cxxopts::value<uint64_t>())(
      "kv-type",
      "KV cache element type: f16 (half the memory and the attention reads of f32) or f32 "
      "(exact, for reference checks)",
      cxxopts::value<std::string>()->default_value("f16"))(
      "batch",
      "prefill batch: prompt tokens per forward pass (default 64 on the CPU, 512 with --device "
      "cuda, where each pass streams every weight not resident in the cache once)",
      cxxopts::value<uint64_t>())("threads", "CPU threads (0: every core)",
                                  cxxopts::value<unsigned>()->default_value("0"))(
      "lookahead", "weights the prefetcher fetches ahead of the compute",
      cxxopts::value<uint32_t>()->default_value("2"))(
      "no-verify", "with a cache: load the weights without checking their checksums")(
      "device",
      "cpu or cuda (the weights then page through the GPU's cache, budget auto unless one is "
      "given)",
      cxxopts::value<std::string>()->default_value("cpu"))(
      "vram-limit", "with --device cuda: pretend the card has this much memory (e.g. 24G)",
      cxxopts::value<std::string>())(
      "gpu-activations",
      "with --device cuda: what the INT4 GEMV of decode multiplies the weights with: int8 "
      "(activations quantized per block of 128, as the CPU backend does; a third of the "
      "instructions) or f32",
      cxxopts::value<std::string>()->default_value("int8"))(
      "cuda-graph",
      "with --device cuda: run each decode step as one CUDA graph once every weight is resident "
      "(--cache-budget all), instead of ~10 launches a layer");
  if (!cache_options) return;
  o.add_options()(
      "cache-budget",
      "page the weights through a cache of this size: 6G, 50% (of the linear weights in the "
      "cache format), all, auto (the CPU backend: all). Default: no cache, the weights are read "
      "in place from the file",
      cxxopts::value<std::string>())("cache-policy", "lru or pin (keeps a share resident)",
                                     cxxopts::value<std::string>()->default_value("lru"))(
      "cache-format", "int4 (packed, as stored) or bf16 (dequantized while filling, 4x the bytes)",
      cxxopts::value<std::string>()->default_value("int4"))(
      "cache-stress",
      "a check of the cache's ordering, not for speed: race (every fill and every last-use "
      "signal delayed by 200 us), poison (evicted entries filled with 0xFF), or race,poison; "
      "the output must not change",
      cxxopts::value<std::string>());
}

CacheStress parse_cache_stress(const std::string& s) {
  CacheStress st;
  std::string_view rest = s;
  while (!rest.empty()) {
    const size_t comma = rest.find(',');
    const std::string_view mode = rest.substr(0, comma);
    if (mode == "race")
      st.race = true;
    else if (mode == "poison")
      st.poison = true;
    else
      throw Error(fmt::format("--cache-stress: '{}' is not race or poison", mode));
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
  }
  if (!st.race && !st.poison) throw Error("--cache-stress: give race, poison or race,poison");
  return st;
}

DeviceFactory device_factory(const cxxopts::ParseResult& a, const CacheOptions& c) {
  const std::string device = a["device"].as<std::string>();
  if (device != "cpu" && device != "cuda")
    throw Error("--device: '" + device + "' is not cpu or cuda");
  const std::string acts = a["gpu-activations"].as<std::string>();
  if (acts != "int8" && acts != "f32")
    throw Error("--gpu-activations: '" + acts + "' is not int8 or f32");
  if (device == "cpu") {
    if (a.count("vram-limit")) throw Error("--vram-limit needs --device cuda");
    if (a.count("gpu-activations")) throw Error("--gpu-activations needs --device cuda");
    if (a.count("cuda-graph")) throw Error("--cuda-graph needs --device cuda");
    return {};
  }
#ifdef FERRY_HAVE_CUDA
  CudaForwardOptions o;
  o.bf16_cache = c.format == CacheFormat::bf16;
  o.gemv_x = acts == "int8" ? GemvX::q8 : GemvX::f32;
  o.cuda_graph = a.count("cuda-graph") > 0;
  if (a.count("vram-limit"))
    o.vram_limit = parse_size(a["vram-limit"].as<std::string>(), "--vram-limit");
  return cuda_forward_factory(o);
#else
  (void)c;
  throw Error(
      "this build of ferry has no CUDA backend (nvcc was not found when it was built): install "
      "the CUDA toolkit and rebuild, or use --device cpu");
#endif
}

uint64_t context_option(const cxxopts::ParseResult& a) {
  if (!a.count("ctx")) return 0;  // the Engine's default for the model
  const uint64_t ctx = a["ctx"].as<uint64_t>();
  if (ctx == 0) throw Error("--ctx must be at least 1 token");
  return ctx;
}

unsigned thread_option(const cxxopts::ParseResult& a) {
  const unsigned threads = a["threads"].as<unsigned>(),
                 cores = std::max(1u, std::thread::hardware_concurrency());
  // Past a few threads per core the kernels only add dispatch and wake-up costs; far past it the
  // system's thread limit ends the run.
  if (threads > 4 * cores)
    throw Error(
        fmt::format("--threads {}: this machine has {} cores; use 0 (every core) or at "
                    "most {}",
                    threads, cores, 4 * cores));
  return threads;
}

KvType kv_type(const cxxopts::ParseResult& a) {
  const std::string name = a["kv-type"].as<std::string>();
  if (const std::optional<KvType> kv = kv_type_from_name(name)) return *kv;
  throw Error(fmt::format("--kv-type: '{}' is not f16 or f32", name));
}

// The CPU's prefill is bound by arithmetic: 64 tokens already reuse each weight 64 times. On a GPU
// whose cache holds part of the model, each pass streams the rest over PCIe: Qwen2-32B at an
// 8 GB budget streams 9.6 GB a pass, 0.4 s at 25 GB/s, so a 512-token prompt costs 3.1 s in
// batches of 64 and 0.4 s in one of 512 (whose activations take ~200 MB).
uint64_t prefill_batch(const cxxopts::ParseResult& a) {
  if (a.count("batch")) return a["batch"].as<uint64_t>();
  return a["device"].as<std::string>() == "cpu" ? 64 : 512;
}

CacheOptions cache_options(const cxxopts::ParseResult& a) {
  // On a GPU the weights always page through its cache: `auto` unless a budget is given.
  const bool gpu = a.count("device") && a["device"].as<std::string>() != "cpu";
  if (!a.count("cache-budget") && !gpu) {
    for (const char* companion :
         {"cache-policy", "cache-format", "lookahead", "no-verify", "cache-stress"})
      if (a.count(companion))
        throw Error(fmt::format(
            "--{} needs --cache-budget (without it the weights are read in place, uncached)",
            companion));
    return {};
  }
  CacheOptions c =
      parse_cache_options(a.count("cache-budget") ? a["cache-budget"].as<std::string>() : "auto",
                          a["cache-policy"].as<std::string>(), a["cache-format"].as<std::string>(),
                          a["lookahead"].as<uint32_t>());
  c.verify = !a.count("no-verify");
  if (a.count("cache-stress")) c.stress = parse_cache_stress(a["cache-stress"].as<std::string>());
  // A bar only for stores that take a noticeable time to read (256 MB: ~0.1 s at the 2-3 GB/s a
  // cold page cache gives), so that small models do not print load lines before their text.
  auto bar = std::make_shared<ProgressBar>();
  c.progress = [bar](std::string_view phase, uint64_t done, uint64_t total) {
    if (total < (256 << 20)) return;
    bar->update(phase, done, total);
    if (done == total) bar->finish();
  };
  return c;
}

CacheOptions parse_cache_options(const std::string& b, const std::string& policy,
                                 const std::string& format, uint32_t lookahead) {
  CacheOptions c;
  c.enabled = true;
  if (b == "all") {
    c.budget_fraction = 1.0;
  } else if (b == "auto") {
    c.budget_auto = true;  // the backend's choice; the CPU backend's "device" holds everything
  } else if (!b.empty() && b.back() == '%') {
    char* end = nullptr;
    const double pct = std::strtod(b.c_str(), &end);
    if (end != b.c_str() + b.size() - 1 || !(pct > 0 && pct <= 100))
      throw Error("--cache-budget: '" + b + "' is not a percentage in (0, 100]");
    c.budget_fraction = pct / 100;
  } else {
    c.budget_bytes = parse_size(b, "--cache-budget");
  }
  if (policy != "lru" && policy != "pin")
    throw Error("--cache-policy: '" + policy + "' is not lru or pin");
  c.policy = policy == "pin" ? CachePolicy::pin : CachePolicy::lru;
  if (format != "int4" && format != "bf16")
    throw Error("--cache-format: '" + format + "' is not int4 or bf16");
  c.format = format == "bf16" ? CacheFormat::bf16 : CacheFormat::int4;
  c.lookahead = lookahead;
  return c;
}

void warn_about_context(const Engine& e) {
  if (const std::string w = e.context_warning(); !w.empty())
    std::fprintf(stderr, "ferry: warning: --ctx: %s\n", w.c_str());
}

EngineOptions engine_options(const cxxopts::ParseResult& a) {
  if (!a.count("model"))
    throw Error("no model given: pass a .ferry file (ferry quantize makes one)");
  const CacheOptions c = cache_options(a);
  return {.model = a["model"].as<std::string>(),
          .ctx = context_option(a),
          .kv = kv_type(a),
          .batch = prefill_batch(a),
          .threads = thread_option(a),
          .cache = c,
          .device = device_factory(a, c)};
}

void add_sampler_options(cxxopts::Options& o) {
  o.add_options()("temp", "temperature (0: greedy; default: the model's generation_config.json)",
                  cxxopts::value<float>()->default_value("0"))(
      "top-k", "keep the k most likely tokens (0: off)",
      cxxopts::value<uint32_t>()->default_value("0"))("top-p", "nucleus sampling threshold",
                                                      cxxopts::value<float>()->default_value("1"))(
      "min-p", "drop tokens below min-p times the top probability",
      cxxopts::value<float>()->default_value("0"))("repeat-penalty",
                                                   "penalty on tokens already seen (1: off)",
                                                   cxxopts::value<float>()->default_value("1"))(
      "seed", "random seed", cxxopts::value<uint64_t>()->default_value("0"));
}

// A sampling option given on the command line wins; one not given is the model's
// generation_config.json value when that samples (do_sample true), else off (greedy).
SamplerOptions sampler_options(const cxxopts::ParseResult& a, const GenerationConfig& g) {
  SamplerOptions s;
  const bool model = g.do_sample;
  s.temperature = a.count("temp") || !model ? a["temp"].as<float>() : float(g.temperature);
  s.top_k = a.count("top-k") || !model ? a["top-k"].as<uint32_t>()
                                       : uint32_t(std::min<uint64_t>(g.top_k, UINT32_MAX));
  s.top_p = a.count("top-p") || !model ? a["top-p"].as<float>() : float(g.top_p);
  s.min_p = a["min-p"].as<float>();
  s.repetition_penalty = a["repeat-penalty"].as<float>();
  s.seed = a["seed"].as<uint64_t>();
  return s;
}

}  // namespace ferry
