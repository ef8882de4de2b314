// INT8 block quantization (offline, on the CPU) into the layout of format/int8.hpp.
#pragma once
#include <cstdint>

#include "format/int8.hpp"
#include "quantizer/int4_quantize.hpp"

namespace ferry {

// Quantizes `rows` rows of `cols` floats (row-major, contiguous): per block of 128, scale =
// absmax / 127 rounded to f16, codes round(w / scale) in -127..127, padding 0.
// q: [rows, blocks*128], scales: [rows, blocks]. Throws ferry::Error if a block holds a
// non-finite value or needs a scale beyond f16 range.
QuantError quantize_int8(const float* w, uint64_t rows, uint64_t cols, int8_t* q, uint16_t* scales);

}  // namespace ferry
