#include "runtime/calibration.hpp"

#include <cmath>

#include <fmt/format.h>

#include "base/error.hpp"
#include "runtime/perplexity.hpp"

namespace ferry {
namespace {

// Sums of |x| and x^2 per channel of one input, in double: 512-token chunks times tens of
// chunks add up 1e4..1e6 rows, where float sums would lose the low digits.
struct Sums {
  std::vector<double> abs, sq;  // [cols]
  uint64_t rows = 0;
};

// The observer the CPU pass calls before each linear: q, o, gate, down and lm_head see the inputs
// whose statistics are kept (k and v share q's, up shares gate's).
class StatsObserver final : public LinearObserver {
 public:
  explicit StatsObserver(const ModelConfig& c) : c_(c), sums_(c.layers * 4 + 1) {
    for (uint64_t l = 0; l < c.layers; ++l)
      for (CalibInput in : kCalibInputs) resize(index(l, in), calib_input_cols(c, in));
    resize(c.layers * 4, c.hidden);
  }
  void observe(uint32_t id, const float* x, uint64_t n, uint64_t cols) override {
    const int slot = input_of(id);
    if (slot < 0) return;
    Sums& s = sums_[size_t(slot)];
    if (cols != s.abs.size())
      throw Error(
          fmt::format("calibration: linear {} has {} inputs, expected {}", id, cols, s.abs.size()));
    for (uint64_t r = 0; r < n; ++r)
      for (uint64_t j = 0; j < cols; ++j) {
        const double v = x[r * cols + j];
        s.abs[j] += std::fabs(v);
        s.sq[j] += v * v;
      }
    s.rows += n;
  }
  std::map<std::string, ChannelStats> means() const {
    std::map<std::string, ChannelStats> m;
    for (uint64_t l = 0; l < c_.layers; ++l)
      for (CalibInput in : kCalibInputs) m[calib_input_name(l, in)] = mean(sums_[index(l, in)]);
    m[kLmHeadInput] = mean(sums_.back());
    return m;
  }

 private:
  static size_t index(uint64_t layer, CalibInput in) { return layer * 4 + size_t(in); }
  void resize(size_t i, uint64_t cols) {
    sums_[i].abs.assign(cols, 0);
    sums_[i].sq.assign(cols, 0);
  }
  // The input slot of a linear id, or -1 for a linear that shares another's input.
  int input_of(uint32_t id) const {
    if (id == lm_head_id(c_.layers)) return int(c_.layers * 4);
    const uint64_t layer = id / kLinearsPerLayer;
    switch (LinearSlot(id % kLinearsPerLayer)) {
      case kQ:
        return int(index(layer, CalibInput::attn_in));
      case kO:
        return int(index(layer, CalibInput::o_in));
      case kGate:
        return int(index(layer, CalibInput::mlp_in));
      case kDown:
        return int(index(layer, CalibInput::down_in));
      default:
        return -1;
    }
  }
  static ChannelStats mean(const Sums& s) {
    ChannelStats c{std::vector<float>(s.abs.size()), std::vector<float>(s.sq.size())};
    const double rows = double(std::max<uint64_t>(1, s.rows));
    for (size_t j = 0; j < s.abs.size(); ++j) {
      c.mean_abs[j] = float(s.abs[j] / rows);
      c.mean_sq[j] = float(s.sq[j] / rows);
    }
    return c;
  }

  const ModelConfig& c_;
  std::vector<Sums> sums_;  // [layers * 4 + 1] by index(), lm_head's last
};

const std::string& require_meta(const PackedFile& f, const char* key) {
  const auto it = f.file.metadata().find(key);
  if (it == f.file.metadata().end())
    throw Error(
        fmt::format("{}: no {} in its metadata; convert the checkpoint again with `ferry "
                    "quantize --scheme bf16`",
                    f.file.path().string(), key));
  return it->second;
}

}  // namespace

CalibStats run_calibration(Engine& e, std::string_view text, const CalibrationOptions& o) {
  const PackedFile& f = e.file();
  if (f.scheme != Scheme::bf16)
    throw Error(
        fmt::format("{}: is packed with scheme {}; calibration needs the unquantized "
                    "weights: convert the checkpoint with `ferry quantize --scheme bf16`",
                    f.file.path().string(), scheme_name(f.scheme)));
  const auto embed = f.checksums.find("model.embed_tokens.weight");
  if (embed == f.checksums.end())
    throw Error(fmt::format("{}: no checksum of model.embed_tokens.weight; convert it again",
                            f.file.path().string()));
  const PerplexityPlan plan = plan_perplexity(e, text, o.ctx, o.chunks);
  const ModelConfig& c = e.config();
  StatsObserver observer(c);
  const uint64_t batch = std::min(o.batch, o.ctx);
  const PassShape shape{.ctx = o.ctx, .batch = batch, .slots = 1, .kv = KvType::f32};
  // fp32 activations: the statistics are of the inputs the linears see, not of their INT8 copies.
  const std::unique_ptr<ForwardPass> pass =
      make_cpu_forward(c, e.weights(), shape, e.pool(), false, &observer);
  DirectWeights weights(e.weights());
  // Every row's logits, so that lm_head sees every token's input, as the others do.
  std::vector<float> logits(batch * c.vocab);  // [batch, vocab]
  for (uint64_t i = 0; i < plan.chunks; ++i) {
    const std::vector<int32_t> chunk = plan.chunk(i);
    for (uint64_t pos = 0; pos < chunk.size(); pos += batch) {
      const uint64_t n = std::min(batch, chunk.size() - pos);
      pass->forward(weights, std::span(chunk).subspan(pos, n), pos, logits, nullptr,
                    LogitRows::all);
    }
    if (o.progress) o.progress(i + 1, plan.chunks);
  }
  CalibStats s;
  s.id = {f.file.path().filename().string(),
          xxh3_hex(require_meta(f, meta::kConfig)),
          embed->second,
          xxh3_hex(text),
          plan.chunks * plan.ctx,
          plan.ctx};
  s.inputs = observer.means();
  return s;
}

}  // namespace ferry
