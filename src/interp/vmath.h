/*
 * vmath.h — the vector exp of vmath.c, eight floats at a time, for kernels that fuse it into
 * their own loops (fuse.c's softmax); sdc_vec_exp (interp.h) is the array form.
 */
#ifndef SDC_INTERP_VMATH_H
#define SDC_INTERP_VMATH_H

#define VEXP_LO -87.33654f  /* expf(VEXP_LO) is about FLT_MIN */
#define VEXP_HI 88.72283f   /* above: +Inf */
#define VEXP_LOG2E 1.44269504089f
#define VEXP_LN2_HI 0.693359375f /* ln 2 in two parts: n·VEXP_LN2_HI is exact for |n| <= 2^9 */
#define VEXP_LN2_LO -2.12194440e-4f

/* exp(r) - 1 - r for |r| <= ln2 / 2, over r²: Cephes' expf coefficients */
#define VEXP_P0 1.9875691500e-4f
#define VEXP_P1 1.3981999507e-3f
#define VEXP_P2 8.3334519073e-3f
#define VEXP_P3 4.1665795894e-2f
#define VEXP_P4 1.6666665459e-1f
#define VEXP_P5 5.0000001201e-1f

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* exp of 8 floats: Cody-Waite reduction, the polynomial by FMA, 2^n as two normal factors. */

__attribute__((target("avx2,fma"))) static inline __m256 sdc_exp8_avx2(__m256 x) {
    const __m256 lo = _mm256_set1_ps(VEXP_LO), hi = _mm256_set1_ps(VEXP_HI);
    __m256 c = _mm256_min_ps(_mm256_max_ps(x, lo), hi); /* NaN becomes lo (maxps returns its second operand) */
    __m256 n = _mm256_round_ps(_mm256_mul_ps(c, _mm256_set1_ps(VEXP_LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(VEXP_LN2_HI), c);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(VEXP_LN2_LO), r);
    __m256 p = _mm256_set1_ps(VEXP_P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(VEXP_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(VEXP_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(VEXP_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(VEXP_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(VEXP_P5));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i ni = _mm256_cvtps_epi32(n), h = _mm256_srai_epi32(ni, 1), bias = _mm256_set1_epi32(127);
    __m256 f1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h, bias), 23));
    __m256 f2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, h), bias), 23));
    __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, f1), f2);
    y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
    y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
    return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}


/* The same arithmetic on 16 floats with AVX-512F: lane for lane the same results. */
__attribute__((target("avx512f"))) static inline __m512 sdc_exp16_avx512(__m512 x) {
    const __m512 lo = _mm512_set1_ps(VEXP_LO), hi = _mm512_set1_ps(VEXP_HI);
    __m512 c = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(c, _mm512_set1_ps(VEXP_LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(VEXP_LN2_HI), c);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(VEXP_LN2_LO), r);
    __m512 p = _mm512_set1_ps(VEXP_P0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(VEXP_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(VEXP_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(VEXP_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(VEXP_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(VEXP_P5));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    __m512i ni = _mm512_cvtps_epi32(n), h = _mm512_srai_epi32(ni, 1), bias = _mm512_set1_epi32(127);
    __m512 f1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(h, bias), 23));
    __m512 f2 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_sub_epi32(ni, h), bias), 23));
    __m512 y = _mm512_mul_ps(_mm512_mul_ps(p, f1), f2);
    y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ), y, _mm512_setzero_ps());
    y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, hi, _CMP_GT_OQ), y, _mm512_set1_ps(INFINITY));
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), y, x);
}

bool sdc_cpu_avx512(void); /* AVX-512F on this processor, asked once (vmath.c) */
#endif

#endif
