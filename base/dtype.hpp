// Element types of safetensors files, and the 16-bit float conversions ferry uses everywhere.
#pragma once
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace ferry {

// Every dtype the safetensors format defines with a whole number of bytes per element.
// Sub-byte types (F4, F6) are not supported: parse_dtype returns nullopt and readers reject them.
enum class DType : uint8_t {
  BOOL,
  U8,
  I8,
  F8_E5M2,
  F8_E4M3,
  I16,
  U16,
  F16,
  BF16,
  I32,
  U32,
  F32,
  F64,
  I64,
  U64
};

std::optional<DType> parse_dtype(std::string_view name);
std::string_view dtype_name(DType t);
uint64_t dtype_size(DType t);
bool is_float16_or_32(DType t);  // F16, BF16, F32: the dtypes ferry converts from

inline float bf16_to_float(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even; NaN stays NaN (a quiet NaN with the sign kept).
inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

float f16_to_float(uint16_t h);
uint16_t float_to_f16(float f);  // round to nearest even; overflow gives ±inf

// Reads element i of a F32/F16/BF16 buffer as float.
inline float load_float(const uint8_t* data, DType t, uint64_t i) {
  if (t == DType::F32) {
    float f;
    std::memcpy(&f, data + 4 * i, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, data + 2 * i, 2);
  return t == DType::BF16 ? bf16_to_float(h) : f16_to_float(h);
}

}  // namespace ferry
