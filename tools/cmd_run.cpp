// ferry run MODEL.ferry -p "..." -n N: generate text on the CPU, streaming it as it comes.
#include <cxxopts.hpp>

#include <chrono>
#include <cstdio>

#include <fmt/format.h>

#include "quantizer/error.hpp"
#include "runtime/model.hpp"
#include "runtime/sampler.hpp"
#include "runtime/tokenizer.hpp"
#include "tools/commands.hpp"

namespace ferry {
namespace {

using Clock = std::chrono::steady_clock;

// Bytes of weights one token reads: every tensor but the embedding, of which only one row.
double weight_bytes_per_token(const PackedFile& f) {
  double b = 0;
  for (const TensorView& t : f.file.tensors())
    b += t.name == "model.embed_tokens.weight" ? double(t.nbytes) / double(t.shape[0])
                                               : double(t.nbytes);
  return b;
}

std::string meta_or_empty(const PackedFile& f, const char* key) {
  auto it = f.file.metadata().find(key);
  return it == f.file.metadata().end() ? std::string() : it->second;
}

SamplerOptions sampler_options(const cxxopts::ParseResult& a) {
  SamplerOptions s;
  s.temperature = a["temp"].as<float>();
  s.top_k = a["top-k"].as<uint32_t>();
  s.top_p = a["top-p"].as<float>();
  s.min_p = a["min-p"].as<float>();
  s.repetition_penalty = a["repeat-penalty"].as<float>();
  s.seed = a["seed"].as<uint64_t>();
  return s;
}

}  // namespace

int cmd_run(int argc, char** argv) {
  cxxopts::Options o("ferry run",
                     "Generate text from a .ferry model on the CPU, streaming it to stdout.");
  o.positional_help("MODEL.ferry");
  o.add_options()("model", "packed model", cxxopts::value<std::string>())(
      "p,prompt", "prompt text", cxxopts::value<std::string>()->default_value(""))(
      "n,tokens", "tokens to generate", cxxopts::value<uint64_t>()->default_value("128"))(
      "ctx", "context size (KV cache) in tokens",
      cxxopts::value<uint64_t>()->default_value("1024"))(
      "temp", "temperature (0: greedy)", cxxopts::value<float>()->default_value("0"))(
      "top-k", "keep the k most likely tokens (0: off)",
      cxxopts::value<uint32_t>()->default_value("0"))("top-p", "nucleus sampling threshold",
                                                      cxxopts::value<float>()->default_value("1"))(
      "min-p", "drop tokens below min-p times the top probability",
      cxxopts::value<float>()->default_value("0"))("repeat-penalty",
                                                   "penalty on tokens already seen (1: off)",
                                                   cxxopts::value<float>()->default_value("1"))(
      "seed", "random seed", cxxopts::value<uint64_t>()->default_value("0"))("h,help", "this help");
  o.parse_positional({"model"});
  const auto a = o.parse(argc, argv);
  if (a.count("help")) return std::puts(o.help().c_str()), 0;
  if (!a.count("model")) throw Error("usage: ferry run MODEL.ferry -p \"prompt\" -n N");

  const PackedFile f = PackedFile::open(a["model"].as<std::string>());
  const ModelWeights w = bind_weights(f);
  const Tokenizer tok = Tokenizer::from_json(meta_or_empty(f, meta::kTokenizer),
                                             meta_or_empty(f, meta::kTokenizerConfig));
  const uint64_t n = a["tokens"].as<uint64_t>(), ctx = a["ctx"].as<uint64_t>();
  std::vector<int32_t> ids = tok.encode(a["prompt"].as<std::string>(), true);
  if (ids.empty())
    throw Error("the prompt encodes to no tokens and the tokenizer adds no BOS: give a prompt");
  if (ids.size() + n > ctx)
    throw Error(fmt::format(
        "prompt ({} tokens) plus {} generated exceed the context of {}; raise --ctx or lower -n",
        ids.size(), n, ctx));
  RunState s(f.config, ctx);
  Sampler sampler(sampler_options(a), f.config.vocab);
  StreamDecoder out(tok);

  std::fputs(a["prompt"].as<std::string>().c_str(), stdout);  // echoed, as the text continues it
  const auto t0 = Clock::now();
  for (size_t i = 0; i < ids.size(); ++i) forward(f.config, w, s, ids[i], i);
  const auto t1 = Clock::now();
  const size_t prompt_len = ids.size();
  uint64_t generated = 0;
  for (; generated < n; ++generated) {
    const int32_t next = sampler.sample(s.logits, ids);
    if (next == tok.eos_id()) break;
    ids.push_back(next);
    std::fputs(out.push(next).c_str(), stdout);
    std::fflush(stdout);
    if (generated + 1 < n) forward(f.config, w, s, next, ids.size() - 1);
  }
  std::fputs((out.flush() + "\n").c_str(), stdout);
  std::fflush(stdout);
  const double tp = std::chrono::duration<double>(t1 - t0).count();
  const double tg = std::chrono::duration<double>(Clock::now() - t1).count();
  const double gen_rate = generated ? double(generated) / tg : 0;
  std::fprintf(stderr,
               "prompt %zu tokens, %.1f tok/s | generated %llu tokens, %.1f tok/s | %.2f GB/s of "
               "weights read\n",
               prompt_len, double(prompt_len) / tp, (unsigned long long)generated, gen_rate,
               gen_rate * weight_bytes_per_token(f) / 1e9);
  return 0;
}

}  // namespace ferry
