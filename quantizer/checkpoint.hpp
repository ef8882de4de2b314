// A Hugging Face checkpoint's weights: one model.safetensors, or shards listed by
// model.safetensors.index.json ({"weight_map": {tensor: shard file}}), or a single .safetensors
// file given directly. Lookups follow aliases stored in shard metadata: tied checkpoints such as
// ../shared/models/tinystories-656k store only lm_head.weight and map
// "model.embed_tokens.weight" -> "lm_head.weight" in __metadata__.
#pragma once
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "format/safetensors.hpp"

namespace ferry {

class Checkpoint {
 public:
  // Move-only: by_name_ points into shards_, which a copy would not own.
  Checkpoint() = default;
  Checkpoint(Checkpoint&&) noexcept = default;
  Checkpoint& operator=(Checkpoint&&) noexcept = default;
  Checkpoint(const Checkpoint&) = delete;
  Checkpoint& operator=(const Checkpoint&) = delete;

  // `path`: a directory (with model.safetensors.index.json or model.safetensors) or one
  // .safetensors file. Throws ferry::Error on a missing/malformed index or shard, a tensor the
  // index places in a shard that lacks it, or a tensor present in two shards.
  static Checkpoint open(const std::filesystem::path& path);

  const std::vector<SafetensorsFile>& shards() const { return shards_; }
  // Every stored tensor, in shard order then file order (aliases not included).
  std::vector<const TensorView*> tensors() const;
  // Alias name -> stored name, collected from every shard's metadata (an entry whose value names
  // a stored tensor and whose key names none).
  const std::map<std::string, std::string, std::less<>>& aliases() const { return aliases_; }

  const TensorView* find(std::string_view name) const;  // follows aliases; nullptr when absent
  // "tensor X: not found in DIR" / "tensor X: expected ..., got ...".
  const TensorView& require_tensor(std::string_view name, DType dtype,
                                   std::span<const uint64_t> shape) const;
  // Same, accepting any of F32, F16, BF16 (the dtypes ferry converts from).
  const TensorView& require_float_tensor(std::string_view name,
                                         std::span<const uint64_t> shape) const;
  // Drops pages of a tensor's byte range from the RSS (see MappedFile::release).
  void release(const TensorView& t, uint64_t offset, uint64_t length) const;
  uint64_t total_bytes() const;  // sum of stored tensor bytes

 private:
  void index_tensors();  // fills by_name_; throws on a tensor stored in two shards
  void check_weight_map(const std::map<std::string, std::string>& weight_map,
                        const std::filesystem::path& index) const;
  void collect_aliases();
  const TensorView& require(std::string_view name) const;  // find() or "not found" error

  std::filesystem::path root_;
  std::vector<SafetensorsFile> shards_;
  std::map<std::string, std::pair<size_t, const TensorView*>, std::less<>>
      by_name_;  // -> (shard, view)
  std::map<std::string, std::string, std::less<>> aliases_;
};

}  // namespace ferry
