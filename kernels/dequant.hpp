// INT4 -> bf16 dequantization: the CPU twin (dequant_cpu.cpp) and the CUDA kernel (dequant.cu)
// share this contract (layout in format/int4.hpp and docs/format.md):
//   q      [rows, ceil(cols/128) * 64] u8, low nibble = even element
//   scales [rows, ceil(cols/128)] f16 bits
//   mins   [rows, ceil(cols/128)] f16 bits, or nullptr for the sym layout
//   out    [rows, cols] bf16 bits (padding elements are not written)
// sym: w = (code - 8) * scale; asym: w = code * scale + min. The product is formed in fp32 and
// rounded once to bf16, so both twins give bit-identical results.
#pragma once
#include <cstdint>

struct CUstream_st;

namespace ferry {

void dequant_int4_bf16_cpu(const uint8_t* q, const uint16_t* scales, const uint16_t* mins,
                           uint64_t rows, uint64_t cols, uint16_t* out);
// fp32 output, used by the quantizer's error report and by tests.
void dequant_int4_f32_cpu(const uint8_t* q, const uint16_t* scales, const uint16_t* mins,
                          uint64_t rows, uint64_t cols, float* out);

#ifdef FERRY_HAVE_CUDA
// Device pointers; enqueued on `stream`, no synchronization.
void dequant_int4_bf16_cuda(const uint8_t* q, const uint16_t* scales, const uint16_t* mins,
                            uint64_t rows, uint64_t cols, uint16_t* out, CUstream_st* stream);
#endif

}  // namespace ferry
