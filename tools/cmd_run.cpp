// ferry run MODEL.ferry -p "..." -n N: generate text on the CPU, streaming it as it comes.
#include <cxxopts.hpp>

#include <chrono>
#include <cstdio>

#include <fmt/format.h>

#include "quantizer/error.hpp"
#include "runtime/engine.hpp"
#include "runtime/sampler.hpp"
#include "runtime/tokenizer.hpp"
#include "tools/commands.hpp"

namespace ferry {
namespace {

using Clock = std::chrono::steady_clock;

}  // namespace

int cmd_run(int argc, char** argv) {
  cxxopts::Options o("ferry run",
                     "Generate text from a .ferry model on the CPU, streaming it to stdout.");
  o.positional_help("MODEL.ferry");
  add_engine_options(o);
  add_sampler_options(o);
  o.add_options()("p,prompt", "prompt text", cxxopts::value<std::string>()->default_value(""))(
      "n,tokens", "tokens to generate", cxxopts::value<uint64_t>()->default_value("128"))(
      "h,help", "this help");
  o.parse_positional({"model"});
  const auto a = o.parse(argc, argv);
  if (a.count("help")) return std::puts(o.help().c_str()), 0;

  const uint64_t n = a["tokens"].as<uint64_t>(), ctx = a["ctx"].as<uint64_t>();
  Engine e(engine_options(a));
  const Tokenizer& tok = e.tokenizer;
  std::vector<int32_t> ids = tok.encode(a["prompt"].as<std::string>(), true);
  if (ids.empty())
    throw Error("the prompt encodes to no tokens and the tokenizer adds no BOS: give a prompt");
  if (ids.size() + n > ctx)
    throw Error(fmt::format(
        "prompt ({} tokens) plus {} generated exceed the context of {}; raise --ctx or lower -n",
        ids.size(), n, ctx));
  Sampler sampler(sampler_options(a), e.config().vocab);
  StreamDecoder out(tok);

  std::fputs(a["prompt"].as<std::string>().c_str(), stdout);  // echoed, as the text continues it
  const auto t0 = Clock::now();
  e.eval(ids, 0);
  const auto t1 = Clock::now();
  const size_t prompt_len = ids.size();
  uint64_t generated = 0;
  for (; generated < n; ++generated) {
    const int32_t next = sampler.sample(e.state.logits, ids);
    if (next == tok.eos_id()) break;
    ids.push_back(next);
    std::fputs(out.push(next).c_str(), stdout);
    std::fflush(stdout);
    if (generated + 1 < n) e.eval(std::span(&ids.back(), 1), ids.size() - 1);
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
               gen_rate * weight_bytes_per_token(e.file) / 1e9);
  return 0;
}

}  // namespace ferry
