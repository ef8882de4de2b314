// The INT4 -> bf16 dequantization kernel (kernels/dequant.cu) against its CPU twin: bit for bit,
// with the normalized MSE reported. Label gpu: skips with a message where no GPU is present.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "base/dtype.hpp"
#include "kernels/cuda_check.hpp"
#include "kernels/dequant.hpp"
#include "quantizer/int4_quantize.hpp"
#include "tests/gpu_util.hpp"

namespace ferry {
namespace {

struct Case {
  Scheme scheme;
  uint64_t rows, cols;
  uint64_t q_offset = 0;    // bytes: a misaligned q takes the kernel's byte-load path
  uint64_t out_offset = 0;  // elements: a misaligned out takes the element-store path
};

std::string name(const Case& c) {
  return std::string(scheme_name(c.scheme)) + " " + std::to_string(c.rows) + "x" +
         std::to_string(c.cols) + " q+" + std::to_string(c.q_offset) + " out+" +
         std::to_string(c.out_offset);
}

// Quantizes Gaussian weights, dequantizes them on the GPU and on the CPU, and compares.
void run_case(const Case& c) {
  SCOPED_TRACE(name(c));
  const uint64_t blocks = int4_blocks_per_row(c.cols), n = c.rows * c.cols;
  std::mt19937 rng(uint32_t(c.cols * 7 + c.rows));
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> w(n);
  for (float& x : w) x = normal(rng);
  std::vector<uint8_t> q(c.q_offset + c.rows * blocks * kBlockBytes);    // [rows, blocks * 64]
  std::vector<uint16_t> scales(c.rows * blocks), mins(c.rows * blocks);  // [rows, blocks]
  const bool has_mins = scheme_has_mins(c.scheme);
  quantize_int4(w.data(), c.rows, c.cols, c.scheme, q.data() + c.q_offset, scales.data(),
                mins.data());
  std::vector<uint16_t> want(n);
  dequant_int4_bf16_cpu(
      {q.data() + c.q_offset, scales.data(), has_mins ? mins.data() : nullptr, c.rows, c.cols},
      want.data());

  const uint64_t guard = 64;  // elements after the output that the kernel must not touch
  std::vector<uint16_t> got(c.out_offset + n + guard, 0xFFFF);
  DeviceArray<uint8_t> d_q(q);
  DeviceArray<uint16_t> d_scales(scales), d_mins(mins), d_out(got);
  cudaStream_t stream = nullptr;
  CUDA_CHECK(cudaStreamCreate(&stream));
  dequant_int4_bf16_cuda(
      {d_q.get() + c.q_offset, d_scales.get(), has_mins ? d_mins.get() : nullptr, c.rows, c.cols},
      d_out.get() + c.out_offset, stream);
  CUDA_CHECK(cudaStreamSynchronize(stream));
  CUDA_CHECK(cudaStreamDestroy(stream));
  CUDA_CHECK(cudaMemcpy(got.data(), d_out.get(), got.size() * 2, cudaMemcpyDeviceToHost));

  uint64_t mismatches = 0;
  double err = 0, ref = 0, q_err = 0;
  for (uint64_t i = 0; i < n; ++i) {
    const float g = bf16_to_float(got[c.out_offset + i]), e = bf16_to_float(want[i]);
    mismatches += got[c.out_offset + i] != want[i];
    err += double(g - e) * double(g - e);
    ref += double(e) * double(e);
    q_err += double(g - w[i]) * double(g - w[i]);
  }
  for (uint64_t i = 0; i < c.out_offset; ++i) EXPECT_EQ(got[i], 0xFFFF) << "before the output";
  for (uint64_t i = c.out_offset + n; i < got.size(); ++i) EXPECT_EQ(got[i], 0xFFFF) << "after it";
  std::printf("  %-32s mismatches %llu  NMSE vs CPU twin %.3g  NMSE vs f32 weights %.4f\n",
              name(c).c_str(), static_cast<unsigned long long>(mismatches), err / ref, q_err / ref);
  EXPECT_EQ(mismatches, 0u);
  EXPECT_EQ(err, 0.0);
}

TEST(GpuDequant, MatchesCpuTwinBitForBit) {
  FERRY_REQUIRE_GPU();
  for (Scheme s : {Scheme::sym, Scheme::asym, Scheme::asym_clip})
    for (uint64_t cols : {576u, 4096u}) run_case({s, 300, cols});
}

TEST(GpuDequant, OddShapesAndMisalignedBuffers) {
  FERRY_REQUIRE_GPU();
  for (Scheme s : {Scheme::sym, Scheme::asym}) {
    run_case({s, 300, 576, 1, 1});  // q and out off alignment: byte loads, element stores
    run_case({s, 17, 101, 0, 0});   // odd cols: rows start at odd elements, partial 8-groups
    run_case({s, 1, 100, 3, 0});    // less than one block
  }
}

TEST(GpuDequant, EmptyShapeIsANoOp) {
  FERRY_REQUIRE_GPU();
  dequant_int4_bf16_cuda({nullptr, nullptr, nullptr, 0, 576}, nullptr, nullptr);
  dequant_int4_bf16_cuda({nullptr, nullptr, nullptr, 300, 0}, nullptr, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace
}  // namespace ferry
