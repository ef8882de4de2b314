// The start-up check of a GPU against the architectures a build compiles (pure logic: no GPU).
#include <gtest/gtest.h>

#include "quantizer/error.hpp"
#include "runtime/device_check.hpp"

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
  EXPECT_NE(m.find("--device cpu"), std::string::npos);
  EXPECT_EQ(m.find('\n'), std::string::npos);  // one line
}

}  // namespace
}  // namespace ferry
