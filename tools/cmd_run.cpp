// ferry run MODEL.ferry -p "..." -n N: generate text, streaming it as it comes, then one line of
// figures on stderr (prompt and generation tokens/s, GB/s of weights read).
#include <cstdio>

#include <fmt/format.h>

#include "base/error.hpp"
#include "runtime/engine.hpp"
#include "runtime/generate.hpp"
#include "tools/commands.hpp"

namespace ferry {
namespace {

// Every --stop, in order. Declared as a plain string and read from the parse sequence: a
// vector option would split each value at commas, and a stop string may contain one.
std::vector<std::string> stop_strings(const cxxopts::ParseResult& a) {
  std::vector<std::string> out;
  for (const cxxopts::KeyValue& kv : a.arguments())
    if (kv.key() == "stop") {
      if (kv.value().empty()) throw Error("--stop: the stop string is empty; give some text");
      out.push_back(kv.value());
    }
  return out;
}

}  // namespace

int cmd_run(int argc, char** argv) {
  cxxopts::Options o("ferry run", "Generate text from a .ferry model, streaming it to stdout.");
  o.positional_help("MODEL.ferry");
  add_engine_options(o);
  add_sampler_options(o);
  o.add_options()("p,prompt", "prompt text", cxxopts::value<std::string>()->default_value(""))(
      "n,tokens", "tokens to generate", cxxopts::value<uint64_t>()->default_value("128"))(
      "stop", "stop when the text contains this string (repeatable)",
      cxxopts::value<std::string>())("stats", "print the paging cache's statistics at the end")(
      "h,help", "this help");
  o.parse_positional({"model"});
  const auto a = parse_command(o, argc, argv);
  if (a.count("help")) return std::puts(o.help().c_str()), 0;

  const std::vector<std::string> stops = stop_strings(a);
  const EngineOptions options = engine_options(a);
  if (a.count("stats") && !options.cache.enabled && !options.device)  // before any work
    throw Error("--stats reports on the paging cache, and there is none: add --cache-budget");
  Engine e(options);
  warn_about_context(e);
  const std::string prompt = a["prompt"].as<std::string>();
  std::vector<int32_t> ids = e.tokenizer().encode(prompt, true);
  if (ids.empty())
    throw Error("the prompt encodes to no tokens and the tokenizer adds no BOS: give a prompt");
  GenerateOptions g;
  g.max_tokens = a["tokens"].as<uint64_t>();
  if (ids.size() + g.max_tokens > e.ctx())
    throw Error(fmt::format(
        "prompt ({} tokens) plus {} generated exceed the context of {}; raise --ctx or lower -n",
        ids.size(), g.max_tokens, e.ctx()));
  g.stop_strings = stops;
  g.stop_ids = eos_token_ids(e);
  Sampler sampler(sampler_options(a, generation_config(e)), e.config().vocab);

  std::fputs(prompt.c_str(), stdout);  // echoed, as the text continues it
  uint64_t evaluated = 0;
  const GenerateStats st = generate(e, sampler, ids, evaluated, g, [](std::string_view text) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
  });
  std::fputs("\n", stdout);
  finish_stdout();
  const double rate = st.decode_rate();
  std::fprintf(
      stderr,
      "prompt %llu %s, %.1f tok/s | generated %llu %s, %s | %s of weights read | "
      "stopped: %s\n",
      (unsigned long long)st.prompt_tokens, st.prompt_tokens == 1 ? "token" : "tokens",
      double(st.prompt_tokens) / st.prompt_seconds, (unsigned long long)st.generated,
      st.generated == 1 ? "token" : "tokens",
      rate ? fmt::format("{:.1f} tok/s", rate).c_str() : "no decode step timed",
      rate ? fmt::format("{:.2f} GB/s", rate * weight_bytes_per_token(e.file()) / 1e9).c_str()
           : "-",
      std::string(stop_reason_name(st.reason)).c_str());
  if (a.count("stats")) {
    std::fputs(format_cache_stats(e.paged()->stats(), st.generated).c_str(), stderr);
  }
  return 0;
}

}  // namespace ferry
