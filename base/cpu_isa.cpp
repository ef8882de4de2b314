#include "base/cpu_isa.hpp"

#if FERRY_X86
#include <cpuid.h>
#endif

namespace ferry {
namespace {

bool probe_avx2_fma_f16c() {
#if FERRY_X86
  // Clang 14 has no "f16c" for __builtin_cpu_supports: read CPUID leaf 1 (ECX bit 29) instead.
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
#else
  return false;
#endif
}

// __builtin_cpu_supports reports an AVX-512 feature only where the OS saves the zmm state too
// (libgcc and compiler-rt check XCR0).
bool probe_avx512_vnni() {
#if FERRY_X86
  return probe_avx2_fma_f16c() && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}

}  // namespace

bool kernel_isa_available(KernelIsa isa) {
  // Probed once: CPUID traps to the hypervisor in a VM (about a microsecond), and the kernels
  // ask on every call, 7 times per layer and token.
  static const bool avx2 = probe_avx2_fma_f16c();
  static const bool avx512 = probe_avx512_vnni();
  switch (isa) {
    case KernelIsa::portable:
      return true;
    case KernelIsa::avx2:
      return avx2;
    case KernelIsa::avx512:
      return avx512;
  }
  return false;
}

KernelIsa best_kernel_isa() {
  return usable_isa(KernelIsa::avx512);
}

KernelIsa usable_isa(KernelIsa isa) {
  if (isa == KernelIsa::avx512 && !kernel_isa_available(isa)) isa = KernelIsa::avx2;
  return kernel_isa_available(isa) ? isa : KernelIsa::portable;
}

bool isa_has_avx2(KernelIsa isa) {
  return usable_isa(isa) != KernelIsa::portable;
}

}  // namespace ferry
