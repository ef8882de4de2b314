// ferry perplexity MODEL.ferry -f TEXT: perplexity with llama-perplexity's chunking
// (runtime/perplexity.hpp), its standard error and tokens/s; against a base (--kl-base BASE.ferry,
// or --kl-logits FILE saved by an earlier --save-logits) also the KL divergence, top-1 agreement
// and the perplexity ratio. The figures go to stdout, --json writes them as a file.
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/atomic_file.hpp"
#include "base/error.hpp"
#include "runtime/perplexity.hpp"
#include "tools/commands.hpp"

namespace ferry {
namespace {

constexpr uint64_t kDefaultChunk = 512;  // llama-perplexity's default -c

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("-f: cannot read '{}': give a UTF-8 text file", path));
  std::ostringstream s;
  s << in.rdbuf();
  if (in.bad()) throw Error(fmt::format("-f: reading '{}' failed", path));
  return s.str();
}

std::string path_of(const cxxopts::ParseResult& a, const char* option) {
  return a.count(option) ? a[option].as<std::string>() : std::string();
}

// Everything the command line can get wrong, before a model is loaded.
void check_options(const cxxopts::ParseResult& a) {
  if (!a.count("file")) throw Error("no text given: pass -f TEXT (a UTF-8 file)");
  if (a.count("kl-base") && a.count("kl-logits"))
    throw Error("--kl-base and --kl-logits both given: the base is one model or one file");
  for (const char* option : {"save-logits", "json"})
    if (a.count(option)) try {
        check_output_path(path_of(a, option));
      } catch (const Error& e) {
        throw Error(fmt::format("--{}: {}", option, e.what()));
      }
}

// A line a chunk: redrawn on a terminal, every chunk as its own line otherwise.
void show_progress(bool tty, uint64_t done, uint64_t chunks, double ppl) {
  std::fprintf(stderr, "%sperplexity: chunk %llu/%llu, %.4f so far%s", tty ? "\r" : "",
               (unsigned long long)done, (unsigned long long)chunks, ppl,
               tty && done < chunks ? "" : "\n");
  std::fflush(stderr);
}

void print_result(const PerplexityResult& r) {
  std::printf(
      "perplexity %.4f ± %.4f over %llu tokens (%llu chunks of %llu, second halves scored) | "
      "%.1f tokens/s\n",
      r.ppl, r.ppl_stderr, (unsigned long long)r.scored, (unsigned long long)r.chunks,
      (unsigned long long)r.ctx, r.tokens_per_second);
  if (!r.kl) return;
  const KlResult& k = *r.kl;
  std::printf("base perplexity %.4f ± %.4f | ratio %.4f\n", k.base_ppl, k.base_ppl_stderr,
              k.ppl_ratio);
  std::printf(
      "KL divergence from the base: mean %.6f ± %.6f, 99th percentile %.6f, max %.6f | top-1 "
      "agreement %.2f%%\n",
      k.mean, k.stderr_mean, k.p99, k.max, 100 * k.top1);
}

std::string result_json(const std::string& model, const std::string& text,
                        const PerplexityResult& r) {
  nlohmann::json j = {{"model", model},
                      {"text", text},
                      {"ctx", r.ctx},
                      {"chunks", r.chunks},
                      {"scored_tokens", r.scored},
                      {"perplexity", r.ppl},
                      {"perplexity_stderr", r.ppl_stderr},
                      {"mean_nll", r.mean_nll},
                      {"seconds", r.seconds},
                      {"tokens_per_second", r.tokens_per_second}};
  if (r.kl)
    j["kl"] = {{"mean", r.kl->mean},
               {"mean_stderr", r.kl->stderr_mean},
               {"p99", r.kl->p99},
               {"max", r.kl->max},
               {"top1_agreement", r.kl->top1},
               {"base_perplexity", r.kl->base_ppl},
               {"base_perplexity_stderr", r.kl->base_ppl_stderr},
               {"perplexity_ratio", r.kl->ppl_ratio}};
  return j.dump(2) + "\n";
}

int perplexity(const cxxopts::ParseResult& a) {
  check_options(a);
  const std::string text_path = a["file"].as<std::string>();
  const std::string text = read_text_file(text_path);
  EngineOptions o = engine_options(a);
  const uint64_t chunk = a.count("ctx") ? a["ctx"].as<uint64_t>() : kDefaultChunk;
  o.ctx = chunk;
  Engine e(o);
  const PerplexityPlan plan = plan_perplexity(e, text, chunk, a["chunks"].as<uint64_t>());
  std::unique_ptr<Engine> base_engine;
  std::unique_ptr<BaseLogprobs> base;
  if (a.count("kl-base")) {
    EngineOptions b = o;
    b.model = a["kl-base"].as<std::string>();
    base_engine = std::make_unique<Engine>(b);
    if (base_engine->config().vocab != e.config().vocab)
      throw Error(
          fmt::format("--kl-base: its vocabulary is {} tokens, the model's {}: compare "
                      "two conversions of one checkpoint",
                      base_engine->config().vocab, e.config().vocab));
    base = base_from_engine(*base_engine, plan);
  } else if (a.count("kl-logits")) {
    base = base_from_file(a["kl-logits"].as<std::string>(), plan, e.config().vocab);
  }
  std::fprintf(stderr, "%llu tokens: %llu chunks of %llu%s\n",
               (unsigned long long)(plan.chunks * plan.ctx), (unsigned long long)plan.chunks,
               (unsigned long long)plan.ctx, plan.bos >= 0 ? ", each starting with BOS" : "");
  const bool tty = isatty(STDERR_FILENO) != 0;
  const PerplexityRun run{.base = base.get(),
                          .save = path_of(a, "save-logits"),
                          .progress = [tty](uint64_t done, uint64_t chunks, double ppl) {
                            show_progress(tty, done, chunks, ppl);
                          }};
  const PerplexityResult r = run_perplexity(e, plan, run);
  print_result(r);
  finish_stdout();
  if (a.count("json"))
    write_file_atomic(path_of(a, "json"), result_json(o.model.string(), text_path, r));
  return 0;
}

}  // namespace

int cmd_perplexity(int argc, char** argv) {
  cxxopts::Options o("ferry perplexity",
                     "Perplexity of a .ferry model on a text, as llama-perplexity measures it, "
                     "and its KL divergence from a base.");
  o.positional_help("MODEL.ferry");
  add_engine_options(o);
  o.add_options()("f,file", "the text (UTF-8)", cxxopts::value<std::string>())(
      "chunks", "score at most this many chunks (0: every whole chunk of the text)",
      cxxopts::value<uint64_t>()->default_value("0"))(
      "kl-base", "a base model (e.g. the bf16 conversion): KL divergence, top-1, PPL ratio",
      cxxopts::value<std::string>())(
      "save-logits",
      "write the model's log-probabilities of the scored tokens here, to serve later as "
      "--kl-logits (chunks x ctx/2 x vocab floats)",
      cxxopts::value<std::string>())(
      "kl-logits", "a base's log-probabilities saved by --save-logits (instead of --kl-base)",
      cxxopts::value<std::string>())("json", "write the figures as JSON",
                                     cxxopts::value<std::string>())("h,help", "this help");
  o.parse_positional({"model"});
  const auto a = parse_command(o, argc, argv);
  if (a.count("help")) {
    std::puts(o.help().c_str());
    std::puts("--ctx is the chunk: tokens a chunk, the second half of each scored (default 512)");
    return 0;
  }
  return perplexity(a);
}

}  // namespace ferry
