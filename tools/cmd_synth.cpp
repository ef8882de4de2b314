// ferry synth --preset NAME -o DIR
#include <cxxopts.hpp>

#include <cstdio>

#include "base/bytes.hpp"
#include "base/error.hpp"
#include "quantizer/synth.hpp"
#include "tools/commands.hpp"
#include "tools/progress.hpp"

namespace ferry {

int cmd_synth(int argc, char** argv) {
  cxxopts::Options o(
      "ferry synth",
      "Write a random Hugging Face checkpoint (config.json, bf16 safetensors shards, byte-level "
      "tokenizer.json) of a named shape, for tests and benchmarks.\nDIR must be new, empty, or "
      "hold only an earlier synth's output, which is replaced whole (no stale shard or index "
      "stays); anything else there is refused. The checkpoint is built in a hidden sibling "
      "directory and renamed into place at the end: a failed run leaves DIR as it was.");
  o.add_options()("p,preset", "shape preset (--list shows them)", cxxopts::value<std::string>())(
      "o,output", "output directory (new, empty, or an earlier synth's)",
      cxxopts::value<std::string>())("layers", "override the number of layers (to size a model)",
                                     cxxopts::value<uint64_t>())(
      "shard-size", "start a new shard past this size",
      cxxopts::value<std::string>()->default_value("2G"))(
      "seed", "random seed", cxxopts::value<uint64_t>()->default_value("1"))(
      "t,threads", "worker threads (0: every core)",
      cxxopts::value<unsigned>()->default_value("0"))("list", "list the presets")(
      "q,quiet", "no progress")("h,help", "this help");
  const auto a = parse_command(o, argc, argv);
  if (a.count("help")) return std::puts(o.help().c_str()), 0;
  if (a.count("list")) {
    for (const SynthPresetInfo& p : synth_presets())
      std::printf("%-12s %s\n", std::string(p.name).c_str(), std::string(p.description).c_str());
    return 0;
  }
  if (!a.count("preset") || !a.count("output"))
    throw Error("usage: ferry synth --preset NAME -o DIR (--list for presets)");
  SynthOptions opt;
  opt.preset = a["preset"].as<std::string>();
  if (a.count("layers")) opt.layers = a["layers"].as<uint64_t>();
  opt.shard_bytes = parse_size(a["shard-size"].as<std::string>(), "--shard-size");
  opt.seed = a["seed"].as<uint64_t>();
  opt.threads = a["threads"].as<unsigned>();
  ProgressBar bar(a.count("quiet") > 0);
  const std::filesystem::path dir = a["output"].as<std::string>();
  const SynthReport r = synth_checkpoint(
      dir, opt, [&](std::string_view p, uint64_t d, uint64_t t) { bar.update(p, d, t); });
  bar.finish();
  std::printf("%s: preset %s, %s of bf16 weights in %d shard(s), %.1f s\n", dir.string().c_str(),
              opt.preset.c_str(), human_bytes(double(r.bytes)).c_str(), r.shards, r.seconds);
  return 0;
}

}  // namespace ferry
