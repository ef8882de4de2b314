#include "quantizer/checkpoint.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "base/error.hpp"

namespace ferry {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

// The error_code overloads: a stat failure (permissions) must surface as "missing", not as a
// std::filesystem_error escaping the loader.
bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

bool is_dir(const fs::path& p) {
  std::error_code ec;
  return fs::is_directory(p, ec);
}

std::string read_text(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(fmt::format("{}: cannot open: {}", path.string(), std::strerror(errno)));
  std::ostringstream s;
  s << f.rdbuf();
  if (f.bad()) throw Error(fmt::format("{}: read failed", path.string()));
  return s.str();
}

// weight_map of an index: tensor name -> shard file name, checked to be an object of strings
// naming files that exist next to the index.
std::map<std::string, std::string> read_weight_map(const fs::path& index) {
  const std::string what = index.string();
  const json root = parse_json_no_duplicates(read_text(index), what);
  const auto it = root.is_object() ? root.find("weight_map") : root.end();
  if (it == root.end() || !it->is_object())
    throw Error(fmt::format("{}: no \"weight_map\" object (tensor name -> shard file)", what));
  std::map<std::string, std::string> map;
  for (const auto& [name, shard] : it->items()) {
    if (!shard.is_string() || shard.get_ref<const std::string&>().empty())
      throw Error(fmt::format("{}: weight_map entry \"{}\" is not a file name", what, name));
    const fs::path file = index.parent_path() / shard.get<std::string>();
    if (!is_file(file))
      throw Error(fmt::format("{}: weight_map places tensor {} in {}, which does not exist", what,
                              name, file.string()));
    map.emplace(name, shard.get<std::string>());
  }
  if (map.empty()) throw Error(fmt::format("{}: weight_map lists no tensors", what));
  return map;
}

// Where a checkpoint's tensors are listed: an index (sharded) or one .safetensors file.
struct Source {
  fs::path index;
  fs::path single;
};

Source locate(const fs::path& path) {
  if (!is_dir(path)) {
    if (path.filename() == kIndexName) return {path, {}};
    return {{}, path};  // SafetensorsFile::open reports a missing file
  }
  if (is_file(path / kIndexName)) return {path / kIndexName, {}};
  if (is_file(path / kSingleName)) return {{}, path / kSingleName};
  throw Error(fmt::format("{}: no {} or {}", path.string(), kSingleName, kIndexName));
}

// Each shard once, in file-name order (model-00001-of-00004 first).
std::set<std::string> shard_files(const std::map<std::string, std::string>& weight_map) {
  std::set<std::string> files;
  for (const auto& [name, file] : weight_map) files.insert(file);
  return files;
}

std::string mismatch(std::string_view label, std::string_view expected, const TensorView& t,
                     std::span<const uint64_t> shape) {
  return fmt::format("tensor {}: expected {} {}, got {} {}", label, expected, shape_string(shape),
                     dtype_name(t.dtype), shape_string(t.shape));
}

// Through an alias the view carries the stored name; messages name both.
std::string label(std::string_view name, const TensorView& t) {
  if (t.name == name) return std::string(name);
  return fmt::format("{} (stored as {})", name, t.name);
}

bool same_shape(const TensorView& t, std::span<const uint64_t> shape) {
  return std::equal(t.shape.begin(), t.shape.end(), shape.begin(), shape.end());
}

}  // namespace

Checkpoint Checkpoint::open(const fs::path& path) {
  Checkpoint c;
  c.root_ = path;
  const Source source = locate(path);
  std::map<std::string, std::string> weight_map;  // empty unless an index names the shards
  if (source.index.empty()) {
    c.shards_.push_back(SafetensorsFile::open(source.single));
  } else {
    weight_map = read_weight_map(source.index);
    for (const std::string& file : shard_files(weight_map))
      c.shards_.push_back(SafetensorsFile::open(source.index.parent_path() / file));
  }
  c.index_tensors();
  if (!source.index.empty()) c.check_weight_map(weight_map, source.index);
  c.collect_aliases();
  return c;
}

void Checkpoint::index_tensors() {
  for (size_t i = 0; i < shards_.size(); ++i)
    for (const TensorView& t : shards_[i].tensors()) {
      const auto [it, fresh] = by_name_.emplace(t.name, std::pair{i, &t});
      if (!fresh)
        throw Error(fmt::format(
            "tensor {} is stored in both {} and {}; a checkpoint must hold each tensor once",
            t.name, shards_[it->second.first].path().string(), shards_[i].path().string()));
    }
}

void Checkpoint::check_weight_map(const std::map<std::string, std::string>& weight_map,
                                  const fs::path& index) const {
  for (const auto& [name, file] : weight_map) {
    const auto it = by_name_.find(name);
    if (it == by_name_.end() || shards_[it->second.first].path() != index.parent_path() / file)
      throw Error(
          fmt::format("{}: weight_map places tensor {} in {}, but that shard has no tensor {}",
                      index.string(), name, file, name));
  }
}

// Tied checkpoints store one tensor and name the other in metadata ("model.embed_tokens.weight":
// "lm_head.weight"); other metadata ("format": "pt") names no tensor and is ignored.
void Checkpoint::collect_aliases() {
  for (const SafetensorsFile& shard : shards_)
    for (const auto& [key, value] : shard.metadata()) {
      if (by_name_.contains(key) || !by_name_.contains(value)) continue;
      const auto [it, fresh] = aliases_.emplace(key, value);
      if (!fresh && it->second != value)
        throw Error(fmt::format("{}: metadata makes {} an alias of both {} and {}",
                                shard.path().string(), key, it->second, value));
    }
}

std::vector<const TensorView*> Checkpoint::tensors() const {
  std::vector<const TensorView*> out;
  for (const SafetensorsFile& shard : shards_)
    for (const TensorView& t : shard.tensors()) out.push_back(&t);
  return out;
}

const TensorView* Checkpoint::find(std::string_view name) const {
  if (const auto it = by_name_.find(name); it != by_name_.end()) return it->second.second;
  const auto alias = aliases_.find(name);
  if (alias == aliases_.end()) return nullptr;
  const auto it = by_name_.find(alias->second);
  return it == by_name_.end() ? nullptr : it->second.second;
}

const TensorView& Checkpoint::require(std::string_view name) const {
  const TensorView* t = find(name);
  if (!t) throw Error(fmt::format("tensor {}: not found in {}", name, root_.string()));
  return *t;
}

const TensorView& Checkpoint::require_tensor(std::string_view name, DType dtype,
                                             std::span<const uint64_t> shape) const {
  const TensorView& t = require(name);
  if (t.dtype != dtype || !same_shape(t, shape))
    throw Error(mismatch(label(name, t), dtype_name(dtype), t, shape));
  return t;
}

const TensorView& Checkpoint::require_float_tensor(std::string_view name,
                                                   std::span<const uint64_t> shape) const {
  const TensorView& t = require(name);
  if (!is_float16_or_32(t.dtype) || !same_shape(t, shape))
    throw Error(mismatch(label(name, t), "F32/F16/BF16", t, shape));
  return t;
}

void Checkpoint::release(const TensorView& t, uint64_t offset, uint64_t length) const {
  const auto it = by_name_.find(t.name);
  if (it == by_name_.end() || it->second.second != &t)
    throw Error(
        fmt::format("tensor {}: release of a view that is not part of {}", t.name, root_.string()));
  shards_[it->second.first].release(t, offset, length);
}

uint64_t Checkpoint::total_bytes() const {
  uint64_t sum = 0;
  for (const SafetensorsFile& shard : shards_)
    for (const TensorView& t : shard.tensors()) sum += t.nbytes;
  return sum;
}

}  // namespace ferry
