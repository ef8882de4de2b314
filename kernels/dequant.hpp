// INT4 -> bf16 (or fp32) dequantization of one weight, laid out as format/int4.hpp says, into a
// row-major [rows, cols] matrix (padding elements are not written). Twins with the same
// arguments: dequant_int4_bf16_cpu (kernels/dequant_cpu.cpp) and dequant_int4_bf16_cuda
// (kernels/dequant.cu: device pointers, enqueued on `stream`). The product and the sum are formed
// in fp32 and rounded once to bf16, so both give bit-identical results (tests compare them bit
// for bit).
#pragma once
#include <cstdint>

#include "format/int4.hpp"
#include "format/int8.hpp"

struct CUstream_st;

namespace ferry {

void dequant_int4_bf16_cpu(const Int4View& w, uint16_t* out);  // out [rows, cols] bf16
void dequant_int4_bf16_cuda(const Int4View& w, uint16_t* out, CUstream_st* stream);
// fp32 output, for the quantizer's error report and for tests.
void dequant_int4_f32_cpu(const Int4View& w, float* out);  // out [rows, cols]

// INT8 (format/int8.hpp): code * scale, the product rounded to fp32 and then once to bf16, so the
// twins agree bit for bit (dequant_int8_bf16_cuda in kernels/dequant.cu).
void dequant_int8_bf16_cpu(const Int8View& w, uint16_t* out);  // out [rows, cols] bf16
void dequant_int8_bf16_cuda(const Int8View& w, uint16_t* out, CUstream_st* stream);
void dequant_int8_f32_cpu(const Int8View& w, float* out);  // out [rows, cols]

}  // namespace ferry
