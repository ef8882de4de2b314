// The INT4 x INT8 products' quantized activations, internal to the CPU kernels: quantized by
// kernels/matmul_cpu.cpp (its INT4 x INT8 section has the arithmetic and its error bound), read
// there by the portable and AVX2 tiles and by the AVX-512 tile of kernels/matmul_q8_avx512_cpu.cpp;
// and that file's INT8 x INT8 tile, on kernels/matmul_int8_cpu.cpp's activations.
#pragma once
#include <cstdint>

#include "format/int4.hpp"
#include "format/int8.hpp"

namespace ferry::q8 {

constexpr uint64_t kMaxTile = 8;      // tokens quantized together
constexpr uint64_t kMaxBlocks = 256;  // rows up to 32,768 columns: the tile's q sits on the stack
constexpr uint64_t kMaxCols = kMaxBlocks * kBlock;

// One token tile's quantized activations: [tn, blocks * 128] q in layout order (or zmm order,
// for the AVX-512 tile), [tn, blocks] d and d * qsum (zero up to the next multiple of 8 blocks:
// the offset dot products read 8 at a time).
struct Tile {
  alignas(64) int8_t q[kMaxTile * kMaxCols];
  alignas(64) float d[kMaxTile * kMaxBlocks];
  alignas(64) float sums[kMaxTile * kMaxBlocks];
  // [tn, blocks, 8]: d * qsum in lane 0, zeros: the AVX2 path adds min * this to its lanes per
  // block, instead of a per-(row, token) offset dot product that cost as much as the 4.5 blocks
  // of SmolLM2's 576-column rows.
  alignas(64) float off[kMaxTile * kMaxBlocks * 8];
};

// Position of element e (0..127) of a block in layout order: per 64 elements, the 32 even ones
// then the 32 odd ones, as the low and high nibbles of the block's 32 packed bytes.
constexpr uint64_t pos(uint64_t e) {
  return e / 64 * 64 + e % 2 * 32 + e % 64 / 2;
}

// The same in zmm order: a block's 64 code bytes in one 512-bit register give, masked, the low
// nibbles of both halves (layout positions 0..31 and 64..95) and, shifted, the high ones (32..63
// and 96..127); q stored as [0..31, 64..95, 32..63, 96..127] meets each with one aligned load.
constexpr uint64_t pos_zmm(uint64_t e) {
  const uint64_t p = pos(e);
  return p >= 32 && p < 64 ? p + 32 : p >= 64 && p < 96 ? p - 32 : p;
}

// Block qi [128] (int32 codes in element order, each a byte's worth: only the low byte counts,
// as in quantize_q8's scalar loop) into qb [128] in zmm order; returns the sum of the bytes as
// signed values. AVX-512 only (kernels/matmul_q8_avx512_cpu.cpp).
int32_t pack_block_avx512(const int32_t* qi, int8_t* qb);

// Rows [r0, r1) of y [.., a.rows] for the tn tokens from t0 whose activations t holds in zmm
// order, on AVX-512 VNNI (callers check kernel_isa_available(KernelIsa::avx512)).
void tile_rows_avx512(const Int4View& a, uint64_t r0, uint64_t r1, const Tile& t, uint64_t tn,
                      float* y, uint64_t t0);

// An INT8 x INT8 product's quantized activations (kernels/matmul_int8_cpu.cpp's tile), in element
// order: token j's block b at q + (j * stride + b) * 128, its scale d at d[j * stride + b] and
// d * (the block's sum of q) at sums[j * stride + b], zero past the last block up to a multiple
// of 16.
struct Int8Acts {
  const int8_t* q;
  const float* d;
  const float* sums;
  uint64_t stride;  // blocks between tokens
};

// Rows [r0, r1) of y [.., w.rows] for the tn tokens from t0 in x, on AVX-512 VNNI.
void tile_rows_int8_avx512(const Int8View& w, uint64_t r0, uint64_t r1, const Int8Acts& x,
                           uint64_t tn, float* y, uint64_t t0);

}  // namespace ferry::q8
