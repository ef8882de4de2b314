#include "runtime/perplexity.hpp"

#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>

#include <fmt/format.h>

#include "base/atomic_file.hpp"
#include "base/error.hpp"
#include "kernels/elementwise.hpp"

namespace ferry {
namespace {

constexpr char kMagic[8] = {'F', 'E', 'R', 'R', 'Y', 'L', 'P', '1'};

// The log-probabilities file: this header, then [chunks, scored, vocab] f32 little-endian.
struct LogprobHeader {
  char magic[8];
  uint64_t vocab, ctx, chunks;
  uint64_t plan_hash;  // xxh3 of the plan's tokens and BOS: the same text, tokenized alike
  uint64_t reserved[3];
};
static_assert(sizeof(LogprobHeader) == 64);

uint64_t plan_hash(const PerplexityPlan& p) {
  XXH3_state_t* s = XXH3_createState();
  XXH3_64bits_reset(s);
  XXH3_64bits_update(s, p.tokens.data(), p.tokens.size() * sizeof(int32_t));
  XXH3_64bits_update(s, &p.bos, sizeof(p.bos));
  const uint64_t h = XXH3_64bits_digest(s);
  XXH3_freeState(s);
  return h;
}

int32_t argmax(std::span<const float> v) {
  int32_t top = 0;
  argmax_cpu(v.data(), v.size(), &top);
  return top;
}

// Running sums of one quantity over the scored tokens: mean and its standard error.
struct Moments {
  double sum = 0, sum_sq = 0;
  uint64_t n = 0;
  void add(double x) {
    sum += x;
    sum_sq += x * x;
    ++n;
  }
  double mean() const { return n ? sum / double(n) : 0; }
  double stderr_mean() const {
    if (n < 2) return 0;
    const double var = std::max(0.0, sum_sq / double(n) - mean() * mean());
    return std::sqrt(var / double(n - 1));
  }
};

// Everything a run accumulates.
struct Tally {
  Moments nll, base_nll, kl;
  std::vector<float> kls;  // [scored tokens] for the percentile
  uint64_t same_top = 0;
};

// One scored position: the model's log-probabilities `lp` and, with a base, the base's `lb`.
void score(std::span<const float> lp, std::span<const float> lb, int32_t target, Tally& t) {
  t.nll.add(-double(lp[size_t(target)]));
  if (lb.empty()) return;
  t.base_nll.add(-double(lb[size_t(target)]));
  double kl = 0;
  for (size_t v = 0; v < lb.size(); ++v)
    if (lb[v] > -100)  // exp(-100) ~ 4e-44: below float's least, adds nothing
      kl += std::exp(double(lb[v])) * (double(lb[v]) - double(lp[v]));
  kl = std::max(0.0, kl);  // rounding can leave -1e-9 where the two agree
  t.kl.add(kl);
  t.kls.push_back(float(kl));
  t.same_top += argmax(lp) == argmax(lb);
}

KlResult kl_result(Tally& t, double ppl) {
  KlResult k;
  k.mean = t.kl.mean();
  k.stderr_mean = t.kl.stderr_mean();
  std::sort(t.kls.begin(), t.kls.end());
  if (!t.kls.empty()) {
    k.p99 = t.kls[std::min(t.kls.size() - 1, size_t(0.99 * double(t.kls.size())))];
    k.max = t.kls.back();
  }
  k.top1 = t.kl.n ? double(t.same_top) / double(t.kl.n) : 0;
  k.base_ppl = std::exp(t.base_nll.mean());
  k.base_ppl_stderr = k.base_ppl * t.base_nll.stderr_mean();
  k.ppl_ratio = ppl / k.base_ppl;
  return k;
}

// The scored rows of one chunk as log-probabilities: [scored, vocab] from all its logits.
void chunk_logprobs(Engine& e, const PerplexityPlan& plan, uint64_t i, std::vector<float>& logits,
                    std::span<float> out) {
  const uint64_t vocab = e.config().vocab;
  const std::vector<int32_t> tokens = plan.chunk(i);
  e.eval_all(tokens, 0, logits);
  for (uint64_t r = 0; r < plan.scored(); ++r)
    log_softmax(std::span(logits).subspan((plan.first() + r) * vocab, vocab),
                out.subspan(r * vocab, vocab));
}

class EngineBase final : public BaseLogprobs {
 public:
  EngineBase(Engine& e, const PerplexityPlan& plan)
      : e_(e), plan_(plan), logits_(plan.ctx * e.config().vocab) {}
  void chunk(uint64_t i, std::span<float> out) override {
    chunk_logprobs(e_, plan_, i, logits_, out);
  }

 private:
  Engine& e_;
  const PerplexityPlan& plan_;
  std::vector<float> logits_;  // [ctx, vocab]
};

class FileBase final : public BaseLogprobs {
 public:
  FileBase(const std::filesystem::path& path, const PerplexityPlan& plan, uint64_t vocab)
      : path_(path), in_(path, std::ios::binary), plan_(plan), vocab_(vocab) {
    if (!in_) throw Error(fmt::format("--kl-logits: cannot read '{}'", path.string()));
    LogprobHeader h{};
    in_.read(reinterpret_cast<char*>(&h), sizeof h);
    if (!in_ || std::memcmp(h.magic, kMagic, sizeof kMagic) != 0)
      throw Error(fmt::format(
          "--kl-logits: '{}' is not a log-probabilities file of ferry perplexity --save-logits",
          path.string()));
    if (h.vocab != vocab || h.ctx != plan.ctx || h.chunks != plan.chunks ||
        h.plan_hash != plan_hash(plan))
      throw Error(fmt::format(
          "--kl-logits: '{}' was saved for other tokens (vocabulary {}, --ctx {}, {} chunks; here "
          "{}, {}, {}): run the base with the same text, --ctx and tokenizer",
          path.string(), h.vocab, h.ctx, h.chunks, vocab, plan.ctx, plan.chunks));
    const uint64_t want = logprobs_file_bytes(plan, vocab);
    if (std::filesystem::file_size(path) != want)
      throw Error(fmt::format("--kl-logits: '{}' is {} bytes, {} expected: it is truncated",
                              path.string(), std::filesystem::file_size(path), want));
  }
  void chunk(uint64_t i, std::span<float> out) override {
    const uint64_t row = plan_.scored() * vocab_ * sizeof(float);
    in_.seekg(std::streamoff(sizeof(LogprobHeader) + i * row));
    in_.read(reinterpret_cast<char*>(out.data()), std::streamsize(row));
    if (!in_) throw Error(fmt::format("--kl-logits: reading '{}' failed", path_.string()));
  }

 private:
  std::filesystem::path path_;
  std::ifstream in_;
  const PerplexityPlan& plan_;
  uint64_t vocab_;
};

}  // namespace

std::vector<int32_t> PerplexityPlan::chunk(uint64_t i) const {
  std::vector<int32_t> c(tokens.begin() + long(i * ctx), tokens.begin() + long((i + 1) * ctx));
  if (bos >= 0) c[0] = bos;
  return c;
}

PerplexityPlan plan_perplexity(const Engine& e, std::string_view text, uint64_t ctx,
                               uint64_t max_chunks) {
  if (ctx < 8 || ctx > e.ctx())
    throw Error(Setting::ctx,
                fmt::format("a perplexity chunk of {} tokens is outside 8 .. {} (the context)", ctx,
                            e.ctx()));
  PerplexityPlan p;
  p.ctx = ctx;
  p.tokens = e.tokenizer().encode(text, true);
  const int32_t bos = e.tokenizer().bos_id();
  if (bos >= 0 && !p.tokens.empty() && p.tokens.front() == bos) p.bos = bos;
  p.chunks = p.tokens.size() / ctx;
  if (p.chunks == 0)
    throw Error(Setting::ctx, fmt::format("the text is {} tokens, less than one chunk of {}: give "
                                          "a longer text or lower it",
                                          p.tokens.size(), ctx));
  if (max_chunks) p.chunks = std::min(p.chunks, max_chunks);
  p.tokens.resize(p.chunks * ctx);
  return p;
}

std::unique_ptr<BaseLogprobs> base_from_engine(Engine& base, const PerplexityPlan& plan) {
  return std::make_unique<EngineBase>(base, plan);
}

std::unique_ptr<BaseLogprobs> base_from_file(const std::filesystem::path& path,
                                             const PerplexityPlan& plan, uint64_t vocab) {
  return std::make_unique<FileBase>(path, plan, vocab);
}

uint64_t logprobs_file_bytes(const PerplexityPlan& plan, uint64_t vocab) {
  return sizeof(LogprobHeader) + plan.chunks * plan.scored() * vocab * sizeof(float);
}

void log_softmax(std::span<const float> logits, std::span<float> out) {
  const float top = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float x : logits) sum += std::exp(double(x) - double(top));
  const double log_sum = double(top) + std::log(sum);
  for (size_t i = 0; i < logits.size(); ++i) out[i] = float(double(logits[i]) - log_sum);
}

PerplexityResult run_perplexity(Engine& e, const PerplexityPlan& plan, const PerplexityRun& run) {
  const uint64_t vocab = e.config().vocab, rows = plan.scored();
  std::vector<float> logits(plan.ctx * vocab);  // [ctx, vocab] a chunk's logits
  std::vector<float> lp(rows * vocab);          // [scored, vocab] the model's log-probabilities
  std::vector<float> lb(run.base ? rows * vocab : 0);  // [scored, vocab] the base's
  std::optional<AtomicFile> save;
  if (!run.save.empty()) {
    save.emplace(run.save, logprobs_file_bytes(plan, vocab));
    LogprobHeader h{};
    std::memcpy(h.magic, kMagic, sizeof kMagic);
    h.vocab = vocab, h.ctx = plan.ctx, h.chunks = plan.chunks, h.plan_hash = plan_hash(plan);
    save->pwrite_all(&h, sizeof h, 0);
  }
  Tally t;
  const auto t0 = std::chrono::steady_clock::now();
  for (uint64_t i = 0; i < plan.chunks; ++i) {
    chunk_logprobs(e, plan, i, logits, lp);
    if (save)
      save->pwrite_all(lp.data(), lp.size() * sizeof(float),
                       sizeof(LogprobHeader) + i * lp.size() * sizeof(float));
    if (run.base) run.base->chunk(i, lb);
    for (uint64_t r = 0; r < rows; ++r)
      score(std::span(lp).subspan(r * vocab, vocab),
            run.base ? std::span<const float>(lb).subspan(r * vocab, vocab)
                     : std::span<const float>(),
            plan.target(i, plan.first() + r), t);
    if (run.progress) run.progress(i + 1, plan.chunks, std::exp(t.nll.mean()));
  }
  if (save) save->commit();
  PerplexityResult res;
  res.chunks = plan.chunks, res.ctx = plan.ctx, res.scored = t.nll.n;
  res.mean_nll = t.nll.mean();
  res.ppl = std::exp(res.mean_nll);
  res.ppl_stderr = res.ppl * t.nll.stderr_mean();
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  res.tokens_per_second = double(plan.chunks * plan.ctx) / res.seconds;
  if (run.base) res.kl = kl_result(t, res.ppl);
  return res;
}

}  // namespace ferry
