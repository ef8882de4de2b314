// The INT4 GEMV kernel (kernels/gemv_int4_kernel.cuh) instantiated for activations quantized to
// INT8 per block of 128 (GemvX::q8): a translation unit of its own, so that the build compiles the
// two halves on two cores.
#include "kernels/gemv_int4_kernel.cuh"

namespace ferry::gemv_int4 {

void launch_q8(const GemvLaunch& a, const float* x, uint64_t k, bool paired, cudaStream_t stream) {
  if (paired)
    launch_tokens<true, true>(a, x, k, stream);
  else
    launch_tokens<false, true>(a, x, k, stream);
}

}  // namespace ferry::gemv_int4
