// INT4 block quantization of linear weights (offline, on the CPU).
//
// A weight W[rows = out_features, cols = in_features] is cut along each row into blocks of
// kBlock = 128 consecutive elements; a row whose length is not a multiple of 128 ends in a
// partial block whose missing elements are padding. Per row and block b:
//   q      [rows, blocks * 64] u8   two 4-bit codes per byte: element 2j in the low nibble,
//                                   element 2j+1 in the high nibble; padding codes are 0
//   scales [rows, blocks]      f16  (stored as u16 bits)
//   mins   [rows, blocks]      f16  asym schemes only
// Dequantization (the contract of kernels/dequant.hpp):
//   sym : w = (code - 8) * scale      codes 0..15 stand for -8..7
//   asym: w = code * scale + min      codes 0..15
// The scale (and min) are rounded to f16 before the codes are chosen, so the error measured
// here is the error the runtime sees.
#pragma once
#include <cstdint>
#include <optional>
#include <string_view>

namespace ferry {

constexpr uint64_t kBlock = 128;
constexpr uint64_t kBlockBytes = kBlock / 2;  // 64 bytes of packed codes per block

enum class Scheme : uint8_t {
  bf16,       // no quantization: weights kept in bf16 (reference runs)
  sym,        // scale = absmax / 7, codes for [-8, 7] (the classic recipe)
  sym_clip,   // sym with a per-block search over clipping ratios minimizing squared error
  asym,       // scale = (max - min) / 15, min offset, codes [0, 15]
  asym_clip,  // asym with the clipping search
};

std::optional<Scheme> parse_scheme(
    std::string_view name);  // "bf16", "sym", "sym-clip", "asym", "asym-clip"
std::string_view scheme_name(Scheme s);
bool scheme_has_mins(Scheme s);  // asym and asym_clip store mins
bool scheme_is_int4(Scheme s);   // everything but bf16

inline uint64_t int4_blocks_per_row(uint64_t cols) {
  return (cols + kBlock - 1) / kBlock;
}

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
// Throws ferry::Error if a block holds a non-finite value or needs a scale beyond f16 range.
QuantError quantize_int4(const float* w, uint64_t rows, uint64_t cols, Scheme scheme, uint8_t* q,
                         uint16_t* scales, uint16_t* mins);

// The clipping ratios the *_clip schemes try, from 1.0 down (documented in docs/format.md).
inline constexpr int kClipSteps = 20;
inline constexpr float kClipMinRatio = 0.5f;

}  // namespace ferry
