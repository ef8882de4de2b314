// A persistent pool of worker threads for the CPU kernels (the CPU counterpart of a CUDA stream:
// kernels take it as their execution context). Created once at load, never per call.
//
// Dispatch: the caller publishes the job and bumps an atomic generation; idle workers watch it
// for 50 us (spinning, then yielding their core) before sleeping on it (std::atomic::wait, a
// futex), so back-to-back calls (decode makes 4 per layer per token with the fused products, 5 with
// attention, microseconds apart) wake
// no sleeping thread, while an idle pool costs no CPU. No allocation per call (a caller keeps
// its std::function allocation-free by capturing one pointer). The split is static (thread i
// takes the i-th chunk), so a call gives every thread the same range each time; the kernels do
// not depend on that for their results.
#pragma once
#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace ferry {

class CpuPool {
 public:
  // 0: every core (std::thread::hardware_concurrency). Throws ferry::Error when the system will
  // not start that many threads.
  explicit CpuPool(unsigned threads);
  ~CpuPool();
  CpuPool(const CpuPool&) = delete;
  CpuPool& operator=(const CpuPool&) = delete;
  unsigned size() const { return unsigned(workers_.size()) + 1; }  // threads including the caller
  // Calls fn(begin, end) over disjoint ranges covering [0, n), split into chunks of at least
  // `grain`, on all threads (the caller takes part) and returns when all are done. Exceptions
  // thrown by fn are rethrown on the caller (the first one). A call made while another is running
  // (from inside fn, or from a second thread) runs fn(0, n) on its own caller instead of waiting.
  void parallel_for(uint64_t n, uint64_t grain, const std::function<void(uint64_t, uint64_t)>& fn);

 private:
  void worker(unsigned index);
  void shut_down() noexcept;  // stops and joins the workers
  void run_share(unsigned index) noexcept;

  std::vector<std::thread> workers_;
  std::atomic<uint32_t> generation_ = 0;  // bumped per job and at shutdown; 32 bits: a futex word
  std::atomic<uint32_t> pending_ = 0;     // workers still running the current job
  std::atomic<bool> busy_ = false;        // a parallel_for is in flight
  bool stop_ = false;                     // written before a generation bump, read after
  // The current job, written by the caller before it bumps generation_.
  const std::function<void(uint64_t, uint64_t)>* fn_ = nullptr;
  uint64_t n_ = 0, chunk_ = 0;
  std::mutex error_mu_;  // guards error_ (taken only when fn throws)
  std::exception_ptr error_;
};

}  // namespace ferry
