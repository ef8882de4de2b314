#include "quantizer/int4_quantize.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "base/dtype.hpp"
#include "base/error.hpp"
#include "base/simd.hpp"

namespace ferry {
namespace {

// Adding and subtracting 1.5 * 2^23 rounds a float to the nearest integer, ties to even, for
// |x| < 2^22 (the sum lands where the ulp is 1). Codes are clamped to [-8, 15] first, so it
// always applies. It is 4 vector instructions where std::round is a libm call per element that
// blocks vectorization; std::nearbyint gives the same result but needs SSE4.1 to vectorize.
// (Correct only without -ffast-math, which ferry never uses.)
constexpr float kRoundMagic = 12582912.0f;

// Partial sums in 8 lanes, one AVX2 register or two SSE ones, so the sums vectorize without
// reassociation (g++ does not reorder a float reduction by itself). 8 lanes beat 16 by 20% on
// the clip search: with 16, g++ keeps the accumulators in memory.
constexpr uint64_t kLanes = 8;
static_assert(kLanes == 8, "block_sq_err sums its 8 lanes as a tree by hand");

// One block copied out of the row and padded to kBlock, so every loop over it runs 128 times:
// g++ -O2 (very cheap cost model) only vectorizes loops whose trip count is a known multiple of
// the vector width. Padding repeats element 0, so min and max need no mask; the error sums and
// the codes are multiplied by mask (1 real, 0 padding).
struct Block {
  alignas(32) std::array<float, kBlock> w;     // [kBlock] weights, padding = w[0]
  alignas(32) std::array<float, kBlock> mask;  // [kBlock] 1 real, 0 padding
  // [kBlock] sqrt(column importance) real, 0 padding: what the searches weigh errors by (their
  // squared differences are multiplied by its square); = mask without importances.
  alignas(32) std::array<float, kBlock> wmask;
  uint64_t n = 0;             // real elements, 1..128
  uint64_t row = 0, col = 0;  // where it starts, for error messages
};

// A quantization grid with f16-rounded parameters: w ~ q * scale + min, q in [q_lo, q_hi].
// sym: min = -0, q in [-8, 7], code = q + 8; asym: q in [0, 15], code = q.
struct Grid {
  float scale = 0;
  float min = 0;
};

struct Range {
  float lo = 0, hi = 0;  // min and max over the real elements
};

// f16_to_float(float_to_f16(x)), inlined for the normal f16 range: round the float mantissa
// from 23 to 10 bits, nearest even (a carry into the exponent is right). Zero, subnormal and
// overflowing values take the out-of-line path. Identical for all 2^32 inputs (checked
// exhaustively); 40 calls per block in the clip search made the two calls 13% of its time.
float round_f16(float x) {
  const uint32_t u = std::bit_cast<uint32_t>(x);
  const uint32_t a = u & 0x7fffffffu;
  if (a < 0x38800000u || a >= 0x477ff000u) return f16_to_float(float_to_f16(x));
  return std::bit_cast<float>((u + 0xfffu + ((u >> 13) & 1u)) & ~0x1fffu);
}

std::string where(const Block& b) {
  return "row " + std::to_string(b.row) + ", columns " + std::to_string(b.col) + ".." +
         std::to_string(b.col + b.n - 1);
}

// sqrt_weight: [n] square roots of the columns' importances, or nullptr.
void load_block(const float* src, uint64_t n, uint64_t row, uint64_t col, const float* sqrt_weight,
                Block& b) {
  b.n = n;
  b.row = row;
  b.col = col;
  if (n == kBlock) {  // constant-length copies: vector moves, not rep movs and a scalar fill
    std::copy(src, src + kBlock, b.w.begin());
    b.mask.fill(1.0f);
  } else {
    for (uint64_t i = 0; i < kBlock; ++i) {
      b.w[i] = src[i < n ? i : 0];
      b.mask[i] = i < n ? 1.0f : 0.0f;
    }
  }
  if (!sqrt_weight) {
    b.wmask = b.mask;
    return;
  }
  for (uint64_t i = 0; i < kBlock; ++i) b.wmask[i] = i < n ? sqrt_weight[i] : 0.0f;
}

[[noreturn]] void throw_non_finite(const Block& b) {
  uint64_t i = 0;
  while (i < b.n && std::isfinite(b.w[i])) ++i;
  throw Error("non-finite value in block at " + where(b) + " (element " +
              std::to_string(b.col + i) + " is " + std::to_string(b.w[i]) +
              "); the checkpoint is corrupt");
}

// Min and max in kLanes partial results (vectorized, no branch per element). w * 0 is 0 for a
// finite w and NaN for inf or NaN, so the sum of the products flags a non-finite block.
Range block_range(const Block& b) {
  std::array<float, kLanes> lo, hi, poison{};
  lo.fill(b.w[0]);
  hi.fill(b.w[0]);
  for (uint64_t i = 0; i < kBlock; i += kLanes) {
    for (uint64_t j = 0; j < kLanes; ++j) {
      const float v = b.w[i + j];
      lo[j] = v < lo[j] ? v : lo[j];
      hi[j] = v > hi[j] ? v : hi[j];
      poison[j] += v * 0.0f;
    }
  }
  Range r{lo[0], hi[0]};
  float p = 0;
  for (uint64_t j = 0; j < kLanes; ++j) {
    r.lo = std::min(r.lo, lo[j]);
    r.hi = std::max(r.hi, hi[j]);
    p += poison[j];
  }
  if (p != 0.0f) throw_non_finite(b);
  return r;
}

// Exact squared error of a grid whose scale rounded to 0: every code dequantizes to min.
float flat_sq_err(const float* w, const float* mask, float min) {
  std::array<float, kLanes> acc{};
  for (uint64_t i = 0; i < kBlock; i += kLanes) {
    for (uint64_t j = 0; j < kLanes; ++j) {
      const float d = (w[i + j] - min) * mask[i + j];
      acc[j] += d * d;
    }
  }
  float s = 0;
  for (float a : acc) s += a;
  return s;
}

// Squared distance, in steps, from w to the nearest grid point: x = (w - min) / scale against q,
// the code x rounds to within [q_lo, q_hi]. Padding has mask 0.
inline float step_sq_err(float w, float mask, Grid g, float inv, float q_lo, float q_hi) {
  const float x = (w - g.min) * inv;
  const float c = std::min(std::max(x, q_lo), q_hi);
  const float d = (x - ((c + kRoundMagic) - kRoundMagic)) * mask;
  return d * d;
}

// The hot loop: squared error of the block on grid g, 20 calls per block for the clip schemes.
// Summed in steps and multiplied by scale^2: 10 vector operations per 8 elements where forming
// q * scale + min and w - dq takes 13 (8% faster end to end). It differs from the exact error by
// fp32 rounding only (~1e-6 relative), enough to rank the candidates; add_error computes the
// reported error exactly. Branch-free and of fixed length so g++ -O2 vectorizes it. The two
// halves of the block go to two accumulators and the lanes are summed as a tree, which shortens
// the chains of dependent additions (6% faster); the AVX2 build of it is 13% faster than SSE2.
FERRY_ALWAYS_INLINE float block_sq_err_body(const float* w, const float* mask, Grid g, float q_lo,
                                            float q_hi) {
  if (g.scale == 0) return flat_sq_err(w, mask, g.min);
  const float inv = 1.0f / g.scale;
  constexpr uint64_t kHalf = kBlock / 2;
  std::array<float, kLanes> a{}, b{};
  for (uint64_t i = 0; i < kHalf; i += kLanes) {
    for (uint64_t j = 0; j < kLanes; ++j) {
      a[j] += step_sq_err(w[i + j], mask[i + j], g, inv, q_lo, q_hi);
      b[j] += step_sq_err(w[kHalf + i + j], mask[kHalf + i + j], g, inv, q_lo, q_hi);
    }
  }
  for (uint64_t j = 0; j < kLanes; ++j) a[j] += b[j];
  const float s = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
  return s * g.scale * g.scale;
}

// Compiled twice (base/simd.hpp); the instruction set is read once per process (a cached probe).
float block_sq_err_portable(const float* w, const float* mask, Grid g, float q_lo, float q_hi) {
  return block_sq_err_body(w, mask, g, q_lo, q_hi);
}
FERRY_TARGET_AVX2 float block_sq_err_avx2(const float* w, const float* mask, Grid g, float q_lo,
                                          float q_hi) {
  return block_sq_err_body(w, mask, g, q_lo, q_hi);
}
float block_sq_err(const float* w, const float* mask, Grid g, float q_lo, float q_hi) {
  return isa_has_avx2(best_kernel_isa()) ? block_sq_err_avx2(w, mask, g, q_lo, q_hi)
                                         : block_sq_err_portable(w, mask, g, q_lo, q_hi);
}

void check_f16_range(const Block& b, Grid g, float raw_scale, float raw_min) {
  if (!std::isfinite(g.scale))
    throw Error("block at " + where(b) + " needs a scale of " + std::to_string(raw_scale) +
                ", beyond the f16 maximum 65504; the weights are out of range for INT4");
  if (!std::isfinite(g.min))
    throw Error("block at " + where(b) + " needs a min of " + std::to_string(raw_min) +
                ", beyond the f16 maximum 65504; the weights are out of range for INT4");
}

// The ratios of the clip search: kClipSteps values from 1.0 down to kClipMinRatio inclusive.
float clip_ratio(int k) {
  return 1.0f - float(k) * (1.0f - kClipMinRatio) / float(kClipSteps - 1);
}

// sym: scale = r * absmax / 7. The min -0 makes q * scale + min exactly q * scale, as in the
// dequant twins.
Grid sym_grid(const Range& r, float ratio) {
  const float absmax = std::max(std::fabs(r.lo), std::fabs(r.hi));  // fabs: +0 for a zero block
  return {round_f16(absmax / 7.0f * ratio), -0.0f};
}

// asym: the range [lo, hi] shrunk by (1 - ratio) around its midpoint: each end moves inward by
// (1 - ratio) * (hi - lo) / 2. Written so that ratio 1 gives exactly lo and hi (plain asym).
// Measured relative RMS error on 512 x 4096 weights (asym: plain, mid: this, zero: lo' = r lo
// and hi' = r hi, 2d: each end on its own, a 5 x 4 grid of ratios, the same 20 candidates):
//   N(0, 0.02)                    asym 0.09957  mid 0.09385  zero 0.09391  2d 0.09557
//   N(0, 0.02), 0.2% outliers x8  asym 0.12441  mid 0.11658  zero 0.11855  2d 0.11982
//   0.02 * Student-t(4)           asym 0.14396  mid 0.13550  zero 0.13699  2d 0.13775
//   N(0.01, 0.02)                 asym 0.08923  mid 0.08415  zero 0.08414  2d 0.08565
// Shrinking toward zero wastes codes when a block does not straddle 0, and the coarse 2d grid
// loses more to its step than it gains from clipping the ends separately.
Grid asym_grid(const Range& r, float ratio) {
  // Halves first: hi - lo overflows fp32 for |lo|, |hi| > 1.7e38, and 0 * inf would be NaN.
  const float t = (1.0f - ratio) * (r.hi * 0.5f - r.lo * 0.5f);
  const float lo = r.lo + t;
  const float hi = r.hi - t;
  return {round_f16((hi - lo) / 15.0f), round_f16(lo)};
}

struct SchemeShape {
  bool sym;
  bool clip;
  bool fit_min;  // asym-hqq
  float q_lo, q_hi;
};

SchemeShape shape_of(Scheme s) {
  const bool sym = s == Scheme::sym || s == Scheme::sym_clip;
  const bool clip = s == Scheme::sym_clip || s == Scheme::asym_clip;
  return {sym, clip, s == Scheme::asym_hqq, sym ? -8.0f : 0.0f, sym ? 7.0f : 15.0f};
}

// asym-hqq: HQQ's zero-point iteration (Badri and Shaji, "Half-Quadratic Quantization of Large
// Machine Learning Models", 2023) with its 4-bit settings: the scale stays (max - min) / 15; each
// round takes the codes of the current min, shrinks the residual with the l_p (p = 0.7) proximal
// step of strength 1 / beta, and sets the min to the mean of what the codes leave unexplained;
// beta grows by 1.01 a round, 20 rounds, and the min of least mean |error| is kept (HQQ's early
// stop). On weights of magnitude ~0.02 the shrink with beta = 10 zeroes every residual, so each
// round is the least-squares min for the codes: a Lloyd step on the offset alone.
Grid hqq_grid(const Block& b, Grid g, const SchemeShape& sh) {
  if (g.scale <= 0) return g;
  const float inv = 1.0f / g.scale;
  double beta = 10.0, count = 0;
  for (uint64_t i = 0; i < kBlock; ++i) count += double(b.wmask[i]) * b.wmask[i];
  if (count <= 0) return g;  // every column of the block unused: any offset is as good
  Grid best = g;
  double best_l1 = std::numeric_limits<double>::infinity();
  for (int round = 0; round < 20; ++round, beta *= 1.01) {
    // The shrink a - a^-0.3 / beta is <= 0, so e = 0, wherever a^1.3 <= 1 / beta: below this
    // threshold (with a margin that leaves the boundary to pow) the pow, ~80% of the time of a
    // round, is skipped; e is then exactly what the pow would give.
    const double zero_below = std::pow(beta, -1.0 / 1.3) * (1.0 - 1e-9);
    double l1 = 0, sum = 0;
    for (uint64_t i = 0; i < kBlock; ++i) {
      const float x = std::min(std::max((b.w[i] - g.min) * inv, sh.q_lo), sh.q_hi);
      const float q = (x + kRoundMagic) - kRoundMagic;
      const double r = double(b.w[i]) - (double(q) * g.scale + g.min);
      const double m2 = double(b.wmask[i]) * b.wmask[i];  // the importance (1 or 0 without)
      l1 += std::fabs(r) * m2;
      const double a = std::fabs(r);
      const double e =
          a > zero_below ? std::copysign(std::max(0.0, a - std::pow(a, -0.3) / beta), r) : 0;
      sum += (double(b.w[i]) - e - double(q) * g.scale) * m2;
    }
    if (l1 < best_l1) {
      best_l1 = l1;
      best = g;
    } else {
      break;
    }
    g.min = round_f16(float(sum / count));
  }
  return best;
}

Grid make_grid(const SchemeShape& sh, const Range& r, float ratio) {
  return sh.sym ? sym_grid(r, ratio) : asym_grid(r, ratio);
}

// The plain grid (ratio 1), checked against the f16 range; for the clip schemes, the candidate
// of lowest squared error, ties to the larger ratio. Ratio 1 is always a candidate, so clip is
// never worse than plain on any block (up to the fp32 rounding of block_sq_err's sums).
Grid choose_grid(const Block& b, const SchemeShape& sh) {
  const Range r = block_range(b);
  Grid best = make_grid(sh, r, 1.0f);
  check_f16_range(
      b, best, sh.sym ? std::max(std::fabs(r.lo), std::fabs(r.hi)) / 7.0f : (r.hi - r.lo) / 15.0f,
      r.lo);
  if (sh.fit_min) return hqq_grid(b, best, sh);
  if (!sh.clip) return best;
  // The candidates first: 20 independent scalar chains (two divisions, f16 roundings) that the
  // CPU overlaps, instead of one chain in front of each vector loop.
  std::array<Grid, kClipSteps> grids;
  for (int k = 0; k < kClipSteps; ++k) grids[k] = make_grid(sh, r, clip_ratio(k));
  float best_err = std::numeric_limits<float>::infinity();
  for (const Grid& g : grids) {
    const float err = block_sq_err(b.w.data(), b.wmask.data(), g, sh.q_lo, sh.q_hi);
    if (err < best_err) {
      best_err = err;
      best = g;
    }
  }
  return best;
}

// The block's codes on grid g, as floats (padding 0), and each element's dequantized value
// formed exactly as the dequant twins form it: q * scale with q = code - offset, then + min.
// code = clamp(round((w - min) * (1 / scale))) + offset: the reciprocal differs from dividing
// only when w is within an ulp of a half step, where both neighbours are equally good.
void block_codes(const Block& b, const SchemeShape& sh, Grid g, float* codes, float* dq) {
  const float inv = g.scale > 0 ? 1.0f / g.scale : 0.0f;
  const float offset = sh.sym ? 8.0f : 0.0f;
  for (uint64_t i = 0; i < kBlock; ++i) {
    float x = (b.w[i] - g.min) * inv;
    x = std::min(std::max(x, sh.q_lo), sh.q_hi);
    const float q = (x + kRoundMagic) - kRoundMagic;
    codes[i] = (q + offset) * b.mask[i];
    const float p = q * g.scale;
    dq[i] = p + g.min;
  }
}

// Adds the block's error in double (kLanes partial sums), padding excluded by the mask. The AVX2
// build makes plain sym 25% faster end to end (36 against 47 ms on 4096 x 4096): double halves
// the SSE2 width.
FERRY_ALWAYS_INLINE void add_error_body(const Block& b, const float* dq, QuantError& e) {
  std::array<double, kLanes> err{}, ref{}, max_abs{};
  for (uint64_t i = 0; i < kBlock; i += kLanes) {
    for (uint64_t j = 0; j < kLanes; ++j) {
      const double m = b.mask[i + j];
      const double w = double(b.w[i + j]) * m;
      const double d = (double(b.w[i + j]) - double(dq[i + j])) * m;
      err[j] += d * d;
      ref[j] += w * w;
      const double a = std::fabs(d);
      max_abs[j] = a > max_abs[j] ? a : max_abs[j];
    }
  }
  for (uint64_t j = 0; j < kLanes; ++j) {
    e.sum_sq_err += err[j];
    e.sum_sq_ref += ref[j];
    e.max_abs_err = std::max(e.max_abs_err, max_abs[j]);
  }
}

void add_error_portable(const Block& b, const float* dq, QuantError& e) {
  add_error_body(b, dq, e);
}
FERRY_TARGET_AVX2 void add_error_avx2(const Block& b, const float* dq, QuantError& e) {
  add_error_body(b, dq, e);
}
void add_error(const Block& b, const float* dq, QuantError& e) {
  isa_has_avx2(best_kernel_isa()) ? add_error_avx2(b, dq, e) : add_error_portable(b, dq, e);
}

// Writes the block's 64 bytes of codes (padding codes 0, low nibble = even element) and adds
// its error.
void encode_block(const Block& b, const SchemeShape& sh, Grid g, uint8_t* q, QuantError& e) {
  alignas(32) std::array<float, kBlock> codes, dq;
  block_codes(b, sh, g, codes.data(), dq.data());
  add_error(b, dq.data(), e);
  for (uint64_t j = 0; j < kBlockBytes; ++j)
    q[j] = uint8_t(uint32_t(codes[2 * j]) | uint32_t(codes[2 * j + 1]) << 4);
}

}  // namespace

void QuantError::add(const QuantError& o) {
  sum_sq_err += o.sum_sq_err;
  sum_sq_ref += o.sum_sq_ref;
  max_abs_err = std::max(max_abs_err, o.max_abs_err);
}

double QuantError::relative_rms() const {
  return sum_sq_ref > 0 ? std::sqrt(sum_sq_err / sum_sq_ref) : 0.0;
}

QuantError quantize_int4(const float* w, uint64_t rows, uint64_t cols, Scheme scheme, uint8_t* q,
                         uint16_t* scales, uint16_t* mins, const float* col_weight) {
  if (!scheme_is_int4(scheme)) throw Error("quantize_int4: scheme bf16 is not an INT4 scheme");
  if (scheme_has_mins(scheme) && mins == nullptr)
    throw Error("quantize_int4: scheme " + std::string(scheme_name(scheme)) +
                " needs a mins buffer");
  const SchemeShape sh = shape_of(scheme);
  const uint64_t blocks = int4_blocks_per_row(cols);
  std::vector<float> sqrt_weight;  // [cols]
  for (uint64_t j = 0; col_weight && j < cols; ++j)
    sqrt_weight.push_back(std::sqrt(std::max(0.0f, col_weight[j])));
  QuantError total;
  Block b;
  for (uint64_t row = 0; row < rows; ++row) {
    for (uint64_t k = 0; k < blocks; ++k) {
      const uint64_t col = k * kBlock;
      load_block(w + row * cols + col, std::min(kBlock, cols - col), row, col,
                 col_weight ? sqrt_weight.data() + col : nullptr, b);
      const Grid g = choose_grid(b, sh);
      encode_block(b, sh, g, q + (row * blocks + k) * kBlockBytes, total);
      scales[row * blocks + k] = float_to_f16(g.scale);
      if (!sh.sym) mins[row * blocks + k] = float_to_f16(g.min);
    }
  }
  return total;
}

}  // namespace ferry
