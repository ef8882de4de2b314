// Tokenizer: reproduces Hugging Face `tokenizers` (checked against 0.23.3) for the
// tokenizer.json files of the Llama, Qwen2 and SentencePiece-converted BPE families.
//
// Supported components (anything else throws ferry::Error naming the component type):
//   model           BPE (byte_fallback, fuse_unk, unk_token, ignore_merges; merges as "a b"
//                   strings or [a, b] pairs)
//   normalizer      Sequence, NFC, NFD, NFKC, NFKD, Prepend, Replace (String or Regex pattern)
//   pre_tokenizer   Sequence, Split (String or Regex; every behavior; invert), ByteLevel
//                   (add_prefix_space, use_regex with the GPT-2 pattern), Metaspace
//                   (prepend_scheme first/always/never, split)
//   post_processor  TemplateProcessing (single template), ByteLevel, Sequence
//   decoder         Sequence, ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip
//   added_tokens    special and not, lstrip, rstrip, single_word, normalized
// Regex patterns run on PCRE2 in UTF + UCP mode (HF uses Oniguruma; the two agree on the
// patterns these families use). Input text must be valid UTF-8.
//
// add_special follows tokenizer.json's post_processor, as HF `tokenizers` does; the
// add_bos_token / add_eos_token keys of tokenizer_config.json are transformers-level and are
// not consulted (converted files bake them into the post_processor).
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ferry {

class Tokenizer {
 public:
  // `tokenizer_config_json` may be empty; it supplies bos_token / eos_token only.
  // Throws ferry::Error on malformed JSON or an unsupported component.
  static Tokenizer from_json(std::string_view tokenizer_json,
                             std::string_view tokenizer_config_json = {});
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Throws ferry::Error when `text` is not valid UTF-8.
  std::vector<int32_t> encode(std::string_view text, bool add_special) const;
  // Like HF decode: ids outside the vocabulary are dropped, special added tokens are dropped
  // when skip_special is set, invalid UTF-8 produced by byte tokens becomes U+FFFD.
  std::string decode(std::span<const int32_t> ids, bool skip_special = true) const;

  int32_t bos_id() const;  // -1 when tokenizer_config names none
  int32_t eos_id() const;  // -1 when tokenizer_config names none
  // One past the largest id of the model vocabulary and the added tokens.
  size_t vocab_size() const;
  int32_t token_to_id(std::string_view token) const;  // -1 when absent

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Incremental detokenization for streaming output (the scheme of HF's DecodeStream): each push
// decodes a short window of recent ids and returns only text that is final, so that a token
// ending inside a UTF-8 character (byte-fallback or byte-level pieces) is held back until the
// character completes. The concatenation of every push and the final flush equals
// decode(all ids, skip_special).
// The tokenizer must outlive the StreamDecoder.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special = true);
  std::string push(int32_t id);
  // Returns whatever is still held back (possibly ending in U+FFFD) and starts over.
  std::string flush();

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_;
  std::vector<int32_t> ids_;  // the window: ids from the last emitted boundary on
  std::string prefix_;        // decode of ids_[0, prefix_len_)
  size_t prefix_len_ = 0;
};

}  // namespace ferry
