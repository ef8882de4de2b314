// The strict safetensors reader and the checkpoint loader: a table of corrupt files, every
// truncation of a valid file, the accepted corner cases (empty and rank-0 tensors, unsorted
// entries), typed lookups, sharded checkpoints with an index, aliases, and the real tiny model.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "base/error.hpp"
#include "format/safetensors.hpp"
#include "quantizer/checkpoint.hpp"
#include "tests/test_util.hpp"

namespace ferry {
namespace {

using test::ScratchDir;
using test::write_file;
using Bytes = std::vector<uint8_t>;

// ---- a tiny safetensors writer -----------------------------------------------------------------

Bytes le64(uint64_t v) {
  Bytes out(8);
  for (int i = 0; i < 8; ++i) out[size_t(i)] = uint8_t(v >> (8 * i));
  return out;
}

// u64 `n` | header bytes | data, with `n` free to lie about the header's length.
Bytes raw_file(uint64_t n, std::string_view header, const Bytes& data) {
  Bytes out = le64(n);
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

Bytes st_file(std::string_view header, const Bytes& data) {
  return raw_file(header.size(), header, data);
}

// "name":{"dtype":..,"shape":..,"data_offsets":[b,e]}
std::string entry(std::string_view name, std::string_view dtype, std::string_view shape,
                  uint64_t begin, uint64_t end) {
  return "\"" + std::string(name) + "\":{\"dtype\":\"" + std::string(dtype) +
         "\",\"shape\":" + std::string(shape) + ",\"data_offsets\":[" + std::to_string(begin) +
         "," + std::to_string(end) + "]}";
}

Bytes iota_bytes(size_t n) {
  Bytes b(n);
  for (size_t i = 0; i < n; ++i) b[i] = uint8_t(i * 7 + 1);
  return b;
}

// A valid file with metadata, three tensors of different dtypes and a padded header.
Bytes valid_file() {
  std::string header =
      "{\"__metadata__\":{\"format\":\"pt\"}," + entry("a", "F32", "[2, 2]", 0, 16) + "," +
      entry("b", "BF16", "[3]", 16, 22) + "," + entry("c", "U8", "[2]", 22, 24) + "}";
  header.append((8 - header.size() % 8) % 8, ' ');  // writers pad the header to 8 bytes
  return st_file(header, iota_bytes(24));
}

std::string error_of(const Bytes& bytes) {
  try {
    parse_safetensors(bytes, "model.safetensors");
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// ---- corrupt files -----------------------------------------------------------------------------

struct CorruptCase {
  const char* label;
  Bytes bytes;
  const char* expected;  // substring of the error message
};

std::vector<CorruptCase> corrupt_cases() {
  const std::string w8 = entry("w", "F32", "[2]", 0, 8);
  const Bytes d8 = iota_bytes(8);
  return {
      {"empty file", {}, "file is empty"},
      {"7-byte file", Bytes(7, 0), "file is 7 bytes, too short"},
      {"header length 0", raw_file(0, "", d8), "header length is 0"},
      {"header length 7 cuts the JSON", raw_file(7, "{" + w8 + "}", {}), "not valid JSON"},
      {"header length above 100 MB", raw_file(100'000'001, "{}", {}),
       "header length 100000001 exceeds the 100000000-byte limit"},
      {"header length past end of file", raw_file(1000, "{}", d8), "runs past the end of the file"},
      {"header length 2^64-1", raw_file(~uint64_t(0), "{}", {}), "exceeds"},
      {"not JSON", st_file("hello world", {}), "not valid JSON"},
      {"JSON followed by garbage", st_file("{} x", {}), "not valid JSON"},
      {"NUL padding instead of spaces", st_file(std::string("{}\0\0", 4), {}),
       "not valid JSON: NUL byte at offset 2"},
      {"NUL then garbage", st_file(std::string("{}\0]]]", 6), {}), "NUL byte"},
      {"byte order mark", st_file("\xef\xbb\xbf{}", {}), "does not begin with '{'"},
      {"leading whitespace", st_file(" {}", {}), "does not begin with '{'"},
      {"invalid UTF-8 in a key", st_file("{\"w\xff\":{}}", {}), "not valid JSON"},
      {"overlong UTF-8 in a value", st_file("{\"__metadata__\":{\"k\":\"\xc0\xaf\"}}", {}),
       "not valid JSON"},
      {"lone surrogate escape", st_file("{\"\\ud800\":{}}", {}), "not valid JSON"},
      {"nesting 200 deep",
       st_file("{\"w\":" + std::string(200, '[') + std::string(200, ']') + "}", {}),
       "JSON nested deeper than 128 levels"},
      {"top level is an array", st_file("[1, 2]", {}), "header is a JSON array, not an object"},
      {"top level is a string", st_file("\"w\"", {}), "not an object"},
      {"unknown dtype F4", st_file("{" + entry("w", "F4", "[2]", 0, 1) + "}", {1}),
       "unknown or unsupported dtype \"F4\""},
      {"unknown dtype Q7", st_file("{" + entry("w", "Q7", "[2]", 0, 8) + "}", d8),
       "unknown or unsupported dtype \"Q7\""},
      {"dtype not a string",
       st_file("{\"w\":{\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,8]}}", d8),
       "dtype is not a string"},
      {"element count overflows",
       st_file("{" + entry("w", "U8", "[4294967296, 4294967296, 16]", 0, 0) + "}", {}),
       "overflows a 64-bit element count"},
      {"byte size overflows",
       st_file("{" + entry("w", "F32", "[4611686018427387904]", 0, 0) + "}", {}),
       "overflows a 64-bit byte size"},
      {"negative shape", st_file("{" + entry("w", "F32", "[-2]", 0, 8) + "}", d8),
       "shape holds a negative number"},
      {"fractional shape", st_file("{" + entry("w", "F32", "[2.0]", 0, 8) + "}", d8),
       "shape holds a non-integer"},
      {"shape above 2^64",
       st_file("{" + entry("w", "F32", "[18446744073709551616]", 0, 8) + "}", d8),
       "not a non-negative integer below 2^64"},
      {"shape not an array", st_file("{" + entry("w", "F32", "2", 0, 8) + "}", d8),
       "shape is not an array"},
      {"shape of strings", st_file("{" + entry("w", "F32", "[\"2\"]", 0, 8) + "}", d8),
       "shape holds a string"},
      {"overlapping offsets",
       st_file("{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[2]", 4, 12) + "}",
               iota_bytes(12)),
       "tensor b (bytes 4..12) overlaps tensor a (bytes 0..8)"},
      {"gap between tensors",
       st_file("{" + entry("a", "F32", "[1]", 0, 4) + "," + entry("b", "F32", "[1]", 8, 12) + "}",
               iota_bytes(12)),
       "4 unused bytes before tensor b"},
      {"first tensor not at 0", st_file("{" + entry("w", "F32", "[1]", 4, 8) + "}", d8),
       "4 unused bytes before tensor w"},
      {"empty tensor inside another",
       st_file("{" + w8 + "," + entry("e", "F32", "[0]", 4, 4) + "}", d8), "overlaps"},
      {"begin after end", st_file("{" + entry("w", "F32", "[1]", 8, 4) + "}", d8),
       "data_offsets [8, 4] begin after they end"},
      {"byte size differs from range",
       st_file("{" + entry("w", "F32", "[2]", 0, 12) + "}", iota_bytes(12)),
       "tensor w: F32 [2] takes 8 bytes but data_offsets [0, 12] span 12"},
      {"trailing bytes after the data", st_file("{" + w8 + "}", iota_bytes(9)),
       "1 trailing bytes after the last tensor"},
      {"data past end of file", st_file("{" + w8 + "}", iota_bytes(5)),
       "tensor w ends at data offset 8, past the end of the file (the data section holds 5 bytes)"},
      {"data but no tensors", st_file("{}", d8), "8 trailing bytes"},
      {"duplicate tensor names", st_file("{" + w8 + "," + w8 + "}", d8), "duplicate key \"w\""},
      {"duplicate key inside an entry",
       st_file("{\"w\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
               d8),
       "duplicate key \"dtype\""},
      {"duplicate metadata key", st_file("{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", {}),
       "duplicate key \"k\""},
      {"duplicate __metadata__", st_file("{\"__metadata__\":{},\"__metadata__\":{}}", {}),
       "duplicate key \"__metadata__\""},
      {"metadata value not a string", st_file("{\"__metadata__\":{\"k\":1}}", {}),
       "__metadata__ entry \"k\" is number, not a string"},
      {"metadata not an object", st_file("{\"__metadata__\":[\"k\"]}", {}),
       "__metadata__ is not an object"},
      {"entry not an object", st_file("{\"w\":5}", {}), "tensor w: entry is not an object"},
      {"missing data_offsets", st_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[2]}}", d8),
       "tensor w: entry has no \"data_offsets\""},
      {"missing dtype", st_file("{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", d8),
       "entry has no \"dtype\""},
      {"missing shape", st_file("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", d8),
       "entry has no \"shape\""},
      {"extra key",
       st_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"extra\":1}}", d8),
       "unexpected key \"extra\""},
      {"three data_offsets",
       st_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,8]}}", d8),
       "data_offsets has 3 values, not 2"},
      {"negative data_offsets",
       st_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", {}),
       "data_offsets holds a negative number"},
      {"control byte in a name is escaped", st_file("{\"a\\nb\":5}", {}), "tensor a\\x0ab: entry"},
  };
}

TEST(SafetensorsCorrupt, EveryRowFailsWithItsMessage) {
  for (const CorruptCase& c : corrupt_cases()) {
    SCOPED_TRACE(c.label);
    const std::string message = error_of(c.bytes);
    EXPECT_EQ(message.rfind("model.safetensors: ", 0), 0u) << message;
    EXPECT_NE(message.find(c.expected), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << "not one line: " << message;
  }
}

TEST(SafetensorsCorrupt, EveryTruncationOfAValidFileFails) {
  const Bytes full = valid_file();
  ASSERT_NO_THROW(parse_safetensors(full, "full"));
  for (size_t n = 0; n < full.size(); ++n) {
    // An exact-size copy, so that a read past the end is an ASan finding.
    const Bytes cut(full.begin(), full.begin() + std::ptrdiff_t(n));
    EXPECT_THROW(parse_safetensors(cut, "cut"), Error) << "truncated to " << n << " bytes";
  }
}

TEST(SafetensorsCorrupt, ErrorNamesTheFileOnDisk) {
  ScratchDir dir;
  write_file(dir / "empty.safetensors", {});
  try {
    SafetensorsFile::open(dir / "empty.safetensors");
    FAIL() << "opened an empty file";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              (dir / "empty.safetensors").string() + ": file is empty, not a safetensors file");
  }
}

TEST(MappedFile, MissingFileAndDirectory) {
  ScratchDir dir;
  try {
    MappedFile::open(dir / "nope.safetensors");
    FAIL() << "opened a missing file";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              (dir / "nope.safetensors").string() + ": cannot open: No such file or directory");
  }
  EXPECT_THROW(MappedFile::open(dir.path), Error);
}

// ---- accepted corner cases ---------------------------------------------------------------------

TEST(Safetensors, ValidFileParsesWithMetadataAndZeroCopyViews) {
  ScratchDir dir;
  const Bytes bytes = valid_file();
  write_file(dir / "m.safetensors", bytes);
  const SafetensorsFile f = SafetensorsFile::open(dir / "m.safetensors");
  EXPECT_EQ(f.file_size(), bytes.size());
  EXPECT_EQ(f.metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  ASSERT_EQ(f.tensors().size(), 3u);
  const TensorView* b = f.find("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->dtype, DType::BF16);
  EXPECT_EQ(b->shape, (std::vector<uint64_t>{3}));
  EXPECT_EQ(b->nbytes, 6u);
  EXPECT_EQ(b->numel(), 3u);
  EXPECT_EQ(b->file_offset, f.header().data_start + 16);
  EXPECT_EQ(f.header().data_start, 8 + f.header().header_size);
  // Zero-copy: the view points into the mapping, at the bytes the file holds there.
  const auto mapped = f.find("a")->data - f.header().data_start;
  EXPECT_EQ(b->data, mapped + b->file_offset);
  EXPECT_EQ(std::memcmp(b->data, bytes.data() + b->file_offset, 6), 0);
  EXPECT_EQ(f.find("missing"), nullptr);
}

TEST(Safetensors, UnsortedEntriesAreAcceptedAndReturnedInFileOrder) {
  // JSON order (and nlohmann's sorted-by-name order) differs from data order.
  const std::string header = "{" + entry("z", "U8", "[4]", 0, 4) + "," +
                             entry("a", "U8", "[2]", 6, 8) + "," + entry("m", "U8", "[2]", 4, 6) +
                             "}";
  const Bytes file = st_file(header, iota_bytes(8));  // outlives the views
  const SafetensorsHeader h = parse_safetensors(file, "t");
  ASSERT_EQ(h.tensors.size(), 3u);
  EXPECT_EQ(h.tensors[0].name, "z");
  EXPECT_EQ(h.tensors[1].name, "m");
  EXPECT_EQ(h.tensors[2].name, "a");
}

TEST(Safetensors, EmptyAndScalarTensorsAreAccepted) {
  const std::string header =
      "{" + entry("e2", "F32", "[0, 4]", 0, 0) + "," + entry("e1", "BF16", "[4, 0]", 0, 0) + "," +
      entry("s", "F32", "[]", 0, 4) + "," + entry("e3", "I64", "[0]", 4, 4) + "," +
      entry("v", "U8", "[2]", 4, 6) + "," + entry("e4", "U8", "[0]", 6, 6) + "}    ";
  const Bytes data = {0, 0, 128, 63, 9, 8};  // 1.0f, then two bytes
  const Bytes file = st_file(header, data);  // outlives the views
  const SafetensorsHeader h = parse_safetensors(file, "t");
  std::vector<std::string> order;
  for (const TensorView& t : h.tensors) order.push_back(t.name);
  // Ties on the offset between empty tensors are broken by name, whatever the JSON order.
  EXPECT_EQ(order, (std::vector<std::string>{"e1", "e2", "s", "e3", "v", "e4"}));
  const TensorView& s = h.tensors[2];
  EXPECT_TRUE(s.shape.empty());
  EXPECT_EQ(s.numel(), 1u);
  EXPECT_EQ(s.nbytes, 4u);
  EXPECT_EQ(load_float(s.data, s.dtype, 0), 1.0f);
  EXPECT_EQ(h.tensors[0].numel(), 0u);
  EXPECT_EQ(h.tensors[0].nbytes, 0u);
}

TEST(Safetensors, HeaderWithoutTensors) {
  const SafetensorsHeader h =
      parse_safetensors(st_file("{\"__metadata__\":{\"k\":\"v\"}}", {}), "t");
  EXPECT_TRUE(h.tensors.empty());
  EXPECT_EQ(h.metadata.at("k"), "v");
  EXPECT_TRUE(parse_safetensors(st_file("{}      ", {}), "t").tensors.empty());
}

TEST(Safetensors, OnlyEmptyTensorsWithNoData) {
  const std::string header =
      "{" + entry("a", "F32", "[0]", 0, 0) + "," + entry("b", "F32", "[0]", 0, 0) + "}";
  const SafetensorsHeader h = parse_safetensors(st_file(header, {}), "t");
  ASSERT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.tensors[0].name, "a");
}

TEST(Safetensors, ManyTensorsParseInLinearTime) {
  // 100,000 entries: a parser that rescans the object per entry (nlohmann's callback hook does)
  // needs ~5e9 steps, minutes; a linear one well under a second (a few under ASan).
  const uint64_t n = 100'000;
  std::string header = "{";
  for (uint64_t i = 0; i < n; ++i)
    header += (i ? "," : "") +
              entry("model.layers." + std::to_string(i) + ".w", "BF16", "[2]", 4 * i, 4 * i + 4);
  header += "}";
  const Bytes file = st_file(header, Bytes(4 * n));
  const auto start = std::chrono::steady_clock::now();
  const SafetensorsHeader h = parse_safetensors(file, "t");
  const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(h.tensors.size(), n);
  EXPECT_EQ(h.tensors.back().file_offset + 4, file.size());
  EXPECT_LT(took.count(), 10.0);
}

// ---- typed lookup
// --------------------------------------------------------------------------------

TEST(Safetensors, RequireTensor) {
  ScratchDir dir;
  write_file(dir / "m.safetensors", valid_file());
  const SafetensorsFile f = SafetensorsFile::open(dir / "m.safetensors");
  const std::vector<uint64_t> shape22{2, 2};
  EXPECT_EQ(&f.require_tensor("a", DType::F32, shape22), f.find("a"));
  try {
    f.require_tensor("a", DType::BF16, shape22);
    FAIL() << "wrong dtype accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "tensor a: expected BF16 [2, 2], got F32 [2, 2]");
  }
  const std::vector<uint64_t> shape4{4};
  try {
    f.require_tensor("a", DType::F32, shape4);
    FAIL() << "wrong shape accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "tensor a: expected F32 [4], got F32 [2, 2]");
  }
  try {
    f.require_tensor("nope", DType::F32, shape4);
    FAIL() << "missing tensor found";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "tensor nope: not found in " + (dir / "m.safetensors").string());
  }
  EXPECT_EQ(shape_string(std::vector<uint64_t>{}), "[]");
  EXPECT_EQ(shape_string(std::vector<uint64_t>{4096, 4096}), "[4096, 4096]");
}

// ---- release -----------------------------------------------------------------------------------

TEST(Safetensors, ReleaseKeepsDataReadable) {
  ScratchDir dir;
  const uint64_t n = 256 * 1024;  // spans many pages
  const Bytes data = iota_bytes(n);
  write_file(dir / "m.safetensors",
             st_file("{" + entry("w", "U8", "[" + std::to_string(n) + "]", 0, n) + "}", data));
  const SafetensorsFile f = SafetensorsFile::open(dir / "m.safetensors");
  const TensorView& w = f.require_tensor("w", DType::U8, std::vector<uint64_t>{n});
  ASSERT_EQ(std::memcmp(w.data, data.data(), n), 0);
  f.release(w, 0, n);
  EXPECT_EQ(std::memcmp(w.data, data.data(), n), 0);
  f.release(w, 5000, 70000);  // unaligned inside the tensor
  f.release(w, n - 1, 100);   // clamped
  f.release(w, n + 10, 100);  // outside: nothing
  EXPECT_EQ(std::memcmp(w.data, data.data(), n), 0);
}

// ---- checkpoints -------------------------------------------------------------------------------

struct ShardedDir {
  ScratchDir dir;
  ShardedDir() {
    write_file(
        dir / "model-00001-of-00002.safetensors",
        st_file("{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "BF16", "[2]", 8, 12) + "}",
                iota_bytes(12)));
    write_file(dir / "model-00002-of-00002.safetensors",
               st_file("{\"__metadata__\":{\"format\":\"pt\",\"alias_of_c\":\"c\"}," +
                           entry("c", "I32", "[3]", 0, 12) + "}",
                       iota_bytes(12)));
  }
  void write_index(const std::string& weight_map) const {
    const std::string text = "{\"metadata\":{\"total_size\":24},\"weight_map\":" + weight_map + "}";
    write_file(dir / "model.safetensors.index.json", Bytes(text.begin(), text.end()));
  }
};

const char* kGoodMap =
    "{\"a\":\"model-00001-of-00002.safetensors\",\"b\":\"model-00001-of-00002.safetensors\","
    "\"c\":\"model-00002-of-00002.safetensors\"}";

std::string checkpoint_error(const std::filesystem::path& p) {
  try {
    Checkpoint::open(p);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Checkpoint, ShardedWithIndex) {
  ShardedDir s;
  s.write_index(kGoodMap);
  const Checkpoint c = Checkpoint::open(s.dir.path);
  ASSERT_EQ(c.shards().size(), 2u);
  EXPECT_EQ(c.shards()[1].path().filename(), "model-00002-of-00002.safetensors");
  std::vector<std::string> names;
  for (const TensorView* t : c.tensors()) names.push_back(t->name);
  EXPECT_EQ(names, (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(c.total_bytes(), 24u);
  const TensorView& t = c.require_tensor("c", DType::I32, std::vector<uint64_t>{3});
  EXPECT_EQ(t.data, c.shards()[1].find("c")->data);
  EXPECT_EQ(&c.require_float_tensor("b", std::vector<uint64_t>{2}), c.shards()[0].find("b"));
  // The alias comes from shard 2's metadata; "format": "pt" names no tensor.
  EXPECT_EQ(c.aliases(), (std::map<std::string, std::string, std::less<>>{{"alias_of_c", "c"}}));
  EXPECT_EQ(c.find("alias_of_c"), &t);
  EXPECT_EQ(c.find("format"), nullptr);
  c.release(t, 0, 12);
  EXPECT_EQ(std::memcmp(t.data, iota_bytes(12).data(), 12), 0);
  // The index file itself is also accepted as the path.
  EXPECT_EQ(Checkpoint::open(s.dir / "model.safetensors.index.json").shards().size(), 2u);
}

TEST(Checkpoint, TypedLookupErrors) {
  ShardedDir s;
  s.write_index(kGoodMap);
  const Checkpoint c = Checkpoint::open(s.dir.path);
  const std::vector<uint64_t> shape3{3};
  try {
    c.require_float_tensor("c", shape3);
    FAIL() << "I32 accepted as float";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "tensor c: expected F32/F16/BF16 [3], got I32 [3]");
  }
  try {
    c.require_tensor("a", DType::BF16, std::vector<uint64_t>{2});
    FAIL() << "wrong dtype accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "tensor a: expected BF16 [2], got F32 [2]");
  }
  try {
    c.require_tensor("zz", DType::F32, shape3);
    FAIL() << "missing tensor found";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "tensor zz: not found in " + s.dir.path.string());
  }
  try {
    c.require_tensor("alias_of_c", DType::F32, shape3);
    FAIL() << "wrong dtype accepted through an alias";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "tensor alias_of_c (stored as c): expected F32 [3], got I32 [3]");
  }
}

TEST(Checkpoint, IndexPointingAtMissingShard) {
  ShardedDir s;
  s.write_index(
      "{\"a\":\"model-00001-of-00002.safetensors\",\"c\":\"model-00003-of-00003.safetensors\"}");
  const std::string message = checkpoint_error(s.dir.path);
  EXPECT_NE(message.find("model.safetensors.index.json: weight_map places tensor c in"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("model-00003-of-00003.safetensors, which does not exist"),
            std::string::npos)
      << message;
}

TEST(Checkpoint, IndexListingTensorAbsentFromShard) {
  ShardedDir s;
  s.write_index(
      "{\"a\":\"model-00002-of-00002.safetensors\",\"c\":\"model-00002-of-00002.safetensors\"}");
  EXPECT_NE(
      checkpoint_error(s.dir.path)
          .find("weight_map places tensor a in model-00002-of-00002.safetensors, but that shard "
                "has no tensor a"),
      std::string::npos);
}

TEST(Checkpoint, TensorInTwoShards) {
  ShardedDir s;
  write_file(
      s.dir / "model-00002-of-00002.safetensors",
      st_file("{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("c", "I32", "[1]", 8, 12) + "}",
              iota_bytes(12)));
  s.write_index(kGoodMap);
  EXPECT_NE(checkpoint_error(s.dir.path).find("tensor a is stored in both"), std::string::npos);
}

TEST(Checkpoint, MalformedIndex) {
  ShardedDir s;
  s.write_index("[\"a\"]");
  EXPECT_NE(checkpoint_error(s.dir.path).find("no \"weight_map\" object"), std::string::npos);
  s.write_index("{\"a\":3}");
  EXPECT_NE(checkpoint_error(s.dir.path).find("weight_map entry \"a\" is not a file name"),
            std::string::npos);
  s.write_index(
      "{\"a\":\"model-00001-of-00002.safetensors\",\"a\":\"model-00002-of-00002.safetensors\"}");
  EXPECT_NE(checkpoint_error(s.dir.path).find("duplicate key \"a\""), std::string::npos);
  write_file(s.dir / "model.safetensors.index.json", {'{'});
  EXPECT_NE(checkpoint_error(s.dir.path).find("not valid JSON"), std::string::npos);
}

TEST(Checkpoint, SingleFileAndEmptyDirectory) {
  ScratchDir dir;
  EXPECT_EQ(checkpoint_error(dir.path),
            dir.path.string() + ": no model.safetensors or model.safetensors.index.json");
  write_file(dir / "model.safetensors", valid_file());
  EXPECT_EQ(Checkpoint::open(dir.path).tensors().size(), 3u);
  const Checkpoint c = Checkpoint::open(dir / "model.safetensors");
  EXPECT_EQ(c.shards().size(), 1u);
  EXPECT_NE(c.find("c"), nullptr);
  EXPECT_NE(
      checkpoint_error(dir / "other.safetensors").find("cannot open: No such file or directory"),
      std::string::npos);
}

TEST(Checkpoint, MetadataAliasInSingleFile) {
  ScratchDir dir;
  write_file(dir / "model.safetensors",
             st_file("{\"__metadata__\":{\"tied\":\"w\",\"w\":\"tied\",\"x\":\"nothing\"}," +
                         entry("w", "F16", "[2]", 0, 4) + "}",
                     iota_bytes(4)));
  const Checkpoint c = Checkpoint::open(dir.path);
  // "w" -> "tied" is not an alias (the key is a stored tensor); "x" names no tensor.
  EXPECT_EQ(c.aliases(), (std::map<std::string, std::string, std::less<>>{{"tied", "w"}}));
  EXPECT_EQ(c.find("tied"), c.find("w"));
  EXPECT_EQ(c.find("x"), nullptr);
  EXPECT_EQ(&c.require_float_tensor("tied", std::vector<uint64_t>{2}), c.find("w"));
}

TEST(Checkpoint, RealTinyModel) {
  FERRY_REQUIRE_SHARED_MODEL(dir, "tinystories-656k");
  const Checkpoint c = Checkpoint::open(dir);
  ASSERT_EQ(c.shards().size(), 1u);
  const TensorView& lm_head =
      c.require_tensor("lm_head.weight", DType::F32, std::vector<uint64_t>{2048, 128});
  EXPECT_EQ(c.find("model.embed_tokens.weight"), &lm_head);
  EXPECT_EQ(c.aliases().at("model.embed_tokens.weight"), "lm_head.weight");
  EXPECT_EQ(&c.require_float_tensor("model.embed_tokens.weight", std::vector<uint64_t>{2048, 128}),
            &lm_head);
  for (int layer = 0; layer < 2; ++layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    c.require_tensor(p + "self_attn.q_proj.weight", DType::F32, std::vector<uint64_t>{128, 128});
    c.require_tensor(p + "self_attn.k_proj.weight", DType::F32, std::vector<uint64_t>{64, 128});
    c.require_tensor(p + "self_attn.v_proj.weight", DType::F32, std::vector<uint64_t>{64, 128});
    c.require_tensor(p + "self_attn.o_proj.weight", DType::F32, std::vector<uint64_t>{128, 128});
    c.require_tensor(p + "mlp.gate_proj.weight", DType::F32, std::vector<uint64_t>{384, 128});
    c.require_tensor(p + "mlp.up_proj.weight", DType::F32, std::vector<uint64_t>{384, 128});
    c.require_tensor(p + "mlp.down_proj.weight", DType::F32, std::vector<uint64_t>{128, 384});
    c.require_tensor(p + "input_layernorm.weight", DType::F32, std::vector<uint64_t>{128});
    c.require_tensor(p + "post_attention_layernorm.weight", DType::F32, std::vector<uint64_t>{128});
  }
  EXPECT_EQ(c.find("model.layers.2.mlp.up_proj.weight"), nullptr);
  c.require_tensor("model.norm.weight", DType::F32, std::vector<uint64_t>{128});
  EXPECT_EQ(c.tensors().size(), 20u);
  EXPECT_EQ(c.total_bytes() + c.shards()[0].header().data_start, c.shards()[0].file_size());
  // Values are finite floats: the views land on real weights.
  for (uint64_t i = 0; i < lm_head.numel(); i += 997)
    EXPECT_TRUE(std::isfinite(load_float(lm_head.data, lm_head.dtype, i)));
}

}  // namespace
}  // namespace ferry
