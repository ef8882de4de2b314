// ferry calibrate and ferry quantize --calib on synthesized checkpoints (qwen2-tiny: q/k/v
// biases, GQA 5/1, hidden 320): the statistics equal a direct computation from the embedding;
// folding the AWQ scales into the norms, up_proj and v_proj leaves the bf16 model's logits
// unchanged up to bf16 rounding; a statistics file made for another model is refused; and the
// calibrated INT4 weights have a lower activation-weighted error than the plain ones.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>

#include "base/dtype.hpp"
#include "base/error.hpp"
#include "format/calib_stats.hpp"
#include "format/packed_file.hpp"
#include "kernels/dequant.hpp"
#include "quantizer/checkpoint.hpp"
#include "quantizer/convert.hpp"
#include "quantizer/synth.hpp"
#include "runtime/calibration.hpp"
#include "runtime/perplexity.hpp"
#include "tests/test_util.hpp"

namespace ferry {
namespace {

using test::ScratchDir;

const ProgressFn kQuiet = [](std::string_view, uint64_t, uint64_t) {};
constexpr uint64_t kCtx = 64;

std::string story() {
  std::ifstream in(std::filesystem::path(FERRY_SOURCE_DIR) / "tests/fixtures/perplexity/story.txt");
  return {std::istreambuf_iterator<char>(in), {}};
}

// A synthesized checkpoint, its bf16 conversion and that conversion's statistics over the story.
struct Calibrated {
  explicit Calibrated(const std::string& preset = "qwen2-tiny", uint64_t seed = 1) {
    SynthOptions so;
    so.preset = preset;
    so.seed = seed;
    so.threads = 2;
    synth_checkpoint(hf, so, kQuiet);
    convert(bf16, Scheme::bf16, {});
    Engine e(options(bf16));
    stats = run_calibration(e, story(), {.ctx = kCtx, .chunks = 4, .batch = 16, .progress = {}});
    write_calib_stats(stats_path, stats);
  }
  static EngineOptions options(const std::filesystem::path& model) {
    return {.model = model, .ctx = kCtx, .kv = KvType::f32, .batch = 16, .threads = 2};
  }
  ConvertReport convert(const std::filesystem::path& out, Scheme scheme, CalibOptions calib) {
    ConvertOptions o;
    o.scheme = scheme;
    o.threads = 2;
    o.calib = std::move(calib);
    return convert_checkpoint(hf, out, o, kQuiet);
  }
  CalibOptions calib(bool scale = true, bool weighted = true) const {
    CalibOptions c;
    c.stats = stats_path;
    c.scale = scale;
    c.weighted = weighted;
    return c;
  }
  ScratchDir dir;
  std::filesystem::path hf = dir / "hf", bf16 = dir / "bf16.ferry",
                        stats_path = dir / "stats.calib";
  CalibStats stats;
};

TEST(Calibration, StatisticsEqualADirectComputation) {
  Calibrated c;
  Engine e(Calibrated::options(c.bf16));
  const ModelConfig& cfg = e.config();
  // Layer 0's q/k/v input is the RMS-normed embedding of each token: computed here in double,
  // from the tokens the calibration ran (perplexity's chunking: BOS first where there is one).
  const PerplexityPlan plan = plan_perplexity(e, story(), kCtx, 4);
  std::vector<double> abs_sum(cfg.hidden), sq_sum(cfg.hidden);
  for (uint64_t i = 0; i < plan.chunks; ++i)
    for (int32_t t : plan.chunk(i)) {
      double ms = 0;
      for (uint64_t j = 0; j < cfg.hidden; ++j) {
        const double x = bf16_to_float(e.weights().embed[uint64_t(t) * cfg.hidden + j]);
        ms += x * x;
      }
      const double r = 1 / std::sqrt(ms / double(cfg.hidden) + cfg.rms_eps);
      for (uint64_t j = 0; j < cfg.hidden; ++j) {
        const double x = bf16_to_float(e.weights().embed[uint64_t(t) * cfg.hidden + j]) * r *
                         bf16_to_float(e.weights().layers[0].attn_norm[j]);
        abs_sum[j] += std::fabs(x);
        sq_sum[j] += x * x;
      }
    }
  const double rows = double(plan.chunks * plan.ctx);
  EXPECT_EQ(c.stats.id.tokens, plan.chunks * plan.ctx);
  const ChannelStats& s = c.stats.at(calib_input_name(0, CalibInput::attn_in), cfg.hidden);
  for (uint64_t j = 0; j < cfg.hidden; ++j) {
    EXPECT_NEAR(s.mean_abs[j], abs_sum[j] / rows, 1e-5 * (abs_sum[j] / rows) + 1e-9) << j;
    EXPECT_NEAR(s.mean_sq[j], sq_sum[j] / rows, 1e-5 * (sq_sum[j] / rows) + 1e-9) << j;
  }
  // Every input of every layer was seen, with mean x^2 >= (mean |x|)^2 (Jensen).
  ASSERT_EQ(c.stats.inputs.size(), cfg.layers * 4 + 1);
  for (const auto& [name, st] : c.stats.inputs)
    for (size_t j = 0; j < st.mean_abs.size(); ++j) {
      ASSERT_GT(st.mean_abs[j], 0) << name;
      ASSERT_GE(st.mean_sq[j] * (1 + 1e-5), st.mean_abs[j] * st.mean_abs[j]) << name;
    }
  // The file reads back exactly.
  const std::string config_json = e.file().file.metadata().at(meta::kConfig);
  const CalibStats back = read_calib_stats(c.stats_path, cfg, config_json);
  EXPECT_EQ(back.id.text_hash, c.stats.id.text_hash);
  EXPECT_EQ(back.inputs.at(kLmHeadInput).mean_sq, c.stats.inputs.at(kLmHeadInput).mean_sq);
}

TEST(Calibration, BadInputIsRefused) {
  Calibrated c;
  Engine e(Calibrated::options(c.bf16));
  EXPECT_THROW(run_calibration(e, "", {.ctx = kCtx, .chunks = 0, .batch = 16, .progress = {}}),
               Error);
  const std::filesystem::path q = c.dir / "q.ferry";
  c.convert(q, Scheme::asym, {});
  Engine quantized(Calibrated::options(q));
  EXPECT_THROW(
      run_calibration(quantized, story(), {.ctx = kCtx, .chunks = 1, .batch = 16, .progress = {}}),
      Error);
}

// A folded bf16 model computes the plain one's function. Scaling then unscaling is exact but for
// bf16 rounding of W * s and of norm / s (2^-9 relative each, per element): a logit moves by
// ~sqrt(terms) * 2^-9 of its size at most. The bound, 2% of the largest logit, is ~3x what
// qwen2-tiny shows (max |diff| / max |logit|).
void expect_same_function(Engine& plain, Engine& scaled) {
  const std::vector<int32_t> prompt = test::spread_prompt(40, 500);
  const auto a = test::logits_after_prompt(plain, prompt, 4);
  const auto b = test::logits_after_prompt(scaled, prompt, 4);
  for (size_t step = 0; step < a.size(); ++step) {
    double max_logit = 0, max_diff = 0;
    for (size_t i = 0; i < a[step].size(); ++i) {
      max_logit = std::max(max_logit, double(std::fabs(a[step][i])));
      max_diff = std::max(max_diff, double(std::fabs(a[step][i] - b[step][i])));
    }
    EXPECT_LT(max_diff, 0.02 * max_logit) << "step " << step;
    std::printf("step %zu: max |diff| %.3e of max |logit| %.3e\n", step, max_diff, max_logit);
  }
}

TEST(Calibration, FoldingLeavesTheBf16ModelsLogits) {
  Calibrated c;
  CalibOptions calib = c.calib();
  calib.alpha = 1.0f;  // the strongest scaling of the grid: s spans the whole range of mean |x|
  const std::filesystem::path folded = c.dir / "folded.ferry";
  const ConvertReport r = c.convert(folded, Scheme::bf16, calib);
  ASSERT_EQ(r.calib.size(), 4u * 4u);
  Engine plain(Calibrated::options(c.bf16)), scaled(Calibrated::options(folded));
  // The fold really happened: layer 0's input norm is divided by scales far apart.
  double max_ratio = 0, min_ratio = INFINITY;
  for (uint64_t j = 0; j < plain.config().hidden; ++j) {
    const double r = double(bf16_to_float(plain.weights().layers[0].attn_norm[j]) /
                            bf16_to_float(scaled.weights().layers[0].attn_norm[j]));
    max_ratio = std::max(max_ratio, r);
    min_ratio = std::min(min_ratio, r);
  }
  EXPECT_GT(max_ratio / min_ratio, 1.5);
  expect_same_function(plain, scaled);
}

// Without data the norms stand in for the statistics (norm_proxy_stats): at alpha 1 layer 0's
// input norm is divided by s = |gamma| (normalised), so the stored norm over the plain one is
// 1 / s_j, proportional to 1 / |gamma_j| channel for channel; the function is kept (bf16
// rounding only); only the groups behind a norm are scaled (2 a layer).
TEST(Calibration, NormAwareScalesComeFromTheNorms) {
  Calibrated c;
  CalibOptions calib;
  calib.norms = true;
  calib.alpha = 1.0f;
  const std::filesystem::path folded = c.dir / "norms.ferry";
  const ConvertReport r = c.convert(folded, Scheme::bf16, calib);
  ASSERT_EQ(r.calib.size(), 4u * 2u);
  Engine plain(Calibrated::options(c.bf16)), scaled(Calibrated::options(folded));
  const ModelConfig& cfg = plain.config();
  // stored / plain = 1 / s_j = k / |gamma_j|: so stored * |gamma_j| / plain is one constant k.
  std::vector<double> k(cfg.hidden);
  for (uint64_t j = 0; j < cfg.hidden; ++j) {
    const double g = bf16_to_float(plain.weights().layers[0].attn_norm[j]);
    k[j] = bf16_to_float(scaled.weights().layers[0].attn_norm[j]) * std::fabs(g) / g;
  }
  const auto [lo, hi] = std::minmax_element(k.begin(), k.end());
  EXPECT_LT(*hi / *lo, 1.01);  // bf16 rounding of gamma / s: 2^-8 relative
  expect_same_function(plain, scaled);
}

TEST(Calibration, StatisticsOfAnotherModelAreRefused) {
  Calibrated c;
  // Another configuration: config.json's hash differs.
  Calibrated other("llama3-tiny");
  CalibOptions wrong = c.calib();
  wrong.stats = other.stats_path;
  EXPECT_THROW(c.convert(c.dir / "x.ferry", Scheme::asym, wrong), Error);
  // The same configuration with other weights: the embedding's checksum differs.
  ScratchDir d;
  SynthOptions so;
  so.seed = 7;
  so.threads = 2;
  synth_checkpoint(d / "hf", so, kQuiet);
  ConvertOptions o;
  o.calib = c.calib();
  try {
    convert_checkpoint(d / "hf", d / "y.ferry", o, kQuiet);
    FAIL() << "statistics of another checkpoint were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("another model"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(d / "y.ferry"));
}

// A statistics file whose token count is not a number (edited, or not ferry's): one clear error
// naming the key, not std::stoull's exception, and no output.
TEST(Calibration, MalformedCountInTheStatisticsIsAClearError) {
  Calibrated c;
  std::vector<uint8_t> bytes = test::read_file(c.stats_path);
  const std::string text(bytes.begin(), bytes.end()), key = "\"ferry.calib.tokens\":\"";
  const size_t at = text.find(key);
  ASSERT_NE(at, std::string::npos);
  bytes[at + key.size()] = 'x';  // the same length: the header still parses
  const std::filesystem::path bad = c.dir / "bad.calib";
  test::write_file(bad, bytes);
  CalibOptions o = c.calib();
  o.stats = bad;
  try {
    c.convert(c.dir / "z.ferry", Scheme::asym, o);
    FAIL() << "a malformed token count was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("metadata ferry.calib.tokens is 'x"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(c.dir / "z.ferry"));
}

// sum_ij E[x_j^2] (W_ij - W_eff_ij)^2 over q, k and gate of every layer, W_eff the stored INT4
// weight in the source's input coordinates: the stored columns divided by the scale the norm fold
// implies (source norm / stored norm; 1 without calibration). v and up are left out: their rows
// also carry the o and down groups' scales, which no stored tensor shows.
double activation_weighted_error(const Calibrated& c, const std::filesystem::path& packed) {
  const PackedFile f = PackedFile::open(packed);
  const ModelWeights w = bind_weights(f);
  const Checkpoint ckpt = Checkpoint::open(c.hf);
  const ModelConfig& cfg = f.config;
  double err = 0;
  for (uint64_t l = 0; l < cfg.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    for (auto [slot, norm, input] : {std::tuple{kQ, "input_layernorm", CalibInput::attn_in},
                                     {kK, "input_layernorm", CalibInput::attn_in},
                                     {kGate, "post_attention_layernorm", CalibInput::mlp_in}}) {
      const Linear& lin = w.linears[linear_id(l, slot)];
      const std::vector<uint64_t> norm_shape = {cfg.hidden};
      const TensorView& src_norm = ckpt.require_float_tensor(p + norm + ".weight", norm_shape);
      const uint16_t* stored_norm =
          slot == kGate || slot == kUp ? w.layers[l].mlp_norm : w.layers[l].attn_norm;
      constexpr const char* kNames[] = {"self_attn.q_proj", "self_attn.k_proj",
                                        "self_attn.v_proj", "",
                                        "mlp.gate_proj",    "mlp.up_proj"};
      const std::vector<uint64_t> shape = {lin.rows, lin.cols};
      const TensorView& src =
          ckpt.require_float_tensor(p + kNames[slot] + std::string(".weight"), shape);
      std::vector<float> dq(lin.rows * lin.cols);
      dequant_int4_f32_cpu(lin.q4, dq.data());
      const ChannelStats& st = c.stats.at(calib_input_name(l, input), cfg.hidden);
      for (uint64_t j = 0; j < lin.cols; ++j) {
        const double s =
            load_float(src_norm.data, src_norm.dtype, j) / bf16_to_float(stored_norm[j]);
        for (uint64_t i = 0; i < lin.rows; ++i) {
          const double d =
              load_float(src.data, src.dtype, i * lin.cols + j) - dq[i * lin.cols + j] / s;
          err += st.mean_sq[j] * d * d;
        }
      }
    }
  }
  return err;
}

TEST(Calibration, LowersTheActivationWeightedError) {
  Calibrated c;
  for (Scheme scheme : {Scheme::asym_clip, Scheme::asym_hqq}) {
    const std::filesystem::path plain = c.dir / "plain.ferry", scaled = c.dir / "calib.ferry",
                                weighted = c.dir / "weighted.ferry";
    c.convert(plain, scheme, {});
    c.convert(scaled, scheme, c.calib());
    c.convert(weighted, scheme, c.calib(false, true));
    const double e_plain = activation_weighted_error(c, plain);
    const double e_calib = activation_weighted_error(c, scaled);
    const double e_weighted = activation_weighted_error(c, weighted);
    std::printf("%s: activation-weighted error plain %.4e, weighted objective %.4e, both %.4e\n",
                std::string(scheme_name(scheme)).c_str(), e_plain, e_weighted, e_calib);
    EXPECT_LT(e_calib, e_plain) << scheme_name(scheme);
    EXPECT_LT(e_weighted, e_plain) << scheme_name(scheme);
  }
}

}  // namespace
}  // namespace ferry

namespace ferry {
namespace {

// The command line: a run that writes a file quantize reads, and one-line errors for bad input.
TEST(Calibration, CommandLine) {
  Calibrated c;
  const std::string text = (c.dir / "story.txt").string();
  std::ofstream(text) << story();
  const std::filesystem::path stats = c.dir / "cli.calib", q = c.dir / "cli.ferry";
  test::RunResult r = test::run_ferry({"calibrate", c.bf16.string(), "-f", text, "-o",
                                       stats.string(), "--ctx", "64", "--chunks", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = test::run_ferry({"quantize", c.hf.string(), "-o", q.string(), "--calib", stats.string()});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("calibration: 16 linear groups"), std::string::npos) << r.output;
  // Without --calib an INT4 scheme is norm-aware (q/k/v and gate/up: 2 groups a layer), and
  // --calib none is plain.
  r = test::run_ferry({"quantize", c.hf.string(), "-o", q.string()});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("norm-aware scaling (no calibration data): 8 linear groups"),
            std::string::npos)
      << r.output;
  r = test::run_ferry({"quantize", c.hf.string(), "-o", q.string(), "--calib", "none"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.find("norm-aware"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("calibration:"), std::string::npos) << r.output;
  // A quantized model, an empty text, tuning options with nothing to tune: one line each, no
  // output file.
  const std::filesystem::path none = c.dir / "none.calib";
  const std::string empty = (c.dir / "empty.txt").string();
  std::ofstream(empty).flush();
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"calibrate", q.string(), "-f", text, "-o", none.string()},
        {"calibrate", c.bf16.string(), "-f", empty, "-o", none.string()},
        {"quantize", c.hf.string(), "-o", (c.dir / "x.ferry").string(), "--calib", "none",
         "--calib-alpha", "0.5"},
        {"quantize", c.hf.string(), "-o", (c.dir / "x.ferry").string(), "--scheme", "bf16",
         "--calib-method", "scale"}}) {
    r = test::run_ferry(args);
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  }
  EXPECT_FALSE(std::filesystem::exists(none));
  EXPECT_FALSE(std::filesystem::exists(c.dir / "x.ferry"));
}

}  // namespace
}  // namespace ferry
