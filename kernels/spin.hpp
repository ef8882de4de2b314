// A delay of `us` microseconds on the stream it is enqueued on: the paging cache's race stress
// mode (cache/backend.hpp, CacheStress) puts one before every fill and every last-use signal, so
// an ordering the cache forgot has a window wide enough to show. The CPU twin sleeps on the
// calling thread (the CPU backend fills and signals on the calling thread).
#pragma once
#include <cstdint>

struct CUstream_st;

namespace ferry {

void spin_cpu(uint32_t us);
void spin_cuda(uint32_t us, CUstream_st* stream);  // one thread, __nanosleep until `us` passed

}  // namespace ferry
