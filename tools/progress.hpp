// Progress display for long commands: a redrawn bar with GB/s and ETA on a terminal, plain
// lines (every 10% and at each phase end) otherwise, so logs stay readable.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace ferry {

class ProgressBar {
 public:
  explicit ProgressBar(bool quiet = false);  // draws on stderr; a TTY check decides the style
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  void update(std::string_view phase, uint64_t done, uint64_t total);
  void finish();  // ends the current phase's line

 private:
  void start_phase(std::string_view phase);
  void draw_tty(uint64_t done, uint64_t total, double seconds);
  void draw_line(uint64_t done, uint64_t total, double seconds);

  bool quiet_, tty_;
  std::string phase_;
  std::chrono::steady_clock::time_point phase_start_;
  int last_decile_ = -1;
  bool open_line_ = false;
};

}  // namespace ferry
