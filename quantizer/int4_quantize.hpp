// INT4 block quantization of linear weights (offline, on the CPU): choosing each block's scale
// (and min) and codes under a scheme. The layout written and its dequantization rule are the
// contract of format/int4.hpp. The scale (and min) are rounded to f16 before the codes are
// chosen, so the error measured here is the error the runtime sees.
#pragma once
#include <cstdint>
#include <optional>
#include <string_view>

#include "format/int4.hpp"

namespace ferry {

// Sums over the quantized elements (padding excluded): relative RMS error = sqrt(err / ref).
struct QuantError {
  double sum_sq_err = 0;  // sum (w - dequant(w))^2
  double sum_sq_ref = 0;  // sum w^2
  double max_abs_err = 0;
  void add(const QuantError& o);
  double relative_rms() const;  // 0 when sum_sq_ref == 0
};

// Quantizes `rows` rows of `cols` floats (row-major, contiguous) with an INT4 scheme.
// q: [rows, blocks*64], scales: [rows, blocks], mins: [rows, blocks] (nullptr for sym schemes).
// col_weight [cols] (optional, >= 0): the importance of each input column, E[x_j^2] of the
// activations it multiplies (quantizer/activation_scaling.hpp): the clip search and asym-hqq's
// offset fit then minimise sum_j col_weight[j] (w_j - dequant(w_j))^2 over a block instead of the
// plain squared error. The reported QuantError stays the plain one.
// Throws ferry::Error if a block holds a non-finite value or needs a scale beyond f16 range.
QuantError quantize_int4(const float* w, uint64_t rows, uint64_t cols, Scheme scheme, uint8_t* q,
                         uint16_t* scales, uint16_t* mins, const float* col_weight = nullptr);

// The clipping ratios the *_clip schemes try, from 1.0 down (documented in docs/format.md).
inline constexpr int kClipSteps = 20;
inline constexpr float kClipMinRatio = 0.5f;

}  // namespace ferry
