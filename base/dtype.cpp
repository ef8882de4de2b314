#include "base/dtype.hpp"

#include <array>
#include <bit>
#include <cmath>
#include <utility>

namespace ferry {
namespace {

struct DTypeInfo {
  DType type;
  std::string_view name;
  uint64_t size;
};

constexpr std::array<DTypeInfo, 15> kDTypes = {{
    {DType::BOOL, "BOOL", 1},
    {DType::U8, "U8", 1},
    {DType::I8, "I8", 1},
    {DType::F8_E5M2, "F8_E5M2", 1},
    {DType::F8_E4M3, "F8_E4M3", 1},
    {DType::I16, "I16", 2},
    {DType::U16, "U16", 2},
    {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2},
    {DType::I32, "I32", 4},
    {DType::U32, "U32", 4},
    {DType::F32, "F32", 4},
    {DType::F64, "F64", 8},
    {DType::I64, "I64", 8},
    {DType::U64, "U64", 8},
}};

}  // namespace

std::optional<DType> parse_dtype(std::string_view name) {
  for (const auto& d : kDTypes)
    if (d.name == name) return d.type;
  return std::nullopt;
}

std::string_view dtype_name(DType t) {
  return kDTypes[size_t(t)].name;
}
uint64_t dtype_size(DType t) {
  return kDTypes[size_t(t)].size;
}
bool is_float16_or_32(DType t) {
  return t == DType::F16 || t == DType::BF16 || t == DType::F32;
}

float f16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  const uint32_t man = h & 0x3ff;
  if (exp == 0) {  // zero or subnormal: man * 2^-24
    const float v = std::ldexp(float(man), -24);
    return sign ? -v : v;
  }
  uint32_t u =
      exp == 31 ? (sign | 0x7f800000u | (man << 13)) : (sign | ((exp + 112) << 23) | (man << 13));
  return std::bit_cast<float>(u);
}

uint16_t float_to_f16(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000);
  const uint32_t au = u & 0x7fffffffu;
  if (au > 0x7f800000u) return sign | 0x7e00;   // NaN
  if (au >= 0x477ff000u) return sign | 0x7c00;  // rounds to >= 65520: inf
  if (au < 0x38800000u) {  // below 2^-14: subnormal, value = m * 2^-24, round to nearest even
    const float a = std::bit_cast<float>(au);
    const float m = std::nearbyint(a * 16777216.0f);  // exact: a < 2^-14, so a*2^24 < 1024
    return sign | uint16_t(m);
  }
  // normal: rebias exponent (127 -> 15) and round the mantissa from 23 to 10 bits, nearest even
  uint32_t v = au - (112u << 23);
  v += 0xfffu + ((v >> 13) & 1u);
  return sign | uint16_t(v >> 13);
}

}  // namespace ferry
