// The compute kernels of the CUDA backend against their CPU twins, as normalized mean squared
// error (the twins sum in another order, so bit equality is not expected). Label gpu: skips with
// a message where no GPU is present.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "base/dtype.hpp"
#include "kernels/attention.hpp"
#include "kernels/cuda_graph.hpp"
#include "kernels/dequant.hpp"
#include "kernels/elementwise.hpp"
#include "kernels/gemv_fused.hpp"
#include "kernels/matmul.hpp"
#include "kernels/matmul_int8.hpp"
#include "kernels/matvec.hpp"
#include "quantizer/int4_quantize.hpp"
#include "quantizer/int8_quantize.hpp"
#include "tests/gpu_util.hpp"

namespace ferry {
namespace {

double nmse(const std::vector<float>& got, const std::vector<float>& want) {
  double err = 0, ref = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    err += double(got[i] - want[i]) * double(got[i] - want[i]);
    ref += double(want[i]) * double(want[i]);
  }
  return err / ref;
}

// Quantizes Gaussian weights in `scheme`, multiplies n random activations on both devices; the
// twin is the scalar reference, token by token. `x_offset` floats shift x off its 16-byte
// alignment (the kernel then stages x element by element).
// GemvX::q8: the twin is gemv_int4_fused_cpu's q8 path, the expression of the CPU backend's own
// INT4 x INT8 product (tests/test_gemv_fused.cpp holds them equal bit for bit), on activations
// quantized the same way.
// `edge`: each token's blocks 1, 2 and 3 made all zero, tiny (max ~1e-37, where 127 / max is
// infinite: kQ8MinBlockMax) and all NaN, which the q8 quantizer must meet as the CPU's does.
void gemv_case(GemvX xq, Scheme scheme, uint64_t rows, uint64_t cols, uint64_t n,
               uint64_t x_offset = 0, bool edge = false) {
  const char* act = edge ? "q8e" : xq == GemvX::q8 ? "q8" : "f32";
  SCOPED_TRACE(std::string(scheme_name(scheme)) + " " + std::to_string(rows) + "x" +
               std::to_string(cols) + " n=" + std::to_string(n) + " " + act);
  std::mt19937 rng(uint32_t(rows * 31 + cols + n));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const uint64_t blocks = int4_blocks_per_row(cols);
  std::vector<float> w(rows * cols), x(n * cols);  // [rows, cols], [n, cols]
  for (float& v : w) v = 0.02f * normal(rng);
  for (float& v : x) v = normal(rng);
  for (uint64_t t = 0; edge && t < n; ++t)
    for (uint64_t c = kBlock; c < 4 * kBlock && c < cols; ++c) {
      float& v = x[t * cols + c];
      v = c < 2 * kBlock ? 0.0f : c < 3 * kBlock ? v * 1e-37f : NAN;
    }
  std::vector<uint8_t> q(rows * blocks * kBlockBytes);               // [rows, blocks * 64]
  std::vector<uint16_t> scales(rows * blocks), mins(rows * blocks);  // [rows, blocks]
  quantize_int4(w.data(), rows, cols, scheme, q.data(), scales.data(), mins.data());
  const bool has_mins = scheme_has_mins(scheme);
  std::vector<float> want(n * rows), got(n * rows, NAN);  // NaN: an unwritten element shows
  const Int4View host{q.data(), scales.data(), has_mins ? mins.data() : nullptr, rows, cols};
  if (xq == GemvX::q8) {  // the q8 twin: matmul_int4_q8_cpu's expression at any width (the CPU
                          // product itself takes fp32 past 32,768 columns)
    const GemvOut out{host, want.data(), nullptr};
    gemv_int4_fused_cpu(&out, 1, x.data(), n, GemvStore::set, GemvX::q8);
  } else {
    for (uint64_t t = 0; t < n; ++t)
      matvec_int4_cpu(host, x.data() + t * cols, want.data() + t * rows);
  }
  DeviceArray<uint8_t> d_q(q);
  DeviceArray<uint16_t> d_s(scales), d_m(mins);
  std::vector<float> shifted(x_offset, 0.0f);
  shifted.insert(shifted.end(), x.begin(), x.end());
  DeviceArray<float> d_x(shifted), d_y(got);
  const Int4View dev{d_q.get(), d_s.get(), has_mins ? d_m.get() : nullptr, rows, cols};
  if (xq == GemvX::q8)
    matmul_int4_q8_cuda(dev, d_x.get() + x_offset, n, d_y.get(), nullptr);
  else
    matmul_int4_cuda(dev, d_x.get() + x_offset, n, d_y.get(), nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  got = d_y.to_host();
  // Grids capped at 1 and 3 CTAs (each loops over many row groups, staging x once) and one CTA
  // per group give the same bits as the default grid.
  for (uint32_t cap : {1u, 3u, kGemvGridFull}) {
    DeviceArray<float> d_c(std::vector<float>(n * rows, NAN));
    const GemvOut out{dev, d_c.get(), nullptr};
    gemv_int4_fused_cuda(&out, 1, d_x.get() + x_offset, n, GemvStore::set, xq, nullptr, cap);
    EXPECT_EQ(d_c.to_host(), got) << "grid capped at " << cap << " CTAs";
  }
  for (float v : want) ASSERT_FALSE(std::isnan(v));  // the twin skips the NaN block
  const double e = nmse(got, want);
  std::printf("  gemv %-3s %-9s %5llux%-5llu n=%llu  NMSE vs CPU twin %.3g\n", act,
              std::string(scheme_name(scheme)).c_str(), (unsigned long long)rows,
              (unsigned long long)cols, (unsigned long long)n, e);
  // fp32 sums of up to 8192 terms in two orders, and the kernel's 0.5 + code / 256 form (relative
  // ~2^-20, kernels/gemv_int4_kernel.cuh): NMSE ~1e-12, far below 1e-10. q8: the same q (bit for
  // bit) and exact int32 block sums, the float sums over blocks in another order: as small.
  EXPECT_LT(e, 1e-10);
}

TEST(GpuKernels, GemvInt4MatchesCpuTwin) {
  FERRY_REQUIRE_GPU();
  for (GemvX xq : {GemvX::f32, GemvX::q8})
    for (Scheme s : {Scheme::sym, Scheme::asym_clip})
      for (uint64_t n : {1u, 3u, 8u, 11u}) {
        const auto gemv_case = [xq](auto... args) { ferry::gemv_case(xq, args...); };
        gemv_case(s, 1000, 4096, n);   // 4 whole chunks: the unguarded main loop, 1 row a warp
        gemv_case(s, 37, 320, n);      // one partial chunk, rows not a multiple of 8 per CTA
        gemv_case(s, 64, 960, n);      // 8 blocks, the last partial: guarded chunks only
        gemv_case(s, 40, 2500, n);     // 20 blocks: main loop, then a partial chunk
        gemv_case(s, 5000, 1024, n);   // 2 rows a warp, one whole chunk, 5000 % 16 rows left over
        gemv_case(s, 9000, 2176, n);   // 4 rows a warp, 2 chunks + 1 block, 9000 % 32 left over
        gemv_case(s, 70, 321, n);      // cols not a multiple of 4: x staged element by element
        gemv_case(s, 70, 2048, n, 1);  // x off its 16-byte alignment
        // One token: the deep path (x staged whole, DEPTH chunks in flight) with its unguarded
        // rounds, at 1 and 2 rows a warp; and x too wide for its shared memory (chunked path).
        if (n == 1) {
          gemv_case(s, 200, 16384, n);  // R = 1, DEPTH 4: 16 chunks
          gemv_case(s, 4300, 5200, n);  // R = 2, DEPTH 3: 40.6 blocks, a partial last chunk
          gemv_case(s, 100, 28800, n);  // 29 chunks: 122 KB of fp32 x and sums, over the deep
                                        // limit (q8: 37 KB, deep)
          gemv_case(s, 20, 96000, n);   // 94 chunks: 120 KB of q8 x, over its deep limit too
        }
      }
  // Zero, tiny and all-NaN blocks of x: the deep path (1 token), the chunked one at 3 and 8, and
  // the element-by-element staging (odd width, x off its alignment).
  for (auto [rows, cols, n] : {std::array<uint64_t, 3>{200, 16384, 1},
                               {100, 28800, 1},
                               {1000, 4096, 3},
                               {40, 2500, 8},
                               {70, 1001, 2}})
    gemv_case(GemvX::q8, Scheme::asym_clip, rows, cols, n, 0, true);
  gemv_case(GemvX::q8, Scheme::sym, 70, 2048, 1, 1, true);
}

// The INT8 GEMV (kernels/gemv_int8.cu) against matmul_int8_cpu, and the INT8 -> bf16 dequant
// (kernels/dequant.cu) against dequant_int8_bf16_cpu bit for bit.
void int8_case(uint64_t rows, uint64_t cols, uint64_t n) {
  SCOPED_TRACE("int8 " + std::to_string(rows) + "x" + std::to_string(cols) +
               " n=" + std::to_string(n));
  std::mt19937 rng(uint32_t(rows * 37 + cols + n));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> w(rows * cols), x(n * cols);
  for (float& v : w) v = 0.02f * normal(rng);
  for (float& v : x) v = normal(rng);
  std::vector<int8_t> q(int8_code_bytes(rows, cols));
  std::vector<uint16_t> scales(int8_scale_count(rows, cols));
  quantize_int8(w.data(), rows, cols, q.data(), scales.data());
  std::vector<float> want(n * rows), got(n * rows, NAN);
  CpuPool pool(1);
  matmul_int8_cpu(pool, {q.data(), scales.data(), rows, cols}, x.data(), n, want.data());
  DeviceArray<int8_t> d_q(q);
  DeviceArray<uint16_t> d_s(scales);
  DeviceArray<float> d_x(x), d_y(got);
  matmul_int8_cuda({d_q.get(), d_s.get(), rows, cols}, d_x.get(), n, d_y.get(), nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  got = d_y.to_host();
  const double e = nmse(got, want);
  std::printf("  gemv int8 %5llux%-5llu n=%llu  NMSE vs CPU twin %.3g\n", (unsigned long long)rows,
              (unsigned long long)cols, (unsigned long long)n, e);
  EXPECT_LT(e, 1e-10);  // fp32 sums in two orders, as for INT4
  std::vector<uint16_t> bf_want(rows * cols), bf_got(rows * cols, 0xffff);
  dequant_int8_bf16_cpu({q.data(), scales.data(), rows, cols}, bf_want.data());
  DeviceArray<uint16_t> d_b(bf_got);
  dequant_int8_bf16_cuda({d_q.get(), d_s.get(), rows, cols}, d_b.get(), nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(d_b.to_host(), bf_want);
  // The epilogue (gemv_int8_fused_cuda): a bias, and the residual add, against the CPU twin.
  std::vector<uint16_t> bias(rows);
  for (uint16_t& b : bias) b = float_to_bf16(0.1f * normal(rng));
  std::vector<float> residual(n * rows);
  for (float& v : residual) v = normal(rng);
  const Int8View host{q.data(), scales.data(), rows, cols};
  const Int8View dev{d_q.get(), d_s.get(), rows, cols};
  DeviceArray<uint16_t> d_bias(bias);
  for (const GemvStore store : {GemvStore::set, GemvStore::add}) {
    std::vector<float> twin = residual;
    const GemvOut8 host_out{host, twin.data(), bias.data()};
    gemv_int8_fused_cpu(&host_out, 1, x.data(), n, store);
    DeviceArray<float> d_r(residual);
    const GemvOut8 dev_out{dev, d_r.get(), d_bias.get()};
    gemv_int8_fused_cuda(&dev_out, 1, d_x.get(), n, store, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_LT(nmse(d_r.to_host(), twin), 1e-10) << (store == GemvStore::add ? "add" : "set");
  }
  // Three parts in one launch (k and v, and a third): the same weight thrice, each part with its
  // own output and bias, so every CTA must find its part (rows not a multiple of 8: a part ends
  // inside a CTA's rows).
  std::vector<float> t0(n * rows), t1(n * rows), t2(n * rows);
  const GemvOut8 host3[3] = {
      {host, t0.data(), bias.data()}, {host, t1.data(), nullptr}, {host, t2.data(), bias.data()}};
  gemv_int8_fused_cpu(host3, 3, x.data(), n, GemvStore::set);
  DeviceArray<float> d0(t0), d1(t1), d2(t2);
  const GemvOut8 dev3[3] = {
      {dev, d0.get(), d_bias.get()}, {dev, d1.get(), nullptr}, {dev, d2.get(), d_bias.get()}};
  gemv_int8_fused_cuda(dev3, 3, d_x.get(), n, GemvStore::set, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_LT(nmse(d0.to_host(), t0), 1e-10) << "part 0";
  EXPECT_LT(nmse(d1.to_host(), t1), 1e-10) << "part 1";
  EXPECT_LT(nmse(d2.to_host(), t2), 1e-10) << "part 2";
}

TEST(GpuKernels, GemvAndDequantInt8MatchCpuTwins) {
  FERRY_REQUIRE_GPU();
  for (uint64_t n : {1u, 3u, 8u, 11u}) {
    int8_case(1000, 4096, n);
    int8_case(37, 320, n);  // a partial last block, rows not a multiple of 8
    int8_case(40, 2500, n);
    int8_case(9, 130, n);  // cols not a multiple of 4: x read element by element
  }
}

std::vector<float> random_vector(uint64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

// Output buffers start as NaN, so that an element a kernel fails to write shows in the result.
std::vector<float> nans(uint64_t n) {
  return std::vector<float>(n, NAN);
}

void expect_close(const char* what, const std::vector<float>& got, const std::vector<float>& want,
                  double bound) {
  const double e = nmse(got, want);
  std::printf("  %-10s NMSE vs CPU twin %.3g (bound %.0e)\n", what, e, bound);
  EXPECT_LT(e, bound) << what;
}

// A quantized weight on both sides, with a bf16 bias.
struct TwinWeight {
  std::vector<uint8_t> q;
  std::vector<uint16_t> scales, mins, bias;
  DeviceArray<uint8_t> d_q;
  DeviceArray<uint16_t> d_s, d_m, d_b;
  Int4View host, device;
  TwinWeight(uint64_t rows, uint64_t cols, Scheme scheme, uint32_t seed)
      : q(rows * int4_blocks_per_row(cols) * kBlockBytes),
        scales(rows * int4_blocks_per_row(cols)),
        mins(scales.size()) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> w(rows * cols);
    for (float& v : w) v = 0.02f * normal(rng);
    quantize_int4(w.data(), rows, cols, scheme, q.data(), scales.data(), mins.data());
    for (uint64_t i = 0; i < rows; ++i) bias.push_back(float_to_bf16(0.1f * normal(rng)));
    d_q = DeviceArray<uint8_t>(q);
    d_s = DeviceArray<uint16_t>(scales);
    d_m = DeviceArray<uint16_t>(mins);
    d_b = DeviceArray<uint16_t>(bias);
    const bool m = scheme_has_mins(scheme);
    host = {q.data(), scales.data(), m ? mins.data() : nullptr, rows, cols};
    device = {d_q.get(), d_s.get(), m ? d_m.get() : nullptr, rows, cols};
  }
};

// The fused launches (kernels/gemv_fused.hpp) against their CPU twins: q/k/v in one grid with
// biases (Qwen2-32B's 5120/1024/1024 rows: 2 a warp, and a small model's: 1 a warp), the
// residual store, and gate/up paired (2 and 4 rows a warp), for 1, 3, 8 and 11 tokens.
TEST(GpuKernels, FusedGemvMatchesCpuTwins) {
  FERRY_REQUIRE_GPU();
  for (GemvX xq : {GemvX::f32, GemvX::q8})
    for (Scheme s : {Scheme::sym, Scheme::asym_clip})
      for (uint64_t n : {1u, 3u, 8u, 11u})
        for (uint64_t cols : {2176u, 320u, 8320u}) {
          if (cols == 8320 && n != 1) continue;  // the deep path's unguarded rounds: one token
          SCOPED_TRACE(std::string(scheme_name(s)) + " n=" + std::to_string(n) +
                       " cols=" + std::to_string(cols) + (xq == GemvX::q8 ? " q8" : " f32"));
          const std::vector<float> x = random_vector(n * cols, 3);
          DeviceArray<float> d_x(x);
          for (uint64_t big : {0u, 1u}) {
            const uint64_t rq = big ? 5120 : 96, rk = big ? 1024 : 40;
            TwinWeight q(rq, cols, s, 1), k(rk, cols, s, 2), v(rk, cols, s, 3);
            std::vector<float> yq(n * rq), yk(n * rk), yv(n * rk);
            const GemvOut host[3] = {{q.host, yq.data(), q.bias.data()},
                                     {k.host, yk.data(), k.bias.data()},
                                     {v.host, yv.data(), nullptr}};
            gemv_int4_fused_cpu(host, 3, x.data(), n, GemvStore::set, xq);
            DeviceArray<float> d_q(nans(n * rq)), d_k(nans(n * rk)), d_v(nans(n * rk));
            const GemvOut dev[3] = {{q.device, d_q.get(), q.d_b.get()},
                                    {k.device, d_k.get(), k.d_b.get()},
                                    {v.device, d_v.get(), nullptr}};
            gemv_int4_fused_cuda(dev, 3, d_x.get(), n, GemvStore::set, xq, nullptr);
            expect_close("fused q", d_q.to_host(), yq, 1e-10);
            expect_close("fused k", d_k.to_host(), yk, 1e-10);
            expect_close("fused v", d_v.to_host(), yv, 1e-10);
            for (uint32_t cap : {1u, 3u, kGemvGridFull}) {  // a CTA's groups span the parts
              DeviceArray<float> c_q(nans(n * rq)), c_k(nans(n * rk)), c_v(nans(n * rk));
              const GemvOut capped[3] = {{q.device, c_q.get(), q.d_b.get()},
                                         {k.device, c_k.get(), k.d_b.get()},
                                         {v.device, c_v.get(), nullptr}};
              gemv_int4_fused_cuda(capped, 3, d_x.get(), n, GemvStore::set, xq, nullptr, cap);
              EXPECT_EQ(c_q.to_host(), d_q.to_host()) << "q, grid capped at " << cap;
              EXPECT_EQ(c_k.to_host(), d_k.to_host()) << "k, grid capped at " << cap;
              EXPECT_EQ(c_v.to_host(), d_v.to_host()) << "v, grid capped at " << cap;
            }
            // The residual store: y += W x.
            std::vector<float> res = random_vector(n * rq, 4);
            DeviceArray<float> d_res(res);
            const GemvOut h1{q.host, res.data(), nullptr}, g1{q.device, d_res.get(), nullptr};
            gemv_int4_fused_cpu(&h1, 1, x.data(), n, GemvStore::add, xq);
            gemv_int4_fused_cuda(&g1, 1, d_x.get(), n, GemvStore::add, xq, nullptr);
            expect_close("residual store", d_res.to_host(), res, 1e-10);
            // A group served twice by a looping CTA would add W x twice: only the add store shows
            // it (set writes the same value again).
            for (uint32_t cap : {1u, 3u, kGemvGridFull}) {
              DeviceArray<float> c_res(random_vector(n * rq, 4));
              const GemvOut c1{q.device, c_res.get(), nullptr};
              gemv_int4_fused_cuda(&c1, 1, d_x.get(), n, GemvStore::add, xq, nullptr, cap);
              EXPECT_EQ(c_res.to_host(), d_res.to_host()) << "residual, grid capped at " << cap;
            }
            // gate/up paired: 5120 rows a weight gives 4 rows a warp, 96 gives 2.
            TwinWeight up(rq, cols, s, 5);
            DeviceArray<float> d_out(nans(n * rq));
            gemv_int4_silu_mul_cuda(q.device, up.device, d_x.get(), n, d_out.get(), xq, nullptr);
            std::vector<float> want(n * rq);
            gemv_int4_silu_mul_cpu(q.host, up.host, x.data(), n, want.data(), xq);
            expect_close("gate/up silu", d_out.to_host(), want, 1e-10);
            for (uint32_t cap : {1u, 3u, kGemvGridFull}) {
              DeviceArray<float> c_out(nans(n * rq));
              gemv_int4_silu_mul_cuda(q.device, up.device, d_x.get(), n, c_out.get(), xq, nullptr,
                                      cap);
              EXPECT_EQ(c_out.to_host(), d_out.to_host()) << "gate/up, grid capped at " << cap;
            }
          }
        }
}

TEST(GpuKernels, CublasLtBf16GemmMatchesCpuTwin) {
  FERRY_REQUIRE_GPU();
  for (uint64_t n : {1u, 7u, 64u}) {
    const uint64_t rows = 576, cols = 320;
    std::vector<uint16_t> w(rows * cols);
    const std::vector<float> wf = random_vector(rows * cols, 11), x = random_vector(n * cols, 12);
    for (uint64_t i = 0; i < w.size(); ++i) w[i] = float_to_bf16(0.02f * wf[i]);
    // The reference rounds x to bf16 as the GEMM does (round to nearest even) and keeps fp32
    // sums: products of two bf16 are exact in fp32, so only the order of the sums differs,
    // ~1e-7 relative; a missing term (a bias, a block, a token) shows far above the 1e-10 bound.
    std::vector<float> x_bf16(x.size()), want(n * rows);
    for (size_t i = 0; i < x.size(); ++i) x_bf16[i] = bf16_to_float(float_to_bf16(x[i]));
    for (uint64_t t = 0; t < n; ++t)
      matvec_bf16_cpu(w.data(), rows, cols, x_bf16.data() + t * cols, want.data() + t * rows);
    CublasLt lt(64 * cols);
    DeviceArray<uint16_t> d_w(w);
    DeviceArray<float> d_x(x), d_y(nans(n * rows));
    lt.matmul_bf16(d_w.get(), rows, cols, d_x.get(), n, d_y.get(), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    expect_close("gemm bf16", d_y.to_host(), want, 1e-10);
  }
}

TEST(GpuKernels, ElementwiseOpsMatchCpuTwins) {
  FERRY_REQUIRE_GPU();
  const uint64_t n = 5, dim = 320, heads = 5, hd = 64, pos = 17;
  const std::vector<float> x = random_vector(n * dim, 1), y = random_vector(n * dim, 2);
  std::vector<uint16_t> w(dim);
  for (uint64_t i = 0; i < dim; ++i) w[i] = float_to_bf16(1.0f + 0.01f * float(i % 7));
  std::vector<float> inv_freq(hd / 2);
  for (uint64_t i = 0; i < hd / 2; ++i) inv_freq[i] = std::pow(10000.0f, -2.0f * i / hd);

  std::vector<float> want(n * dim);
  rmsnorm_cpu(x.data(), w.data(), 1e-6f, n, dim, want.data());
  DeviceArray<float> d_x(x), d_y(y), d_out(nans(n * dim)), d_f(inv_freq);
  DeviceArray<uint16_t> d_w(w);
  rmsnorm_cuda(d_x.get(), d_w.get(), 1e-6f, n, dim, d_out.get(), nullptr);
  expect_close("rmsnorm", d_out.to_host(), want, 1e-12);

  // Qwen3's q_norm / k_norm: rows of one head each, in place.
  want = x;
  rmsnorm_cpu(want.data(), w.data(), 1e-6f, n * heads, hd, want.data());
  DeviceArray<float> d_h(x);
  rmsnorm_cuda(d_h.get(), d_w.get(), 1e-6f, n * heads, hd, d_h.get(), nullptr);
  expect_close("rmsnorm per head", d_h.to_host(), want, 1e-12);
  // Each of rmsnorm_cuda's kernels: rows held in 1, 4 or 8 float4s a thread (3584: Qwen2-7B, 8192:
  // Llama 3 70B), and the loop for a width that is not whole float4s or past 8192.
  for (const uint64_t wide : {3584u, 8192u, 321u, 9000u}) {
    const std::vector<float> xw = random_vector(2 * wide, 3);
    std::vector<uint16_t> ww(wide);
    for (uint64_t i = 0; i < wide; ++i) ww[i] = float_to_bf16(1.0f - 0.01f * float(i % 5));
    std::vector<float> want_w(2 * wide);
    rmsnorm_cpu(xw.data(), ww.data(), 1e-6f, 2, wide, want_w.data());
    DeviceArray<float> d_xw(xw), d_ow(nans(2 * wide));
    DeviceArray<uint16_t> d_ww(ww);
    rmsnorm_cuda(d_xw.get(), d_ww.get(), 1e-6f, 2, wide, d_ow.get(), nullptr);
    expect_close(("rmsnorm " + std::to_string(wide)).c_str(), d_ow.to_host(), want_w, 1e-12);
  }

  want = x;  // [n, heads, hd] with heads * hd == dim
  rope_cpu(want.data(), n, heads, hd, pos, inv_freq.data(), 1.14f);
  DeviceArray<float> d_r(x);
  rope_cuda(d_r.get(), n, heads, hd, pos, d_f.get(), 1.14f, nullptr);
  expect_close("rope", d_r.to_host(), want, 1e-10);

  // rope_kv: q (5 heads) and k (1 kv head) rotated, k and v stored as f16, in one launch.
  {
    std::vector<float> q = x, k(y.begin(), y.begin() + n * hd), v(x.begin(), x.begin() + n * hd);
    std::vector<uint16_t> k16(n * hd), v16(n * hd);
    DeviceArray<float> d_q(q), d_k(k), d_v(v);
    DeviceArray<uint16_t> d_k16(std::vector<uint16_t>(n * hd, 0)), d_v16(d_k16.to_host());
    rope_kv_cpu(q.data(), k.data(), v.data(), n, heads, 1, hd, pos, inv_freq.data(), 1.14f,
                k16.data(), v16.data());
    rope_kv_cuda(d_q.get(), d_k.get(), d_v.get(), n, heads, 1, hd, pos, d_f.get(), 1.14f,
                 d_k16.get(), d_v16.get(), nullptr);
    expect_close("rope_kv q", d_q.to_host(), q, 1e-10);
    expect_close("rope_kv k", d_k.to_host(), k, 1e-10);
    EXPECT_EQ(d_v16.to_host(), v16);  // v is not rotated: the same rounding exactly
    const std::vector<uint16_t> got_k16 = d_k16.to_host();
    for (size_t i = 0; i < k16.size(); ++i)  // rotated k differs in the last bits of sin/cos
      EXPECT_NEAR(f16_to_float(got_k16[i]), f16_to_float(k16[i]), 1e-3 * std::abs(k[i]) + 1e-6);
  }

  silu_mul_cpu(x.data(), y.data(), n * dim, want.data());
  CUDA_CHECK(cudaMemset(d_out.get(), 0xff, n * dim * sizeof(float)));  // NaN again
  silu_mul_cuda(d_x.get(), d_y.get(), n * dim, d_out.get(), nullptr);
  expect_close("silu_mul", d_out.to_host(), want, 1e-12);

  for (uint64_t i = 0; i < n * dim; ++i) want[i] = x[i] + y[i];
  add_cuda(d_x.get(), d_y.get(), n * dim, nullptr);
  std::vector<float> added = x;
  add_cpu(added.data(), y.data(), n * dim);
  EXPECT_EQ(added, want);
  expect_close("add", d_x.to_host(), want, 1e-30);  // exact: one fp32 add each

  want = y;  // y[n, dim] += bias[dim]: the q/k/v biases of Qwen2
  add_bias_cpu(want.data(), w.data(), n, dim);
  add_bias_cuda(d_y.get(), d_w.get(), n, dim, nullptr);
  expect_close("add_bias", d_y.to_host(), want, 1e-30);

  std::vector<float> ties(1000, 1.0f);
  ties[700] = ties[300] = 2.0f;  // the first of equal maxima, as std::max_element
  DeviceArray<float> d_t(ties);
  DeviceArray<int32_t> d_i(std::vector<int32_t>(1, -1));
  argmax_cuda(d_t.get(), ties.size(), d_i.get(), nullptr);
  EXPECT_EQ(d_i.to_host()[0], 300);
  int32_t cpu_choice = -1;
  argmax_cpu(ties.data(), ties.size(), &cpu_choice);
  EXPECT_EQ(cpu_choice, 300);
}

// Decode and prefill, within one chunk and across several (a batch that crosses a chunk
// boundary: its queries see different numbers of chunks; a batch of 150 in three rounds of
// queries, the later ones crossing chunk boundaries too); head_dim 64, 80, 96 and 128 (4, 3, 2
// and 2 thread groups per position in the value sums, some threads idle at 80 and 96), 256 and
// 320 (one group, strided over head_dim). With the f16 cache, head_dim 64, 128 and 256 run the
// GQA group kernel (one block per kv head and chunk for all its query heads): groups of 1 to 8
// heads, Qwen2-32B's 40/8 at a 4k context among them; the others the per-head kernel.
TEST(GpuKernels, AttentionMatchesCpuTwin) {
  FERRY_REQUIRE_GPU();
  struct Case {
    uint64_t heads, kv_heads, hd, n, pos;
  };
  for (const Case& k :
       {Case{8, 2, 64, 4, 29}, Case{8, 2, 128, 1, 1000}, Case{4, 4, 80, 7, 508},
        Case{6, 3, 128, 40, 700}, Case{2, 1, 256, 1, 0}, Case{4, 2, 64, 150, 200},
        Case{4, 2, 96, 3, 300}, Case{2, 2, 320, 2, 600}, Case{40, 8, 128, 1, 4000},
        Case{16, 2, 128, 3, 600}, Case{3, 3, 64, 2, 257}, Case{7, 1, 256, 1, 90},
        // across the chunk lengths' steps: 1024 -> 1025 positions (32 chunks of
        // 32, then 17 of 64) in one round, 8192 -> 8193 (the 33rd chunk of 256)
        Case{8, 2, 128, 4, 1022}, Case{4, 4, 80, 3, 1022}, Case{8, 1, 64, 2, 8191}}) {
    SCOPED_TRACE("heads " + std::to_string(k.heads) + " hd " + std::to_string(k.hd) + " n " +
                 std::to_string(k.n) + " pos " + std::to_string(k.pos));
    const uint64_t ctx = k.pos + k.n, q_dim = k.heads * k.hd;
    const std::vector<float> q = random_vector(k.n * q_dim, 3);
    const std::vector<float> kc = random_vector(ctx * k.kv_heads * k.hd, 4);
    const std::vector<float> vc = random_vector(ctx * k.kv_heads * k.hd, 5);
    std::vector<float> partials(attention_scratch_floats(k.n, ctx, k.heads, k.hd));
    std::vector<float> want(k.n * q_dim);
    CpuPool pool(2);
    attention_cpu(pool, q.data(), kc.data(), vc.data(), k.n, k.pos, k.heads, k.kv_heads, k.hd,
                  partials.data(), want.data());
    DeviceArray<float> d_q(q), d_k(kc), d_v(vc), d_out(nans(want.size()));
    DeviceArray<float> d_partials(nans(partials.size()));
    attention_cuda(d_q.get(), d_k.get(), d_v.get(), k.n, k.pos, k.heads, k.kv_heads, k.hd,
                   d_partials.get(), d_out.get(), nullptr);
    expect_close("attention", d_out.to_host(), want, 1e-10);

    // The f16 cache: stored on the device by store_f16_cuda (bit-equal to store_f16_cpu), then
    // attention over it against the CPU twin's f16 form.
    std::vector<uint16_t> k16(kc.size()), v16(vc.size());
    store_f16_cpu(kc.data(), kc.size(), k16.data());
    store_f16_cpu(vc.data(), vc.size(), v16.data());
    DeviceArray<uint16_t> d_k16(std::vector<uint16_t>(kc.size(), 0xffff));
    DeviceArray<uint16_t> d_v16(std::vector<uint16_t>(vc.size(), 0xffff));
    store_f16_cuda(d_k.get(), kc.size(), d_k16.get(), nullptr);
    store_f16_cuda(d_v.get(), vc.size(), d_v16.get(), nullptr);
    ASSERT_EQ(d_k16.to_host(), k16);
    ASSERT_EQ(d_v16.to_host(), v16);
    attention_cpu(pool, q.data(), k16.data(), v16.data(), k.n, k.pos, k.heads, k.kv_heads, k.hd,
                  partials.data(), want.data());
    DeviceArray<float> d_out16(nans(want.size()));
    CUDA_CHECK(cudaMemset(d_partials.get(), 0xff, partials.size() * sizeof(float)));  // NaN again
    attention_cuda(d_q.get(), d_k16.get(), d_v16.get(), k.n, k.pos, k.heads, k.kv_heads, k.hd,
                   d_partials.get(), d_out16.get(), nullptr);
    expect_close("attention f16", d_out16.to_host(), want, 1e-10);
  }
}

// The tiled prefill kernel (kernels/attention_tiled.cu) against its CPU twin over the same f16
// cache: head_dim 64, 128 and 256, groups of 1 to 8 query heads, one query, a block exactly and
// one past it, tile edges (pos one short of a multiple of Bk), a context no multiple of the tile
// and 300 queries from 0 and from further on. The output starts NaN, so a row no CTA writes
// fails; the caches hold NaN past pos + n, so a read of a position the causal mask should
// exclude (or one past the staged tile's end not zero-filled) fails too. Then attention_cuda's
// own choice: Qwen2-32B's 40/8 heads at n = 200 (tiled, attention_tiled_applies) against the
// chunked CPU attention.
TEST(GpuKernels, TiledAttentionMatchesCpuTwin) {
  FERRY_REQUIRE_GPU();
  struct Case {
    uint64_t heads, kv_heads, hd, n, pos;
  };
  std::vector<Case> cases;
  for (uint64_t hd : {64u, 128u, 256u})
    for (uint64_t group = 1; group <= 8; ++group) {
      const uint64_t kv = group % 2 ? 2 : 1, bq = attention_tile_queries(hd, group);
      const uint64_t bk = attention_tile_keys(hd);
      for (const Case& c : {Case{kv * group, kv, hd, 1, 0}, Case{kv * group, kv, hd, bq, bk - 1},
                            Case{kv * group, kv, hd, bq + 1, 3 * bk + 5}})
        cases.push_back(c);
      if (group == 1 || group == 5 || group == 8)  // 300 queries: the twin's time bounds these
        cases.push_back(Case{kv * group, kv, hd, 300, uint64_t(group == 5 ? 0 : 77)});
    }
  CpuPool pool(4);
  for (const Case& k : cases) {
    SCOPED_TRACE("heads " + std::to_string(k.heads) + "/" + std::to_string(k.kv_heads) + " hd " +
                 std::to_string(k.hd) + " n " + std::to_string(k.n) + " pos " +
                 std::to_string(k.pos));
    const uint64_t ctx = k.pos + k.n, q_dim = k.heads * k.hd, kv_dim = k.kv_heads * k.hd;
    const std::vector<float> q = random_vector(k.n * q_dim, 6);
    const std::vector<float> kc = random_vector(ctx * kv_dim, 7),
                             vc = random_vector(ctx * kv_dim, 8);
    std::vector<uint16_t> k16((ctx + 64) * kv_dim, 0x7e00), v16((ctx + 64) * kv_dim, 0x7e00);
    store_f16_cpu(kc.data(), kc.size(), k16.data());  // past ctx: f16 NaN
    store_f16_cpu(vc.data(), vc.size(), v16.data());
    std::vector<float> want(k.n * q_dim);
    attention_tiled_cpu(pool, q.data(), k16.data(), v16.data(), k.n, k.pos, k.heads, k.kv_heads,
                        k.hd, want.data());
    DeviceArray<float> d_q(q), d_out(nans(want.size()));
    DeviceArray<uint16_t> d_k(k16), d_v(v16);
    attention_tiled_cuda(d_q.get(), d_k.get(), d_v.get(), k.n, k.pos, k.heads, k.kv_heads, k.hd,
                         d_out.get(), nullptr);
    expect_close("tiled", d_out.to_host(), want, 1e-10);
  }

  const Case k{40, 8, 128, 200, 37};
  ASSERT_TRUE(attention_tiled_applies(k.n, k.heads, k.kv_heads, k.hd));
  const uint64_t ctx = k.pos + k.n, q_dim = k.heads * k.hd, kv_dim = k.kv_heads * k.hd;
  const std::vector<float> q = random_vector(k.n * q_dim, 9);
  const std::vector<float> kc = random_vector(ctx * kv_dim, 10),
                           vc = random_vector(ctx * kv_dim, 11);
  std::vector<uint16_t> k16(kc.size()), v16(vc.size());
  store_f16_cpu(kc.data(), kc.size(), k16.data());
  store_f16_cpu(vc.data(), vc.size(), v16.data());
  std::vector<float> partials(attention_scratch_floats(k.n, ctx, k.heads, k.hd)), want(k.n * q_dim);
  attention_cpu(pool, q.data(), k16.data(), v16.data(), k.n, k.pos, k.heads, k.kv_heads, k.hd,
                partials.data(), want.data());
  DeviceArray<float> d_q(q), d_out(nans(want.size())), d_partials(nans(partials.size()));
  DeviceArray<uint16_t> d_k(k16), d_v(v16);
  attention_cuda(d_q.get(), d_k.get(), d_v.get(), k.n, k.pos, k.heads, k.kv_heads, k.hd,
                 d_partials.get(), d_out.get(), nullptr);
  expect_close("prefill", d_out.to_host(), want, 1e-10);
}

// store_f16_cuda against store_f16_cpu at the edges: ties, the largest f16, values that round
// past it (saturated), infinities, NaN, subnormals and values that flush to zero.
TEST(GpuKernels, StoreF16MatchesCpuTwin) {
  FERRY_REQUIRE_GPU();
  std::vector<float> x = {
      1.0f,   1.0f + 1.0f / 4096, 65504.0f,  65519.0f, 65520.0f, -1e6f, 1e-6f, -1e-8f,
      1e-30f, INFINITY,           -INFINITY, NAN};
  const std::vector<float> more = random_vector(4096, 7);
  x.insert(x.end(), more.begin(), more.end());
  std::vector<uint16_t> want(x.size());
  store_f16_cpu(x.data(), x.size(), want.data());
  DeviceArray<float> d_x(x);
  DeviceArray<uint16_t> d_out(std::vector<uint16_t>(x.size(), 0));
  store_f16_cuda(d_x.get(), x.size(), d_out.get(), nullptr);
  const std::vector<uint16_t> got = d_out.to_host();
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i]))  // any NaN pattern
      EXPECT_TRUE((got[i] & 0x7c00) == 0x7c00 && (got[i] & 0x3ff) != 0) << i;
    else
      EXPECT_EQ(got[i], want[i]) << "element " << i << " = " << x[i];
  }
}

// kernels/cuda_graph.hpp: a first recording instantiates the graph; the next, with other
// parameters only (a count), updates it in place; another topology (two launches) instantiates
// anew; abandon() after a recording leaves the stream running work again and runs nothing of
// what was recorded.
TEST(GpuKernels, CudaGraphUpdatesRebuildsAndAbandons) {
  FERRY_REQUIRE_GPU();
  CudaStream s;
  DeviceArray<float> a(std::vector<float>(64, 0.0f)), b(std::vector<float>(64, 1.0f));
  const auto add = [&](uint64_t count) { add_cuda(a.get(), b.get(), count, s.s); };
  CudaGraph g;
  g.begin(s.s);
  add(64);
  g.launch(s.s);
  g.begin(s.s);
  add(32);
  g.launch(s.s);
  g.begin(s.s);
  add(64);
  add(16);
  g.launch(s.s);
  g.begin(s.s);
  add(64);
  g.abandon(s.s);
  add(8);  // on the stream, not recorded
  CUDA_CHECK(cudaStreamSynchronize(s.s));
  std::vector<float> want(64, 2.0f);
  for (size_t i = 0; i < 64; ++i) want[i] += float(i < 32) + float(i < 16) + float(i < 8);
  EXPECT_EQ(a.to_host(), want);
  EXPECT_EQ(g.stats().launches, 3u);
  EXPECT_EQ(g.stats().builds, 2u);
  EXPECT_EQ(g.stats().updates, 1u);
}

}  // namespace
}  // namespace ferry
