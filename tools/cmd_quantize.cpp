// ferry quantize HF_DIR -o OUT.ferry [--scheme S]
#include <cxxopts.hpp>

#include <algorithm>
#include <cstdio>

#include <fmt/format.h>

#include "base/bytes.hpp"
#include "base/error.hpp"
#include "quantizer/convert.hpp"
#include "text/chat_template.hpp"
#include "tools/commands.hpp"
#include "tools/progress.hpp"

namespace ferry {
namespace {

std::string shape_text(const std::vector<uint64_t>& s) {
  std::string t;
  // Appended piece by piece: GCC 12 at -O3 reports a false -Wrestrict on `"x" + std::string`
  // (GCC bug 105651).
  for (uint64_t d : s) {
    if (!t.empty()) t += 'x';
    t += std::to_string(d);
  }
  return t;
}

void print_summary(const ConvertReport& r, const std::filesystem::path& out, Scheme scheme) {
  std::printf("\n%-48s %-14s %-5s %12s %12s\n", "weight", "shape", "store", "rel RMS err",
              "max abs err");
  for (const WeightReport& w : r.weights)
    if (w.quantized)
      std::printf("%-48s %-14s %-5s %12.4e %12.4e\n", w.name.c_str(), shape_text(w.shape).c_str(),
                  w.storage == WeightStorage::int8 ? "int8" : "int4", w.error.relative_rms(),
                  w.error.max_abs_err);
  std::printf("\n%s: %s, %s, %llu layers, scheme %s\n", out.string().c_str(),
              r.config.architecture.c_str(), std::string(family_name(r.config.family)).c_str(),
              (unsigned long long)r.config.layers, std::string(scheme_name(scheme)).c_str());
  if (scheme_is_int4(scheme))
    std::printf("overall relative RMS error of the quantized weights: %.4e\n",
                r.total.relative_rms());
  std::printf("read %s, wrote %s (%.2fx smaller) in %.1f s: %.2f GB/s of input\n",
              human_bytes(double(r.input_bytes)).c_str(),
              human_bytes(double(r.output_bytes)).c_str(),
              double(r.input_bytes) / double(r.output_bytes), r.seconds,
              double(r.input_bytes) / r.seconds / 1e9);
}

// A chat template that ferry's Jinja engine cannot run fails the conversion, naming its line and
// construct, rather than the first `ferry chat` of the packed file. A model without one (a base
// model) is fine.
void check_chat_template(const std::filesystem::path& dir) {
  const std::filesystem::path jinja = dir / "chat_template.jinja",
                              cfg = dir / "tokenizer_config.json";
  const std::string jinja_text = std::filesystem::exists(jinja) ? read_text_file(jinja) : "";
  const std::string cfg_text = std::filesystem::exists(cfg) ? read_text_file(cfg) : "";
  const std::string text = chat_template_text(cfg_text, jinja_text);
  if (text.empty()) return;
  try {
    jinja::Template t(text);
  } catch (const Error& e) {
    throw Error(
        fmt::format("{}: {}; ferry cannot run this template (`ferry chat --template` can "
                    "still choose a built-in format)",
                    (jinja_text.empty() ? cfg : jinja).string(), e.what()));
  }
}

// --calib STATS, --calib none, or (no --calib) the norm-aware default of the INT4 schemes.
CalibOptions calib_options(const cxxopts::ParseResult& a, Scheme scheme) {
  CalibOptions c;
  const std::string source = a.count("calib") ? a["calib"].as<std::string>() : "";
  const bool tuned = a.count("calib-method") || a.count("calib-alpha");
  if (source == "none") {
    if (tuned)
      throw Error("--calib-method and --calib-alpha have nothing to tune with --calib none");
    return c;
  }
  if (source.empty()) {
    if (!scheme_is_int4(scheme)) {
      if (tuned)
        throw Error("--calib-method and --calib-alpha need --calib STATS under the bf16 scheme");
      return c;  // bf16 stays the checkpoint's function bit for bit
    }
    c.norms = true;
  } else {
    c.stats = source;
  }
  const std::string m = a["calib-method"].as<std::string>();
  if (m != "scale" && m != "weighted" && m != "both")
    throw Error(fmt::format("--calib-method: unknown method '{}' (scale, weighted, both)", m));
  c.scale = m != "weighted";
  c.weighted = m != "scale";
  if (a.count("calib-alpha")) {
    c.alpha = a["calib-alpha"].as<float>();
    if (!(*c.alpha >= 0 && *c.alpha <= 1)) throw Error("--calib-alpha: give a value in [0, 1]");
  }
  return c;
}

void print_calibration(const ConvertReport& r, bool norms) {
  if (r.calib.empty()) return;
  const char* what = norms ? "norm-aware scaling (no calibration data)" : "calibration";
  if (std::all_of(r.calib.begin(), r.calib.end(),
                  [](const GroupChoice& g) { return g.error_plain == 0; }))
    return (void)std::printf("%s: E[x^2] as the objective of the searches (no scaling)\n", what);
  double plain = 0, chosen = 0, alpha = 0;
  for (const GroupChoice& g : r.calib) {
    plain += g.error_plain;
    chosen += g.error;
    alpha += g.alpha;
  }
  std::printf(
      "%s: %zu linear groups, mean alpha %.2f, activation-weighted error of the "
      "sampled rows %.4e -> %.4e (%.1f%% lower)\n",
      what, r.calib.size(), alpha / double(r.calib.size()), plain, chosen,
      plain > 0 ? 100 * (1 - chosen / plain) : 0.0);
}

}  // namespace

int cmd_quantize(int argc, char** argv) {
  cxxopts::Options o(
      "ferry quantize",
      "Convert a Hugging Face checkpoint (Llama or Qwen2 family, safetensors) into one packed "
      ".ferry file.\nThe output is written atomically: interrupted, it leaves no partial file. It "
      "must be a new path or a regular file (replaced), in an existing writable directory, and "
      "none of the checkpoint's own files; this is checked before any work.");
  o.positional_help("HF_DIR -o OUT.ferry");
  o.add_options()("input", "checkpoint directory", cxxopts::value<std::string>())(
      "o,output", "output .ferry file", cxxopts::value<std::string>())(
      "s,scheme",
      "asym-hqq (half-quadratic offsets: the lowest perplexity, docs/quantization.md), asym-clip "
      "(the lowest weight error), asym, sym-clip, sym, or bf16 (no quantization)",
      cxxopts::value<std::string>()->default_value(std::string(scheme_name(kDefaultScheme))))(
      "keep",
      "PATTERN=int4|int8|bf16: store the weights whose name matches PATTERN (a glob, or a "
      "substring) so; repeatable, later ones win. Default: lm_head, k_proj and v_proj int8, other "
      "linears INT4",
      cxxopts::value<std::vector<std::string>>())(
      "keep-lm-head",
      "the same as --keep lm_head=bf16 (a tied one is then the embedding, stored once)")(
      "max-context",
      "the longest context the packed model may run (tokens); required for a model whose "
      "sliding_window is shorter than its trained context, and at most that window",
      cxxopts::value<uint64_t>()->default_value("0"))(
      "calib",
      "activation-aware INT4 with `ferry calibrate`'s statistics file; `none` for plain INT4. "
      "Default under an INT4 scheme: norm-aware, each norm's weights standing for its linears' "
      "input statistics (no data needed)",
      cxxopts::value<std::string>())("calib-method",
                                     "scale (AWQ scales, alpha searched), weighted (E[x^2] as the "
                                     "objective of the scale/offset search), or both",
                                     cxxopts::value<std::string>()->default_value("both"))(
      "calib-alpha", "one fixed AWQ alpha for every group instead of the search",
      cxxopts::value<float>())("t,threads", "worker threads (0: every core)",
                               cxxopts::value<unsigned>()->default_value("0"))(
      "q,quiet", "no progress and no per-tensor table")("h,help", "this help");
  o.parse_positional({"input"});
  const auto a = parse_command(o, argc, argv);
  if (a.count("help")) return std::puts(o.help().c_str()), 0;
  if (!a.count("input") || !a.count("output"))
    throw Error("usage: ferry quantize HF_DIR -o OUT.ferry [--scheme S]");
  ConvertOptions opt;
  const auto scheme = parse_scheme(a["scheme"].as<std::string>());
  if (!scheme)
    throw Error(fmt::format(
        "--scheme: unknown scheme '{}' (asym-clip, asym, asym-hqq, sym-clip, sym, bf16)",
        a["scheme"].as<std::string>()));
  opt.scheme = *scheme;
  if (a.count("keep-lm-head")) opt.keep.push_back({"lm_head", WeightStorage::bf16});
  if (a.count("keep"))
    for (const std::string& k : a["keep"].as<std::vector<std::string>>())
      opt.keep.push_back(parse_keep_rule(k));
  opt.threads = a["threads"].as<unsigned>();
  opt.max_context = a["max-context"].as<uint64_t>();
  opt.calib = calib_options(a, opt.scheme);
  const bool quiet = a.count("quiet") > 0;
  ProgressBar bar(quiet);
  const std::filesystem::path out = a["output"].as<std::string>();
  check_chat_template(a["input"].as<std::string>());
  const ConvertReport r =
      convert_checkpoint(a["input"].as<std::string>(), out, opt,
                         [&](std::string_view p, uint64_t d, uint64_t t) { bar.update(p, d, t); });
  bar.finish();
  if (!quiet) print_summary(r, out, opt.scheme);
  if (!quiet) print_calibration(r, opt.calib.norms);
  return 0;
}

}  // namespace ferry
