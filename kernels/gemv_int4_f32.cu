// The INT4 GEMV kernel (kernels/gemv_int4_kernel.cuh) instantiated for fp32 activations
// (GemvX::f32): a translation unit of its own, so that the build compiles the two halves on two
// cores.
#include "kernels/gemv_int4_kernel.cuh"

namespace ferry::gemv_int4 {

void launch_f32(const GemvLaunch& a, const float* x, uint64_t k, bool paired, cudaStream_t stream) {
  if (paired)
    launch_tokens<true, false>(a, x, k, stream);
  else
    launch_tokens<false, false>(a, x, k, stream);
}

}  // namespace ferry::gemv_int4
