#include "tools/progress.hpp"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include <fmt/format.h>

namespace ferry {
namespace {

int terminal_width() {
  winsize w{};
  return ioctl(STDERR_FILENO, TIOCGWINSZ, &w) == 0 && w.ws_col > 0 ? w.ws_col : 80;
}

std::string rate_text(uint64_t done, double seconds) {
  return seconds > 0.05 ? fmt::format("{:.2f} GB/s", double(done) / seconds / 1e9)
                        : std::string("-");
}

}  // namespace

ProgressBar::ProgressBar(bool quiet) : quiet_(quiet), tty_(isatty(STDERR_FILENO) != 0) {}

ProgressBar::~ProgressBar() {
  finish();
}

void ProgressBar::start_phase(std::string_view phase) {
  finish();
  phase_ = phase;
  phase_start_ = std::chrono::steady_clock::now();
  last_decile_ = -1;
}

void ProgressBar::update(std::string_view phase, uint64_t done, uint64_t total) {
  if (quiet_) return;
  if (phase != phase_) start_phase(phase);
  const double s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - phase_start_).count();
  tty_ ? draw_tty(done, total, s) : draw_line(done, total, s);
}

void ProgressBar::draw_tty(uint64_t done, uint64_t total, double seconds) {
  const double frac = total ? std::min(1.0, double(done) / double(total)) : 1.0;
  const double eta = frac > 0 && frac < 1 ? seconds * (1 - frac) / frac : 0;
  const std::string tail =
      fmt::format(" {:5.1f}% {:.2f}/{:.2f} GB {} ETA {:.0f}s", 100 * frac, double(done) / 1e9,
                  double(total) / 1e9, rate_text(done, seconds), eta);
  // A fixed budget for the tail (~48 columns) keeps the bar from changing width as rates appear.
  const int width = std::clamp(terminal_width() - int(phase_.size()) - 52, 10, 50);
  const int fill = int(frac * width);
  std::fprintf(stderr, "\r%s [%s%s]%s\033[K", phase_.c_str(),
               std::string(size_t(fill), '#').c_str(),
               std::string(size_t(width - fill), '.').c_str(), tail.c_str());
  std::fflush(stderr);
  open_line_ = true;
}

void ProgressBar::draw_line(uint64_t done, uint64_t total, double seconds) {
  const int decile = total ? int(10 * std::min<uint64_t>(done, total) / total) : 10;
  if (decile == last_decile_) return;
  last_decile_ = decile;
  std::fprintf(stderr, "%s: %d%% (%.2f/%.2f GB, %s)\n", phase_.c_str(), decile * 10,
               double(done) / 1e9, double(total) / 1e9, rate_text(done, seconds).c_str());
}

void ProgressBar::finish() {
  if (open_line_) std::fputc('\n', stderr);
  open_line_ = false;
}

}  // namespace ferry
