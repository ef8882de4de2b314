// The INT8 block layout, beside INT4's (format/int4.hpp) and with the same blocks: a weight
// W[rows = out_features, cols = in_features] is cut along each row into blocks of kBlock = 128
// elements, the last one partial and padded (code 0, never read as weights). Per row:
//   q      [rows, blocks * 128] i8   one signed code per byte, element e of a block at byte e
//   scales [rows, blocks]       f16  (stored as u16 bits)
// Dequantization rule (every twin forms the product in fp32): w = code * scale, codes -127..127
// (symmetric: -128 is never written, so negating a block never overflows). No mins: at 8 bits a
// symmetric grid over [-absmax, absmax] has 255 levels, and an offset would gain under one bit.
// 1 byte per weight plus 2 bytes per 128 weights is 8.125 bits per weight.
#pragma once
#include <cstdint>

#include "format/int4.hpp"

namespace ferry {

inline constexpr int32_t kInt8MaxCode = 127;

FERRY_HOST_DEVICE constexpr uint64_t int8_blocks_per_row(uint64_t cols) {
  return (cols + kBlock - 1) / kBlock;
}
// Bytes of codes of a [rows, cols] weight (padding included).
FERRY_HOST_DEVICE constexpr uint64_t int8_code_bytes(uint64_t rows, uint64_t cols) {
  return rows * int8_blocks_per_row(cols) * kBlock;
}
FERRY_HOST_DEVICE constexpr uint64_t int8_scale_count(uint64_t rows, uint64_t cols) {
  return rows * int8_blocks_per_row(cols);
}
FERRY_HOST_DEVICE constexpr uint64_t int8_weight_bytes(uint64_t rows, uint64_t cols) {
  return int8_code_bytes(rows, cols) + int8_scale_count(rows, cols) * 2;
}
static_assert(int8_weight_bytes(1, 256) == 256 + 4);  // 8.125 bits per weight

// One INT8 weight as the kernels, the cache and the forward pass see it (owns nothing).
struct Int8View {
  const int8_t* q = nullptr;         // [rows, blocks * 128] codes
  const uint16_t* scales = nullptr;  // [rows, blocks] f16 bits
  uint64_t rows = 0, cols = 0;       // out, in features
  FERRY_HOST_DEVICE constexpr uint64_t blocks() const { return int8_blocks_per_row(cols); }
  FERRY_HOST_DEVICE constexpr uint64_t bytes() const { return int8_weight_bytes(rows, cols); }
};
static_assert(sizeof(Int8View) == 4 * 8, "Int8View is passed by value to CUDA kernels");

// How one linear weight is stored in a packed file.
enum class WeightStorage : uint8_t { int4, int8, bf16 };

}  // namespace ferry
