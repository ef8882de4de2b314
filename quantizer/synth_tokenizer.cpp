// The byte-level BPE tokenizer of synthesized checkpoints (see synth.hpp).
#include <algorithm>
#include <cctype>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "format/model_config.hpp"
#include "quantizer/synth.hpp"

namespace ferry {
namespace {

using json = nlohmann::json;

// The text the merges are learned from: plain English with digits and punctuation, so that the
// merges cover the common words of test prompts.
constexpr const char* kCorpus =
    "Once upon a time, there was a little girl named Lily. She lived in a small house near the "
    "forest with her mother, her father and a dog called Max. Every morning the sun came up over "
    "the hills and Lily ran outside to play. One day she found a red ball under a big tree. "
    "\"Look, "
    "Max!\" she said. \"We can play with the ball!\" Max was very happy and they played all day "
    "long. "
    "In the evening her mother called: \"Lily, it is time to eat!\" The girl and the dog went back "
    "into the house. They ate bread, soup and apples, and then Lily went to bed. She was tired but "
    "happy, and she dreamed of the forest, the hills and the red ball. The next day, the weather "
    "was "
    "cold and it was raining, so they stayed inside and read a book about a brave knight who "
    "traveled to a faraway land. The knight had a sword, a horse and a friend who was a wizard. "
    "Together they fought a dragon and saved the people of the land. In 1999 there were 42 houses, "
    "3 schools and 7 shops in the town; by 2024 the number had grown to 128 houses and 16 shops. "
    "What is the answer? The answer is that the people who live there are kind, and they help each "
    "other when the winter comes and the days are short.";

// GPT-2's byte -> printable code point map used by every byte-level BPE (bytes_to_unicode).
std::vector<std::string> byte_symbols() {
  std::vector<std::string> sym(256);
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable =
        (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    const unsigned cp = printable ? unsigned(b) : 256u + unsigned(extra++);
    std::string s;
    if (cp < 0x80) {
      s += char(cp);
    } else {  // two-byte UTF-8: every code point here is below 0x800
      s += char(0xC0 | (cp >> 6));
      s += char(0x80 | (cp & 0x3F));
    }
    sym[size_t(b)] = s;
  }
  return sym;
}

// Pre-tokens of the corpus: a word with its leading space, or a run of punctuation/digits.
std::map<std::vector<std::string>, int> corpus_words(const std::vector<std::string>& sym) {
  std::map<std::vector<std::string>, int> words;
  std::vector<std::string> cur;
  auto flush = [&] {
    if (!cur.empty()) ++words[cur];
    cur.clear();
  };
  for (const char* p = kCorpus; *p; ++p) {
    const unsigned char c = static_cast<unsigned char>(*p);
    const bool alpha = std::isalpha(c);
    if (c == ' ' || (!alpha && !cur.empty() && std::isalpha(static_cast<unsigned char>(p[-1]))))
      flush();
    cur.push_back(sym[c]);
  }
  flush();
  return words;
}

// Learns up to `count` merges, most frequent pair first (ties broken by the pair's text, so the
// result is deterministic).
std::vector<std::pair<std::string, std::string>> learn_merges(
    std::map<std::vector<std::string>, int> words, size_t count) {
  std::vector<std::pair<std::string, std::string>> merges;
  while (merges.size() < count) {
    std::map<std::pair<std::string, std::string>, int> pairs;
    for (const auto& [w, n] : words)
      for (size_t i = 0; i + 1 < w.size(); ++i) pairs[{w[i], w[i + 1]}] += n;
    if (pairs.empty()) break;
    const auto best =
        std::max_element(pairs.begin(), pairs.end(), [](const auto& a, const auto& b) {
          return a.second < b.second || (a.second == b.second && a.first > b.first);
        });
    merges.push_back(best->first);
    std::map<std::vector<std::string>, int> next;
    for (const auto& [w, n] : words) {
      std::vector<std::string> out;
      for (size_t i = 0; i < w.size(); ++i) {
        if (i + 1 < w.size() && std::pair{w[i], w[i + 1]} == best->first) {
          out.push_back(w[i] + w[i + 1]);
          ++i;
        } else {
          out.push_back(w[i]);
        }
      }
      next[out] += n;
    }
    words = std::move(next);
  }
  return merges;
}

constexpr const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

constexpr const char* kChatmlTemplate =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' "
    "}}{% endif %}";
constexpr const char* kLlama3Template =
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if "
    "add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif "
    "%}";

json byte_level(bool with_regex_flag) {
  json j = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}};
  if (with_regex_flag) j["use_regex"] = false;
  return j;
}

}  // namespace

SynthTokenizer synth_tokenizer(const json& config) {
  const ModelConfig mc = parse_model_config(config, "synthesized config");
  const bool qwen = mc.family != Family::llama;
  const std::vector<std::string> specials =
      qwen ? std::vector<std::string>{"<|endoftext|>", "<|im_start|>", "<|im_end|>"}
           : std::vector<std::string>{"<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                      "<|end_header_id|>", "<|eot_id|>"};
  const std::vector<std::string> sym = byte_symbols();
  // 240 merges fit the tiny presets' vocab of 512 with room for the special tokens.
  const size_t n_merges = std::min<size_t>(240, mc.vocab - 256 - specials.size());
  const auto merges = learn_merges(corpus_words(sym), n_merges);

  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[sym[size_t(b)]] = b;
  json merge_list = json::array();
  for (const auto& [a, b] : merges) {
    if (!vocab.contains(a + b)) vocab[a + b] = vocab.size();
    merge_list.push_back(a + " " + b);
  }
  json added = json::array();
  std::map<std::string, uint64_t> special_id;
  for (const std::string& s : specials) {
    special_id[s] = vocab.size() + added.size();
    added.push_back({{"id", special_id[s]},
                     {"content", s},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  json tok = {
      {"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", added}};
  tok["normalizer"] = qwen ? json{{"type", "NFC"}} : json(nullptr);
  tok["pre_tokenizer"] = {{"type", "Sequence"},
                          {"pretokenizers",
                           {{{"type", "Split"},
                             {"pattern", {{"Regex", qwen ? kQwen2Pattern : kLlama3Pattern}}},
                             {"behavior", "Isolated"},
                             {"invert", false}},
                            {{"type", "ByteLevel"},
                             {"add_prefix_space", false},
                             {"trim_offsets", true},
                             {"use_regex", false}}}}};
  tok["post_processor"] = byte_level(true);
  tok["decoder"] = byte_level(true);
  tok["model"] = {{"type", "BPE"},
                  {"dropout", nullptr},
                  {"unk_token", nullptr},
                  {"continuing_subword_prefix", nullptr},
                  {"end_of_word_suffix", nullptr},
                  {"fuse_unk", false},
                  {"byte_fallback", false},
                  {"ignore_merges", !qwen},
                  {"vocab", vocab},
                  {"merges", merge_list}};

  SynthTokenizer out;
  out.tokenizer_json = tok.dump(1);
  const std::string bos = qwen ? "" : "<|begin_of_text|>";
  const std::string eos = qwen ? "<|im_end|>" : "<|eot_id|>";
  out.bos_token_id = qwen ? json(nullptr) : json(special_id[bos]);
  out.eos_token_id = special_id[eos];
  out.tokenizer_config_json =
      json{{"bos_token", qwen ? json(nullptr) : json(bos)},
           {"eos_token", eos},
           {"pad_token", qwen ? "<|endoftext|>" : "<|end_of_text|>"},
           {"model_max_length", mc.max_position},
           {"chat_template", qwen ? kChatmlTemplate : kLlama3Template},
           {"tokenizer_class", qwen ? "Qwen2Tokenizer" : "PreTrainedTokenizerFast"}}
          .dump(2);
  return out;
}

}  // namespace ferry
