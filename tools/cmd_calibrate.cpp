// ferry calibrate MODEL.ferry -f TEXT -o STATS: runs the bf16 model on the CPU over a calibration
// text and writes the per-channel statistics of every linear input (runtime/calibration.hpp) that
// `ferry quantize --calib STATS` uses. The text must not be the one the result is evaluated on.
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "base/atomic_file.hpp"
#include "base/error.hpp"
#include "runtime/calibration.hpp"
#include "tools/commands.hpp"

namespace ferry {
namespace {

std::string read_calibration_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("-f: cannot read '{}': give a UTF-8 text file", path));
  std::ostringstream s;
  s << in.rdbuf();
  if (s.str().empty()) throw Error(fmt::format("-f: '{}' is empty: give a calibration text", path));
  return s.str();
}

}  // namespace

int cmd_calibrate(int argc, char** argv) {
  cxxopts::Options o("ferry calibrate",
                     "Run a bf16 .ferry model (`ferry quantize --scheme bf16`) over a text and "
                     "write per-channel statistics of every linear input, for `ferry quantize "
                     "--calib`.");
  o.positional_help("MODEL.ferry -f TEXT -o STATS");
  o.add_options()("model", "the bf16 .ferry file", cxxopts::value<std::string>())(
      "f,file", "the calibration text (UTF-8; not the text you evaluate on)",
      cxxopts::value<std::string>())("o,output", "the statistics file (safetensors)",
                                     cxxopts::value<std::string>())(
      "ctx", "tokens a chunk", cxxopts::value<uint64_t>()->default_value("512"))(
      "chunks", "run at most this many chunks (0: every whole chunk of the text)",
      cxxopts::value<uint64_t>()->default_value("0"))(
      "t,threads", "CPU threads (0: every core)", cxxopts::value<unsigned>()->default_value("0"))(
      "h,help", "this help");
  o.parse_positional({"model"});
  const auto a = parse_command(o, argc, argv);
  if (a.count("help")) return std::puts(o.help().c_str()), 0;
  if (!a.count("model") || !a.count("file") || !a.count("output"))
    throw Error("usage: ferry calibrate MODEL.ferry -f TEXT -o STATS [--ctx 512] [--chunks N]");
  const std::string out = a["output"].as<std::string>();
  check_output_path(out);
  const std::string text = read_calibration_text(a["file"].as<std::string>());
  CalibrationOptions co;
  co.ctx = a["ctx"].as<uint64_t>();
  co.chunks = a["chunks"].as<uint64_t>();
  EngineOptions eo;
  eo.model = a["model"].as<std::string>();
  eo.ctx = std::max<uint64_t>(co.ctx, 8);
  eo.batch = 8;  // the engine's own pass is unused: calibration runs its own, observed one
  eo.threads = a["threads"].as<unsigned>();
  Engine e(eo);
  const bool tty = isatty(STDERR_FILENO) != 0;
  co.progress = [tty](uint64_t done, uint64_t chunks) {
    std::fprintf(stderr, "%scalibrate: chunk %llu/%llu%s", tty ? "\r" : "",
                 (unsigned long long)done, (unsigned long long)chunks,
                 tty && done < chunks ? "" : "\n");
    std::fflush(stderr);
  };
  const CalibStats s = run_calibration(e, text, co);
  write_calib_stats(out, s);
  std::printf("%s: statistics of %zu linear inputs over %llu tokens (%llu-token chunks)\n",
              out.c_str(), s.inputs.size(), (unsigned long long)s.id.tokens,
              (unsigned long long)s.id.ctx);
  finish_stdout();
  return 0;
}

}  // namespace ferry
