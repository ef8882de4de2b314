#include "runtime/machine/device_check.hpp"

#include <charconv>

#include <fmt/format.h>

#include "base/error.hpp"

namespace ferry {

std::vector<int> parse_cuda_architectures(std::string_view list) {
  std::vector<int> out;
  size_t i = 0;
  while (i < list.size()) {
    if (list[i] == ';' || list[i] == ' ' || list[i] == ',') {
      ++i;
      continue;
    }
    int v = 0;
    const auto [end, ec] = std::from_chars(list.data() + i, list.data() + list.size(), v);
    if (ec != std::errc() || v < 10 || v > 999)
      throw Error(fmt::format("CUDA architecture list '{}' is not like '75 80 86 89 90'", list));
    out.push_back(v);
    i = size_t(end - list.data());
  }
  if (out.empty()) throw Error("the CUDA architecture list is empty");
  return out;
}

std::optional<int> runnable_architecture(const std::vector<int>& compiled, int major, int minor) {
  const int cc = major * 10 + minor;
  std::optional<int> best;
  for (int a : compiled)
    if (a <= cc && (!best || a > *best)) best = a;
  return best;
}

std::string unsupported_gpu_message(std::string_view gpu_name, int major, int minor,
                                    const std::vector<int>& compiled) {
  return fmt::format(
      "the GPU '{}' has compute capability {}.{}, older than every architecture this build of "
      "ferry compiles ({}); rebuild with -DFERRY_CUDA_ARCHITECTURES={}{} or run on the CPU",
      gpu_name, major, minor, fmt::join(compiled, " "), major, minor);
}

}  // namespace ferry
