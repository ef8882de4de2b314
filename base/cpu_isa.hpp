// The instruction sets of the CPU kernels (matrix products, attention): chosen at run time, so
// one binary runs on any x86-64, and selectable, so that tests compare the paths. An
// unavailable one falls back to the best available below it.
#pragma once

// The AVX2 paths exist on x86 only; elsewhere (Arm) the portable path is the only one.
#if defined(__x86_64__) || defined(__i386__)
#define FERRY_X86 1
#else
#define FERRY_X86 0
#endif

namespace ferry {

// avx2: AVX2 with FMA and F16C (every x86-64 since 2013 that has AVX2).
// avx512: avx2's set plus AVX-512 F, BW, VL and VNNI (Zen 4, Ice Lake and later): the INT4 x INT8
// products take their 512-bit tile (kernels/matmul_q8_avx512_cpu.cpp); every other kernel runs its
// AVX2 path there.
enum class KernelIsa { portable, avx2, avx512 };
bool kernel_isa_available(KernelIsa isa);
KernelIsa best_kernel_isa();
// isa if the CPU has it, else the best available below it.
KernelIsa usable_isa(KernelIsa isa);
// Whether the kernels run their AVX2 paths for isa: usable_isa(isa) is avx2 or avx512.
bool isa_has_avx2(KernelIsa isa);

}  // namespace ferry
