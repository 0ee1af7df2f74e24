/*
 * vmath.c — vector exp for softmax (ops_nn.c, fuse.c) and the elementwise exp.
 *
 * expf by Cody-Waite reduction and Cephes' degree-6 polynomial: within 2 ulp (relative error
 * below 2.5e-7) of expf for every float x >= -87.33654 (the smallest normal result); below
 * that 0 (expf's subnormal results, all < FLT_MIN, are flushed: a multiplication that makes
 * subnormals costs a microcode assist per element on x86), above 88.72283 +Inf, NaN stays NaN.
 * On x86-64 with AVX2 and FMA, eight values per step with intrinsics; elsewhere the same
 * arithmetic one value at a time in portable C (no fused multiply-add there, so the last bit
 * can differ between the two: both are within the bound above).
 */
#include <math.h>

#include "interp/interp.h"
#include "interp/vmath.h"

/* 2^n for n in [-127, 128] as two normal factors 2^h·2^(n-h), so neither over- nor underflows. */
static float exp_scalar(float x) {
    if (x != x) return x;
    if (x < VEXP_LO) return 0.0f;
    if (x > VEXP_HI) return INFINITY;
    float n = nearbyintf(x * VEXP_LOG2E);
    float r = x - n * VEXP_LN2_HI;
    r = r - n * VEXP_LN2_LO;
    float p = VEXP_P0;
    p = p * r + VEXP_P1;
    p = p * r + VEXP_P2;
    p = p * r + VEXP_P3;
    p = p * r + VEXP_P4;
    p = p * r + VEXP_P5;
    p = p * r * r + r + 1.0f;
    int ni = (int)n, h = ni >> 1;
    return p * ldexpf(1.0f, h) * ldexpf(1.0f, ni - h);
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2,fma"))) static void exp_avx2(const float *x, float *y, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, sdc_exp8_avx2(_mm256_loadu_ps(x + i)));
    if (i < n) { /* the tail through a local block: no read or write past the arrays */
        float t[8] = {0};
        memcpy(t, x + i, (n - i) * sizeof(float));
        _mm256_storeu_ps(t, sdc_exp8_avx2(_mm256_loadu_ps(t)));
        memcpy(y + i, t, (n - i) * sizeof(float));
    }
}
#endif

#if defined(__x86_64__) && defined(__GNUC__)
bool sdc_cpu_avx512(void) {
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx512f") && sdc_cpu_avx2();
    }
    return cached;
}
#endif

void sdc_vec_exp(const float *x, float *y, size_t n) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (sdc_cpu_avx2()) {
        exp_avx2(x, y, n);
        return;
    }
#endif
    for (size_t i = 0; i < n; i++) y[i] = exp_scalar(x[i]);
}

/* The largest of n floats, NaNs skipped (-Inf when there is none), as the loop
   m = x[i] > m ? x[i] : m gives it; vectorised, since that loop's compare chain is not (the max
   of non-NaN values is exact in any order; of +0 and -0 it may pick either, which no softmax
   can tell apart: x - (+0) and x - (-0) are equal but for x = -0, whose exp is 1 either way). */
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2"))) static float max_avx2(const float *x, size_t n) {
    __m256 m = _mm256_set1_ps(-INFINITY);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) m = _mm256_max_ps(_mm256_loadu_ps(x + i), m); /* a NaN in x yields m */
    float lanes[8], best = -INFINITY;
    _mm256_storeu_ps(lanes, m);
    for (int k = 0; k < 8; k++) best = lanes[k] > best ? lanes[k] : best;
    for (; i < n; i++) best = x[i] > best ? x[i] : best;
    return best;
}
#endif

float sdc_vec_max(const float *x, size_t n) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (sdc_cpu_avx2()) return max_avx2(x, n);
#endif
    float best = -INFINITY;
    for (size_t i = 0; i < n; i++) best = x[i] > best ? x[i] : best;
    return best;
}
