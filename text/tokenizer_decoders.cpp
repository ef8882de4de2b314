// Decoders of the tokenizer, each following the HF tokenizers decoder of the same name.
#include <algorithm>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "base/error.hpp"
#include "text/tokenizer_parts.hpp"

namespace ferry::tok {
namespace {

const char* const kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// --- decoders ------------------------------------------------------------------------------

struct SequenceDecoder : Decoder {
  std::vector<std::unique_ptr<Decoder>> parts;
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (const auto& p : parts) tokens = p->decode_chain(std::move(tokens));
    return tokens;
  }
};

struct ByteLevelDecoder : Decoder {
  std::unordered_map<char32_t, unsigned char> char_to_byte;
  ByteLevelDecoder() {
    const auto& table = byte_to_char();
    for (int b = 0; b < 256; ++b) char_to_byte[table[size_t(b)]] = static_cast<unsigned char>(b);
  }
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    std::string bytes;
    for (const std::string& t : tokens) {
      // A token with a character outside the table keeps its own UTF-8 bytes (HF does so).
      std::string mapped;
      bool all = true;
      for (size_t i = 0; i < t.size() && all;) {
        const auto it = char_to_byte.find(next_char(t, i));
        all = it != char_to_byte.end();
        if (all) mapped += static_cast<char>(it->second);
      }
      bytes += all ? mapped : t;
    }
    return {utf8_lossy(bytes)};
  }
};

struct MetaspaceDecoder : Decoder {
  std::string replacement;
  PrependScheme scheme = PrependScheme::always;
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    // As HF: every replacement in the first token is dropped (unless the scheme is never),
    // every other one becomes a space.
    for (size_t k = 0; k < tokens.size(); ++k) {
      const bool drop = k == 0 && scheme != PrependScheme::never;
      std::string out;
      const std::string& t = tokens[k];
      for (size_t i = 0; i < t.size();) {
        if (t.compare(i, replacement.size(), replacement) == 0) {
          if (!drop) out += ' ';
          i += replacement.size();
        } else {
          out += t[i++];
        }
      }
      tokens[k] = std::move(out);
    }
    return tokens;
  }
};

struct ReplaceDecoder : Decoder {
  std::unique_ptr<Regex> pattern;
  std::string content;
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (std::string& t : tokens) t = replace_all(t, *pattern, content);
    return tokens;
  }
};

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

struct ByteFallbackDecoder : Decoder {
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    std::vector<std::string> out;
    std::string pending;  // bytes of consecutive <0xNN> tokens
    auto flush = [&] {
      if (pending.empty()) return;
      if (valid_utf8(pending)) {
        out.push_back(pending);
      } else {
        // HF emits one U+FFFD per byte of an invalid run.
        for (size_t k = 0; k < pending.size(); ++k) out.emplace_back(kReplacementChar);
      }
      pending.clear();
    };
    for (std::string& t : tokens) {
      const int hi = t.size() == 6 ? hex_digit(t[3]) : -1;
      const int lo = t.size() == 6 ? hex_digit(t[4]) : -1;
      if (t.starts_with("<0x") && t.ends_with('>') && hi >= 0 && lo >= 0) {
        pending += static_cast<char>(hi * 16 + lo);
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    return out;
  }
};

struct FuseDecoder : Decoder {
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    std::string all;
    for (const std::string& t : tokens) all += t;
    return {all};
  }
};

struct StripDecoder : Decoder {
  char32_t content = ' ';
  size_t start = 0, stop = 0;
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (std::string& t : tokens) {
      std::vector<std::pair<size_t, char32_t>> chars;  // (byte offset, character)
      for (size_t i = 0; i < t.size();) {
        const size_t at = i;
        chars.emplace_back(at, next_char(t, i));
      }
      size_t cut_begin = 0, cut_end = chars.size();
      while (cut_begin < std::min(start, chars.size()) && chars[cut_begin].second == content) {
        ++cut_begin;
      }
      for (size_t k = 0; k < stop && cut_end > cut_begin; ++k) {
        if (chars[cut_end - 1].second != content) break;
        --cut_end;
      }
      const size_t b = cut_begin < chars.size() ? chars[cut_begin].first : t.size();
      const size_t e = cut_end < chars.size() ? chars[cut_end].first : t.size();
      t = t.substr(b, e - b);
    }
    return tokens;
  }
};

}  // namespace

std::unique_ptr<Decoder> make_decoder(const json& j) {
  if (j.is_null()) return nullptr;
  const std::string type = type_of(j, "decoder");
  if (type == "Sequence") {
    auto d = std::make_unique<SequenceDecoder>();
    for (const json& part : j.at("decoders")) {
      if (auto q = make_decoder(part)) d->parts.push_back(std::move(q));
    }
    return d;
  }
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Metaspace") {
    auto d = std::make_unique<MetaspaceDecoder>();
    d->replacement = j.value("replacement", "\xE2\x96\x81");
    d->scheme = parse_scheme(j);
    return d;
  }
  if (type == "Replace") {
    auto d = std::make_unique<ReplaceDecoder>();
    d->pattern = make_pattern(j.at("pattern"));
    d->content = j.at("content").get<std::string>();
    return d;
  }
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") {
    auto d = std::make_unique<StripDecoder>();
    const std::string c = j.at("content").get<std::string>();
    size_t i = 0;
    if (c.empty() || !valid_utf8(c) || (next_char(c, i), i != c.size())) {
      throw Error("tokenizer: Strip decoder content must be one character");
    }
    i = 0;
    d->content = next_char(c, i);
    d->start = j.value("start", size_t(0));
    d->stop = j.value("stop", size_t(0));
    return d;
  }
  unsupported("decoder", type);
}

}  // namespace ferry::tok
