#include "kernels/cpu_pool.hpp"

#include <algorithm>
#include <utility>

namespace ferry {

CpuPool::CpuPool(unsigned threads) {
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  for (unsigned i = 1; i < threads; ++i) workers_.emplace_back([this, i] { worker(i); });
}

CpuPool::~CpuPool() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  start_.notify_all();
  for (std::thread& t : workers_) t.join();
}

// Thread `index` takes the index-th chunk: a static split, so the same call gives every thread
// the same rows each time.
void CpuPool::run_share(unsigned index) {
  const uint64_t begin = std::min(n_, uint64_t(index) * chunk_);
  const uint64_t end = std::min(n_, begin + chunk_);
  if (begin >= end) return;
  try {
    (*fn_)(begin, end);
  } catch (...) {
    std::lock_guard lock(mu_);
    if (!error_) error_ = std::current_exception();
  }
}

void CpuPool::worker(unsigned index) {
  uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock lock(mu_);
      start_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
    }
    run_share(index);
    std::lock_guard lock(mu_);
    if (--pending_ == 0) done_.notify_one();
  }
}

void CpuPool::parallel_for(uint64_t n, uint64_t grain,
                           const std::function<void(uint64_t, uint64_t)>& fn) {
  if (n == 0) return;
  const uint64_t threads = size();
  const uint64_t chunk =
      std::max<uint64_t>(std::max<uint64_t>(grain, 1), (n + threads - 1) / threads);
  if (workers_.empty() || chunk >= n) return fn(0, n);
  {
    std::lock_guard lock(mu_);
    fn_ = &fn;
    n_ = n;
    chunk_ = chunk;
    error_ = nullptr;
    pending_ = unsigned(workers_.size());
    ++generation_;
  }
  start_.notify_all();
  run_share(0);
  std::unique_lock lock(mu_);
  done_.wait(lock, [&] { return pending_ == 0; });
  if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
}

}  // namespace ferry
