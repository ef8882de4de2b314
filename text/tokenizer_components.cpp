// Normalizers and pre-tokenizers of the tokenizer (decoders: tokenizer_decoders.cpp), each
// following the HF tokenizers component of the same name. Offsets are not tracked: ferry needs
// ids and text only.
#include <algorithm>
#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "text/tokenizer_parts.hpp"

namespace ferry::tok {

std::string type_of(const json& j, const char* kind) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) {
    throw Error(std::string("tokenizer: ") + kind + " without a type: " + j.dump());
  }
  return j["type"].get<std::string>();
}

[[noreturn]] void unsupported(const char* kind, const std::string& type) {
  throw Error(std::string("tokenizer: unsupported ") + kind + " type " + type);
}

std::unique_ptr<Regex> make_pattern(const json& p) {
  if (p.is_object() && p.contains("String")) {
    return std::make_unique<Regex>(p["String"].get<std::string>(), true);
  }
  if (p.is_object() && p.contains("Regex")) {
    return std::make_unique<Regex>(p["Regex"].get<std::string>(), false);
  }
  throw Error("tokenizer: unsupported pattern " + p.dump());
}

std::string replace_all(std::string_view s, const Regex& re, std::string_view content) {
  std::string out;
  size_t prev = 0;
  for (const auto& [b, e] : re.find_all(s)) {
    out.append(s.substr(prev, b - prev));
    out.append(content);
    prev = e;
  }
  out.append(s.substr(prev));
  return out;
}

PrependScheme parse_scheme(const json& j) {
  if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string()) {
    const std::string s = j["prepend_scheme"].get<std::string>();
    if (s == "first") return PrependScheme::first;
    if (s == "always") return PrependScheme::always;
    if (s == "never") return PrependScheme::never;
    throw Error("tokenizer: unsupported Metaspace prepend_scheme " + s);
  }
  // Files older than prepend_scheme carry add_prefix_space instead.
  return j.value("add_prefix_space", true) ? PrependScheme::always : PrependScheme::never;
}

namespace {

// GPT-2's pre-tokenization pattern, used by ByteLevel with use_regex.
const char* const kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

std::vector<std::unique_ptr<Normalizer>> normalizer_list(const json& arr) {
  std::vector<std::unique_ptr<Normalizer>> out;
  for (const json& j : arr) {
    if (auto n = make_normalizer(j)) out.push_back(std::move(n));
  }
  return out;
}

struct SequenceNormalizer : Normalizer {
  std::vector<std::unique_ptr<Normalizer>> parts;
  void normalize(std::string& s) const override {
    for (const auto& p : parts) p->normalize(s);
  }
};

struct UnicodeNormalizer : Normalizer {
  std::string form;
  void normalize(std::string& s) const override { s = unicode_normalize(s, form); }
};

struct PrependNormalizer : Normalizer {
  std::string prepend;
  void normalize(std::string& s) const override {
    if (!s.empty()) s.insert(0, prepend);
  }
};

struct ReplaceNormalizer : Normalizer {
  std::unique_ptr<Regex> pattern;
  std::string content;
  void normalize(std::string& s) const override { s = replace_all(s, *pattern, content); }
};

// --- pre-tokenizers ------------------------------------------------------------------------

enum class Behavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

Behavior parse_behavior(const std::string& b) {
  if (b == "Removed") return Behavior::removed;
  if (b == "Isolated") return Behavior::isolated;
  if (b == "MergedWithPrevious") return Behavior::merged_with_previous;
  if (b == "MergedWithNext") return Behavior::merged_with_next;
  if (b == "Contiguous") return Behavior::contiguous;
  throw Error("tokenizer: unsupported Split behavior " + b);
}

// NormalizedString::split: the pattern's matches and the gaps between them cover the piece;
// `behavior` decides what becomes of the matches; empty results are dropped.
void split_piece(const Piece& piece, const Regex& re, Behavior behavior, bool invert,
                 std::vector<Piece>& out) {
  struct Seg {
    size_t b, e;
    bool match;
  };
  std::vector<Seg> segs;
  const std::string& s = piece.text;
  size_t prev = 0;
  for (const auto& [b, e] : re.find_all(s)) {
    if (b != prev) segs.push_back({prev, b, invert});
    segs.push_back({b, e, !invert});
    prev = e;
  }
  if (prev != s.size() || s.empty()) segs.push_back({prev, s.size(), invert});

  std::vector<Seg> parts;
  switch (behavior) {
    case Behavior::isolated:
      parts = segs;
      break;
    case Behavior::removed:
      for (const Seg& g : segs) {
        if (!g.match) parts.push_back(g);
      }
      break;
    case Behavior::merged_with_previous: {
      bool previous_match = false;
      for (const Seg& g : segs) {
        if (g.match && !previous_match && !parts.empty()) {
          parts.back().e = g.e;
        } else {
          parts.push_back(g);
        }
        previous_match = g.match;
      }
      break;
    }
    case Behavior::merged_with_next: {
      bool previous_match = false;
      for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
        if (it->match && !previous_match && !parts.empty()) {
          parts.back().b = it->b;
        } else {
          parts.push_back(*it);
        }
        previous_match = it->match;
      }
      std::reverse(parts.begin(), parts.end());
      break;
    }
    case Behavior::contiguous: {
      bool previous_match = false;
      for (const Seg& g : segs) {
        if (g.match == previous_match && !parts.empty()) {
          parts.back().e = g.e;
        } else {
          parts.push_back(g);
        }
        previous_match = g.match;
      }
      break;
    }
  }
  for (const Seg& g : parts) {
    if (g.e > g.b) out.push_back({s.substr(g.b, g.e - g.b), piece.at_start && g.b == 0});
  }
}

struct SequencePreTokenizer : PreTokenizer {
  std::vector<std::unique_ptr<PreTokenizer>> parts;
  std::vector<Piece> split(std::vector<Piece> pieces) const override {
    for (const auto& p : parts) pieces = p->split(std::move(pieces));
    return pieces;
  }
};

struct SplitPreTokenizer : PreTokenizer {
  std::unique_ptr<Regex> pattern;
  Behavior behavior = Behavior::isolated;
  bool invert = false;
  std::vector<Piece> split(std::vector<Piece> pieces) const override {
    std::vector<Piece> out;
    for (const Piece& p : pieces) split_piece(p, *pattern, behavior, invert, out);
    return out;
  }
};

struct ByteLevelPreTokenizer : PreTokenizer {
  bool add_prefix_space = true;
  std::unique_ptr<Regex> regex;  // null without use_regex
  std::vector<Piece> split(std::vector<Piece> pieces) const override {
    std::vector<Piece> words;
    for (Piece& p : pieces) {
      if (add_prefix_space && !p.text.starts_with(' ')) p.text.insert(0, " ");
      if (regex) {
        split_piece(p, *regex, Behavior::isolated, false, words);
      } else {
        words.push_back(std::move(p));
      }
    }
    const auto& table = byte_to_char();
    for (Piece& w : words) {
      std::string mapped;
      mapped.reserve(w.text.size() * 2);
      for (char c : w.text) append_utf8(mapped, table[static_cast<unsigned char>(c)]);
      w.text = std::move(mapped);
    }
    return words;
  }
};

struct MetaspacePreTokenizer : PreTokenizer {
  std::string replacement;
  PrependScheme scheme = PrependScheme::always;
  std::unique_ptr<Regex> split_on;  // the replacement, null without split
  std::unique_ptr<Regex> space = std::make_unique<Regex>(" ", true);
  std::vector<Piece> split(std::vector<Piece> pieces) const override {
    std::vector<Piece> out;
    for (Piece& p : pieces) {
      p.text = replace_all(p.text, *space, replacement);
      const bool prepend =
          scheme == PrependScheme::always || (scheme == PrependScheme::first && p.at_start);
      if (prepend && !p.text.starts_with(replacement)) p.text.insert(0, replacement);
      if (split_on) {
        split_piece(p, *split_on, Behavior::merged_with_next, false, out);
      } else {
        out.push_back(std::move(p));
      }
    }
    return out;
  }
};

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const json& j) {
  if (j.is_null()) return nullptr;
  const std::string type = type_of(j, "normalizer");
  if (type == "Sequence") {
    auto n = std::make_unique<SequenceNormalizer>();
    n->parts = normalizer_list(j.at("normalizers"));
    return n;
  }
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    auto n = std::make_unique<UnicodeNormalizer>();
    n->form = type;
    return n;
  }
  if (type == "Prepend") {
    auto n = std::make_unique<PrependNormalizer>();
    n->prepend = j.at("prepend").get<std::string>();
    return n;
  }
  if (type == "Replace") {
    auto n = std::make_unique<ReplaceNormalizer>();
    n->pattern = make_pattern(j.at("pattern"));
    n->content = j.at("content").get<std::string>();
    return n;
  }
  unsupported("normalizer", type);
}

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j) {
  if (j.is_null()) return nullptr;
  const std::string type = type_of(j, "pre_tokenizer");
  if (type == "Sequence") {
    auto p = std::make_unique<SequencePreTokenizer>();
    for (const json& part : j.at("pretokenizers")) {
      if (auto q = make_pre_tokenizer(part)) p->parts.push_back(std::move(q));
    }
    return p;
  }
  if (type == "Split") {
    auto p = std::make_unique<SplitPreTokenizer>();
    p->pattern = make_pattern(j.at("pattern"));
    p->behavior = parse_behavior(j.value("behavior", "Isolated"));
    p->invert = j.value("invert", false);
    return p;
  }
  if (type == "ByteLevel") {
    auto p = std::make_unique<ByteLevelPreTokenizer>();
    p->add_prefix_space = j.value("add_prefix_space", true);
    if (j.value("use_regex", true)) p->regex = std::make_unique<Regex>(kGpt2Pattern, false);
    return p;
  }
  if (type == "Metaspace") {
    auto p = std::make_unique<MetaspacePreTokenizer>();
    p->replacement = j.value("replacement", "\xE2\x96\x81");
    p->scheme = parse_scheme(j);
    if (j.value("split", true)) p->split_on = std::make_unique<Regex>(p->replacement, true);
    return p;
  }
  unsupported("pre_tokenizer", type);
}

}  // namespace ferry::tok
