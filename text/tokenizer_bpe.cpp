// The BPE model of the tokenizer, following HF tokenizers' models/bpe (merge_word, merge_all).
#include <cstdio>
#include <nlohmann/json.hpp>
#include <queue>

#include "base/error.hpp"
#include "text/tokenizer_parts.hpp"

namespace ferry::tok {
namespace {

uint64_t pair_key(int32_t a, int32_t b) {
  return (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
}

bool is_null_or(const json& j, const char* key, const json& value) {
  return !j.contains(key) || j[key].is_null() || j[key] == value;
}

}  // namespace

int32_t json_token_id(const json& j, std::string_view what) {
  // is_number_integer: a float of any size is refused before any conversion.
  if (!j.is_number_integer() || (j.is_number_unsigned() && j.get<uint64_t>() > INT32_MAX) ||
      (!j.is_number_unsigned() && (j.get<int64_t>() < 0 || j.get<int64_t>() > INT32_MAX)))
    throw Error("tokenizer: " + std::string(what) + ": the id " + j.dump() +
                " is not an integer in [0, 2^31)");
  return int32_t(j.get<int64_t>());
}

Bpe::Bpe(const json& model) {
  const std::string type = model.value("type", "BPE");
  if (type != "BPE") throw Error("tokenizer: unsupported model type " + type);
  if (!is_null_or(model, "dropout", 0.0) && !is_null_or(model, "dropout", 1.0)) {
    throw Error("tokenizer: unsupported BPE option dropout");
  }
  if (!is_null_or(model, "continuing_subword_prefix", "") ||
      !is_null_or(model, "end_of_word_suffix", "")) {
    throw Error("tokenizer: unsupported BPE option continuing_subword_prefix/end_of_word_suffix");
  }
  if (!model.contains("vocab") || !model["vocab"].is_object()) {
    throw Error("tokenizer: BPE model has no vocab object");
  }
  // A vocabulary's ids run from 0 up, one per entry: an id past twice the entries (and 65,536
  // of slack) is refused, so that a malformed file cannot make the id table gigabytes long (the
  // fuzzer's 7 GB allocation from one large id).
  const size_t max_id = 2 * model["vocab"].size() + 65536;
  for (const auto& [tok, id_json] : model["vocab"].items()) {
    const int32_t id = json_token_id(id_json, "vocab entry " + tok);
    if (size_t(id) > max_id)
      throw Error("tokenizer: vocab entry " + tok + ": the id " + std::to_string(id) +
                  " is far past the vocabulary's " + std::to_string(model["vocab"].size()) +
                  " entries (ids run from 0 up)");
    vocab_[tok] = int32_t(id);
    if (size_t(id) >= id_to_token_.size()) {
      id_to_token_.resize(size_t(id) + 1);
      has_id_.resize(size_t(id) + 1, false);
    }
    id_to_token_[size_t(id)] = tok;
    has_id_[size_t(id)] = true;
  }
  const json merges = model.value("merges", json::array());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const json& m = merges[rank];
    std::string a, b;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
        throw Error("tokenizer: malformed merge \"" + s + "\" (want \"left right\")");
      }
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      throw Error("tokenizer: malformed merge " + m.dump());
    }
    const int32_t ia = token_to_id(a), ib = token_to_id(b), inew = token_to_id(a + b);
    if (ia < 0 || ib < 0 || inew < 0) {
      throw Error("tokenizer: merge \"" + a + " " + b + "\" uses a token missing from the vocab");
    }
    // HF collects merges into a map, so a repeated pair keeps its last rank.
    merges_[pair_key(ia, ib)] = Merge{uint32_t(rank), inew};
  }
  byte_fallback_ = model.value("byte_fallback", false);
  fuse_unk_ = model.value("fuse_unk", false);
  ignore_merges_ = model.value("ignore_merges", false);
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    unk_id_ = token_to_id(model["unk_token"].get<std::string>());
    if (unk_id_ < 0) throw Error("tokenizer: unk_token is not in the vocab");
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    byte_ids_[b] = token_to_id(name);
  }
}

int32_t Bpe::token_to_id(std::string_view token) const {
  const auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : it->second;
}

const std::string* Bpe::id_to_token(int32_t id) const {
  if (id < 0 || size_t(id) >= has_id_.size() || !has_id_[size_t(id)]) return nullptr;
  return &id_to_token_[size_t(id)];
}

void Bpe::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (const int32_t id = token_to_id(word); id >= 0) {
      out.push_back(id);
      return;
    }
  }
  // merge_word: one symbol per character, byte tokens or unk for characters outside the vocab.
  std::vector<int32_t> sym;
  sym.reserve(word.size());
  int32_t pending_unk = -1;  // HF holds one unk back so that fuse_unk can extend it
  for (size_t i = 0; i < word.size();) {
    const size_t begin = i;
    next_char(word, i);
    const std::string_view ch = word.substr(begin, i - begin);
    if (const int32_t id = token_to_id(ch); id >= 0) {
      if (pending_unk >= 0) sym.push_back(pending_unk);
      pending_unk = -1;
      sym.push_back(id);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (char c : ch) all = all && byte_ids_[static_cast<unsigned char>(c)] >= 0;
      if (all) {
        // As in HF, a pending unk is not flushed here: it lands after these bytes.
        for (char c : ch) sym.push_back(byte_ids_[static_cast<unsigned char>(c)]);
        continue;
      }
    }
    if (unk_id_ >= 0) {
      if (pending_unk >= 0 && !fuse_unk_) sym.push_back(pending_unk);
      pending_unk = unk_id_;
    }
  }
  if (pending_unk >= 0) sym.push_back(pending_unk);

  // merge_all: repeatedly merge the lowest-ranked adjacent pair (leftmost on ties), with lazy
  // deletion of queue entries that a previous merge made stale.
  const int n = int(sym.size());
  std::vector<int> prev(static_cast<size_t>(n)), next(static_cast<size_t>(n));
  std::vector<bool> alive(static_cast<size_t>(n), true);
  for (int k = 0; k < n; ++k) {
    prev[size_t(k)] = k - 1;
    next[size_t(k)] = k + 1 < n ? k + 1 : -1;
  }
  struct Entry {
    uint32_t rank;
    int pos;
    int32_t new_id;
    bool operator>(const Entry& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Entry, std::vector<Entry>, std::greater<>> queue;
  auto consider = [&](int pos) {
    const int nx = next[size_t(pos)];
    if (nx < 0) return;
    const auto it = merges_.find(pair_key(sym[size_t(pos)], sym[size_t(nx)]));
    if (it != merges_.end()) queue.push({it->second.rank, pos, it->second.new_id});
  };
  for (int k = 0; k + 1 < n; ++k) consider(k);
  while (!queue.empty()) {
    const Entry top = queue.top();
    queue.pop();
    if (!alive[size_t(top.pos)] || next[size_t(top.pos)] < 0) continue;
    const int right = next[size_t(top.pos)];
    const auto it = merges_.find(pair_key(sym[size_t(top.pos)], sym[size_t(right)]));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;  // stale
    sym[size_t(top.pos)] = top.new_id;
    alive[size_t(right)] = false;
    next[size_t(top.pos)] = next[size_t(right)];
    if (next[size_t(right)] >= 0) prev[size_t(next[size_t(right)])] = top.pos;
    if (prev[size_t(top.pos)] >= 0) consider(prev[size_t(top.pos)]);
    consider(top.pos);
  }
  for (int k = 0; k >= 0 && k < n; k = next[size_t(k)]) out.push_back(sym[size_t(k)]);
}

}  // namespace ferry::tok
