// ferry run MODEL.ferry -p "..." -n N: generate text, streaming it as it comes, then one line of
// figures on stderr (prompt and generation tokens/s, GB/s of weights read).
// ferry run MODEL.ferry -f prompts.txt --parallel N: one prompt per line, N at once through the
// scheduler (each step reads every streamed weight once for all of them); each completion is
// printed whole, under its prompt's number, as it finishes, then the batch's figures.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>

#include <fmt/format.h>

#include "base/error.hpp"
#include "runtime/engine.hpp"
#include "runtime/generate.hpp"
#include "runtime/scheduler.hpp"
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

// The prompts of -f: one per line (a trailing \r dropped), blank lines skipped.
std::vector<std::string> read_prompts(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw Error(fmt::format("-f: cannot read '{}': give a text file, one prompt a line", path));
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") != std::string::npos) out.push_back(line);
  }
  if (in.bad()) throw Error(fmt::format("-f: reading '{}' failed", path));
  if (out.empty()) throw Error(fmt::format("-f: '{}' holds no prompt (one a line)", path));
  return out;
}

// One prompt's completion, printed whole when it ends (the scheduler calls on the same thread).
struct PrintAtEnd : RequestSink {
  size_t number = 0;
  std::string prompt, text;
  void on_text(std::string_view t, int32_t) override { text += t; }
  void on_done(const RequestResult& r) override {
    std::printf("--- %zu (%llu tokens, stopped: %s)\n%s%s\n", number,
                (unsigned long long)r.generated, std::string(stop_reason_name(r.reason)).c_str(),
                prompt.c_str(), text.c_str());
    std::fflush(stdout);
  }
};

// -f: every prompt through the scheduler, --parallel at once.
int run_prompt_file(const cxxopts::ParseResult& a, EngineOptions options,
                    const std::vector<std::string>& stops) {
  const std::vector<std::string> prompts = read_prompts(a["file"].as<std::string>());
  options.parallel = a["parallel"].as<uint64_t>();
  Engine e(options);
  warn_about_context(e);
  Scheduler sched(e, {.queue_limit = prompts.size()});
  Request base;
  base.max_tokens = a["tokens"].as<uint64_t>();
  base.sampling = sampler_options(a, generation_config(e));
  base.stop_strings = stops;
  base.stop_ids = eos_token_ids(e);
  for (size_t i = 0; i < prompts.size(); ++i) {
    Request r = base;
    r.prompt = e.tokenizer().encode(prompts[i], true);
    r.sampling.seed += i;  // prompt i+1 samples with --seed + i: each its own, reproducible
    auto sink = std::make_shared<PrintAtEnd>();
    sink->number = i + 1;
    sink->prompt = prompts[i];
    try {
      sched.submit(std::move(r), sink);
    } catch (const Error& err) {  // before any work: the prompt that does not fit, by number
      throw Error(err.setting, fmt::format("prompt {} (line of {}): {}", i + 1,
                                           a["file"].as<std::string>(), err.what()));
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  sched.run_until_idle();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  finish_stdout();
  const SchedulerStats st = sched.stats();
  std::fprintf(stderr,
               "%llu prompts, %llu slots | %llu prompt + %llu generated tokens in %.2f s: %.1f "
               "tok/s generated | %llu steps, %.1f tokens a step\n",
               (unsigned long long)prompts.size(), (unsigned long long)st.slots,
               (unsigned long long)st.prompt_tokens, (unsigned long long)st.generated_tokens,
               seconds, double(st.generated_tokens) / seconds, (unsigned long long)st.steps,
               st.steps ? double(st.step_tokens) / double(st.steps) : 0.0);
  if (a.count("stats")) {
    std::fputs(format_cache_stats(*e.settled_cache_stats(), st.generated_tokens).c_str(), stderr);
    std::fputs(format_pass_stats(e.pass_stats()).c_str(), stderr);
  }
  return 0;
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
      "f,file", "prompts, one a line, each completed on its own (with --parallel, N at once)",
      cxxopts::value<std::string>())(
      "parallel", "with -f: sequences served at once, each in its own KV slot of --ctx tokens",
      cxxopts::value<uint64_t>()->default_value("1"))("h,help", "this help");
  o.parse_positional({"model"});
  const auto a = parse_command(o, argc, argv);
  if (a.count("help")) return std::puts(o.help().c_str()), 0;

  const std::vector<std::string> stops = stop_strings(a);
  const EngineOptions options = engine_options(a);
  if (a.count("stats") && !options.cache.enabled && !options.device)  // before any work
    throw Error("--stats reports on the paging cache, and there is none: add --cache-budget");
  if (a.count("file")) {
    if (a.count("prompt")) throw Error("-p and -f both given: give one prompt, or a file of them");
    return run_prompt_file(a, options, stops);
  }
  if (a.count("parallel") && a["parallel"].as<uint64_t>() != 1)
    throw Error("--parallel serves several prompts at once: give them with -f FILE, one a line");
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
    std::fputs(format_cache_stats(*e.settled_cache_stats(), st.generated).c_str(), stderr);
    std::fputs(format_pass_stats(e.pass_stats()).c_str(), stderr);
  }
  return 0;
}

}  // namespace ferry
