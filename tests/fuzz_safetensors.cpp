// libFuzzer target for the safetensors header parser. Every input must either parse or throw
// ferry::Error; any other exception, a crash or a sanitizer report is a finding. When a file
// parses, every tensor's bytes are read so that ASan catches a view that leaves the input.
//   ./fuzz_safetensors -max_total_time=60 CORPUS_COPY_DIR  (seeds: tests/fuzz_corpus/safetensors)
#include <cstddef>
#include <cstdint>
#include <span>

#include "base/error.hpp"
#include "format/safetensors.hpp"

namespace {

// Reads every byte of every tensor; the sum keeps the loads from being optimized away.
uint64_t checksum_tensors(const ferry::SafetensorsHeader& h, std::span<const uint8_t> input) {
  uint64_t sum = 0;
  uint64_t expected_offset = h.data_start;
  for (const ferry::TensorView& t : h.tensors) {
    // The parser's promises, checked independently of its own arithmetic.
    if (t.file_offset != expected_offset || t.data != input.data() + t.file_offset ||
        t.nbytes != t.numel() * ferry::dtype_size(t.dtype))
      __builtin_trap();
    expected_offset += t.nbytes;
    for (uint64_t i = 0; i < t.nbytes; ++i) sum += t.data[i];
  }
  if (expected_offset != input.size()) __builtin_trap();
  return sum;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const uint8_t> input(data, size);
  try {
    const ferry::SafetensorsHeader h = ferry::parse_safetensors(input, "fuzz");
    volatile uint64_t sink = checksum_tensors(h, input);
    (void)sink;
  } catch (const ferry::Error&) {
    // A rejected file: the expected outcome for almost every input.
  }
  return 0;
}
