// The generation loop shared by `ferry run` and `ferry chat`: evaluate what the KV cache lacks
// (in prefill batches), then sample, stream and evaluate one token at a time until an EOS or
// end-of-turn token, a stop string, the token limit, the end of the context, or a cancel request.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/engine.hpp"
#include "runtime/sampler.hpp"

namespace ferry {

// Holds back text that may be the start of a stop string, so that a stop string spread over
// several tokens is never printed. push() returns the text that is final; once a stop string
// appears, found() turns true and the text from it on is dropped. Input must be whole UTF-8
// characters (StreamDecoder's output): what is held back then starts on a character boundary.
class StopStringFilter {
 public:
  explicit StopStringFilter(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  std::string push(std::string_view text);
  std::string flush();  // what is held back, at the end of generation without a match
  bool found() const { return found_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool found_ = false;
};

enum class StopReason { eos, stop_string, max_tokens, context_full, cancelled };
std::string_view stop_reason_name(StopReason r);  // "end of sequence", "stop string", ...

struct GenerateOptions {
  uint64_t max_tokens = 128;
  std::vector<std::string> stop_strings;      // matched on the decoded text
  std::vector<int32_t> stop_ids;              // EOS and end-of-turn tokens: not printed, not kept
  const std::atomic<bool>* cancel = nullptr;  // checked before each new token
};

struct GenerateStats {
  uint64_t prompt_tokens = 0;  // tokens this call evaluated before the first sample
  double prompt_seconds = 0;
  uint64_t generated = 0;  // tokens sampled and appended to the context (not the stop token)
  // Forward passes of generated tokens: the first token comes from the prompt's pass and the
  // last is not evaluated, so one or two fewer than `generated`.
  uint64_t decode_steps = 0;
  double generate_seconds = 0;
  // Decode speed: forward passes per second of generation (0 when none ran). Counting the
  // generated tokens instead made `-n 1` report thousands of tokens/s for one untimed pass.
  double decode_rate() const {
    return decode_steps && generate_seconds > 0 ? double(decode_steps) / generate_seconds : 0;
  }
  StopReason reason = StopReason::max_tokens;
};

// The tokens that end generation for this model: the tokenizer's eos_token and every
// eos_token_id of generation_config.json and config.json (Llama 3 Instruct lists <|eot_id|> and
// <|end_of_text|>, Qwen2.5 Instruct <|im_end|> and <|endoftext|>), without duplicates.
std::vector<int32_t> eos_token_ids(const Engine& engine);

// The packed file's generation_config.json (absent in files made without one: present false,
// greedy).
GenerationConfig generation_config(const Engine& engine);

// `context` holds every token of the sequence; its first `evaluated` are in the KV cache (the
// last token is evaluated again if all are, for its logits). Evaluates the rest, appends the
// sampled tokens to `context`, leaves in `evaluated` how many the KV cache holds on return (the
// last generated token is not evaluated), and hands text to `on_text` as it becomes final.
// The context must leave room for one more token; throws ferry::Error when it does not.
GenerateStats generate(Engine& engine, Sampler& sampler, std::vector<int32_t>& context,
                       uint64_t& evaluated, const GenerateOptions& options,
                       const std::function<void(std::string_view)>& on_text);

}  // namespace ferry
