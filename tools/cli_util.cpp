#include <cctype>
#include <charconv>
#include <cmath>
#include <string>

#include <fmt/format.h>

#include "quantizer/error.hpp"
#include "tools/commands.hpp"

namespace ferry {

uint64_t parse_size(std::string_view text, std::string_view option) {
  double value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  std::string unit(end, text.data() + text.size());
  for (char& c : unit) c = char(std::toupper(static_cast<unsigned char>(c)));
  struct Unit {
    const char* name;
    double scale;
  };
  constexpr Unit kUnits[] = {{"", 1},         {"B", 1},     {"K", 1e3},    {"KB", 1e3},
                             {"M", 1e6},      {"MB", 1e6},  {"G", 1e9},    {"GB", 1e9},
                             {"T", 1e12},     {"TB", 1e12}, {"KIB", 1024}, {"MIB", 1 << 20},
                             {"GIB", 1 << 30}};
  if (ec == std::errc() && value >= 0 && std::isfinite(value))
    for (const Unit& u : kUnits)
      if (unit == u.name && value * u.scale < 1.8e19)
        return uint64_t(std::llround(value * u.scale));
  throw Error(
      fmt::format("{}: '{}' is not a size (examples: 4096, 512M, 2G, 1.5GiB)", option, text));
}

}  // namespace ferry
