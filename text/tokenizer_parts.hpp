// Internal pieces of the tokenizer (runtime/tokenizer.hpp): UTF-8 helpers, the PCRE2 wrapper,
// normalizers, pre-tokenizers, decoders and the BPE model. Not part of ferry's public API.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ferry::tok {

// --- JSON ----------------------------------------------------------------------------------
// A token id of tokenizer.json: an integer in [0, INT32_MAX], else ferry::Error naming `what`.
// (nlohmann's get<int> of a float such as 5.6e113 is undefined behaviour, found by fuzzing.)
int32_t json_token_id(const nlohmann::json& j, std::string_view what);

// --- UTF-8 ---------------------------------------------------------------------------------
bool valid_utf8(std::string_view s);
// Decodes the character at s[i] (s valid UTF-8) and advances i past it.
char32_t next_char(std::string_view s, size_t& i);
void append_utf8(std::string& out, char32_t c);
// Rust's String::from_utf8_lossy: each maximal invalid subpart becomes one U+FFFD.
std::string utf8_lossy(std::string_view bytes);
bool is_whitespace(char32_t c);  // Rust char::is_whitespace (Unicode White_Space)
bool is_word_char(char32_t c);   // alphanumeric or '_'
// The GPT-2 byte <-> printable character table of the ByteLevel components.
const std::vector<char32_t>& byte_to_char();
// Unicode normalization: "NFC", "NFD", "NFKC" or "NFKD".
std::string unicode_normalize(std::string_view s, std::string_view form);

// --- regular expressions -------------------------------------------------------------------
// A compiled PCRE2 pattern (UTF + UCP); `literal` escapes it (HF's String patterns).
// Immutable once built, so one instance serves concurrent encodes.
class Regex {
 public:
  Regex(std::string_view pattern, bool literal);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Non-overlapping matches, left to right, as byte ranges [begin, end).
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view s) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8*
};

// --- pipeline components -------------------------------------------------------------------
using json = nlohmann::json;

struct Normalizer {
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& s) const = 0;
};
std::unique_ptr<Normalizer> make_normalizer(const json& j);  // null JSON -> nullptr

// A pre-token. `at_start` tells whether it begins at offset 0 of the input (Metaspace's
// prepend_scheme "first" looks at that).
struct Piece {
  std::string text;
  bool at_start = false;
};
struct PreTokenizer {
  virtual ~PreTokenizer() = default;
  virtual std::vector<Piece> split(std::vector<Piece> pieces) const = 0;
};
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j);  // null JSON -> nullptr

struct Decoder {
  virtual ~Decoder() = default;
  virtual std::vector<std::string> decode_chain(std::vector<std::string> tokens) const = 0;
};
std::unique_ptr<Decoder> make_decoder(const json& j);  // null JSON -> nullptr

// Helpers the component files share.
std::string type_of(const json& j, const char* kind);  // j["type"], or ferry::Error
[[noreturn]] void unsupported(const char* kind, const std::string& type);
// HF's pattern object: {"String": s} (literal) or {"Regex": r}.
std::unique_ptr<Regex> make_pattern(const json& p);
std::string replace_all(std::string_view s, const Regex& re, std::string_view content);
// Metaspace's prepend_scheme (pre-tokenizer and decoder).
enum class PrependScheme { first, always, never };
PrependScheme parse_scheme(const json& j);

// --- BPE -----------------------------------------------------------------------------------
class Bpe {
 public:
  explicit Bpe(const json& model);
  // Appends the ids of one pre-token.
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;
  int32_t token_to_id(std::string_view token) const;  // -1 when absent
  const std::string* id_to_token(int32_t id) const;   // nullptr when absent
  size_t id_bound() const { return id_to_token_.size(); }

 private:
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  struct Merge {
    uint32_t rank;
    int32_t new_id;
  };
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> vocab_;
  std::vector<std::string> id_to_token_;  // "" for ids the vocabulary skips
  std::vector<bool> has_id_;
  std::unordered_map<uint64_t, Merge> merges_;  // (left id << 32 | right id) -> merge
  int32_t byte_ids_[256];                       // <0xNN> tokens, -1 when absent
  int32_t unk_id_ = -1;
  bool byte_fallback_ = false;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
};

}  // namespace ferry::tok
