// A packed model synthesized straight into memory, for benchmarks of real shapes that no file
// backs (ferry bench --synthetic qwen2-32b needs no 17 GB file): the byte-exact image of the
// .ferry file `ferry quantize` would write for the preset, with random INT4 codes, scales and mins
// of the magnitude real weights give (std 0.02), norms of 1 and random embeddings. Its tensors
// are read through the same PackedFile as a file's.
#pragma once
#include <cstdint>
#include <memory>

#include "base/threads.hpp"
#include "format/safetensors.hpp"
#include "quantizer/int4_quantize.hpp"
#include "quantizer/synth.hpp"

namespace ferry {

// The image in anonymous memory (name "synthetic:PRESET"); open it with PackedFile::from_mapping.
// Deterministic for a seed. Throws ferry::Error when the memory cannot be had, naming the size.
std::shared_ptr<MappedFile> synth_packed_image(const SynthOptions& options, Scheme scheme,
                                               const ProgressFn& progress);

// Bytes the image of a preset takes (to check it fits before building it).
uint64_t synth_packed_bytes(const SynthOptions& options, Scheme scheme);

}  // namespace ferry
