// The .ferry packed file: a safetensors container (any safetensors reader opens it) holding a
// model's weights as INT4 blocks, INT8 blocks or bf16, plus everything needed to run it.
// Byte-level layout: docs/format.md. Summary:
//   - a linear weight "X.weight" [out, in] quantized to INT4 becomes the tensors
//       "X.weight.q4"     U8  [out, ceil(in/128) * 64]
//       "X.weight.scales" F16 [out, ceil(in/128)]
//       "X.weight.mins"   F16 [out, ceil(in/128)]   (asym schemes only)
//   - a linear weight stored in INT8 (format/int8.hpp; version 2 on) becomes
//       "X.weight.q8"     I8  [out, ceil(in/128) * 128]
//       "X.weight.scales" F16 [out, ceil(in/128)]
//   - every other weight (and linear weights under the bf16 scheme or kept in bf16) is "X" in BF16;
//   - lm_head.weight is stored in INT8 by default (INT4 schemes; version 1 files stored it in INT4,
//     which still loads), or as --keep says; a tied lm_head (tie_word_embeddings) that would be
//     stored in BF16 is not stored at all: the embedding's matrix is read as lm_head (files written
//     before this stored a BF16 copy, which still loads); a quantized tied lm_head is its own
//     INT4/INT8 copy of the embedding matrix, the embedding rows staying BF16;
//   - tensors of one decoder layer are contiguous, in model_weights() order;
//   - __metadata__ holds the keys of PackedMeta below, all strings.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "base/dtype.hpp"
#include "format/int4.hpp"
#include "format/int8.hpp"
#include "format/model_config.hpp"
#include "format/safetensors.hpp"

namespace ferry {

// Version 2 added INT8 weights (".q8"); a version 1 file is a version 2 file without them, so
// both are read.
inline constexpr int kFormatVersion = 2;
inline constexpr int kOldestFormatVersion = 1;

namespace meta {
inline constexpr const char* kFormat = "format";                 // "ferry" (HF files say "pt")
inline constexpr const char* kVersion = "ferry.format_version";  // "2" ("1" still read)
inline constexpr const char* kScheme = "ferry.scheme";           // scheme_name(), e.g. "asym-clip"
inline constexpr const char* kBlockSize = "ferry.block_size";    // "128"
inline constexpr const char* kChecksums = "ferry.checksums";     // JSON {tensor: xxh3-64 hex}
inline constexpr const char* kQuantError =
    "ferry.quant_error";  // JSON {weight: relative RMS error}
// quantize --max-context N (decimal): runs are refused past N tokens. Written only for a model
// whose sliding window is shorter than its trained context; absent in every other file.
inline constexpr const char* kMaxContext = "ferry.max_context";
inline constexpr const char* kConfig = "ferry.config.json";  // the source files, verbatim
inline constexpr const char* kTokenizer = "ferry.tokenizer.json";
inline constexpr const char* kTokenizerConfig = "ferry.tokenizer_config.json";
inline constexpr const char* kGenerationConfig = "ferry.generation_config.json";
// chat_template.jinja, which transformers >= 4.43 saves beside tokenizer_config.json (older files
// keep the template in tokenizer_config's chat_template; files packed before lack this key).
inline constexpr const char* kChatTemplate = "ferry.chat_template.jinja";
}  // namespace meta

// One tensor to be written: name, dtype, shape; offsets are assigned by layout_safetensors.
struct TensorDecl {
  std::string name;
  DType dtype;
  std::vector<uint64_t> shape;
  uint64_t begin = 0, end = 0;  // data_offsets, relative to the data section
  uint64_t nbytes() const { return end - begin; }
};

// How one source weight is stored in the packed file.
struct PackedWeight {
  WeightSpec spec;
  WeightStorage storage = WeightStorage::bf16;
  std::vector<size_t> tensors;  // indices into the decl list: {q4, scales[, mins]}, {q8, scales}
                                // or {bf16}
  bool quantized() const { return storage != WeightStorage::bf16; }
};

// How lm_head is stored: INT4, INT8, BF16, or not at all because it is tied to the embedding (its
// matrix is the embedding's, which the file holds once).
enum class LmHeadStorage : uint8_t { int4, int8, bf16, embedding };

// `ferry quantize --keep PATTERN=int4|int8|bf16`: weights whose name matches PATTERN (a glob when
// it holds * ? or [, else a substring) are stored so. Later rules win over earlier ones.
struct KeepRule {
  std::string pattern;
  WeightStorage storage;
};
// Parses "PATTERN=int4|int8|bf16"; throws ferry::Error with a one-line message otherwise.
KeepRule parse_keep_rule(std::string_view text);
bool keep_rule_matches(const KeepRule& rule, const std::string& weight_name);
// What a linear (or the lm_head) is stored as under an INT4 scheme when no rule names it: INT8
// for the lm_head and the attention's value projections, INT4 for the rest.
WeightStorage default_int4_plan_storage(const WeightSpec& spec);

// How every linear weight (lm_head included) is stored. Weights absent from `linears` take the
// scheme's default: INT4 under an INT4 scheme, else BF16.
struct StoragePlan {
  LmHeadStorage lm_head = LmHeadStorage::bf16;
  std::map<std::string, WeightStorage> linears;  // weight name -> storage, overrides only
};
// The writer's choice: INT4 linears and an INT8 lm_head under an INT4 scheme, BF16 everything
// under bf16, then the rules in order. A tied lm_head that ends in BF16 is the embedding (storing
// it would copy the embedding's bytes). Throws ferry::Error for an int4 rule under the bf16 scheme
// (it has no INT4 variant to use).
StoragePlan storage_plan(const ModelConfig& config, Scheme scheme,
                         const std::vector<KeepRule>& rules);

// The storage plan of a whole model under a scheme. With LmHeadStorage::embedding the plan has no
// lm_head weight at all (weights and tensors both lack it).
struct PackedPlan {
  std::vector<TensorDecl> tensors;  // in file order, offsets assigned
  std::vector<PackedWeight> weights;
  uint64_t data_bytes = 0;
};
PackedPlan plan_packed(const ModelConfig& config, Scheme scheme, const StoragePlan& storage);
// The writer's plan: plan_packed(config, scheme, storage_plan(config, scheme, rules)).
PackedPlan plan_packed(const ModelConfig& config, Scheme scheme,
                       const std::vector<KeepRule>& rules);

// The safetensors header for `tensors` (offsets already set) and `metadata`, padded with spaces
// to a multiple of 8 bytes and to at least `min_size` bytes; returns the 8-byte length prefix
// followed by the header.
std::string safetensors_header(const std::vector<TensorDecl>& tensors,
                               const std::map<std::string, std::string>& metadata,
                               uint64_t min_size = 0);

// "%016llx" of XXH3_64bits over the bytes; the second form formats a digest computed elsewhere.
std::string checksum_hex(const uint8_t* data, uint64_t n);
std::string checksum_hex(uint64_t digest);

// A .ferry file opened for reading (inspect, runtime).
struct PackedFile {
  SafetensorsFile file;
  ModelConfig config;
  Scheme scheme;
  int version = kFormatVersion;                  // ferry.format_version as stored
  StoragePlan storage;                           // as found in the file's tensors
  std::map<std::string, std::string> checksums;  // tensor -> hex
  std::map<std::string, double> quant_error;     // weight -> relative RMS

  static bool looks_packed(const SafetensorsFile& f);  // has ferry.format_version
  // Throws ferry::Error for a file that is not a ferry file, a newer format version, or a plan
  // that does not match the stored tensors.
  static PackedFile open(const std::filesystem::path& path);
  static PackedFile from_mapping(std::shared_ptr<MappedFile> mapping);  // same checks as open
  // Names of tensors whose bytes do not match their checksum (empty: all good).
  std::vector<std::string> verify_checksums(unsigned threads) const;
};

}  // namespace ferry
