// The one SIMD dispatch scheme of ferry's CPU code: the instruction set is probed once
// (base/cpu_isa.hpp: KernelIsa), and a hot loop is written once, as an always-inline body, then
// compiled twice by two thin wrappers, one baseline and one under FERRY_TARGET_AVX2; the caller
// picks the wrapper with a KernelIsa (usually best_kernel_isa(), a test may force portable).
// No ifunc: an ifunc resolver runs while the dynamic loader relocates the program, before
// ThreadSanitizer's runtime starts, and crashed there when instrumented.
//
// FERRY_TARGET_AVX2 enables AVX2 only, not FMA: the loops compiled under it keep the baseline's
// rounding (no contracted multiply-adds), so the quantizer picks the same scales and the
// dequantization stays bit-identical to its CUDA twin whichever path a machine takes. The matrix
// products (kernels/matmul_cpu.cpp) and attention's F16C path use AVX2 with FMA through
// intrinsics, under the same KernelIsa.
#pragma once

#include "base/cpu_isa.hpp"

#if FERRY_X86
#define FERRY_TARGET_AVX2 __attribute__((target("avx2")))
#else
#define FERRY_TARGET_AVX2
#endif
#define FERRY_ALWAYS_INLINE inline __attribute__((always_inline))

// FERRY_HOST_DEVICE: a function the CPU twins and the CUDA kernels share (layout arithmetic,
// chunk counts), compiled for both sides by nvcc and for the host by the C++ compiler.
#ifdef __CUDACC__
#define FERRY_HOST_DEVICE __host__ __device__
#else
#define FERRY_HOST_DEVICE
#endif
