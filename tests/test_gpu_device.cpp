// The GPU probe and the copy bandwidths ferry bench measures. Label gpu: skips without a GPU.
#include <gtest/gtest.h>

#include <cstdio>

#include "base/error.hpp"
#include "runtime/machine/cuda_device.hpp"
#include "tests/gpu_util.hpp"

namespace ferry {
namespace {

TEST(GpuDevice, ProbeReportsARunnableCard) {
  FERRY_REQUIRE_GPU();
  const GpuInfo g = probe_gpu();
  std::printf("  %s, compute capability %d.%d, runs sm_%d code, %.1f of %.1f GB free\n",
              g.name.c_str(), g.major, g.minor, g.arch, double(g.free_bytes) / 1e9,
              double(g.total_bytes) / 1e9);
  EXPECT_GE(g.major * 10 + g.minor, g.arch);
  EXPECT_GT(g.free_bytes, 0u);
  EXPECT_LE(g.free_bytes, g.total_bytes);
  EXPECT_THROW(probe_gpu(1000), Error);
}

TEST(GpuDevice, CopyBandwidthsArePlausible) {
  FERRY_REQUIRE_GPU();
  for (const CopyBandwidth& b : measure_h2d({1u << 20, 16u << 20, 64u << 20}, 256u << 20)) {
    std::printf("  H2D chunk %3llu MB: pinned %.1f GB/s, pageable %.1f GB/s\n",
                (unsigned long long)(b.chunk_bytes >> 20), b.pinned_gbps, b.pageable_gbps);
    EXPECT_GT(b.pinned_gbps, 0.5);
    EXPECT_GT(b.pageable_gbps, 0.1);
  }
  const double d2d = measure_d2d_gbps(512u << 20);
  std::printf("  D2D: %.0f GB/s\n", d2d);
  EXPECT_GT(d2d, 50.0);
}

}  // namespace
}  // namespace ferry
