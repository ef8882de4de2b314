// Perplexity as llama.cpp's llama-perplexity measures it, so that the two tools' numbers can be
// set side by side: the text is tokenized once (with BOS where the tokenizer adds one), cut into
// chunks of `ctx` tokens (a tail shorter than a chunk is dropped), each chunk run from position 0
// with its first token replaced by BOS where the model wants one, and only the second half of
// each scored (position j's logits predict token j + 1, j from ctx / 2 to ctx - 2): every scored
// token sees at least ctx / 2 tokens of context.
//
// Against a base (the same text through another model, or that model's log-probabilities saved
// to a file) it also measures what llama-perplexity --kl-divergence does: the KL divergence of
// the model's next-token distribution from the base's at every scored token (mean, 99th
// percentile), how often both pick the same most likely token, and the ratio of perplexities.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "runtime/engine.hpp"

namespace ferry {

// The chunking of a tokenized text.
struct PerplexityPlan {
  std::vector<int32_t> tokens;  // [chunks * ctx] the text's first whole chunks
  uint64_t ctx = 0, chunks = 0;
  int32_t bos = -1;  // replaces each chunk's first token; -1: the model adds no BOS
  uint64_t first() const { return ctx / 2; }             // the first scored position
  uint64_t scored() const { return ctx - 1 - first(); }  // scored tokens a chunk
  // Chunk i as the model runs it: [ctx] tokens, the first replaced by BOS where there is one.
  std::vector<int32_t> chunk(uint64_t i) const;
  // The token chunk i's scored position j (first() <= j < ctx - 1) predicts: the text's own.
  int32_t target(uint64_t i, uint64_t j) const { return tokens[i * ctx + j + 1]; }
};

// Tokenizes `text` with the engine's tokenizer and cuts it, keeping at most `max_chunks` chunks
// (0: all; llama-perplexity's --chunks). Throws ferry::Error (naming --ctx) when the text holds
// fewer than one chunk, or when ctx is below 8 or above the engine's context.
PerplexityPlan plan_perplexity(const Engine& e, std::string_view text, uint64_t ctx,
                               uint64_t max_chunks = 0);

// The base's log-probabilities of one chunk's scored positions, [scored, vocab].
class BaseLogprobs {
 public:
  virtual ~BaseLogprobs() = default;
  virtual void chunk(uint64_t i, std::span<float> out) = 0;
};

// A base model run on the same plan (it must share the vocabulary).
std::unique_ptr<BaseLogprobs> base_from_engine(Engine& base, const PerplexityPlan& plan);
// A file written by save_logprobs for the same tokens and ctx (checked: a hash of the plan's
// tokens, ctx and vocab are in its header); throws ferry::Error naming the file otherwise.
std::unique_ptr<BaseLogprobs> base_from_file(const std::filesystem::path& path,
                                             const PerplexityPlan& plan, uint64_t vocab);

struct KlResult {
  double mean = 0, stderr_mean = 0, p99 = 0, max = 0;
  double top1 = 0;  // share of scored tokens whose most likely token is the base's
  double base_ppl = 0, base_ppl_stderr = 0;
  double ppl_ratio = 0;  // the model's perplexity / the base's
};

struct PerplexityResult {
  uint64_t chunks = 0, ctx = 0, scored = 0;  // scored: tokens in all
  double ppl = 0, ppl_stderr = 0;            // exp(mean NLL) and its standard error
  double mean_nll = 0;
  double seconds = 0, tokens_per_second = 0;  // every evaluated token (whole chunks)
  std::optional<KlResult> kl;
};

struct PerplexityRun {
  BaseLogprobs* base = nullptr;  // adds the KL figures
  std::filesystem::path save;    // writes the model's log-probabilities here (atomically)
  std::function<void(uint64_t chunk, uint64_t chunks, double ppl_so_far)> progress;
};

// Runs every chunk through `e` (its context must hold ctx tokens).
PerplexityResult run_perplexity(Engine& e, const PerplexityPlan& plan, const PerplexityRun& run);

// The bytes save_logprobs writes for a plan (the header and [chunks, scored, vocab] f32), for the
// check before any work.
uint64_t logprobs_file_bytes(const PerplexityPlan& plan, uint64_t vocab);

// log-softmax of one row in double precision, written as float.
void log_softmax(std::span<const float> logits, std::span<float> out);

}  // namespace ferry
