// Strict, zero-copy safetensors reader (https://github.com/huggingface/safetensors, "Format").
//
// File layout: u64 little-endian N | N bytes of UTF-8 JSON header | data section.
// The header maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
// relative to the data section) and may hold "__metadata__": {string: string}.
//
// Validation follows the format exactly; every violation throws ferry::Error naming the file
// and the problem:
//   - 8 <= file size; N <= file size - 8 and N <= 100,000,000 (the reference implementation's cap);
//   - the header is valid UTF-8 JSON whose top level is an object; duplicate keys at any depth
//     are rejected (JSON parsers silently keep the last one, which would hide a tensor);
//   - each entry has exactly a known dtype, a shape of non-negative integers and two offsets;
//     unknown dtypes are errors, never skipped;
//   - element count and byte size are computed with overflow checks and must equal end - begin;
//   - sorted by begin, entries start at 0, are contiguous (no hole, no overlap), begin <= end,
//     and the last one ends exactly at the end of the file (no trailing bytes);
//   - "__metadata__" maps strings to strings.
// Empty tensors (a 0 in the shape, begin == end) and rank-0 scalars (shape []) are valid.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/dtype.hpp"

namespace ferry {

// A read-only memory mapping of a whole file. Movable, not copyable; unmaps on destruction.
class MappedFile {
 public:
  static std::shared_ptr<MappedFile> open(
      const std::filesystem::path& path);  // throws ferry::Error
  // Anonymous memory of `size` bytes that `fill` writes once, then read-only like a file mapping:
  // a model synthesized in memory (ferry bench --synthetic) is read exactly like a file.
  // `name` stands for the path in messages. Throws ferry::Error when the memory is not there.
  static std::shared_ptr<MappedFile> anonymous(uint64_t size, std::string name,
                                               const std::function<void(uint8_t*)>& fill);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  const std::filesystem::path& path() const { return path_; }
  // Drops the pages of [offset, offset + length) from this process's resident set
  // (madvise MADV_DONTNEED on whole pages inside the range). The data stays readable: a later
  // access faults it back in from the page cache. Used by the converter to bound its RSS.
  void release(uint64_t offset, uint64_t length) const;

 private:
  MappedFile(std::filesystem::path path, const uint8_t* data, uint64_t size);
  std::filesystem::path path_;
  const uint8_t* data_ = nullptr;  // [size_] bytes, PROT_READ, MAP_PRIVATE
  uint64_t size_ = 0;
};

struct TensorView {
  std::string name;
  DType dtype = DType::U8;
  std::vector<uint64_t> shape;    // row-major; [] for a scalar
  const uint8_t* data = nullptr;  // [nbytes] bytes inside the mapping (zero-copy)
  uint64_t nbytes = 0;
  uint64_t file_offset = 0;  // absolute offset of data within the file

  uint64_t numel() const;  // product of shape (1 for a scalar); validated not to overflow
};

// The parsed, validated header of a safetensors file held in `bytes` (the whole file).
// Tensor views point into `bytes`. This is the function the fuzz target drives.
struct SafetensorsHeader {
  std::vector<TensorView> tensors;  // sorted by data offset (file order)
  std::map<std::string, std::string> metadata;
  uint64_t header_size = 0;  // N
  uint64_t data_start = 0;   // 8 + N
};
// `what` names the source in error messages (usually the path).
SafetensorsHeader parse_safetensors(std::span<const uint8_t> bytes, std::string_view what);

class SafetensorsFile {
 public:
  static SafetensorsFile open(
      const std::filesystem::path& path);  // maps and validates; throws ferry::Error
  static SafetensorsFile from_mapping(std::shared_ptr<MappedFile> file);  // validates

  const std::filesystem::path& path() const { return file_->path(); }
  uint64_t file_size() const { return file_->bytes().size(); }
  const std::shared_ptr<MappedFile>& mapping() const { return file_; }  // to open it again
  const SafetensorsHeader& header() const { return header_; }
  const std::vector<TensorView>& tensors() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }

  const TensorView* find(std::string_view name) const;  // nullptr when absent
  // The tensor, checked: "tensor X: expected BF16 [4096, 4096], got F32 [4096, 4096]" or
  // "tensor X: not found in FILE".
  const TensorView& require_tensor(std::string_view name, DType dtype,
                                   std::span<const uint64_t> shape) const;
  void release(const TensorView& t, uint64_t offset,
               uint64_t length) const;  // see MappedFile::release

 private:
  SafetensorsFile(std::shared_ptr<MappedFile> file, SafetensorsHeader header);
  std::shared_ptr<MappedFile> file_;
  SafetensorsHeader header_;
  std::map<std::string, size_t, std::less<>> index_;  // name -> position in header_.tensors
};

// Parses JSON text, rejecting duplicate keys at any depth (nlohmann, like most parsers, silently
// keeps the last one). Throws "WHAT: not valid JSON: ..." / "WHAT: duplicate key ...". Shared by
// the safetensors header and the checkpoint index.
nlohmann::json parse_json_no_duplicates(std::string_view text, std::string_view what);

// "[4096, 4096]"
std::string shape_string(std::span<const uint64_t> shape);
// Throws "tensor X: expected DT [..], got DT [..]" unless t has exactly this dtype and shape.
void check_tensor(const TensorView& t, DType dtype, std::span<const uint64_t> shape);

}  // namespace ferry
