// Tiled causal attention for prefill over the f16 KV cache (FlashAttention-2, SIMT): the CPU twin
// is attention_tiled_cpu (kernels/attention_tiled_cpu.cpp), the same blocks, tiles and online
// softmax. Tile sizes and the selection rule: kernels/attention.hpp.
//
// One CTA of 256 threads per (kv head, block of Bq queries). Its rows are (query, query head)
// pairs, row r = query q0 + r / G, head kvh * G + r % G. A row is L = HD / 8 lanes of one warp,
// each holding 8 dimensions of the row's query and of its accumulator in registers; a thread
// holds 4 rows (the CTA 4 x 256 / L = 8192 / HD rows), so q and o take 64 registers.
//
// The CTA walks positions 0 .. pos + q0 + Bq - 1 in tiles of Bk. Each K and V tile is staged
// ONCE in shared memory with 16-byte copies, double-buffered (cp.async from sm_80: the next
// tile's copy runs under this tile's math; plain 16-byte loads and stores on sm_75), and every
// row of the CTA reads it from there. Per tile:
//   scores  each lane dots its 8 dimensions of 2 keys (16-byte shared loads, broadcast to the
//           warp's rows) with its 4 rows' q; a transposed butterfly over the row's L lanes sums
//           the 8 partial dots in 7 to 9 shuffles, leaving one per lane, which it writes as
//           s[r][j] (-inf past the row's own position: causal);
//   softmax the row's lanes split the tile's scores: new max m', alpha = e^(m - m'),
//           p = e^(s - m') written back, l = l alpha + sum p, o *= alpha;
//   p v     each lane adds p[r][j] v_j for its 8 dimensions (16-byte loads of v_j and of 4 p's).
// At the end o / l goes to out in the layout attention_cuda writes.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "base/error.hpp"
#include "kernels/attention.hpp"
#include "kernels/cuda_check.hpp"
#include "kernels/cuda_common.cuh"

namespace ferry {
namespace {

constexpr uint32_t kThreads = 256;
constexpr uint32_t kRowsPerThread = 4;

struct TiledArgs {
  const float* q;         // [n, heads, HD]
  const uint16_t *k, *v;  // f16 caches [ctx, kv_heads, HD]
  uint32_t n, pos, heads, kv_heads;
  float* out;  // [n, heads, HD]
};

// Stages positions begin .. begin+BK-1 of K and V (this kv head's HD columns) into kt and vt
// ([BK][HD] halves each): BK x HD / 8 copies of 16 bytes per matrix, spread over the threads;
// positions at or past kv_end are zeros (masked later; zeros keep 0 x v finite).
template <int HD, int BK>
__device__ __forceinline__ void stage_tile(const TiledArgs& a, const uint16_t* k, const uint16_t* v,
                                           uint32_t begin, uint32_t kv_end, uint16_t* kt,
                                           uint16_t* vt) {
  constexpr uint32_t kLanes = HD / 8, kCopies = BK * kLanes;
  static_assert(kCopies % kThreads == 0);  // 1 or 2 copies per thread and matrix
  const size_t stride = size_t(a.kv_heads) * HD;
#pragma unroll
  for (uint32_t n = 0; n < kCopies / kThreads; ++n) {
    const uint32_t c = threadIdx.x + n * kThreads, row = c / kLanes, col = (c % kLanes) * 8,
                   p = begin + row;
    const bool valid = p < kv_end;
    const size_t at = valid ? p * stride + col : 0;  // row 0 always exists; nothing is read
    cuda::copy16(kt + row * HD + col, k + at, valid);
    cuda::copy16(vt + row * HD + col, v + at, valid);
  }
}

// 8 halves in shared memory (one 16-byte load) -> 8 floats.
__device__ __forceinline__ void halves8_shared(const uint16_t* p, float (&f)[8]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 two = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
    f[2 * i] = two.x;
    f[2 * i + 1] = two.y;
  }
}

// Sum or max over the L lanes of a row (xor butterfly: every lane gets the same bits).
template <uint32_t L>
__device__ __forceinline__ float row_sum(float x) {
#pragma unroll
  for (uint32_t off = L / 2; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}
template <uint32_t L>
__device__ __forceinline__ float row_max(float x) {
#pragma unroll
  for (uint32_t off = L / 2; off > 0; off /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
  return x;
}

// Sums each of V values over a row's L lanes and leaves one sum per lane (a transposed
// butterfly): at each step a lane keeps half of its values and sends the other half to its
// partner, which keeps the opposite half, so V values cost V - 1 shuffles (plus one per step
// left once a single value remains) instead of V log2(L). The lane's x[0] ends as the sum of
// value number sum over halving steps of (sub & OFF ? H : 0); with V = 8:
// 4 [sub & L/2] + 2 [sub & L/4] + [sub & L/8], held by the L / 8 lanes that differ below L / 8.
template <uint32_t OFF, uint32_t COUNT, uint32_t V>
__device__ __forceinline__ void transpose_sum(float (&x)[V], uint32_t sub) {
  if constexpr (OFF > 0) {
    if constexpr (COUNT > 1) {
      constexpr uint32_t H = COUNT / 2;
      const bool hi = (sub & OFF) != 0;
#pragma unroll
      for (uint32_t u = 0; u < H; ++u) {
        const float send = hi ? x[u] : x[u + H], keep = hi ? x[u + H] : x[u];
        x[u] = keep + __shfl_xor_sync(0xffffffffu, send, OFF);
      }
      transpose_sum<OFF / 2, H>(x, sub);
    } else {
      x[0] += __shfl_xor_sync(0xffffffffu, x[0], OFF);
      transpose_sum<OFF / 2, 1>(x, sub);
    }
  }
}

template <int G, int HD>
__global__ void __launch_bounds__(kThreads) attention_tiled_kernel(TiledArgs a) {
  constexpr uint32_t L = HD / 8, kSlots = kThreads / L, R = kRowsPerThread;
  constexpr uint32_t kRows = R * kSlots, BQ = kRows / G, BK = attention_tile_keys(HD);
  constexpr uint32_t kScoreStride = BK + 4;  // 16-byte rows, 4 banks apart: conflict-free
  static_assert(kRows == attention_tile_rows(HD) && BQ >= 1 && BK % 4 == 0);
  __shared__ __align__(16) uint16_t kv[2][2][BK * HD];      // [buffer][K, V][BK][HD]
  __shared__ __align__(16) float sc[kRows * kScoreStride];  // scores, then p, [row][BK]

  // Blocks in reverse: the last queries walk the longest prefix, so the GPU starts them first
  // and the short early blocks fill the tail instead of the long ones.
  const uint32_t kvh = blockIdx.x, q0 = (gridDim.y - 1 - blockIdx.y) * BQ;
  const uint32_t nq = a.n - q0 < BQ ? a.n - q0 : BQ;
  const uint32_t kv_end = a.pos + q0 + nq;  // the block's last query sees positions < kv_end
  const uint32_t sub = threadIdx.x % L, slot = threadIdx.x / L;
  const float scale = rsqrtf(float(HD));
  const uint16_t* k = a.k + size_t(kvh) * HD;
  const uint16_t* v = a.v + size_t(kvh) * HD;

  // This thread's rows slot + i * kSlots: their query positions, queries and state. Rows past
  // the block's queries dot zeros and are never written.
  float q[R][8], o[R][8], m[R], l[R];
#pragma unroll
  for (uint32_t i = 0; i < R; ++i) {
    const uint32_t r = slot + i * kSlots, t = r / G;
    const bool valid = r < BQ * G && t < nq;
    const float* src = a.q + (size_t(q0 + t) * a.heads + kvh * G + r % G) * HD + sub * 8;
    const float4 lo = valid ? *reinterpret_cast<const float4*>(src) : make_float4(0, 0, 0, 0);
    const float4 hi = valid ? *reinterpret_cast<const float4*>(src + 4) : make_float4(0, 0, 0, 0);
    const float qv[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      q[i][e] = qv[e];
      o[i][e] = 0.0f;
    }
    m[i] = -INFINITY;
    l[i] = 0.0f;
  }

  // The score this lane writes: the scores of 2 keys x R rows reduce to one per lane
  // (transpose_sum), value v = 2 i + key; L / 8 lanes hold each and the first of them writes.
  static_assert(2 * R == 8 && L >= 8 && BK % 2 == 0);
  const uint32_t my_v =
      4 * ((sub & (L / 2)) != 0) + 2 * ((sub & (L / 4)) != 0) + ((sub & (L / 8)) != 0);
  const uint32_t my_r = slot + my_v / 2 * kSlots, my_key = my_v % 2, my_t = my_r / G;
  const uint32_t my_qpos = a.pos + q0 + (my_r < BQ * G && my_t < nq ? my_t : 0);
  const bool writer = (sub & (L / 8 - 1)) == 0;
  float* my_sc = sc + my_r * kScoreStride + my_key;

  const uint32_t tiles = (kv_end + BK - 1) / BK;
  stage_tile<HD, BK>(a, k, v, 0, kv_end, kv[0][0], kv[0][1]);
  cuda::copy_commit();
  for (uint32_t it = 0; it < tiles; ++it) {
    const uint32_t buf = it & 1, begin = it * BK;
    if (it + 1 < tiles) {  // the next tile's copy runs under this one's math
      stage_tile<HD, BK>(a, k, v, begin + BK, kv_end, kv[buf ^ 1][0], kv[buf ^ 1][1]);
      cuda::copy_commit();
      cuda::copy_wait<1>();
    } else {
      cuda::copy_wait<0>();
    }
    __syncthreads();
    const uint16_t *kt = kv[buf][0], *vt = kv[buf][1];

    // Scores, 2 keys at a time: all lanes walk the same keys (the shuffles need every lane).
    // Rows past the block and positions past a row's own (causal) score -inf.
#pragma unroll 2
    for (uint32_t j = 0; j < BK; j += 2) {
      float k0[8], k1[8], x[2 * R];
      halves8_shared(kt + j * HD + sub * 8, k0);
      halves8_shared(kt + (j + 1) * HD + sub * 8, k1);
#pragma unroll
      for (uint32_t i = 0; i < R; ++i) {
        float d0 = 0, d1 = 0;
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          d0 = fmaf(q[i][e], k0[e], d0);
          d1 = fmaf(q[i][e], k1[e], d1);
        }
        x[2 * i] = d0;
        x[2 * i + 1] = d1;
      }
      transpose_sum<L / 2, 2 * R>(x, sub);
      if (writer) my_sc[j] = begin + j + my_key <= my_qpos ? x[0] * scale : -INFINITY;
    }
    __syncwarp();

    // Online softmax: a row's lanes split its BK scores.
#pragma unroll
    for (uint32_t i = 0; i < R; ++i) {
      float* s = sc + (slot + i * kSlots) * kScoreStride;
      float mx = -INFINITY;
      for (uint32_t j = sub; j < BK; j += L) mx = fmaxf(mx, s[j]);
      const float m_new = fmaxf(m[i], row_max<L>(mx));
      // Key 0 is in every row's view, so m_new is finite from the first tile on; the guard
      // keeps a row that has seen nothing at zero rather than NaN (as the CPU twin).
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;
      const float alpha = m_new == -INFINITY ? 1.0f : expf(m[i] - m_use);
      float ps = 0;
      for (uint32_t j = sub; j < BK; j += L) ps += s[j] = expf(s[j] - m_use);
      l[i] = l[i] * alpha + row_sum<L>(ps);
      m[i] = m_new;
#pragma unroll
      for (int e = 0; e < 8; ++e) o[i][e] *= alpha;
    }
    __syncwarp();

    // o += p v: 4 positions at a time, their p's one 16-byte load per row.
#pragma unroll 1
    for (uint32_t j = 0; j < BK; j += 4) {
      float4 p[R];
#pragma unroll
      for (uint32_t i = 0; i < R; ++i)
        p[i] = *reinterpret_cast<const float4*>(sc + (slot + i * kSlots) * kScoreStride + j);
#pragma unroll
      for (uint32_t jj = 0; jj < 4; ++jj) {
        float vr[8];
        halves8_shared(vt + (j + jj) * HD + sub * 8, vr);
#pragma unroll
        for (uint32_t i = 0; i < R; ++i) {
          const float pj = jj == 0 ? p[i].x : jj == 1 ? p[i].y : jj == 2 ? p[i].z : p[i].w;
#pragma unroll
          for (int e = 0; e < 8; ++e) o[i][e] = fmaf(pj, vr[e], o[i][e]);
        }
      }
    }
    __syncthreads();  // before the next iteration stages into the buffer just read
  }

#pragma unroll
  for (uint32_t i = 0; i < R; ++i) {
    const uint32_t r = slot + i * kSlots, t = r / G;
    if (r >= BQ * G || t >= nq) continue;
    float* dst = a.out + (size_t(q0 + t) * a.heads + kvh * G + r % G) * HD + sub * 8;
    const float inv = 1.0f / l[i];
    *reinterpret_cast<float4*>(dst) =
        make_float4(o[i][0] * inv, o[i][1] * inv, o[i][2] * inv, o[i][3] * inv);
    *reinterpret_cast<float4*>(dst + 4) =
        make_float4(o[i][4] * inv, o[i][5] * inv, o[i][6] * inv, o[i][7] * inv);
  }
}

template <int G>
void launch_hd(const TiledArgs& a, uint64_t head_dim, cudaStream_t stream) {
  const uint32_t blocks = uint32_t((a.n + attention_tile_queries(head_dim, G) - 1) /
                                   attention_tile_queries(head_dim, G));
  const dim3 grid{a.kv_heads, blocks};
  switch (head_dim) {
    case 64:
      attention_tiled_kernel<G, 64><<<grid, kThreads, 0, stream>>>(a);
      break;
    case 128:
      attention_tiled_kernel<G, 128><<<grid, kThreads, 0, stream>>>(a);
      break;
    default:  // 256: attention_tiled_supports admits no other
      attention_tiled_kernel<G, 256><<<grid, kThreads, 0, stream>>>(a);
      break;
  }
}

}  // namespace

void attention_tiled_cuda(const float* q, const uint16_t* k_cache, const uint16_t* v_cache,
                          uint64_t n, uint64_t pos, uint64_t heads, uint64_t kv_heads,
                          uint64_t head_dim, float* out, CUstream_st* stream) {
  if (n == 0 || heads == 0) return;
  check_attention_shape(heads, kv_heads, head_dim);
  if (!attention_tiled_supports(heads, kv_heads, head_dim))
    throw Error("attention_tiled_cuda: " + std::to_string(heads) + " heads over " +
                std::to_string(kv_heads) + " kv heads of dimension " + std::to_string(head_dim) +
                " is not a tiled shape (head_dim 64/128/256, 1 to 8 heads per kv head); use "
                "attention_cuda");
  const uint64_t group = heads / kv_heads, bq = attention_tile_queries(head_dim, group);
  // Grid y is limited to 65,535 query blocks; positions are 32-bit inside the kernel.
  if ((n + bq - 1) / bq > 65535 || pos + n > UINT32_MAX)
    throw Error(Setting::ctx, "attention_tiled_cuda: " + std::to_string(n) +
                                  " queries at position " + std::to_string(pos) +
                                  " exceed the grid; lower the context");
  const TiledArgs a{
      q, k_cache, v_cache, uint32_t(n), uint32_t(pos), uint32_t(heads), uint32_t(kv_heads), out};
  switch (group) {
    case 1:
      launch_hd<1>(a, head_dim, stream);
      break;
    case 2:
      launch_hd<2>(a, head_dim, stream);
      break;
    case 3:
      launch_hd<3>(a, head_dim, stream);
      break;
    case 4:
      launch_hd<4>(a, head_dim, stream);
      break;
    case 5:
      launch_hd<5>(a, head_dim, stream);
      break;
    case 6:
      launch_hd<6>(a, head_dim, stream);
      break;
    case 7:
      launch_hd<7>(a, head_dim, stream);
      break;
    default:
      launch_hd<8>(a, head_dim, stream);
      break;
  }
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace ferry
