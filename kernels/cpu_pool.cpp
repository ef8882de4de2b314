#include "kernels/cpu_pool.hpp"

#include <algorithm>
#include <chrono>
#include <system_error>
#include <utility>

#include <fmt/format.h>

#include "base/error.hpp"

namespace ferry {
namespace {

// How long an idle thread waits awake before it sleeps. Waking a sleeping thread costs ~5-20 us
// (a futex wake plus the scheduler); the gaps between the matmuls of one decode step (norm, rope,
// attention) are a few us, so 50 us keeps the workers awake through a token and lets them sleep
// between tokens of an idle or interactive session. The first 5 us spin on `pause`; after that
// the thread yields its core on each check, so that when the cores are oversubscribed (other
// processes, or more threads than cores) the thread being waited for gets to run: pure spinning
// for 50 us made 3,000 calls on 4 threads over 2 busy cores take 19 s instead of under 1 s.
constexpr std::chrono::microseconds kSpin{5}, kAwake{50};

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Waits until `a` differs from `old` and returns its new value: spins, yields, then sleeps.
uint32_t await_change(const std::atomic<uint32_t>& a, uint32_t old) {
  const auto t0 = std::chrono::steady_clock::now();
  auto waited = std::chrono::steady_clock::duration::zero();
  for (unsigned i = 1; waited < kAwake; ++i) {
    if (const uint32_t v = a.load(std::memory_order_acquire); v != old) return v;
    if (waited < kSpin) {
      cpu_relax();
    } else {
      std::this_thread::yield();
    }
    // Reading the clock costs ~20 ns; once per 16 checks keeps it out of the wake-up latency.
    if (i % 16 == 0) waited = std::chrono::steady_clock::now() - t0;
  }
  for (;;) {
    a.wait(old, std::memory_order_acquire);
    if (const uint32_t v = a.load(std::memory_order_acquire); v != old) return v;
  }
}

}  // namespace

CpuPool::CpuPool(unsigned threads) {
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  if (threads == 0) threads = cores;
  try {
    workers_.reserve(threads - 1);
    for (unsigned i = 1; i < threads; ++i) workers_.emplace_back([this, i] { worker(i); });
  } catch (const std::system_error& e) {  // the system's thread limit: the started ones stop
    shut_down();
    throw Error(Setting::threads,
                fmt::format("cannot start {} threads ({}); use fewer (this machine has {} cores)",
                            threads, e.what(), cores));
  }
}

CpuPool::~CpuPool() {
  shut_down();
}

void CpuPool::shut_down() noexcept {
  stop_ = true;
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();
  for (std::thread& t : workers_) t.join();
}

// Thread `index` takes the index-th chunk.
void CpuPool::run_share(unsigned index) noexcept {
  const uint64_t begin = std::min(n_, uint64_t(index) * chunk_);
  const uint64_t end = std::min(n_, begin + chunk_);
  if (begin >= end) return;
  try {
    (*fn_)(begin, end);
  } catch (...) {
    std::lock_guard lock(error_mu_);
    if (!error_) error_ = std::current_exception();
  }
}

void CpuPool::worker(unsigned index) {
  uint32_t seen = 0;
  for (;;) {
    seen = await_change(generation_, seen);
    if (stop_) return;
    run_share(index);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) pending_.notify_one();
  }
}

void CpuPool::parallel_for(uint64_t n, uint64_t grain,
                           const std::function<void(uint64_t, uint64_t)>& fn) {
  if (n == 0) return;
  const uint64_t threads = size();
  const uint64_t chunk =
      std::max<uint64_t>(std::max<uint64_t>(grain, 1), (n + threads - 1) / threads);
  if (workers_.empty() || chunk >= n) return fn(0, n);
  bool idle = false;
  if (!busy_.compare_exchange_strong(idle, true, std::memory_order_acquire)) return fn(0, n);
  fn_ = &fn;
  n_ = n;
  chunk_ = chunk;
  pending_.store(uint32_t(workers_.size()), std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);  // publishes the job above
  generation_.notify_all();  // a no-op unless a worker sleeps (libstdc++ counts waiters)
  run_share(0);
  for (uint32_t p = pending_.load(std::memory_order_acquire); p != 0;)
    p = await_change(pending_, p);
  std::exception_ptr error = std::exchange(error_, nullptr);
  busy_.store(false, std::memory_order_release);
  if (error) std::rethrow_exception(error);
}

}  // namespace ferry
