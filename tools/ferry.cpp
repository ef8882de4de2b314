// ferry — the command line. Each subcommand lives in its own cmd_*.cpp.
#include <cxxopts.hpp>

#include <cstdio>
#include <cstring>
#include <exception>
#include <new>
#include <string_view>

#include "base/error.hpp"
#include "tools/commands.hpp"
#include "tools/option_names.hpp"
#include "tools/version.hpp"  // generated into the build directory

namespace {

struct Command {
  const char* name;
  int (*run)(int, char**);
  const char* help;
};

constexpr Command kCommands[] = {
    {"quantize", ferry::cmd_quantize,
     "convert a Hugging Face checkpoint into a packed INT4 .ferry file"},
    {"inspect", ferry::cmd_inspect,
     "describe a .ferry file or a Hugging Face checkpoint, verify checksums"},
    {"run", ferry::cmd_run, "generate text from a .ferry model (CPU, or a GPU with --device cuda)"},
    {"bench", ferry::cmd_bench,
     "throughput per cache budget, policy and format, against the bound"},
    {"chat", ferry::cmd_chat, "chat with a .ferry model (its chat template, multi-turn)"},
    {"perplexity", ferry::cmd_perplexity,
     "perplexity on a text as llama-perplexity measures it; KL divergence from a base"},
    {"calibrate", ferry::cmd_calibrate,
     "activation statistics of a bf16 model over a text, for quantize --calib"},
    {"serve", ferry::cmd_serve,
     "serve a .ferry model over HTTP: the OpenAI API, and a chat page at /"},
    {"synth", ferry::cmd_synth,
     "write a random Hugging Face checkpoint of a named shape (tests, benchmarks)"},
};

int usage(FILE* out) {
  std::fprintf(out,
               "usage: ferry <command> [options]   (ferry <command> --help for its options)\n"
               "       ferry --version\n\ncommands:\n");
  for (const Command& c : kCommands) std::fprintf(out, "  %-10s %s\n", c.name, c.help);
  return out == stdout ? 0 : 2;
}

int version() {
  namespace b = ferry::build_info;
  std::printf("ferry %s (git %s)\n", b::kVersion, b::kGitRevision);
  if (b::kCuda)
    std::printf("CUDA backend: yes, architectures %s\n", b::kCudaArchitectures);
  else
    std::printf("CUDA backend: no (CPU only: nvcc was not used for this build)\n");
  std::printf("built with %s, %s\n", b::kCompiler, b::kBuildType);
  return std::fflush(stdout) == 0 && !std::ferror(stdout) ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage(stderr);
  const std::string_view name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") return usage(stdout);
  if (name == "--version" || name == "version") return version();
  for (const Command& c : kCommands) {
    if (name != c.name) continue;
    try {
      return c.run(argc - 1, argv + 1);
    } catch (const ferry::Error& e) {  // the flag of the setting it is about, then the message
      std::fprintf(stderr, "ferry: error: %s\n", ferry::cli_message(e, c.name).c_str());
    } catch (const cxxopts::exceptions::exception& e) {
      std::fprintf(stderr, "ferry: error: %s: %s (see ferry %s --help)\n", c.name, e.what(),
                   c.name);
      return 2;
    } catch (const std::bad_alloc&) {
      std::fprintf(stderr,
                   "ferry: error: out of memory; close other programs, or lower the sizes given "
                   "(--ctx, --batch, --layers)\n");
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ferry: error: %s\n", e.what());
    }
    return 1;
  }
  std::fprintf(stderr, "ferry: unknown command '%s'\n", argv[1]);
  return usage(stderr);
}
