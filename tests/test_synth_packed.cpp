// Packed models synthesized in memory: the same layout as a converted file, valid checksums,
// deterministic, and a forward pass over them gives finite logits.
#include <gtest/gtest.h>

#include <cmath>

#include "base/error.hpp"
#include "format/packed_file.hpp"
#include "quantizer/convert.hpp"
#include "quantizer/synth_packed.hpp"
#include "runtime/engine.hpp"
#include "tests/test_util.hpp"

namespace ferry {
namespace {

const ProgressFn kQuiet = [](std::string_view, uint64_t, uint64_t) {};

SynthOptions preset(const char* name) {
  SynthOptions o;
  o.preset = name;
  return o;
}

TEST(SynthPacked, HasTheLayoutOfAConvertedFileAndValidChecksums) {
  for (Scheme scheme : {Scheme::asym_clip, Scheme::sym}) {
    test::ScratchDir tmp;
    synth_checkpoint(tmp / "hf", preset("qwen2-tiny"), kQuiet);
    ConvertOptions c;
    c.scheme = scheme;
    convert_checkpoint(tmp / "hf", tmp / "m.ferry", c, kQuiet);
    const PackedFile converted = PackedFile::open(tmp / "m.ferry");
    const auto image = synth_packed_image(preset("qwen2-tiny"), scheme, kQuiet);
    EXPECT_EQ(image->bytes().size(), synth_packed_bytes(preset("qwen2-tiny"), scheme));
    const PackedFile synth = PackedFile::from_mapping(image);
    ASSERT_EQ(synth.file.tensors().size(), converted.file.tensors().size());
    for (size_t i = 0; i < synth.file.tensors().size(); ++i) {
      const TensorView &a = synth.file.tensors()[i], &b = converted.file.tensors()[i];
      EXPECT_EQ(a.name, b.name);
      EXPECT_EQ(a.dtype, b.dtype) << a.name;
      EXPECT_EQ(a.shape, b.shape) << a.name;
      EXPECT_EQ(a.nbytes, b.nbytes) << a.name;
    }
    EXPECT_EQ(synth.scheme, scheme);
    EXPECT_TRUE(synth.verify_checksums(2).empty());
  }
}

TEST(SynthPacked, IsDeterministicAndRunsThroughTheForwardPass) {
  const auto a = synth_packed_image(preset("llama3-tiny"), Scheme::asym, kQuiet);
  const auto b = synth_packed_image(preset("llama3-tiny"), Scheme::asym, kQuiet);
  ASSERT_EQ(a->bytes().size(), b->bytes().size());
  EXPECT_TRUE(std::equal(a->bytes().begin(), a->bytes().end(), b->bytes().begin()));
  Engine e(PackedFile::from_mapping(a), {.model = {}, .ctx = 32, .batch = 8, .threads = 2});
  const std::vector<int32_t> prompt = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  e.eval(prompt, 0);
  float max_abs = 0;
  for (float v : e.logits()) {
    ASSERT_TRUE(std::isfinite(v));
    max_abs = std::max(max_abs, std::abs(v));
  }
  EXPECT_GT(max_abs, 0.0f);
}

TEST(SynthPacked, Bf16IsRefused) {
  EXPECT_THROW(synth_packed_image(preset("qwen2-tiny"), Scheme::bf16, kQuiet), Error);
}

}  // namespace
}  // namespace ferry
