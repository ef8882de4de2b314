// The fused INT4 matrix-vector kernel on the GPU for decode (n = 1) and small batches (n <= 8):
// y[n, rows] = x[n, cols] · W^T, W packed as in format/int4.hpp, and its launchers. Its entry
// points are in kernels/gemv_int4.cu; the kernel is instantiated for fp32 x in gemv_int4_f32.cu
// and for INT8 x in gemv_int4_q8.cu (one translation unit each: compiled for five architectures,
// the two together took one core 580 s, the critical path of the build). The CPU twins are
// gemv_int4_fused_cpu and gemv_int4_silu_mul_cpu (kernels/gemv_fused.hpp);
// tests/test_gpu_kernels.cpp compares them, and scripts/sass_check.py holds the compiled loop to
// the budget derived below (a CTest test).
//
// Decode is bound by reading W once: 0.5 byte per weight plus 4 bytes of scale and min per 128,
// 0.53 bytes per weight. An H200 reads ~4.8 TB/s over 132 SMs at ~1.98 GHz: 18 bytes per SM
// per clock, 34 weights. The SM issues 4 warp-instructions per clock, so the loop must spend
// under ~4 / 34 * 1024 = 120 warp-instructions per 1024 weights to keep up (the old kernel spent
// ~385: bounds checks per element, int-to-float conversions, scalar loads of x). So:
//  - The columns go in chunks of kChunk = 1024 (8 blocks). A CTA stages each chunk of x in shared
//    memory once, with 16-byte loads, zero past the last column, together with the sum of each
//    32 elements (the offset term's sum(x), once per CTA instead of once per row).
//  - Per chunk and row, lane l loads 16 bytes of codes (32 codes: a quarter of block l / 4), so
//    a warp reads the row's 512 contiguous bytes with one 128-bit load per lane. The codes,
//    scale and min of the next chunk are loaded before the current one is used.
//  - Each code becomes the float 1 + code / 128 with one byte permute (see unit_code), not a
//    quarter-rate int-to-float conversion: one PRMT and one FFMA per weight.
//  - Offsets are 32-bit (the launcher refuses weights past 2^31 bytes); only whole blocks exist
//    in a chunk's loop: the padding of the last block meets zeros of x, and blocks past the row's
//    end are skipped whole, so no per-element bounds check remains.
//  - A warp owns R rows (4 for large matrices, fewer for small ones so their CTAs still cover
//    the SMs), reading each staged x element once per R rows.
//  - One token (decode), the deep path: the whole of x is staged once per CTA by cp.async, one
//    round trip (up to 113 KB of shared memory, Qwen2-32B's down projection included; the second
//    H200 run staged it a load per round, one trip per 256 float4), and each warp keeps DEPTH
//    chunks of codes in flight (2-4, 2-4 KB a warp), with no barrier in the loop; 128 registers,
//    two CTAs an SM. The first H200 run of the chunked path alone (one chunk in flight, a barrier
//    pair and an exposed load of x per chunk, 248 registers: one CTA an SM) read 0.5-1.1 TB/s,
//    12-26% of the 4.2 TB/s copy bandwidth; what held both paths was an 8-way bank conflict on
//    every load of staged x (x_slot below). With x j-major and the one-token chunked path at 128
//    registers, the fourth H200 run read 0.79-2.5 TB/s (2039 GB/s at 27648 x 5120).
//    Staging (and quantizing) x costs a CTA as much as one row a warp's dots (~50 against ~35
//    warp-instructions per chunk and warp for q8), and a CTA of Qwen2-7B's q/k/v or down lives
//    for one group of 8-16 rows: so the deep path launches as many CTAs as the card holds at
//    once, and each stages x once and loops over row groups (gemv_launch_ctas in
//    kernels/gemv_fused.hpp). The chunked path, which stages x per chunk anyway, keeps one
//    row group a CTA.
//  - The same kernel runs the fused launches of kernels/gemv_fused.hpp: up to three weights in
//    one grid (each CTA serves one, chosen by gemv_slot_of), or gate and up paired in each warp;
//    the epilogue (bias, residual add, or silu(gate) * up) is applied in the store, after the
//    loop, so the main loop is the same for all (sass_check.py weighs the variants decode runs).
//  - INT8 activations (GemvX::q8, what decode runs by default): the CTA quantizes x per block of
//    128 while staging it, exactly as the CPU backend's matmul_int4_q8_cpu does (its portable
//    path is the twin), and each lane dots its 32 codes with its 32 q by 8 dp4a: ~30 instead of
//    ~99 warp-instructions per 1024 weights, and 1.25 bytes of staged x a column instead of 4.125
//    (40 bytes of shared-memory reads per lane and chunk instead of 128), so the one-row-a-warp
//    deep path (a third of a 7B decode token on the H200, 8 rows a CTA) is no longer bound by
//    shared-memory bandwidth (128 B a clock an SM: at 1 row a warp the fp32 path needs ~136 B a
//    clock to keep up with HBM). The quantization costs each CTA ~50 warp-instructions per chunk
//    and warp, once per CTA rather than per row.
// Each block's codes are dotted with x first and scaled once: s * sum(c x) + m * sum(x), with
// m = min (asym) or -8 s (sym), as the scalar twin does (q8: s d sum(c q) + m d sum(q)); partial
// sums are reduced over the warp with shuffles in a fixed order, so results do not depend on
// scheduling.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "format/int4.hpp"
#include "kernels/cuda_check.hpp"
#include "kernels/cuda_common.cuh"
#include "kernels/gemv_fused.hpp"

namespace ferry::gemv_int4 {

constexpr uint32_t kWarpsPerCta = kGemvWarps;
constexpr uint32_t kThreads = kWarpsPerCta * 32;
constexpr uint32_t kChunk = 1024;  // columns per stage: 8 blocks
static_assert(kThreads * 4 == kChunk, "one 16-byte load per thread stages a chunk of one token");

// One lane's share of one row in one chunk: 32 codes, the block's scale and min (asym) or -8 s.
struct LaneCodes {
  uint4 q;
  float s, m;
};

// Where one lane reads one row: its 16 bytes of codes in the chunk's first block, and that
// block's scale and min; each advances by one chunk (8 blocks) at a time. A sym weight has no
// mins: `m` then points at the scales and m_factor is -8 (m = -8 s), so loading is branch-free.
// A row past the matrix's end reads its last row instead (never written back): no predicate.
struct LaneRow {
  const uint4* q;
  const uint16_t* s;
  const uint16_t* m;
};

__device__ __forceinline__ LaneRow lane_row(const Int4View& w, uint32_t row, uint32_t rows,
                                            uint32_t blocks, uint32_t lane) {
  const uint32_t at = min(row, rows - 1) * blocks + lane / 4;
  return {reinterpret_cast<const uint4*>(w.q + size_t(at) * kBlockBytes) + lane % 4, w.scales + at,
          (w.mins ? w.mins : w.scales) + at};
}

// Chunk c of a lane's row. GUARD: the chunk may run past the row's last block, whose lanes then
// take zeros (0 * 0: nothing); only the last two chunks need it.
template <bool GUARD>
__device__ __forceinline__ LaneCodes load_codes(const LaneRow& p, uint32_t c, bool in_row,
                                                float m_factor) {
  LaneCodes k{make_uint4(0, 0, 0, 0), 0.0f, 0.0f};
  if (GUARD && !in_row) return k;
  k.q = __ldg(p.q + c * (8 * kBlockBytes / 16));
  k.s = cuda::f16_to_f32(__ldg(p.s + c * 8));
  k.m = m_factor * cuda::f16_to_f32(__ldg(p.m + c * 8));
  return k;
}

// Each code as f = 0.5 + code / 256, exactly: with one byte permute the code byte (0..15)
// becomes byte 2 of the float 0.5 (0x3F000000), i.e. mantissa bits 16..19, and bit 23 (the
// exponent's lowest) stays 0. So sum(code * x) = 256 * sum(f * x) - 128 * sum(x): one PRMT and
// one FFMA per weight instead of a conversion and a subtract. Removing the 0.5s cancels: f lies
// in [0.5, 0.56), so it costs ~4 bits of the fp32 sum's 24 (relative error ~2^-20; the twin
// test's NMSE bound of 1e-10 allows ~1e-5).
__device__ __forceinline__ float unit_code(uint32_t bytes, uint32_t k) {
  return __uint_as_float(__byte_perm(bytes, 0x3F000000u, 0x7044u | (k << 8)));
}

// d + sum over 8 elements of (0.5 + code / 256) * x, x being 8 consecutive staged floats.
__device__ __forceinline__ float dot8(uint32_t word, const float4& a, const float4& b, float d) {
  const uint32_t even = word & 0x0F0F0F0Fu, odd = (word >> 4) & 0x0F0F0F0Fu;
  d = fmaf(unit_code(even, 0), a.x, d);
  d = fmaf(unit_code(odd, 0), a.y, d);
  d = fmaf(unit_code(even, 1), a.z, d);
  d = fmaf(unit_code(odd, 1), a.w, d);
  d = fmaf(unit_code(even, 2), b.x, d);
  d = fmaf(unit_code(odd, 2), b.y, d);
  d = fmaf(unit_code(even, 3), b.z, d);
  return fmaf(unit_code(odd, 3), b.w, d);
}

// Where float4 f of staged x lies in shared memory: each chunk of 256 float4s is stored j-major,
// float4 j of lane l (columns 32l + 4j..+3) at slot j * 32 + l. Lane l reads float4s 8l..8l+7
// (its 32 columns); stored in order (lane stride 128 bytes), the 8 lanes of a quarter-warp's
// LDS.128 all hit the same 4 banks: an 8-way conflict on every load of x. ncu on the H200 run
// saw it: short-scoreboard (shared memory) stalls 54% of the GEMV's cycles, L1 66% busy at 24%
// of DRAM. j-major, a quarter-warp's loads are 8 consecutive slots (conflict-free) and j stays an
// immediate offset (an XOR swizzle cost 4-16 instructions per 1024 weights in sass_check). The
// staging stores take the conflict instead: one store per thread per chunk against 8 loads per
// lane per warp.
__device__ __forceinline__ uint32_t x_slot(uint32_t f) {
  return (f & ~255u) | ((f & 7u) << 5) | ((f >> 3) & 31u);
}

// Token t's columns col .. col + 3 (zeros past `cols`). VEC: x is 16-byte aligned and cols a
// multiple of 4, so the 4 elements are one aligned load, wholly inside or wholly past the row.
template <bool VEC>
__device__ __forceinline__ float4 load_x4(const float* __restrict__ xt, uint32_t col,
                                          uint32_t cols) {
  float4 v = make_float4(0, 0, 0, 0);
  if (VEC) {
    if (col < cols) v = __ldg(reinterpret_cast<const float4*>(xt + col));
  } else {
    if (col + 0 < cols) v.x = xt[col + 0];
    if (col + 1 < cols) v.y = xt[col + 1];
    if (col + 2 < cols) v.z = xt[col + 2];
    if (col + 3 < cols) v.w = xt[col + 3];
  }
  return v;
}

// Stages columns [c0, c0 + kChunk) of each token's x (zeros past `cols`) and the sums of each
// 32 of them.
template <int N, bool VEC>
__device__ __forceinline__ void stage_x(const float* __restrict__ x, uint32_t cols, uint32_t c0,
                                        float4 (*xs)[kChunk / 4], float (*sums)[kChunk / 32]) {
  const uint32_t col = c0 + 4 * threadIdx.x;
#pragma unroll
  for (int t = 0; t < N; ++t) {
    const float4 v = load_x4<VEC>(x + size_t(t) * cols, col, cols);
    xs[t][x_slot(threadIdx.x)] = v;
    // 8 neighbouring threads hold one lane's 32 columns: their sum, in a fixed order.
    float s = (v.x + v.y) + (v.z + v.w);
    s += __shfl_xor_sync(0xffffffffu, s, 1);
    s += __shfl_xor_sync(0xffffffffu, s, 2);
    s += __shfl_xor_sync(0xffffffffu, s, 4);
    if (threadIdx.x % 8 == 0) sums[t][threadIdx.x / 8] = s;
  }
}

// A chunk's products of one lane: x4 is the lane's first float4 slot of the chunk for token 0
// (token t at x4 + t * x4_stride; the lane's j-th float4 32 slots on, see x_slot), sums
// its sum of those 32 columns (token t at sums + t * sums_stride). Both paths (chunked and deep)
// run it, so they give the same bits.
template <int N, int R>
__device__ __forceinline__ void dot_chunk(const float4* x4, uint32_t x4_stride, const float* sums,
                                          uint32_t sums_stride, const LaneCodes (&cur)[R],
                                          float (&acc)[R][N]) {
#pragma unroll
  for (int t = 0; t < N; ++t) {
    float4 v[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = x4[t * x4_stride + 32 * j];
    const float sum = sums[t * sums_stride];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      // Two chains of 16 FMAs, for latency.
      const float f = dot8(cur[r].q.y, v[2], v[3], dot8(cur[r].q.x, v[0], v[1], 0.0f)) +
                      dot8(cur[r].q.w, v[6], v[7], dot8(cur[r].q.z, v[4], v[5], 0.0f));
      const float d = 256.0f * (f - 0.5f * sum);  // sum(code * x), see unit_code
      acc[r][t] += cur[r].s * d + cur[r].m * sum;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// INT8 activations (GemvX::q8): x quantized per block of 128 as matmul_int4_q8_cpu does (q =
// round(x * 127 / max|x|), d = max|x| / 127: the same bits), and each lane's 32 codes dotted with
// its 32 q in exact int32 by 8 dp4a. Per lane, chunk and row that is 8 masks, 8 IDP4A and ~6
// instructions of scaling where the fp32 path spends 64 PRMT/FFMA and 8 LDS.128 of x (a quarter
// of the shared-memory bytes: 32 bytes of q a lane instead of 128 of floats).

// One chunk's quantized x of one token. q: lane l's 32 q (columns 32l .. 32l + 31) as 8 words in
// the order of its 4 code words' nibbles, [e0, o0, e1, o1, e2, o2, e3, o3]: word e_i holds q of
// the lane's columns 8i, 8i+2, 8i+4, 8i+6 (code word i's low nibbles), o_i of 8i+1, +3, +5, +7
// (its high nibbles); words 0-3 at slot l, 4-7 at slot 32 + l, so that a quarter-warp's LDS.128
// reads 8 consecutive slots. d: {d, d * sum of the lane's 32 q} (the offset term's sum).
struct XQ8Chunk {
  int4 q[64];
  float2 d[32];
};  // 1280 bytes: 1.25 bytes a column

// Quantizes one float4 of a chunk (columns 4 threadIdx.x .. +3; warp w's 32 threads hold block w
// of the chunk, 128 columns) into `out`. Every thread of the CTA takes part (shuffles). No clamp
// is needed: |x| <= max|x| makes |x * 127 / max| round to at most 127, and a max at or below
// kQ8MinBlockMax (where 127 / max could overflow, and __float2int_rn(inf) would pack -1 where the
// CPU clamps to 127) zeroes the block; a NaN (or an infinite max, whose inverse is 0) becomes 0,
// as int32_t(NaN) leaves 0 in the CPU's low byte. fmaxf skips NaNs but for a block of nothing
// else: the max is then seeded with 0, as the CPU's is (d = 0, not NaN).
__device__ __forceinline__ void quantize_q8(const float4 v, XQ8Chunk& out) {
  float a = fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
  a = fmaxf(a, 0.0f);                                        // an all-NaN block
  const float inv = a > kQ8MinBlockMax ? 127.0f / a : 0.0f;  // quantize_q8_block_cpu's expressions
  const int q0 = __float2int_rn(v.x * inv), q1 = __float2int_rn(v.y * inv);
  const int q2 = __float2int_rn(v.z * inv), q3 = __float2int_rn(v.w * inv);
  // The pair of even columns and the pair of odd ones; the neighbour thread (t ^ 1) holds the
  // other half of the lane's word i: the low thread builds e_i, the high one o_i.
  const uint32_t ev = (uint32_t(q0) & 0xFFu) | (uint32_t(q2) & 0xFFu) << 8;
  const uint32_t od = (uint32_t(q1) & 0xFFu) | (uint32_t(q3) & 0xFFu) << 8;
  const uint32_t other = __shfl_xor_sync(0xffffffffu, ev | od << 16, 1);
  const uint32_t t = threadIdx.x, lane = t / 8, w = t % 8;  // w = 2i (low) or 2i + 1 (high)
  const uint32_t word = (t & 1) ? (other >> 16) | od << 16 : ev | other << 16;
  reinterpret_cast<uint32_t*>(out.q)[(w / 4 * 32 + lane) * 4 + w % 4] = word;
  int s = (q0 + q1) + (q2 + q3);  // the lane's sum of q, over its 8 threads
  s += __shfl_xor_sync(0xffffffffu, s, 1);
  s += __shfl_xor_sync(0xffffffffu, s, 2);
  s += __shfl_xor_sync(0xffffffffu, s, 4);
  const float d = a / 127.0f;
  if (w == 0) out.d[lane] = make_float2(d, d * float(s));
}

template <int N, bool VEC>
__device__ __forceinline__ void stage_q8(const float* __restrict__ x, uint32_t cols, uint32_t c0,
                                         XQ8Chunk* xc) {
#pragma unroll
  for (int t = 0; t < N; ++t)
    quantize_q8(load_x4<VEC>(x + size_t(t) * cols, c0 + 4 * threadIdx.x, cols), xc[t]);
}

// sum of a[i] * b[i] over the 4 bytes, a unsigned, b signed (PTX dp4a.u32.s32; the intrinsic
// __dp4a takes both of one signedness).
__device__ __forceinline__ int dp4a_us(uint32_t a, int b, int c) {
  int d;
  asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

// A chunk's products of one lane on quantized x: xc the chunk of token 0 (token t at xc + t *
// stride). The low nibbles dot the e words as they are; the high ones are dotted in place, as 16
// * code (the mask keeps bits 4-7), and the sum shifted back: exact, one mask a word each.
template <int N, int R>
__device__ __forceinline__ void dot_chunk_q8(const XQ8Chunk* xc, uint32_t stride,
                                             const LaneCodes (&cur)[R], float (&acc)[R][N]) {
  const uint32_t lane = threadIdx.x % 32;
  uint32_t lo[R][4], hi[R][4];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const uint32_t words[4] = {cur[r].q.x, cur[r].q.y, cur[r].q.z, cur[r].q.w};
#pragma unroll
    for (int k = 0; k < 4; ++k)
      lo[r][k] = words[k] & 0x0F0F0F0Fu, hi[r][k] = words[k] & 0xF0F0F0F0u;
  }
#pragma unroll
  for (int t = 0; t < N; ++t) {
    const XQ8Chunk& c = xc[t * stride];
    const int4 a = c.q[lane], b = c.q[32 + lane];
    const float2 d = c.d[lane];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      int l = __dp4a(int(lo[r][0]), a.x, 0);
      l = __dp4a(int(lo[r][1]), a.z, l);
      l = __dp4a(int(lo[r][2]), b.x, l);
      l = __dp4a(int(lo[r][3]), b.z, l);
      int h = dp4a_us(hi[r][0], a.y, 0);
      h = dp4a_us(hi[r][1], a.w, h);
      h = dp4a_us(hi[r][2], b.y, h);
      h = dp4a_us(hi[r][3], b.w, h);
      const int isum = l + (h >> 4);  // h is 16 times the high nibbles' sum: exact
      acc[r][t] = fmaf(cur[r].s * d.x, float(isum), fmaf(cur[r].m, d.y, acc[r][t]));
    }
  }
}

// A launch's arguments: the fused outputs (kernels/gemv_fused.hpp) and its grid.
struct GemvLaunch {
  Int4View w[kGemvMaxParts];
  float* y[kGemvMaxParts];
  const uint16_t* bias[kGemvMaxParts];
  GemvGrid grid;
  bool add;           // GemvStore::add
  uint32_t max_ctas;  // the launchers' cap on the grid (gemv_launch_ctas); the kernel loops over
                      // grid.ctas() row groups whatever its gridDim
};

// a[p] by selects, not an indexed read of the kernel's parameters (which could copy them to
// local memory); p < kGemvMaxParts.
template <typename T>
__device__ __forceinline__ const T& pick(const T (&a)[kGemvMaxParts], uint32_t p) {
  return p == 0 ? a[0] : p == 1 ? a[1] : a[2];
}

// The R rows one warp computes in row group `cta` (a CTA index of the grid, GemvGrid): which
// part and row, where its lane reads them, and their weight's m factor (see LaneRow).
template <int R>
struct WarpRows {
  GemvSlot slot[R];
  LaneRow at[R];
  float m_factor[R];
};

template <bool PAIRED, int R>
__device__ __forceinline__ WarpRows<R> warp_rows(const GemvLaunch& a, uint32_t cta,
                                                 uint32_t blocks) {
  WarpRows<R> w;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    w.slot[r] = gemv_slot_of<PAIRED>(a.grid, R, cta, threadIdx.x / 32, r);
    const Int4View& v = pick(a.w, w.slot[r].part);
    w.m_factor[r] = v.mins ? 1.0f : -8.0f;
    w.at[r] = lane_row(v, w.slot[r].row, uint32_t(v.rows), blocks, threadIdx.x % 32);
  }
  return w;
}

// Reduces each row's partial sums over the warp (every lane takes part) and lane 0 stores them
// through the launch's epilogue.
template <int N, int R, bool PAIRED>
__device__ __forceinline__ void store_rows(const GemvLaunch& a, const GemvSlot (&slot)[R],
                                           float (&acc)[R][N]) {
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int t = 0; t < N; ++t) acc[r][t] = cuda::warp_sum(acc[r][t]);
  if (threadIdx.x % 32 != 0) return;
  if constexpr (PAIRED) {  // the epilogue of gemv_int4_silu_mul_cpu
    const uint32_t rows = uint32_t(a.w[0].rows);
#pragma unroll
    for (int r = 0; r < R / 2; ++r)
      if (slot[r].row < rows)
#pragma unroll
        for (int t = 0; t < N; ++t) {
          const float g = acc[r][t], u = acc[r + R / 2][t];
          a.y[0][size_t(t) * rows + slot[r].row] = silu_times(g, u, expf(-g));
        }
  } else {  // the epilogue of gemv_int4_fused_cpu
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const uint32_t p = slot[r].part, row = slot[r].row, rows = uint32_t(pick(a.w, p).rows);
      if (row >= rows) continue;
      float* y = pick(a.y, p);
      const uint16_t* bias = pick(a.bias, p);
#pragma unroll
      for (int t = 0; t < N; ++t) {
        float v = acc[r][t];
        if (bias) v += cuda::bf16_to_f32(bias[row]);
        float& out = y[size_t(t) * rows + row];
        out = a.add ? out + v : v;
      }
    }
  }
}

// The chunked path's staged x (static shared memory): one chunk of each of N tokens, fp32 with
// the sums of each 32 columns, or quantized (Q8).
template <int N, bool Q8>
struct ChunkX {
  float4 x[N][kChunk / 4];     // [N][1024] floats, j-major (x_slot)
  float sums[N][kChunk / 32];  // [N][32]
};
template <int N>
struct ChunkX<N, true> {
  XQ8Chunk c[N];
};

// One chunk: stage x, then, while chunk c + 1's codes load, add this chunk's products.
template <int N, int R, bool VEC, bool GUARD, bool Q8>
__device__ __forceinline__ void gemv_chunk(const float* __restrict__ x, uint32_t cols,
                                           uint32_t blocks, uint32_t c, const LaneRow (&at)[R],
                                           const float (&m_factor)[R], LaneCodes (&cur)[R],
                                           float (&acc)[R][N], ChunkX<N, Q8>& xs) {
  const uint32_t lane = threadIdx.x % 32;
  if constexpr (Q8)
    stage_q8<N, VEC>(x, cols, c * kChunk, xs.c);
  else
    stage_x<N, VEC>(x, cols, c * kChunk, xs.x, xs.sums);
  __syncthreads();
  LaneCodes next[R];
  const bool in_row = (c + 1) * 8 + lane / 4 < blocks;
#pragma unroll
  for (int r = 0; r < R; ++r) next[r] = load_codes<GUARD>(at[r], c + 1, in_row, m_factor[r]);
  if constexpr (Q8)
    dot_chunk_q8<N, R>(xs.c, 1, cur, acc);
  else
    dot_chunk<N, R>(&xs.x[0][lane], kChunk / 4, &xs.sums[0][lane], kChunk / 32, cur, acc);
  __syncthreads();  // the next chunk overwrites xs
#pragma unroll
  for (int r = 0; r < R; ++r) cur[r] = next[r];
}

// The deep path (DEPTH > 1): x of every chunk staged once per CTA, [N][chunks * 256] float4
// (zeros past `cols`), and the sums of each 32 columns, [N][chunks * 32], in dynamic shared
// memory; x 16-byte aligned with cols a multiple of 4 (VEC). All of x is copied at once by
// cp.async, one round trip to L2 however wide x is (a load per float4 and round would cost one
// trip per 256 float4: 27 for Qwen2-32B's down projection); then each thread sums the float4s
// it copied (its own copies need no barrier). The loops over i cover whole multiples of
// kThreads, so every warp takes part in each round's shuffles.
template <int N>
__device__ __forceinline__ void stage_whole_x(const float* __restrict__ x, uint32_t cols,
                                              uint32_t chunks, float4* xs, float* sums) {
  const uint32_t per_token = chunks * (kChunk / 4);
#pragma unroll
  for (int t = 0; t < N; ++t)
    for (uint32_t i = threadIdx.x; i < per_token; i += kThreads) {
      const bool valid = 4 * i < cols;
      cuda::copy16(xs + t * per_token + x_slot(i), valid ? x + size_t(t) * cols + 4 * i : x, valid);
    }
  cuda::copy_commit();
  cuda::copy_wait<0>();
#pragma unroll
  for (int t = 0; t < N; ++t)
    for (uint32_t i = threadIdx.x; i < per_token; i += kThreads) {
      const float4 v = xs[t * per_token + x_slot(i)];
      float s = (v.x + v.y) + (v.z + v.w);  // the same order as stage_x
      s += __shfl_xor_sync(0xffffffffu, s, 1);
      s += __shfl_xor_sync(0xffffffffu, s, 2);
      s += __shfl_xor_sync(0xffffffffu, s, 4);
      if (threadIdx.x % 8 == 0) sums[t * chunks * 32 + i / 8] = s;
    }
}

// The deep path's quantized x, [N][chunks] XQ8Chunk: every chunk quantized by the whole CTA, 4
// chunks' loads issued before the first is quantized (chunks is the same for every thread, so
// the shuffles see every lane).
template <int N>
__device__ __forceinline__ void stage_whole_q8(const float* __restrict__ x, uint32_t cols,
                                               uint32_t chunks, XQ8Chunk* xc) {
  constexpr uint32_t kAhead = 4;
#pragma unroll
  for (int t = 0; t < N; ++t)
    for (uint32_t c0 = 0; c0 < chunks; c0 += kAhead) {
      float4 v[kAhead];
#pragma unroll
      for (uint32_t k = 0; k < kAhead; ++k)
        v[k] = load_x4<true>(x + size_t(t) * cols, (c0 + k) * kChunk + 4 * threadIdx.x, cols);
#pragma unroll
      for (uint32_t k = 0; k < kAhead; ++k)
        if (c0 + k < chunks) quantize_q8(v[k], xc[t * chunks + c0 + k]);
    }
}

// DEPTH chunks [c0, c0 + DEPTH): each consumes its ring slot and refills it with the chunk
// DEPTH ahead. GUARD: the refills may pass the row's last block and c0 + d the last chunk.
// `staged` as gemv_deep lays it out.
template <int N, int R, int DEPTH, bool GUARD, bool Q8>
__device__ __forceinline__ void deep_round(const float4* staged, uint32_t chunks, uint32_t blocks,
                                           uint32_t c0, const LaneRow (&at)[R],
                                           const float (&m_factor)[R], LaneCodes (&ring)[DEPTH][R],
                                           float (&acc)[R][N]) {
  const uint32_t lane = threadIdx.x % 32, per_token = chunks * (kChunk / 4);
  const float* sums = reinterpret_cast<const float*>(staged + N * per_token);
#pragma unroll
  for (int d = 0; d < DEPTH; ++d) {
    const uint32_t c = c0 + d;
    if (GUARD && c >= chunks) return;
    if constexpr (Q8)
      dot_chunk_q8<N, R>(reinterpret_cast<const XQ8Chunk*>(staged) + c, chunks, ring[d], acc);
    else
      dot_chunk<N, R>(staged + c * (kChunk / 4) + lane, per_token, sums + c * 32 + lane,
                      chunks * 32, ring[d], acc);
    const uint32_t k = c + DEPTH;
    const bool in_row = k * 8 + lane / 4 < blocks;
#pragma unroll
    for (int r = 0; r < R; ++r) ring[d][r] = load_codes<GUARD>(at[r], k, in_row, m_factor[r]);
  }
}

// The first DEPTH chunks of a warp's rows, into the ring.
template <int R, int DEPTH>
__device__ __forceinline__ void deep_prime(const WarpRows<R>& rows, uint32_t blocks,
                                           LaneCodes (&ring)[DEPTH][R]) {
  const uint32_t lane = threadIdx.x % 32;
#pragma unroll
  for (int d = 0; d < DEPTH; ++d)
#pragma unroll
    for (int r = 0; r < R; ++r)
      ring[d][r] = load_codes<true>(rows.at[r], d, d * 8 + lane / 4 < blocks, rows.m_factor[r]);
}

// The deep path: DEPTH chunks of codes in flight per row (DEPTH x R x 512 bytes a warp), x read
// from shared memory, no barrier in the loop. x is staged once per CTA, which then loops over
// its row groups (cta, cta + gridDim.x, ...: gemv_launch_ctas). The first group's first DEPTH
// chunks are loaded before x is staged, so the staging hides behind them; the next group's are
// loaded after the last group's sums are stored (before it, the two groups' registers spilled
// the fp32 gate/up variant: 17 local stores at 128 registers).
template <int N, int R, int DEPTH, bool PAIRED, bool Q8>
__device__ __forceinline__ void gemv_deep(const GemvLaunch& a, const float* __restrict__ x) {
  // fp32: [N][chunks * 256] x, then [N][chunks * 32] sums; Q8: [N][chunks] XQ8Chunk.
  extern __shared__ float4 staged[];
  const uint32_t cols = uint32_t(a.w[0].cols), blocks = uint32_t(a.w[0].blocks());
  const uint32_t chunks = (cols + kChunk - 1) / kChunk, full = blocks / 8;
  uint32_t cta = blockIdx.x;
  WarpRows<R> rows = warp_rows<PAIRED, R>(a, cta, blocks);
  LaneCodes ring[DEPTH][R];
  deep_prime<R, DEPTH>(rows, blocks, ring);
  if constexpr (Q8)
    stage_whole_q8<N>(x, cols, chunks, reinterpret_cast<XQ8Chunk*>(staged));
  else
    stage_whole_x<N>(x, cols, chunks, staged,
                     reinterpret_cast<float*>(staged + N * chunks * (kChunk / 4)));
  __syncthreads();
  for (;;) {
    float acc[R][N];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int t = 0; t < N; ++t) acc[r][t] = 0.0f;
    // Unguarded while every refill of the round (chunks up to c0 + 2 DEPTH - 1) is whole.
    uint32_t c0 = 0;
    for (; c0 + 2 * DEPTH <= full; c0 += DEPTH)
      deep_round<N, R, DEPTH, false, Q8>(staged, chunks, blocks, c0, rows.at, rows.m_factor, ring,
                                         acc);
    for (; c0 < chunks; c0 += DEPTH)
      deep_round<N, R, DEPTH, true, Q8>(staged, chunks, blocks, c0, rows.at, rows.m_factor, ring,
                                        acc);
    store_rows<N, R, PAIRED>(a, rows.slot, acc);
    if constexpr (!Q8) return;  // fp32 x: one group a CTA (launch_rows)
    cta += gridDim.x;
    if (cta >= a.grid.ctas()) return;  // the same for the whole CTA
    rows = warp_rows<PAIRED, R>(a, cta, blocks);
    deep_prime<R, DEPTH>(rows, blocks, ring);
  }
}

// The chunked path: x staged chunk by chunk, one chunk of codes in flight (gemv_chunk; any x),
// one row group a CTA (its staging is per group anyway; a loop here cost the 7-token fp32
// variant a spill).
template <int N, int R, bool VEC, bool PAIRED, bool Q8>
__device__ __forceinline__ void gemv_chunked(const GemvLaunch& a, const float* __restrict__ x) {
  __shared__ ChunkX<N, Q8> xs;
  const uint32_t cols = uint32_t(a.w[0].cols), blocks = uint32_t(a.w[0].blocks());
  const uint32_t lane = threadIdx.x % 32, chunks = (cols + kChunk - 1) / kChunk;
  const WarpRows<R> rows = warp_rows<PAIRED, R>(a, blockIdx.x, blocks);
  float acc[R][N];
  LaneCodes cur[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int t = 0; t < N; ++t) acc[r][t] = 0.0f;
    cur[r] = load_codes<true>(rows.at[r], 0, lane / 4 < blocks, rows.m_factor[r]);
  }
  // The main loop: chunk c + 1 is whole (its 8 blocks exist), so its loads need no guard.
  uint32_t c = 0;
  for (; (c + 2) * 8 <= blocks; ++c)
    gemv_chunk<N, R, VEC, false, Q8>(x, cols, blocks, c, rows.at, rows.m_factor, cur, acc, xs);
  for (; c < chunks; ++c)
    gemv_chunk<N, R, VEC, true, Q8>(x, cols, blocks, c, rows.at, rows.m_factor, cur, acc, xs);
  store_rows<N, R, PAIRED>(a, rows.slot, acc);
}

// PAIRED: gate (part 0) and up (part 1), each warp R/2 rows of both; silu(gate) * up stored.
// DEPTH 1: x staged chunk by chunk, one chunk of codes in flight (gemv_chunk; any x). DEPTH > 1:
// the deep path (gemv_deep; aligned x that fits in shared memory), two CTAs an SM.
// Q8: x quantized to INT8 per block (GemvX::q8), else fp32.
template <int N, int R, int DEPTH, bool VEC, bool PAIRED, bool Q8>
__global__ void __launch_bounds__(kThreads, DEPTH > 1 || N == 1 ? 2 : 1)
    gemv_int4_kernel(const GemvLaunch a, const float* __restrict__ x) {
  if constexpr (DEPTH > 1)
    gemv_deep<N, R, DEPTH, PAIRED, Q8>(a, x);
  else
    gemv_chunked<N, R, VEC, PAIRED, Q8>(a, x);
}

// The deep path's ring: chunks in flight per row, so that a warp keeps 2-4 KB of codes in flight
// whatever its R (an H200 needs ~25 KB in flight per SM to cover ~700 ns of latency at 4.8 TB/s:
// two CTAs of 8 warps hold 32-64 KB; the old one-chunk loop held 16 KB at R = 4).
constexpr int deep_depth(int r) {
  return r >= 4 ? 2 : r == 2 ? 3 : 4;
}
// Shared memory per CTA for x and its sums, and the most two CTAs of an SM can have (sm_90: 228
// KB an SM, 1 KB of it reserved per CTA). Qwen2-32B's down projection (27648 columns) at one
// token takes 111 KB; wider x or more tokens take the chunked path.
// Quantized x takes 1.25 bytes a column (XQ8Chunk), so up to 92,000 columns fit.
constexpr uint64_t kDeepSharedMax = 113 * 1024;
// What the deep path's launches need to know of this card, read once per process (a magic
// static: ferry's CUDA pass runs on one device).
struct DeepLimits {
  uint64_t shared;     // the most dynamic shared memory a CTA may take: kDeepSharedMax, or less
                       // where a CTA may not opt in to as much (sm_86 and sm_89: 99 KB, sm_75:
                       // 64 KB; asking for 113 KB there fails every launch)
  uint32_t sms;        // multiprocessors
  uint64_t sm_shared;  // shared memory an SM has for its CTAs
  uint64_t reserved;   // shared memory the system reserves per CTA (1 KB since sm_80)
};
inline const DeepLimits& deep_limits() {
  static const DeepLimits limits = [] {
    int device = 0, optin = 0, sms = 0, sm_shared = 0, reserved = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    CUDA_CHECK(
        cudaDeviceGetAttribute(&sm_shared, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
    CUDA_CHECK(cudaDeviceGetAttribute(&reserved, cudaDevAttrReservedSharedMemoryPerBlock, device));
    return DeepLimits{uint64_t(optin) < kDeepSharedMax ? uint64_t(optin) : kDeepSharedMax,
                      uint32_t(sms), uint64_t(sm_shared), uint64_t(reserved)};
  }();
  return limits;
}
inline uint64_t deep_shared_limit() {
  return deep_limits().shared;
}
// The deep path's CTAs this card holds at once with `shared` bytes of x each: two an SM (the
// kernel's launch bounds: 128 registers) where the SM's shared memory takes two, else one.
// Qwen2-7B's down projection (18944 columns) stages 24 KB of q8 x (75 KB fp32): two an SM.
inline uint32_t deep_resident_ctas(uint64_t shared) {
  const DeepLimits& l = deep_limits();
  return l.sms * (2 * (shared + l.reserved) <= l.sm_shared ? 2u : 1u);
}
inline uint64_t deep_shared_bytes(int n, uint64_t cols, bool q8) {
  const uint64_t chunks = (cols + kChunk - 1) / kChunk;
  return uint64_t(n) * chunks * (q8 ? sizeof(XQ8Chunk) : (kChunk + kChunk / 32) * sizeof(float));
}

template <int N, int R, bool PAIRED, bool Q8>
void launch_rows(const GemvLaunch& a, const float* x, cudaStream_t stream) {
  const uint32_t groups = a.grid.ctas();
  const bool vec = a.w[0].cols % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
  const uint64_t shared = deep_shared_bytes(N, a.w[0].cols, Q8);
  // One token only: above it the deep ring and the accumulators pass the 128 registers that two
  // CTAs an SM leave (the compiler spills), and batched decode reads each weight once per N. So
  // do 4 unpaired rows a warp (lm_head, the streaming path's separate gate or up), which keep the
  // chunked path: on the H200 it read 27648 x 5120 at 1.0 TB/s, the deep path at 2 rows 0.82.
  if constexpr (N == 1 && (R <= 2 || PAIRED)) {
    if (vec && shared <= deep_shared_limit()) {
      constexpr int D = deep_depth(R);
      // Above 48 KB of dynamic shared memory a kernel must opt in, once per device function; a
      // magic static (set before the first launch, never changed) does it once per process,
      // as ferry's CUDA pass runs on one device.
      static const bool opted_in = [] {
        CUDA_CHECK(cudaFuncSetAttribute(gemv_int4_kernel<N, R, D, true, PAIRED, Q8>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        int(deep_shared_limit())));
        return true;
      }();
      (void)opted_in;
      // fp32 x (GemvX::f32, for comparison) keeps one group a CTA: its loop's registers spilled
      // the paired variants on sm_75 and sm_80 (24 bytes at R = 4), and it stages 4.1 bytes a
      // column where q8 x takes 1.25 and no quantization to save.
      const uint32_t ctas =
          Q8 ? gemv_launch_ctas(groups, a.max_ctas, deep_resident_ctas(shared)) : groups;
      gemv_int4_kernel<N, R, D, true, PAIRED, Q8><<<ctas, kThreads, shared, stream>>>(a, x);
      return;
    }
  }
  const uint32_t ctas = groups;  // the chunked path: one CTA a group, whatever max_ctas
  if (vec) {
    gemv_int4_kernel<N, R, 1, true, PAIRED, Q8><<<ctas, kThreads, 0, stream>>>(a, x);
  } else {
    gemv_int4_kernel<N, R, 1, false, PAIRED, Q8><<<ctas, kThreads, 0, stream>>>(a, x);
  }
}

template <int N, bool PAIRED, bool Q8>
void launch(const GemvLaunch& a, const float* x, cudaStream_t stream) {
  const uint32_t r = a.grid.rows_per_warp;
  if (r == 4)
    launch_rows<N, 4, PAIRED, Q8>(a, x, stream);
  else if (r == 2 || PAIRED)  // paired grids have R >= 2 (gemv_grid)
    launch_rows<N, 2, PAIRED, Q8>(a, x, stream);
  else if constexpr (!PAIRED)
    launch_rows<N, 1, false, Q8>(a, x, stream);
}

template <bool PAIRED, bool Q8>
void launch_tokens(const GemvLaunch& a, const float* x, uint64_t k, cudaStream_t stream) {
  switch (k) {
    case 1:
      return launch<1, PAIRED, Q8>(a, x, stream);
    case 2:
      return launch<2, PAIRED, Q8>(a, x, stream);
    case 3:
      return launch<3, PAIRED, Q8>(a, x, stream);
    case 4:
      return launch<4, PAIRED, Q8>(a, x, stream);
    case 5:
      return launch<5, PAIRED, Q8>(a, x, stream);
    case 6:
      return launch<6, PAIRED, Q8>(a, x, stream);
    case 7:
      return launch<7, PAIRED, Q8>(a, x, stream);
    default:
      return launch<8, PAIRED, Q8>(a, x, stream);
  }
}

// The two instantiations of the kernel's launchers for k <= 8 tokens, paired (gate and up) or not.
void launch_f32(const GemvLaunch& a, const float* x, uint64_t k, bool paired, cudaStream_t stream);
void launch_q8(const GemvLaunch& a, const float* x, uint64_t k, bool paired, cudaStream_t stream);

}  // namespace ferry::gemv_int4
