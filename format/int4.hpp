// The INT4 block layout: the one contract between the quantizer that writes packed weights, the
// file that stores them, the cache that moves them and every kernel that reads them (CPU twins and
// CUDA alike, hence host-and-device). docs/format.md describes the same bytes for other readers.
//
// A weight W[rows = out_features, cols = in_features] is cut along each row into blocks of
// kBlock = 128 consecutive elements; a row whose length is not a multiple of 128 ends in a
// partial block whose missing elements are padding (code 0, never read as weights). Per row:
//   q      [rows, blocks * 64] u8   two 4-bit codes per byte (nibble order below)
//   scales [rows, blocks]      f16  (stored as u16 bits)
//   mins   [rows, blocks]      f16  asym schemes only; nullptr for sym
// Dequantization rule (every twin forms the product and the sum in fp32, never fused):
//   sym : w = (code - 8) * scale      codes 0..15 stand for -8..7
//   asym: w = code * scale + min      codes 0..15
// Why blocks of 128: 0.5 byte per weight plus 2 (sym) or 4 (asym) bytes per 128 weights is 4.125
// to 4.25 bits per weight, and 64 bytes of codes are half a warp's 128-byte coalesced load.
#pragma once
#include <cstdint>
#include <optional>
#include <string_view>

#include "base/simd.hpp"

namespace ferry {

inline constexpr uint64_t kBlock = 128;              // weights per quantization block
inline constexpr uint64_t kBlockBytes = kBlock / 2;  // 64 bytes of packed codes per block

// Blocks per row: the last one may be partial.
FERRY_HOST_DEVICE constexpr uint64_t int4_blocks_per_row(uint64_t cols) {
  return (cols + kBlock - 1) / kBlock;
}
// Bytes of packed codes of a [rows, cols] weight.
FERRY_HOST_DEVICE constexpr uint64_t int4_code_bytes(uint64_t rows, uint64_t cols) {
  return rows * int4_blocks_per_row(cols) * kBlockBytes;
}
// Number of f16 scales (and of mins, when the scheme has them).
FERRY_HOST_DEVICE constexpr uint64_t int4_scale_count(uint64_t rows, uint64_t cols) {
  return rows * int4_blocks_per_row(cols);
}
// Bytes of the whole weight: codes, scales and, with `has_mins`, mins.
FERRY_HOST_DEVICE constexpr uint64_t int4_weight_bytes(uint64_t rows, uint64_t cols,
                                                       bool has_mins) {
  return int4_code_bytes(rows, cols) + int4_scale_count(rows, cols) * 2 * (has_mins ? 2 : 1);
}
static_assert(int4_blocks_per_row(128) == 1 && int4_blocks_per_row(129) == 2);
static_assert(int4_weight_bytes(1, 256, true) == 128 + 8);  // 4.25 bits per weight

// The nibble order of one packed byte, drawn (byte j of a block holds elements 2j and 2j+1):
//
//   bit  7 6 5 4 | 3 2 1 0
//        element | element
//         2j + 1 |  2j
//
// so a little-endian u32 of bytes 4i..4i+3 holds elements 8i..8i+7 at bits 4e..4e+3 (element
// 8i+e), which is how the CUDA GEMV consumes 8 codes per 32-bit load.
FERRY_HOST_DEVICE constexpr uint32_t int4_code(const uint8_t* block_codes, uint64_t element) {
  return (block_codes[element / 2] >> (4 * (element % 2))) & 15u;
}
FERRY_HOST_DEVICE constexpr uint8_t int4_pack(uint32_t even, uint32_t odd) {
  return uint8_t(even | odd << 4);
}

// One INT4 weight as the kernels, the cache and the forward pass see it: pointers into host or
// device memory, laid out as above. A plain view: it owns nothing.
struct Int4View {
  const uint8_t* q = nullptr;        // [rows, blocks * 64] codes
  const uint16_t* scales = nullptr;  // [rows, blocks] f16 bits
  const uint16_t* mins = nullptr;    // [rows, blocks] f16 bits; nullptr: sym layout
  uint64_t rows = 0, cols = 0;       // out, in features
  FERRY_HOST_DEVICE constexpr uint64_t blocks() const { return int4_blocks_per_row(cols); }
  FERRY_HOST_DEVICE constexpr bool has_mins() const { return mins != nullptr; }
  FERRY_HOST_DEVICE constexpr uint64_t bytes() const {
    return int4_weight_bytes(rows, cols, mins != nullptr);
  }
};
static_assert(sizeof(Int4View) == 5 * 8, "Int4View is passed by value to CUDA kernels");

// How the weights of a packed file are stored.
enum class Scheme : uint8_t {
  bf16,       // no quantization: weights kept in bf16 (reference runs)
  sym,        // scale = absmax / 7, codes for [-8, 7] (the classic recipe)
  sym_clip,   // sym with a per-block search over clipping ratios minimizing squared error
  asym,       // scale = (max - min) / 15, min offset, codes [0, 15]
  asym_clip,  // asym with the clipping search
  asym_hqq,   // asym's scale, its min fitted to the codes (half-quadratic, HQQ-style)
};

// "bf16", "sym", "sym-clip", "asym", "asym-clip", "asym-hqq"; nullopt for anything else.
std::optional<Scheme> parse_scheme(std::string_view name);
std::string_view scheme_name(Scheme s);
bool scheme_has_mins(Scheme s);  // the asym schemes store mins
bool scheme_is_int4(Scheme s);   // everything but bf16

}  // namespace ferry
