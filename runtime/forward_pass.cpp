#include "runtime/forward_pass.hpp"

#include <fmt/format.h>

#include "base/error.hpp"

namespace ferry {

uint64_t check_forward_seqs(const ModelConfig& c, const PassShape& shape,
                            std::span<const SeqChunk> seqs, std::span<const float> logits,
                            const int32_t* argmax, LogitRows rows) {
  if (seqs.empty() || seqs.size() > shape.slots)
    throw Error(
        fmt::format("a forward call takes 1 to {} sequences, got {}", shape.slots, seqs.size()));
  uint64_t total = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const SeqChunk& s = seqs[i];
    if (s.slot >= shape.slots)
      throw Error(fmt::format("KV slot {} is past the {} the pass has", s.slot, shape.slots));
    for (size_t j = 0; j < i; ++j)
      if (seqs[j].slot == s.slot)
        throw Error(fmt::format("KV slot {} appears twice in one forward call", s.slot));
    check_forward_call(c, shape.ctx, shape.batch, s.tokens, s.pos);
    total += s.tokens.size();
  }
  if (total > shape.batch)
    throw Error(fmt::format("a forward call takes 1 to {} tokens, got {}", shape.batch, total));
  const bool all = rows == LogitRows::all;
  if (all && (seqs.size() != 1 || argmax))
    throw Error("internal error: every row's logits are for one sequence, without argmax");
  if (logits.size() < (all ? total : seqs.size()) * c.vocab)
    throw Error("internal error: the logits span is too small");
  return total;
}

std::string format_pass_stats(const PassStats& s) {
  std::string out;
  if (s.graph_launches)
    out = fmt::format(
        "cuda graph: {} steps launched as one graph each ({} instantiations, {} updated in "
        "place)\n",
        s.graph_launches, s.graph_builds, s.graph_updates);
  if (s.graph_failures)
    out +=
        fmt::format("cuda graph: {} recordings failed, their steps ran on the stream (last: {})\n",
                    s.graph_failures, s.graph_error);
  return out;
}

}  // namespace ferry
