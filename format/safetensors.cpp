#include "format/safetensors.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <tuple>

#include "base/error.hpp"

namespace ferry {
namespace {

using nlohmann::json;

// The reference implementation refuses headers above 100 MB; a larger one is a corrupt length
// field, and honouring it would make us parse (and allocate for) garbage.
constexpr uint64_t kMaxHeaderSize = 100'000'000;
// A header nests 3 deep (entry, shape); serde_json, which the reference uses, stops at 128. The
// cap bounds the memory a 100 MB header of "[[[[..." can make the DOM allocate (~1.6 GB per
// 10 MB of nesting under ASan).
constexpr size_t kMaxJsonDepth = 128;

// A tensor entry as read from the header, before its place in the data section is checked.
struct Entry {
  TensorView view;
  uint64_t begin = 0;  // data_offsets, relative to the data section
  uint64_t end = 0;
};

[[noreturn]] void fail(std::string_view what, std::string_view problem) {
  throw Error(fmt::format("{}: {}", what, problem));
}

// Names come from the file: escape control bytes so that an error message stays on one line.
std::string printable(std::string_view s) {
  std::string out;
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f)
      out += fmt::format("\\x{:02x}", u);
    else
      out += c;
  }
  return out;
}

uint64_t read_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// What a JSON value is, for messages: the value itself could be megabytes long.
std::string_view value_kind(const json& v) {
  if (v.is_number_integer()) return "negative number";
  if (v.is_number_float()) return "non-integer or out-of-range number";
  return v.type_name();
}

std::string known_dtypes() {
  std::string out;
  for (int i = 0; i <= int(DType::U64); ++i) {
    if (i) out += ", ";
    out += dtype_name(DType(i));
  }
  return out;
}

uint64_t header_length(std::span<const uint8_t> bytes, std::string_view what) {
  if (bytes.empty()) fail(what, "file is empty, not a safetensors file");
  if (bytes.size() < 8)
    fail(what, fmt::format("file is {} bytes, too short for a safetensors file (the header length "
                           "alone takes 8 bytes)",
                           bytes.size()));
  const uint64_t n = read_le64(bytes.data());
  const uint64_t room = bytes.size() - 8;
  if (n == 0) fail(what, "header length is 0 (an empty header is not JSON); the file is corrupt");
  if (n > kMaxHeaderSize)
    fail(what, fmt::format("header length {} exceeds the {}-byte limit; the file is corrupt or not "
                           "a safetensors file",
                           n, kMaxHeaderSize));
  if (n > room)
    fail(what, fmt::format("header length {} runs past the end of the file ({} bytes follow the "
                           "length field); the file is truncated or corrupt",
                           n, room));
  return n;
}

const json& field(const json& entry, const char* key, std::string_view what,
                  std::string_view name) {
  const auto it = entry.find(key);
  if (it == entry.end())
    fail(what, fmt::format("tensor {}: entry has no \"{}\"", printable(name), key));
  return *it;
}

DType entry_dtype(const json& entry, std::string_view what, std::string_view name) {
  const json& v = field(entry, "dtype", what, name);
  if (!v.is_string()) fail(what, fmt::format("tensor {}: dtype is not a string", printable(name)));
  const auto& s = v.get_ref<const std::string&>();
  const auto dt = parse_dtype(s);
  if (!dt)
    fail(what, fmt::format("tensor {}: unknown or unsupported dtype \"{}\" (ferry reads {})",
                           printable(name), printable(s), known_dtypes()));
  return *dt;
}

// An array of JSON integers that fit u64 (nlohmann stores non-negative integers as unsigned,
// negative ones as signed, and anything larger than u64 as a float).
std::vector<uint64_t> entry_u64s(const json& entry, const char* key, std::string_view what,
                                 std::string_view name) {
  const json& v = field(entry, key, what, name);
  if (!v.is_array()) fail(what, fmt::format("tensor {}: {} is not an array", printable(name), key));
  std::vector<uint64_t> out;
  out.reserve(v.size());
  for (const json& x : v) {
    if (!x.is_number_unsigned())
      fail(what, fmt::format("tensor {}: {} holds a {}, not a non-negative integer below 2^64",
                             printable(name), key, value_kind(x)));
    out.push_back(x.get<uint64_t>());
  }
  return out;
}

// Element count and byte size with overflow checks: a corrupt shape must not wrap around to a
// size that happens to match the offsets.
uint64_t checked_nbytes(const std::vector<uint64_t>& shape, DType dt, std::string_view what,
                        std::string_view name) {
  uint64_t count = 1;
  for (const uint64_t d : shape)
    if (__builtin_mul_overflow(count, d, &count))
      fail(what, fmt::format("tensor {}: shape {} overflows a 64-bit element count",
                             printable(name), shape_string(shape)));
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(count, dtype_size(dt), &nbytes))
    fail(what, fmt::format("tensor {}: {} {} overflows a 64-bit byte size", printable(name),
                           dtype_name(dt), shape_string(shape)));
  return nbytes;
}

Entry parse_entry(const std::string& name, const json& entry, std::string_view what) {
  if (!entry.is_object())
    fail(what, fmt::format("tensor {}: entry is not an object", printable(name)));
  for (const auto& [key, value] : entry.items())
    if (key != "dtype" && key != "shape" && key != "data_offsets")
      fail(what, fmt::format("tensor {}: unexpected key \"{}\" (an entry holds exactly dtype, "
                             "shape and data_offsets)",
                             printable(name), printable(key)));
  Entry e;
  e.view.name = name;
  e.view.dtype = entry_dtype(entry, what, name);
  e.view.shape = entry_u64s(entry, "shape", what, name);
  const std::vector<uint64_t> offsets = entry_u64s(entry, "data_offsets", what, name);
  if (offsets.size() != 2)
    fail(what, fmt::format("tensor {}: data_offsets has {} values, not 2", printable(name),
                           offsets.size()));
  e.begin = offsets[0];
  e.end = offsets[1];
  if (e.begin > e.end)
    fail(what, fmt::format("tensor {}: data_offsets [{}, {}] begin after they end", printable(name),
                           e.begin, e.end));
  e.view.nbytes = checked_nbytes(e.view.shape, e.view.dtype, what, name);
  if (e.view.nbytes != e.end - e.begin)
    fail(what, fmt::format("tensor {}: {} {} takes {} bytes but data_offsets [{}, {}] span {}",
                           printable(name), dtype_name(e.view.dtype), shape_string(e.view.shape),
                           e.view.nbytes, e.begin, e.end, e.end - e.begin));
  return e;
}

std::map<std::string, std::string> parse_metadata(const json& m, std::string_view what) {
  if (!m.is_object()) fail(what, "__metadata__ is not an object");
  std::map<std::string, std::string> out;
  for (const auto& [key, value] : m.items()) {
    if (!value.is_string())
      fail(what, fmt::format("__metadata__ entry \"{}\" is {}, not a string", printable(key),
                             value.type_name()));
    out.emplace(key, value.get<std::string>());
  }
  return out;
}

// Sorted by (begin, end, name), the entries must tile [0, data_size) exactly. Sorting on end too
// places an empty tensor before a non-empty one that begins at the same offset; the name breaks
// the remaining ties between empty tensors so the order never depends on the JSON.
void check_layout(std::vector<Entry>& entries, uint64_t data_size, std::string_view what) {
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return std::tie(a.begin, a.end, a.view.name) < std::tie(b.begin, b.end, b.view.name);
  });
  uint64_t expected = 0;
  const Entry* prev = nullptr;
  for (const Entry& e : entries) {
    if (e.begin < expected)
      fail(what, fmt::format("tensor {} (bytes {}..{}) overlaps tensor {} (bytes {}..{})",
                             printable(e.view.name), e.begin, e.end, printable(prev->view.name),
                             prev->begin, prev->end));
    if (e.begin > expected)
      fail(what, fmt::format("{} unused bytes before tensor {} (data offsets {}..{}); tensors "
                             "must be contiguous",
                             e.begin - expected, printable(e.view.name), e.begin, e.end));
    expected = e.end;
    prev = &e;
  }
  if (expected > data_size)
    fail(what, fmt::format("tensor {} ends at data offset {}, past the end of the file (the data "
                           "section holds {} bytes); the file is truncated",
                           printable(prev->view.name), expected, data_size));
  if (expected < data_size)
    fail(what, fmt::format("{} trailing bytes after the last tensor (tensors end at data offset "
                           "{}, the data section holds {} bytes)",
                           data_size - expected, expected, data_size));
}

// Builds the DOM through nlohmann's SAX interface so that a duplicate key is seen (the DOM
// parser silently overwrites it) and nesting is bounded. nlohmann's own parser-callback hook
// would also see keys, but it rescans the parent container at every closing bracket: quadratic,
// minutes for a 20 MB header of 200,000 tensors.
class StrictDomBuilder : public nlohmann::json_sax<json> {
 public:
  explicit StrictDomBuilder(std::string_view what) : what_(what) {}
  json take() { return std::move(root_); }

  bool null() override { return value(nullptr); }
  bool boolean(bool v) override { return value(v); }
  bool number_integer(number_integer_t v) override { return value(v); }
  bool number_unsigned(number_unsigned_t v) override { return value(v); }
  bool number_float(number_float_t v, const string_t&) override { return value(v); }
  bool string(string_t& v) override { return value(std::move(v)); }
  bool binary(binary_t& v) override { return value(json::binary(std::move(v))); }
  bool start_object(std::size_t) override { return open(json::object()); }
  bool start_array(std::size_t) override { return open(json::array()); }
  bool end_object() override { return close(); }
  bool end_array() override { return close(); }

  bool key(string_t& k) override {
    if (open_.back()->contains(k))
      fail(what_, fmt::format("duplicate key \"{}\" in the JSON (a parser would silently keep "
                              "only the last one)",
                              printable(k)));
    key_ = std::move(k);
    return true;
  }

  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    fail(what_, fmt::format("not valid JSON: {}", printable(e.what())));
  }

 private:
  // Places v in the innermost open container (under the pending key for an object).
  json* add(json v) {
    if (open_.empty()) {
      root_ = std::move(v);
      return &root_;
    }
    json& parent = *open_.back();
    if (parent.is_array()) {
      parent.push_back(std::move(v));
      return &parent.back();
    }
    return &parent.get_ref<json::object_t&>()
                .insert_or_assign(std::move(key_), std::move(v))
                .first->second;
  }

  bool value(json v) {
    add(std::move(v));
    return true;
  }

  // The pointers stay valid: only the innermost open container grows, and an array grows only
  // after its previous (closed) element is no longer on the stack.
  bool open(json container) {
    if (open_.size() >= kMaxJsonDepth)
      fail(what_, fmt::format("JSON nested deeper than {} levels", kMaxJsonDepth));
    open_.push_back(add(std::move(container)));
    return true;
  }

  bool close() {
    open_.pop_back();
    return true;
  }

  std::string_view what_;
  json root_;
  std::vector<json*> open_;  // the containers being filled, innermost last
  std::string key_;          // the key of the value an object receives next
};

}  // namespace

nlohmann::json parse_json_no_duplicates(std::string_view text, std::string_view what) {
  // nlohmann stops at a NUL byte as if the text ended there, which would accept "{}\0garbage";
  // JSON text never holds a raw NUL (strings must escape it).
  if (const size_t nul = text.find('\0'); nul != std::string_view::npos)
    fail(what, fmt::format("not valid JSON: NUL byte at offset {}", nul));
  StrictDomBuilder builder(what);
  json::sax_parse(text.begin(), text.end(), &builder);
  return builder.take();
}

// ---- MappedFile ------------------------------------------------------------------------------

MappedFile::MappedFile(std::filesystem::path path, const uint8_t* data, uint64_t size)
    : path_(std::move(path)), data_(data), size_(size) {}

MappedFile::~MappedFile() {
  if (size_ > 0) munmap(const_cast<uint8_t*>(data_), size_);
}

std::shared_ptr<MappedFile> MappedFile::open(const std::filesystem::path& path) {
  const std::string what = path.string();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(what, fmt::format("cannot open: {}", std::strerror(errno)));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    fail(what, fmt::format("cannot stat: {}", std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    fail(what, "not a regular file");
  }
  const auto size = uint64_t(st.st_size);
  // mmap rejects a length of 0; an empty file maps to nothing and the parser reports it.
  void* p = nullptr;
  if (size > 0) p = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  close(fd);  // the mapping keeps its own reference to the file
  if (p == MAP_FAILED) fail(what, fmt::format("cannot map {} bytes: {}", size, std::strerror(err)));
  return std::shared_ptr<MappedFile>(new MappedFile(path, static_cast<const uint8_t*>(p), size));
}

std::shared_ptr<MappedFile> MappedFile::anonymous(uint64_t size, std::string name,
                                                  const std::function<void(uint8_t*)>& fill) {
  void* p = size ? mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
                 : nullptr;
  if (p == MAP_FAILED)
    fail(name, fmt::format("cannot allocate {} bytes of memory: {}", size, std::strerror(errno)));
  std::shared_ptr<MappedFile> m(new MappedFile(name, static_cast<const uint8_t*>(p), size));
  if (size) {
    fill(static_cast<uint8_t*>(p));
    mprotect(p, size, PROT_READ);  // from here on it is read like a file
  }
  return m;
}

void MappedFile::release(uint64_t offset, uint64_t length) const {
  if (offset >= size_) return;
  const uint64_t end = length > size_ - offset ? size_ : offset + length;
  const auto page = uint64_t(sysconf(_SC_PAGESIZE));
  // Only whole pages inside the range: a partial page may hold bytes of a neighbour still in use
  // (dropping it would be harmless, only slower, but the contract is "this range only").
  const uint64_t first = (offset + page - 1) / page * page;
  const uint64_t last = end / page * page;
  if (first >= last) return;
  // Advice only: a failure leaves the pages resident, which costs memory, never correctness.
  madvise(const_cast<uint8_t*>(data_) + first, last - first, MADV_DONTNEED);
}

// ---- header ----------------------------------------------------------------------------------

uint64_t TensorView::numel() const {
  uint64_t count = 1;
  for (const uint64_t d : shape)
    if (__builtin_mul_overflow(count, d, &count))
      throw Error(fmt::format("tensor {}: shape {} overflows a 64-bit element count", name,
                              shape_string(shape)));
  return count;
}

SafetensorsHeader parse_safetensors(std::span<const uint8_t> bytes, std::string_view what) {
  SafetensorsHeader h;
  h.header_size = header_length(bytes, what);
  h.data_start = 8 + h.header_size;
  const std::string_view text(reinterpret_cast<const char*>(bytes.data()) + 8, h.header_size);
  const json root = parse_json_no_duplicates(text, fmt::format("{}: header", what));
  if (!root.is_object())
    fail(what, fmt::format("header is a JSON {}, not an object", root.type_name()));
  // The format requires the object to start at byte 8; nlohmann would also skip leading
  // whitespace and a UTF-8 byte order mark, which the reference implementation rejects.
  if (text.front() != '{') fail(what, "header does not begin with '{' right after its length");
  std::vector<Entry> entries;
  for (const auto& [key, value] : root.items()) {
    if (key == "__metadata__")
      h.metadata = parse_metadata(value, what);
    else
      entries.push_back(parse_entry(key, value, what));
  }
  check_layout(entries, bytes.size() - h.data_start, what);
  h.tensors.reserve(entries.size());
  for (Entry& e : entries) {
    e.view.file_offset = h.data_start + e.begin;
    e.view.data = bytes.data() + e.view.file_offset;
    h.tensors.push_back(std::move(e.view));
  }
  return h;
}

// ---- SafetensorsFile -------------------------------------------------------------------------

SafetensorsFile::SafetensorsFile(std::shared_ptr<MappedFile> file, SafetensorsHeader header)
    : file_(std::move(file)), header_(std::move(header)) {
  for (size_t i = 0; i < header_.tensors.size(); ++i) index_.emplace(header_.tensors[i].name, i);
}

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  return from_mapping(MappedFile::open(path));
}

SafetensorsFile SafetensorsFile::from_mapping(std::shared_ptr<MappedFile> file) {
  SafetensorsHeader header = parse_safetensors(file->bytes(), file->path().string());
  return SafetensorsFile(std::move(file), std::move(header));
}

const TensorView* SafetensorsFile::find(std::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

const TensorView& SafetensorsFile::require_tensor(std::string_view name, DType dtype,
                                                  std::span<const uint64_t> shape) const {
  const TensorView* t = find(name);
  if (!t) throw Error(fmt::format("tensor {}: not found in {}", name, path().string()));
  check_tensor(*t, dtype, shape);
  return *t;
}

void SafetensorsFile::release(const TensorView& t, uint64_t offset, uint64_t length) const {
  if (offset >= t.nbytes) return;
  file_->release(t.file_offset + offset, std::min(length, t.nbytes - offset));
}

std::string shape_string(std::span<const uint64_t> shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

void check_tensor(const TensorView& t, DType dtype, std::span<const uint64_t> shape) {
  if (t.dtype == dtype && std::equal(t.shape.begin(), t.shape.end(), shape.begin(), shape.end()))
    return;
  throw Error(fmt::format("tensor {}: expected {} {}, got {} {}", t.name, dtype_name(dtype),
                          shape_string(shape), dtype_name(t.dtype), shape_string(t.shape)));
}

}  // namespace ferry
