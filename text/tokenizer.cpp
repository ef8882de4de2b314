// Tokenizer pipeline (HF tokenizers' TokenizerImpl): added tokens are split out first, the
// rest is normalized, pre-tokenized and run through BPE; the post-processor adds the template's
// special tokens; decode maps ids back to token strings and runs the decoder chain.
#include "text/tokenizer.hpp"

#include <array>
#include <nlohmann/json.hpp>
#include <unordered_map>
#include <unordered_set>

#include "base/error.hpp"
#include "text/tokenizer_parts.hpp"

namespace ferry {

using tok::json;

namespace {

struct AddedToken {
  std::string content;
  // The string decode hands to the decoder: HF tokenizers (0.23) reports a normalized added
  // token under its normalized form, and then no longer recognizes it as special.
  std::string decoded;
  int32_t id = -1;
  bool special = false, lstrip = false, rstrip = false, single_word = false, normalized = true;
};

// Leftmost-longest matching of added-token contents (HF uses Aho-Corasick with that match kind;
// added tokens are few, so a per-first-byte list sorted longest first is enough).
class Matcher {
 public:
  void add(std::string pattern, size_t token) {
    if (pattern.empty()) return;
    auto& list = by_first_[static_cast<unsigned char>(pattern[0])];
    list.emplace_back(std::move(pattern), token);
    std::stable_sort(list.begin(), list.end(),
                     [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  }
  // {length, token} of the longest pattern at s[pos], {0, 0} when none.
  std::pair<size_t, size_t> longest_at(std::string_view s, size_t pos) const {
    for (const auto& [p, token] : by_first_[static_cast<unsigned char>(s[pos])]) {
      if (s.compare(pos, p.size(), p) == 0) return {p.size(), token};
    }
    return {0, 0};
  }

 private:
  std::array<std::vector<std::pair<std::string, size_t>>, 256> by_first_;
};

struct Segment {
  size_t begin, end;
  int64_t token;  // index into the added tokens, -1 for plain text
};

size_t leading_whitespace(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t j = i;
    if (!tok::is_whitespace(tok::next_char(s, j))) break;
    i = j;
  }
  return i;
}

// Byte offset where the trailing whitespace of s begins (s.size() when there is none).
size_t trailing_whitespace_start(std::string_view s) {
  size_t start = s.size();
  while (start > 0) {
    size_t b = start - 1;
    while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
    size_t i = b;
    if (!tok::is_whitespace(tok::next_char(s, i))) break;
    start = b;
  }
  return start;
}

char32_t last_char(std::string_view s) {
  size_t b = s.size() - 1;
  while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
  return tok::next_char(s, b);
}

int32_t config_token_id(const json& cfg, const char* key, const Tokenizer& t) {
  if (!cfg.contains(key) || cfg[key].is_null()) return -1;
  const json& v = cfg[key];
  std::string content;
  if (v.is_string()) {
    content = v.get<std::string>();
  } else if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    content = v["content"].get<std::string>();
  } else {
    throw Error(std::string("tokenizer_config: ") + key + " is neither a string nor a token");
  }
  const int32_t id = t.token_to_id(content);
  if (id < 0) {
    throw Error(std::string("tokenizer_config: ") + key + " " + content +
                " is not in the vocabulary");
  }
  return id;
}

}  // namespace

struct Tokenizer::Impl {
  explicit Impl(const json& j) : model(j.at("model")) {}

  tok::Bpe model;
  std::unique_ptr<tok::Normalizer> normalizer;
  std::unique_ptr<tok::PreTokenizer> pre_tokenizer;
  std::unique_ptr<tok::Decoder> decoder;
  std::vector<AddedToken> added;
  std::unordered_map<int32_t, size_t> added_by_id;
  std::unordered_map<std::string, int32_t> added_by_content;
  std::unordered_set<std::string> special_contents;
  Matcher raw_matcher;                  // tokens with normalized == false, matched on the input
  Matcher normalized_matcher;           // the others, matched (normalized) on the normalized text
  std::vector<int32_t> prefix, suffix;  // the post-processor's special tokens
  int32_t bos = -1, eos = -1;
  size_t vocab_size = 0;

  void parse_post_processor(const json& j);
  std::vector<Segment> find_matches(std::string_view s, const Matcher& m) const;
  void encode_text(std::string_view text, std::vector<int32_t>& ids) const;
};

void Tokenizer::Impl::parse_post_processor(const json& j) {
  if (j.is_null()) return;
  const std::string type = j.value("type", "");
  if (type == "Sequence") {
    for (const json& p : j.at("processors")) parse_post_processor(p);
  } else if (type == "ByteLevel") {
    // Adjusts offsets only.
  } else if (type == "TemplateProcessing") {
    std::vector<int32_t> pre, post;
    bool seen_a = false;
    for (const json& item : j.at("single")) {
      if (item.contains("Sequence")) {
        if (item["Sequence"].value("id", "") != "A") {
          throw Error("tokenizer: TemplateProcessing single template uses a sequence other than A");
        }
        seen_a = true;
      } else if (item.contains("SpecialToken")) {
        const std::string name = item["SpecialToken"].at("id").get<std::string>();
        const json& spec = j.at("special_tokens").at(name);
        for (const json& id : spec.at("ids"))
          (seen_a ? post : pre).push_back(tok::json_token_id(id, "special token " + name));
      } else {
        throw Error("tokenizer: unsupported TemplateProcessing item " + item.dump());
      }
    }
    // A later processor wraps what the earlier ones produced.
    prefix.insert(prefix.begin(), pre.begin(), pre.end());
    suffix.insert(suffix.end(), post.begin(), post.end());
  } else {
    throw Error("tokenizer: unsupported post_processor type " + type);
  }
}

// AddedVocabulary::find_matches.
std::vector<Segment> Tokenizer::Impl::find_matches(std::string_view s, const Matcher& m) const {
  std::vector<Segment> out;
  size_t start_offset = 0;
  for (size_t pos = 0; pos < s.size();) {
    const auto [len, token] = m.longest_at(s, pos);
    if (len == 0) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + len;
    pos = stop;  // the automaton resumes after the raw match, whatever rstrip takes
    const AddedToken& t = added[token];
    if (t.single_word) {
      const bool start_space = start == 0 || !tok::is_word_char(last_char(s.substr(0, start)));
      size_t i = stop;
      const bool stop_space = stop == s.size() || !tok::is_word_char(tok::next_char(s, i));
      if (!start_space || !stop_space) continue;
    }
    if (t.lstrip) start = std::max(trailing_whitespace_start(s.substr(0, start)), start_offset);
    if (t.rstrip) stop += leading_whitespace(s.substr(stop));
    if (start > start_offset) out.push_back({start_offset, start, -1});
    out.push_back({start, stop, int64_t(token)});
    start_offset = stop;
  }
  if (start_offset < s.size()) out.push_back({start_offset, s.size(), -1});
  return out;
}

void Tokenizer::Impl::encode_text(std::string_view text, std::vector<int32_t>& ids) const {
  for (const Segment& raw : find_matches(text, raw_matcher)) {
    if (raw.token >= 0) {
      ids.push_back(added[size_t(raw.token)].id);
      continue;
    }
    std::string norm(text.substr(raw.begin, raw.end - raw.begin));
    if (normalizer) normalizer->normalize(norm);
    for (const Segment& seg : find_matches(norm, normalized_matcher)) {
      if (seg.token >= 0) {
        ids.push_back(added[size_t(seg.token)].id);
        continue;
      }
      std::vector<tok::Piece> pieces;
      pieces.push_back(
          {norm.substr(seg.begin, seg.end - seg.begin), raw.begin == 0 && seg.begin == 0});
      if (pre_tokenizer) pieces = pre_tokenizer->split(std::move(pieces));
      for (const tok::Piece& p : pieces) model.tokenize(p.text, ids);
    }
  }
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::from_json(std::string_view tokenizer_json,
                               std::string_view tokenizer_config_json) {
  const json j = json::parse(tokenizer_json, nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw Error("tokenizer.json is not a JSON object");
  if (!j.contains("model")) throw Error("tokenizer.json has no model");
  try {
    auto impl = std::make_unique<Impl>(j);
    if (j.contains("truncation") && !j["truncation"].is_null()) {
      throw Error("tokenizer: unsupported truncation settings");
    }
    if (j.contains("padding") && j["padding"].is_object() && j["padding"].contains("strategy") &&
        j["padding"]["strategy"].is_object()) {
      throw Error("tokenizer: unsupported padding strategy Fixed");
    }
    impl->normalizer = tok::make_normalizer(j.value("normalizer", json()));
    impl->pre_tokenizer = tok::make_pre_tokenizer(j.value("pre_tokenizer", json()));
    impl->decoder = tok::make_decoder(j.value("decoder", json()));
    impl->parse_post_processor(j.value("post_processor", json()));

    size_t bound = impl->model.id_bound();
    for (const json& a : j.value("added_tokens", json::array())) {
      AddedToken t;
      t.content = a.at("content").get<std::string>();
      t.id = tok::json_token_id(a.at("id"), "added token " + t.content);
      t.special = a.value("special", false);
      t.lstrip = a.value("lstrip", false);
      t.rstrip = a.value("rstrip", false);
      t.single_word = a.value("single_word", false);
      t.normalized = a.value("normalized", !t.special);
      t.decoded = t.content;
      if (t.normalized && impl->normalizer) impl->normalizer->normalize(t.decoded);
      const size_t index = impl->added.size();
      (t.normalized ? impl->normalized_matcher : impl->raw_matcher).add(t.decoded, index);
      impl->added_by_id[t.id] = index;
      impl->added_by_content[t.content] = t.id;
      if (t.special) impl->special_contents.insert(t.content);
      bound = std::max(bound, size_t(t.id) + 1);
      impl->added.push_back(std::move(t));
    }
    impl->vocab_size = bound;
    // The post-processor's ids (BOS, EOS) must name tokens: one past the vocabulary would reach
    // the model as an out-of-range id.
    for (const std::vector<int32_t>* ids : {&impl->prefix, &impl->suffix})
      for (const int32_t id : *ids)
        if (size_t(id) >= bound)
          throw Error("tokenizer: the post-processor adds id " + std::to_string(id) +
                      ", past the vocabulary of " + std::to_string(bound));
    Tokenizer out(std::move(impl));
    if (!tokenizer_config_json.empty()) {
      const json cfg = json::parse(tokenizer_config_json, nullptr, false);
      if (cfg.is_discarded() || !cfg.is_object()) {
        throw Error("tokenizer_config.json is not a JSON object");
      }
      out.impl_->bos = config_token_id(cfg, "bos_token", out);
      out.impl_->eos = config_token_id(cfg, "eos_token", out);
    }
    return out;
  } catch (const json::exception& e) {
    throw Error(std::string("tokenizer.json: malformed: ") + e.what());
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special) const {
  if (!tok::valid_utf8(text)) throw Error("tokenizer: text to encode is not valid UTF-8");
  std::vector<int32_t> ids;
  if (add_special) ids = impl_->prefix;
  impl_->encode_text(text, ids);
  if (add_special) ids.insert(ids.end(), impl_->suffix.begin(), impl_->suffix.end());
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (const int32_t id : ids) {
    const std::string* s = nullptr;
    if (const auto it = impl_->added_by_id.find(id); it != impl_->added_by_id.end()) {
      s = &impl_->added[it->second].decoded;
    } else {
      s = impl_->model.id_to_token(id);
    }
    if (s == nullptr) continue;  // HF drops ids it does not know
    if (skip_special && impl_->special_contents.contains(*s)) continue;
    tokens.push_back(*s);
  }
  std::string out;
  if (impl_->decoder) {
    for (const std::string& t : impl_->decoder->decode_chain(std::move(tokens))) out += t;
  } else {
    for (size_t k = 0; k < tokens.size(); ++k) out += (k ? " " : "") + tokens[k];
  }
  return out;
}

int32_t Tokenizer::bos_id() const {
  return impl_->bos;
}
int32_t Tokenizer::eos_id() const {
  return impl_->eos;
}
size_t Tokenizer::vocab_size() const {
  return impl_->vocab_size;
}

int32_t Tokenizer::token_to_id(std::string_view token) const {
  if (const auto it = impl_->added_by_content.find(std::string(token));
      it != impl_->added_by_content.end()) {
    return it->second;
  }
  return impl_->model.token_to_id(token);
}

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special)
    : tokenizer_(&tokenizer), skip_special_(skip_special) {}

std::string StreamDecoder::push(int32_t id) {
  ids_.push_back(id);
  std::string text = tokenizer_->decode(ids_, skip_special_);
  // A trailing U+FFFD may be a character still missing bytes: wait for the next id.
  if (text.size() <= prefix_.size() || text.ends_with("\xEF\xBF\xBD")) return {};
  if (!text.starts_with(prefix_)) {
    throw Error("tokenizer: streaming decode is not prefix-stable for this decoder");
  }
  std::string fresh = text.substr(prefix_.size());
  // Keep the window short: from the ids already read before this step on.
  ids_.erase(ids_.begin(), ids_.begin() + std::ptrdiff_t(prefix_len_));
  prefix_len_ = ids_.size();
  prefix_ = tokenizer_->decode(ids_, skip_special_);
  return fresh;
}

std::string StreamDecoder::flush() {
  const std::string text = tokenizer_->decode(ids_, skip_special_);
  std::string rest;
  if (text.size() > prefix_.size() && text.starts_with(prefix_)) rest = text.substr(prefix_.size());
  ids_.clear();
  prefix_.clear();
  prefix_len_ = 0;
  return rest;
}

}  // namespace ferry
