#include "tests/test_util.hpp"

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <fstream>
#include <random>
#include <span>
#include <stdexcept>

#include "runtime/engine.hpp"

namespace ferry::test {

std::filesystem::path shared_model(const std::string& name) {
  const std::filesystem::path p = std::filesystem::path(FERRY_SHARED_DIR) / "models" / name;
  return std::filesystem::exists(p) ? p : std::filesystem::path();
}

ScratchDir::ScratchDir() {
  std::random_device rd;
  path = std::filesystem::temp_directory_path() /
         ("ferry-test-" + std::to_string(rd()) + std::to_string(getpid()));
  std::filesystem::create_directories(path);
}

ScratchDir::~ScratchDir() {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
}

RunResult run_ferry(const std::vector<std::string>& args) {
  int fds[2];
  if (pipe(fds) != 0) throw std::runtime_error("pipe failed");
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], 1);
    dup2(fds[1], 2);
    close(fds[0]);
    close(fds[1]);
    std::vector<char*> argv;
    std::string bin = FERRY_BINARY;
    argv.push_back(bin.data());
    std::vector<std::string> copy = args;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(bin.c_str(), argv.data());
    _exit(127);
  }
  close(fds[1]);
  RunResult r;
  std::array<char, 4096> buf;
  ssize_t n;
  while ((n = read(fds[0], buf.data(), buf.size())) > 0) r.output.append(buf.data(), size_t(n));
  close(fds[0]);
  int status = 0;
  struct rusage ru {};
  wait4(pid, &status, 0, &ru);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.max_rss_kb = ru.ru_maxrss;
  return r;
}

std::vector<uint8_t> read_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

std::vector<std::string> entries(const std::filesystem::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

void write_file(const std::filesystem::path& p, const std::vector<uint8_t>& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

std::vector<int32_t> spread_prompt(size_t n, int32_t below) {
  std::vector<int32_t> ids(n);
  for (size_t i = 0; i < n; ++i) ids[i] = int32_t((i * 7919 + 13) % size_t(below));
  return ids;
}

std::vector<std::vector<float>> logits_after_prompt(Engine& e, const std::vector<int32_t>& prompt,
                                                    int steps) {
  e.eval(prompt, 0);
  std::vector<std::vector<float>> out = {{e.logits().begin(), e.logits().end()}};
  for (int step = 0; step < steps; ++step) {
    const int32_t t = 42 + step;
    e.eval(std::span(&t, 1), prompt.size() + uint64_t(step));
    out.emplace_back(e.logits().begin(), e.logits().end());
  }
  return out;
}

std::vector<float> activations(uint64_t n, uint64_t cols) {
  std::mt19937 rng(uint32_t(n * 7 + cols));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(n * cols);
  for (float& v : x) v = nd(rng);
  return x;
}

}  // namespace ferry::test
