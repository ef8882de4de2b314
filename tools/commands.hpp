// The subcommands of the ferry command line; each parses its own options (cxxopts) and returns
// the process exit code. Errors are thrown as ferry::Error and printed by main().
#pragma once
#include <cstdint>
#include <string_view>

#include <cxxopts.hpp>

#include "runtime/engine.hpp"
#include "runtime/sampler.hpp"

namespace ferry {

int cmd_quantize(int argc, char** argv);
int cmd_inspect(int argc, char** argv);
int cmd_synth(int argc, char** argv);
int cmd_run(int argc, char** argv);
int cmd_chat(int argc, char** argv);
int cmd_bench(int argc, char** argv);
int cmd_perplexity(int argc, char** argv);
int cmd_serve(int argc, char** argv);
int cmd_calibrate(int argc, char** argv);

// "512M", "2G", "1.5GB", "4096" (bytes); decimal units (G = 1e9) like the sizes ferry prints,
// binary ones with "GiB"/"MiB"/"KiB". Throws ferry::Error naming `option` on anything else.
uint64_t parse_size(std::string_view text, std::string_view option);

// o.parse(argc, argv), refusing arguments no option or positional slot takes.
cxxopts::ParseResult parse_command(cxxopts::Options& o, int argc, char** argv);

// Flushes stdout; throws ferry::Error with the reason when anything written to it was lost (a
// full disk, a closed pipe), so that the exit status says so.
void finish_stdout();

// The options that load a model, shared by run, chat and bench (MODEL positional, --ctx,
// --kv-type, --threads, and the paging cache's), and the EngineOptions they make.
// cache_options: also --cache-budget, --cache-policy and --cache-format (bench sweeps its own).
void add_engine_options(cxxopts::Options& o, bool cache_options = true);
EngineOptions engine_options(const cxxopts::ParseResult& a);
// Prints the engine's warning about its options, if any, naming --ctx.
void warn_about_context(const Engine& e);
// --ctx: 0 when not given (the Engine's default for the model); 0 given is an error.
uint64_t context_option(const cxxopts::ParseResult& a);
// --threads, refused above 4 per core (the pool would spend its time waking threads).
unsigned thread_option(const cxxopts::ParseResult& a);
// --kv-type: f16 (the default) or f32.
KvType kv_type(const cxxopts::ParseResult& a);
// --batch, or its default for --device: 64 tokens on the CPU, 512 on a GPU.
uint64_t prefill_batch(const cxxopts::ParseResult& a);
// --cache-budget and its companions (--cache-policy, --cache-format, --lookahead, --no-verify).
// Without --cache-budget there is no cache (the weights are read in place) and a companion is an
// error.
CacheOptions cache_options(const cxxopts::ParseResult& a);
// --device and --vram-limit: empty for the CPU, the CUDA forward pass's factory for cuda (which
// probes the GPU: one clear line when there is none, or when the build has no CUDA backend).
DeviceFactory device_factory(const cxxopts::ParseResult& a, const CacheOptions& c);
// "6G" | "50%" | "all" | "auto", "lru" | "pin", "int4" | "bf16"; throws naming the bad value.
CacheOptions parse_cache_options(const std::string& budget, const std::string& policy,
                                 const std::string& format, uint32_t lookahead);
// --cache-stress: "race", "poison" or both, comma-separated; throws naming the bad mode.
CacheStress parse_cache_stress(const std::string& s);
// --temp, --top-k, --top-p, --min-p, --repeat-penalty, --seed.
void add_sampler_options(cxxopts::Options& o);
// The command line's sampling options over the model's defaults (generation_config.json).
SamplerOptions sampler_options(const cxxopts::ParseResult& a, const GenerationConfig& model);

}  // namespace ferry
