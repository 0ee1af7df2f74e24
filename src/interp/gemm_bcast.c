/*
 * gemm_bcast.c — A · B with B's rows read in place: attention's products in the split form,
 * where one side is a head's width (d = 40 to 160) and the other a block of queries.
 *
 * Through BLAS both operands of such a product are packed before use, and with one dimension
 * this small the packing costs about as much as the multiply-adds (each packed value serves only
 * d of them). Here nothing is packed: B's rows are already contiguous along the output's
 * columns, so the kernel loads a row piece of B as vectors and multiplies it by one value of A
 * per output row, broadcast from A's own row.
 *
 * Each output is one fp32 sum over k in order, fma by fma from zero: the bits of an fmaf loop,
 * whatever the cut of M or N. So a product computed in pieces (the fused attention, a block of
 * queries at a time) gives the bits of the same product computed whole (the unfused einsum).
 */
#include "interp/interp.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#include <math.h>

#include "interp/vmath.h"

enum {
    BC_MR = 6, /* output rows per block: 24 accumulators with BC_NV vectors */
    BC_NV = 4, /* vectors of 16 columns per block */
    BC_NB = 16 * BC_NV,
    BC_KC = 256, /* k per pass: a block of B (256 × 64 floats) is read from cache by every row block */
};

#define BC_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)
#define BC_ACC(r)                                                                                                      \
    __m512 c##r##0 = _mm512_maskz_loadu_ps(go ? m[0] : 0, c[r]), c##r##1 = _mm512_maskz_loadu_ps(go ? m[1] : 0, c[r] + 16), \
           c##r##2 = _mm512_maskz_loadu_ps(go ? m[2] : 0, c[r] + 32), c##r##3 = _mm512_maskz_loadu_ps(go ? m[3] : 0, c[r] + 48);
#define BC_FMA(r)                                                                                                      \
    {                                                                                                                  \
        __m512 av = _mm512_set1_ps(a[r][k]);                                                                           \
        c##r##0 = _mm512_fmadd_ps(av, b0, c##r##0);                                                                    \
        c##r##1 = _mm512_fmadd_ps(av, b1, c##r##1);                                                                    \
        c##r##2 = _mm512_fmadd_ps(av, b2, c##r##2);                                                                    \
        c##r##3 = _mm512_fmadd_ps(av, b3, c##r##3);                                                                    \
    }
#define BC_STORE(r)                                                                                                    \
    _mm512_mask_storeu_ps(c[r], m[0], c##r##0);                                                                        \
    _mm512_mask_storeu_ps(c[r] + 16, m[1], c##r##1);                                                                   \
    _mm512_mask_storeu_ps(c[r] + 32, m[2], c##r##2);                                                                   \
    _mm512_mask_storeu_ps(c[r] + 48, m[3], c##r##3);

/* c[r][0..63] = Σ_k a[r][k] · B[k][0..63] for BC_MR rows, the columns where m is set (the rest
   of each vector is neither read nor written); with `go`, the sums go on from the values in c
   (an fp32 sum stored and loaded back is the same sum: the chain over k is unbroken) */
__attribute__((target("avx512f"))) static void bc_block(int64_t K, const float *const a[BC_MR], const float *B, int64_t ldb,
                                                         float *const c[BC_MR], const __mmask16 m[BC_NV], bool go) {
    BC_ROWS(BC_ACC)
    for (int64_t k = 0; k < K; k++, B += ldb) {
        __m512 b0 = _mm512_maskz_loadu_ps(m[0], B), b1 = _mm512_maskz_loadu_ps(m[1], B + 16);
        __m512 b2 = _mm512_maskz_loadu_ps(m[2], B + 32), b3 = _mm512_maskz_loadu_ps(m[3], B + 48);
        BC_ROWS(BC_FMA)
    }
    BC_ROWS(BC_STORE)
}

bool sdc_igemm_bcast_runs(void) { return sdc_cpu_avx512(); }

bool sdc_igemm_bcast(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb, float *C,
                     int64_t ldc) {
    if (!sdc_igemm_bcast_runs()) return false;
    if (K <= 0) { /* empty sums */
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) C[i * ldc + j] = 0.0f;
        return true;
    }
    float spare[BC_NB]; /* where the rows past M of the last block go */
    for (int64_t j0 = 0; j0 < N; j0 += BC_NB) { /* a column block of B (K × 64) stays in cache across the row blocks */
        __mmask16 m[BC_NV];
        for (int v = 0; v < BC_NV; v++) {
            int64_t left = N - j0 - 16 * v;
            m[v] = left >= 16 ? (__mmask16)0xffff : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
        }
        for (int64_t k0 = 0; k0 < K; k0 += BC_KC) {
            int64_t kc = K - k0 < BC_KC ? K - k0 : BC_KC;
            for (int64_t i0 = 0; i0 < M; i0 += BC_MR) {
                const float *a[BC_MR];
                float *c[BC_MR];
                for (int r = 0; r < BC_MR; r++) {
                    bool in = i0 + r < M;
                    a[r] = A + (in ? i0 + r : M - 1) * lda + k0; /* a row that exists, its sums dropped */
                    c[r] = in ? C + (i0 + r) * ldc + j0 : spare;
                }
                bc_block(kc, a, B + k0 * ldb + j0, ldb, c, m, k0 > 0);
            }
        }
    }
    return true;
}
#else
bool sdc_igemm_bcast_runs(void) { return false; }

bool sdc_igemm_bcast(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb, float *C,
                     int64_t ldc) {
    (void)M, (void)N, (void)K, (void)A, (void)lda, (void)B, (void)ldb, (void)C, (void)ldc;
    return false;
}
#endif
