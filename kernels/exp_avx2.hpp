// e^x for 8 floats with AVX2 and FMA, internal to the CPU kernels (attention's softmax, SiLU):
// std::exp is a libm call per element, which took as long as the products around it (attention
// prefill: the scores of a 64-wide head cost ~8 FMAs a key, the exp ~20 ns). Cephes' expf: x
// clamped to [-87.3, 88] (e^x stays a normal float: below e^-87.3 it gives 2^-126 where libm
// gives a denormal or 0, above 88 it gives e^88 = 1.65e38 where libm gives up to inf), x = n ln2 +
// r with |r| <= ln2 / 2 (ln2 split in two so that n ln2 is exact), e^r by a degree-7 polynomial,
// 2^n put into the exponent bits. Relative error below 2^-22 (2 ulp) against std::exp over the
// range (tests/test_attention.cpp checks it); the callers' results are fixed functions of their
// inputs, so determinism holds.
#pragma once

#include "base/cpu_isa.hpp"

#if FERRY_X86
#include <immintrin.h>

namespace ferry {

__attribute__((target("avx2,fma"), always_inline)) inline __m256 exp8_avx2(__m256 x) {
  // max_ps and min_ps return their second operand when one is NaN: x second keeps a NaN a NaN.
  x = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(_mm256_set1_ps(-87.3365448f), x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

}  // namespace ferry
#endif
