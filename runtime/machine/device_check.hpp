// Whether a GPU can run this build's kernels, decided before any kernel launches, so that a card
// the build does not cover gets one clear line instead of CUDA's "no kernel image is available".
// Pure logic (CPU-testable); the probe that reads the card is in runtime/cuda_device.cu.
#pragma once
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ferry {

// "75;80;86" or "75 80 86" (FERRY_CUDA_ARCHITECTURES) -> {75, 80, 86}; throws on anything else.
std::vector<int> parse_cuda_architectures(std::string_view list);

// Every architecture is compiled to SASS and to PTX, so a card of compute capability
// major.minor runs the build when some compiled architecture is not newer than it (the driver
// JIT-compiles the PTX for newer cards). Returns the one it would use, or nullopt.
std::optional<int> runnable_architecture(const std::vector<int>& compiled, int major, int minor);

// The one-line error for a card the build cannot run, naming the fix.
std::string unsupported_gpu_message(std::string_view gpu_name, int major, int minor,
                                    const std::vector<int>& compiled);

}  // namespace ferry
