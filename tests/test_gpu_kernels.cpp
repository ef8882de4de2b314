// The compute kernels of the CUDA backend against their CPU twins, as normalized mean squared
// error (the twins sum in another order, so bit equality is not expected). Label gpu: skips with
// a message where no GPU is present.
#include <gtest/gtest.h>

#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "kernels/matmul.hpp"
#include "kernels/matmul_cuda.hpp"
#include "quantizer/int4.hpp"
#include "tests/gpu_util.hpp"

namespace ferry {
namespace {

using test::DeviceBuffer;

double nmse(const std::vector<float>& got, const std::vector<float>& want) {
  double err = 0, ref = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    err += double(got[i] - want[i]) * double(got[i] - want[i]);
    ref += double(want[i]) * double(want[i]);
  }
  return err / ref;
}

// Quantizes Gaussian weights in `scheme`, multiplies n random activations on both devices.
void gemv_case(Scheme scheme, uint64_t rows, uint64_t cols, uint64_t n) {
  SCOPED_TRACE(std::string(scheme_name(scheme)) + " " + std::to_string(rows) + "x" +
               std::to_string(cols) + " n=" + std::to_string(n));
  std::mt19937 rng(uint32_t(rows * 31 + cols + n));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const uint64_t blocks = int4_blocks_per_row(cols);
  std::vector<float> w(rows * cols), x(n * cols);  // [rows, cols], [n, cols]
  for (float& v : w) v = 0.02f * normal(rng);
  for (float& v : x) v = normal(rng);
  std::vector<uint8_t> q(rows * blocks * kBlockBytes);               // [rows, blocks * 64]
  std::vector<uint16_t> scales(rows * blocks), mins(rows * blocks);  // [rows, blocks]
  quantize_int4(w.data(), rows, cols, scheme, q.data(), scales.data(), mins.data());
  const bool has_mins = scheme_has_mins(scheme);
  std::vector<float> want(n * rows), got(n * rows);
  CpuPool pool(1);
  matmul_int4_cpu(pool, q.data(), scales.data(), has_mins ? mins.data() : nullptr, rows, cols,
                  x.data(), n, want.data());
  DeviceBuffer<uint8_t> d_q(q);
  DeviceBuffer<uint16_t> d_s(scales), d_m(mins);
  DeviceBuffer<float> d_x(x), d_y(got);
  matmul_int4_cuda(d_q.ptr, d_s.ptr, has_mins ? d_m.ptr : nullptr, rows, cols, d_x.ptr, n, d_y.ptr,
                   nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  got = d_y.to_host();
  const double e = nmse(got, want);
  std::printf("  gemv %-9s %5llux%-5llu n=%llu  NMSE vs CPU twin %.3g\n",
              std::string(scheme_name(scheme)).c_str(), (unsigned long long)rows,
              (unsigned long long)cols, (unsigned long long)n, e);
  // fp32 sums of up to 5120 terms in two orders: ~1e-7 relative per term, far below 1e-10 NMSE.
  EXPECT_LT(e, 1e-10);
}

TEST(GpuKernels, GemvInt4MatchesCpuTwin) {
  FERRY_REQUIRE_GPU();
  for (Scheme s : {Scheme::sym, Scheme::asym_clip})
    for (uint64_t n : {1u, 3u, 8u, 11u}) {
      gemv_case(s, 1000, 4096, n);
      gemv_case(s, 37, 320, n);  // cols not a multiple of 128, rows not of the 8 per CTA
    }
}

}  // namespace
}  // namespace ferry
