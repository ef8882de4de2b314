// FERRY_CLONES_AVX2: an AVX2 clone and a baseline one of a hot loop, picked once at load through
// an ifunc. The ifunc's resolver runs while the dynamic loader relocates the program, before
// ThreadSanitizer's runtime starts; instrumented, it crashes there (SIGSEGV in __tsan_func_entry
// before main). ThreadSanitizer builds (scripts/test.sh) therefore compile the baseline only.
#pragma once

// FERRY_HOST_DEVICE: a function the CPU twins and the CUDA kernels share (layout arithmetic,
// chunk counts), compiled for both sides by nvcc and for the host by the C++ compiler.
#ifdef __CUDACC__
#define FERRY_HOST_DEVICE __host__ __device__
#else
#define FERRY_HOST_DEVICE
#endif

#if defined(__SANITIZE_THREAD__)
#define FERRY_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FERRY_TSAN 1
#endif
#endif

#ifdef FERRY_TSAN
#define FERRY_CLONES_AVX2
#else
#define FERRY_CLONES_AVX2 __attribute__((target_clones("avx2", "default")))
#endif
