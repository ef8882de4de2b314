// The instruction sets of the CPU kernels (matrix products, attention): chosen at run time, so
// one binary runs on any x86-64, and selectable, so that tests compare the paths. An
// unavailable one falls back to portable.
#pragma once

// The AVX2 paths exist on x86 only; elsewhere (Arm) the portable path is the only one.
#if defined(__x86_64__) || defined(__i386__)
#define FERRY_X86 1
#else
#define FERRY_X86 0
#endif

namespace ferry {

// avx2: AVX2 with FMA and F16C (every x86-64 since 2013 that has AVX2).
enum class KernelIsa { portable, avx2 };
bool kernel_isa_available(KernelIsa isa);
KernelIsa best_kernel_isa();
// isa if the CPU has it, portable otherwise.
KernelIsa usable_isa(KernelIsa isa);

}  // namespace ferry
