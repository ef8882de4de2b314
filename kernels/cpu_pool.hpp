// A persistent pool of worker threads for the CPU kernels (the CPU counterpart of a CUDA stream:
// kernels take it as their execution context). Created once at load, never per call.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace ferry {

class CpuPool {
 public:
  explicit CpuPool(unsigned threads);  // 0: every core (std::thread::hardware_concurrency)
  ~CpuPool();
  CpuPool(const CpuPool&) = delete;
  CpuPool& operator=(const CpuPool&) = delete;
  unsigned size() const { return unsigned(workers_.size()) + 1; }  // threads including the caller
  // Calls fn(begin, end) over disjoint ranges covering [0, n), split into chunks of at least
  // `grain`, on all threads (the caller takes part) and returns when all are done. Exceptions
  // thrown by fn are rethrown on the caller (the first one).
  void parallel_for(uint64_t n, uint64_t grain, const std::function<void(uint64_t, uint64_t)>& fn);

 private:
  void worker(unsigned index);
  void run_share(unsigned index);

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable start_, done_;
  uint64_t generation_ = 0;  // bumped per parallel_for; workers wait for a new one
  unsigned pending_ = 0;     // workers still running the current job
  bool stop_ = false;
  // The current job, valid while pending_ > 0.
  const std::function<void(uint64_t, uint64_t)>* fn_ = nullptr;
  uint64_t n_ = 0, chunk_ = 0;
  std::exception_ptr error_;
};

}  // namespace ferry
