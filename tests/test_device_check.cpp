// The start-up check of a GPU against the architectures a build compiles (pure logic: no GPU),
// and what `--device` says on a machine without one.
#include <gtest/gtest.h>

#include <algorithm>

#include "base/error.hpp"
#include "runtime/machine/device_check.hpp"
#include "tests/test_util.hpp"

namespace ferry {
namespace {

const std::vector<int> kBuild = {75, 80, 86, 89, 90};  // CMakeLists.txt's default list

TEST(DeviceCheck, ParsesCMakeAndSpaceSeparatedLists) {
  EXPECT_EQ(parse_cuda_architectures("75 80 86 89 90"), kBuild);
  EXPECT_EQ(parse_cuda_architectures("75;80;86;89;90"), kBuild);
  EXPECT_THROW(parse_cuda_architectures(""), Error);
  EXPECT_THROW(parse_cuda_architectures("sm_80"), Error);
  EXPECT_THROW(parse_cuda_architectures("7"), Error);
}

TEST(DeviceCheck, PicksTheNewestCompiledArchitectureNotNewerThanTheCard) {
  EXPECT_EQ(runnable_architecture(kBuild, 9, 0), 90);   // H100: its own SASS
  EXPECT_EQ(runnable_architecture(kBuild, 8, 9), 89);   // RTX 4090
  EXPECT_EQ(runnable_architecture(kBuild, 8, 7), 86);   // Jetson Orin: sm_86 PTX/SASS family
  EXPECT_EQ(runnable_architecture(kBuild, 12, 0), 90);  // a newer card JIT-compiles the PTX
  EXPECT_EQ(runnable_architecture(kBuild, 7, 5), 75);
  EXPECT_EQ(runnable_architecture(kBuild, 7, 0), std::nullopt);  // V100: too old for the build
  EXPECT_EQ(runnable_architecture(kBuild, 6, 1), std::nullopt);
}

TEST(DeviceCheck, TheMessageNamesTheCardTheBuildAndBothWaysOut) {
  const std::string m = unsupported_gpu_message("Tesla P40", 6, 1, kBuild);
  EXPECT_NE(m.find("Tesla P40"), std::string::npos);
  EXPECT_NE(m.find("6.1"), std::string::npos);
  EXPECT_NE(m.find("75 80 86 89 90"), std::string::npos);
  EXPECT_NE(m.find("-DFERRY_CUDA_ARCHITECTURES=61"), std::string::npos);
  EXPECT_NE(m.find("or run on the CPU"), std::string::npos);  // the CLI adds --device
  EXPECT_EQ(m.find('\n'), std::string::npos);                 // one line
}

// Without a GPU (or without the CUDA backend in the build) `--device cuda` is one line that says
// what to do, exit 1; a bad device name, --vram-limit, --gpu-activations or --cuda-graph on the
// CPU, or a --gpu-activations that is not int8 or f32 (checked before the GPU is probed) is an
// error too.
TEST(DeviceCli, CudaWithoutAGpuIsOneClearLine) {
  test::ScratchDir tmp;
  const std::string hf = (tmp / "hf").string(), model = (tmp / "m.ferry").string();
  ASSERT_EQ(test::run_ferry({"synth", "--preset", "qwen2-tiny", "-o", hf}).exit_code, 0);
  ASSERT_EQ(test::run_ferry({"quantize", hf, "-o", model, "-q"}).exit_code, 0);
  const test::RunResult bad = test::run_ferry({"run", model, "-n", "2", "--device", "tpu"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.output.find("'tpu' is not cpu or cuda"), std::string::npos) << bad.output;
  const test::RunResult limit = test::run_ferry({"run", model, "-n", "2", "--vram-limit", "8G"});
  EXPECT_EQ(limit.exit_code, 1);
  EXPECT_NE(limit.output.find("--vram-limit needs --device cuda"), std::string::npos)
      << limit.output;
  const test::RunResult acts =
      test::run_ferry({"run", model, "-n", "2", "--gpu-activations", "f32"});
  EXPECT_EQ(acts.exit_code, 1);
  EXPECT_NE(acts.output.find("--gpu-activations needs --device cuda"), std::string::npos)
      << acts.output;
  const test::RunResult graph = test::run_ferry({"run", model, "-n", "2", "--cuda-graph"});
  EXPECT_EQ(graph.exit_code, 1);
  EXPECT_NE(graph.output.find("--cuda-graph needs --device cuda"), std::string::npos)
      << graph.output;
  const test::RunResult typo =
      test::run_ferry({"run", model, "-n", "2", "--device", "cuda", "--gpu-activations", "fp8"});
  EXPECT_EQ(typo.exit_code, 1);
  EXPECT_NE(typo.output.find("'fp8' is not int8 or f32"), std::string::npos) << typo.output;

  const test::RunResult r = test::run_ferry({"run", model, "-n", "2", "--device", "cuda"});
  if (r.exit_code == 0) GTEST_SKIP() << "a usable GPU is present: nothing to refuse";
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  // A build without CUDA names --device cpu itself; the probe's words are "run on the CPU"
  // (ferry's main() names --device in front of them).
  EXPECT_TRUE(r.output.find("--device cpu") != std::string::npos ||
              r.output.find("run on the CPU") != std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("no kernel image"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace ferry
