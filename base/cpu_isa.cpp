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

}  // namespace

bool kernel_isa_available(KernelIsa isa) {
  // Probed once: CPUID traps to the hypervisor in a VM (about a microsecond), and the kernels
  // ask on every call, 7 times per layer and token.
  static const bool avx2 = probe_avx2_fma_f16c();
  return isa == KernelIsa::portable || avx2;
}

KernelIsa best_kernel_isa() {
  return kernel_isa_available(KernelIsa::avx2) ? KernelIsa::avx2 : KernelIsa::portable;
}

KernelIsa usable_isa(KernelIsa isa) {
  return kernel_isa_available(isa) ? isa : KernelIsa::portable;
}

}  // namespace ferry
