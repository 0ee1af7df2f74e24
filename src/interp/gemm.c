/*
 * gemm.c — single-precision matrix product for conv, matmul, linear and einsum.
 *
 * With a CBLAS (SDC_HAVE_OPENBLAS or SDC_HAVE_ACCELERATE, chosen by CMake's SDCOREML_BLAS)
 * sdc_igemm calls cblas_sgemm. Otherwise, and always for sdc_igemm_fallback, a cache-blocked kernel: C is cut into
 * tiles handed to the pool's threads; each tile walks K in blocks, packs its A rows and B
 * columns into contiguous panels and runs a 6×16 register-blocked micro-kernel (portable C,
 * and AVX2+FMA intrinsics picked at run time on x86-64).
 */
#include "interp/interp.h"

#include <limits.h>

#if defined(SDC_HAVE_OPENBLAS)
#include <cblas.h>
#define SDC_HAVE_CBLAS 1
#elif defined(SDC_HAVE_ACCELERATE)
#if __has_include(<Accelerate/Accelerate.h>)
#include <Accelerate/Accelerate.h>
#else
/* The CBLAS interface Accelerate exports, for compiling without Apple's SDK (the macOS build
   check on Linux has no framework headers). The values are the CBLAS standard's. */
enum CBLAS_ORDER { CblasRowMajor = 101, CblasColMajor = 102 };
enum CBLAS_TRANSPOSE { CblasNoTrans = 111, CblasTrans = 112, CblasConjTrans = 113 };
void cblas_sgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha,
                 const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);
#endif
#define SDC_HAVE_CBLAS 1
#endif

enum { MR = 6, NR = 16, KC = 256, MT = 72, NT = 256 }; /* MT a multiple of MR, NT of NR */

typedef struct gemm_args {
    bool ta, tb;
    int64_t M, N, K;
    const float *A, *B;
    int64_t lda, ldb, ldc;
    float beta;
    float *C;
    int64_t tiles_n; /* tiles along N */
} gemm_args;

static inline float get_a(const gemm_args *g, int64_t i, int64_t k) {
    return g->ta ? g->A[k * g->lda + i] : g->A[i * g->lda + k];
}
static inline float get_b(const gemm_args *g, int64_t k, int64_t j) {
    return g->tb ? g->B[j * g->ldb + k] : g->B[k * g->ldb + j];
}

/* Rows [i0, i0+mi) × K range [k0, k0+kk) into MR-row panels, k-major, zero-padded. */
static void pack_a(const gemm_args *g, float *dst, int64_t i0, int64_t mi, int64_t k0, int64_t kk) {
    for (int64_t p = 0; p < mi; p += MR) {
        for (int64_t k = 0; k < kk; k++) {
            for (int r = 0; r < MR; r++) *dst++ = p + r < mi ? get_a(g, i0 + p + r, k0 + k) : 0.0f;
        }
    }
}

/* Columns [j0, j0+nj) into NR-column panels, k-major, zero-padded. */
static void pack_b(const gemm_args *g, float *dst, int64_t j0, int64_t nj, int64_t k0, int64_t kk) {
    for (int64_t p = 0; p < nj; p += NR) {
        int64_t w = nj - p < NR ? nj - p : NR;
        for (int64_t k = 0; k < kk; k++) {
            if (!g->tb && w == NR) {
                memcpy(dst, g->B + (k0 + k) * g->ldb + j0 + p, NR * sizeof(float));
                dst += NR;
            } else {
                for (int c = 0; c < NR; c++) *dst++ = c < w ? get_b(g, k0 + k, j0 + p + c) : 0.0f;
            }
        }
    }
}

static void micro_generic(int64_t kk, const float *restrict a, const float *restrict b, float *restrict c, int64_t ldc,
                          int mr, int nr) {
    float acc[MR][NR];
    memset(acc, 0, sizeof acc);
    for (int64_t k = 0; k < kk; k++) {
        const float *bk = b + k * NR;
        for (int r = 0; r < MR; r++) {
            float ar = a[k * MR + r];
            for (int j = 0; j < NR; j++) acc[r][j] += ar * bk[j];
        }
    }
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < nr; j++) c[r * ldc + j] += acc[r][j];
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* 6 rows × 16 columns in 12 ymm accumulators; per k: two B loads, six broadcasts, 12 FMAs. */
__attribute__((target("avx2,fma"))) static void micro_avx2(int64_t kk, const float *restrict a, const float *restrict b,
                                                          float *restrict c, int64_t ldc, int mr, int nr) {
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    for (int64_t k = 0; k < kk; k++) {
        __m256 b0 = _mm256_loadu_ps(b + k * NR), b1 = _mm256_loadu_ps(b + k * NR + 8);
        const float *ak = a + k * MR;
        __m256 x = _mm256_broadcast_ss(ak + 0);
        c00 = _mm256_fmadd_ps(x, b0, c00), c01 = _mm256_fmadd_ps(x, b1, c01);
        x = _mm256_broadcast_ss(ak + 1);
        c10 = _mm256_fmadd_ps(x, b0, c10), c11 = _mm256_fmadd_ps(x, b1, c11);
        x = _mm256_broadcast_ss(ak + 2);
        c20 = _mm256_fmadd_ps(x, b0, c20), c21 = _mm256_fmadd_ps(x, b1, c21);
        x = _mm256_broadcast_ss(ak + 3);
        c30 = _mm256_fmadd_ps(x, b0, c30), c31 = _mm256_fmadd_ps(x, b1, c31);
        x = _mm256_broadcast_ss(ak + 4);
        c40 = _mm256_fmadd_ps(x, b0, c40), c41 = _mm256_fmadd_ps(x, b1, c41);
        x = _mm256_broadcast_ss(ak + 5);
        c50 = _mm256_fmadd_ps(x, b0, c50), c51 = _mm256_fmadd_ps(x, b1, c51);
    }
    __m256 acc[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
    if (nr == NR) {
        for (int r = 0; r < mr; r++) {
            float *cr = c + r * ldc;
            _mm256_storeu_ps(cr, _mm256_add_ps(_mm256_loadu_ps(cr), acc[r][0]));
            _mm256_storeu_ps(cr + 8, _mm256_add_ps(_mm256_loadu_ps(cr + 8), acc[r][1]));
        }
        return;
    }
    float t[NR];
    for (int r = 0; r < mr; r++) {
        _mm256_storeu_ps(t, acc[r][0]);
        _mm256_storeu_ps(t + 8, acc[r][1]);
        for (int j = 0; j < nr; j++) c[r * ldc + j] += t[j];
    }
}

#endif

static void gemm_tiles(void *ctx, size_t t0, size_t t1) {
    const gemm_args *g = ctx;
    float *pa = sdc_malloc(sizeof(float) * MT * KC);
    float *pb = sdc_malloc(sizeof(float) * NT * KC);
    void (*micro)(int64_t, const float *restrict, const float *restrict, float *restrict, int64_t, int, int) = micro_generic;
#if defined(__x86_64__) && defined(__GNUC__)
    if (sdc_cpu_avx2()) micro = micro_avx2;
#endif
    for (size_t t = t0; t < t1; t++) {
        int64_t i0 = (int64_t)(t / (size_t)g->tiles_n) * MT, j0 = (int64_t)(t % (size_t)g->tiles_n) * NT;
        int64_t mi = g->M - i0 < MT ? g->M - i0 : MT, nj = g->N - j0 < NT ? g->N - j0 : NT;
        for (int64_t i = 0; i < mi; i++) {
            float *row = g->C + (i0 + i) * g->ldc + j0;
            if (g->beta == 0.0f) memset(row, 0, sizeof(float) * (size_t)nj);
            else if (g->beta != 1.0f)
                for (int64_t j = 0; j < nj; j++) row[j] *= g->beta;
        }
        if (!pa || !pb) { /* out of memory: a slow unpacked product, still correct */
            for (int64_t i = 0; i < mi; i++)
                for (int64_t j = 0; j < nj; j++) {
                    float s = 0;
                    for (int64_t k = 0; k < g->K; k++) s += get_a(g, i0 + i, k) * get_b(g, k, j0 + j);
                    g->C[(i0 + i) * g->ldc + j0 + j] += s;
                }
            continue;
        }
        for (int64_t k0 = 0; k0 < g->K; k0 += KC) {
            int64_t kk = g->K - k0 < KC ? g->K - k0 : KC;
            pack_a(g, pa, i0, mi, k0, kk);
            pack_b(g, pb, j0, nj, k0, kk);
            for (int64_t p = 0; p < mi; p += MR) {
                for (int64_t q = 0; q < nj; q += NR) {
                    int mr = (int)(mi - p < MR ? mi - p : MR), nr = (int)(nj - q < NR ? nj - q : NR);
                    micro(kk, pa + p * kk, pb + q * kk, g->C + (i0 + p) * g->ldc + j0 + q, g->ldc, mr, nr);
                }
            }
        }
    }
    sdc_free(pa);
    sdc_free(pb);
}

void sdc_igemm_fallback(ipool *p, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                    const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    if (M <= 0 || N <= 0) return;
    gemm_args g = {ta, tb, M, N, K, A, B, lda, ldb, ldc, beta, C, (N + NT - 1) / NT};
    size_t tiles = (size_t)((M + MT - 1) / MT) * (size_t)g.tiles_n;
    /* small products are not worth waking threads for */
    if ((double)M * (double)N * (double)K < 262144.0) gemm_tiles(&g, 0, tiles);
    else sdc_ipool_for(p, tiles, 1, gemm_tiles, &g);
}

/* One product on the calling thread. */
static void sgemm_1t(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B,
                     int64_t ldb, float beta, float *C, int64_t ldc) {
#ifdef SDC_HAVE_CBLAS
    if (M <= INT_MAX && N <= INT_MAX && K <= INT_MAX && lda <= INT_MAX && ldb <= INT_MAX && ldc <= INT_MAX) {
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K, 1.0f,
                    A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
        return;
    }
#endif
    sdc_igemm_fallback(NULL, ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc);
}

typedef struct split_args {
    bool ta, tb, by_cols;
    int64_t M, N, K, lda, ldb, ldc, step;
    const float *A, *B;
    float beta;
    float *C;
} split_args;

static void split_part(void *ctx, size_t b, size_t e) {
    const split_args *s = ctx;
    for (size_t i = b; i < e; i++) {
        int64_t lo = (int64_t)i * s->step, n = (s->by_cols ? s->N : s->M) - lo;
        if (n > s->step) n = s->step;
        if (n <= 0) continue;
        if (s->by_cols) /* columns lo..lo+n of op(B) and C */
            sgemm_1t(s->ta, s->tb, s->M, n, s->K, s->A, s->lda, s->tb ? s->B + lo * s->ldb : s->B + lo, s->ldb, s->beta,
                     s->C + lo, s->ldc);
        else /* rows lo..lo+n of op(A) and C */
            sgemm_1t(s->ta, s->tb, n, s->N, s->K, s->ta ? s->A + lo : s->A + lo * s->lda, s->lda, s->B, s->ldb, s->beta,
                     s->C + lo * s->ldc, s->ldc);
    }
}

/* Threads split C in column (or row) blocks, each computed by a single-threaded product, so
   OpenBLAS runs with one thread per caller (sdc_igemm_set_threads(1) at model load) and every
   thread of the pool works on its own cache-friendly block. */
void sdc_igemm(ipool *p, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B,
           int64_t ldb, float beta, float *C, int64_t ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
        return;
    }
    int T = sdc_ipool_size(p);
    double flops = 2.0 * (double)M * (double)N * (double)K;
#ifndef SDC_HAVE_CBLAS
    if (flops >= 262144.0 && T > 1) { /* the blocked kernel threads itself over tiles */
        sdc_igemm_fallback(p, ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc);
        return;
    }
#endif
    if (T <= 1 || flops < 4e6) {
        sgemm_1t(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    split_args s = {ta, tb, N >= M, M, N, K, lda, ldb, ldc, 0, A, B, beta, C};
    int64_t len = s.by_cols ? N : M, parts = T;
    s.step = (len + parts - 1) / parts;
    if (s.by_cols) s.step = (s.step + 15) / 16 * 16; /* whole vector widths */
    parts = (len + s.step - 1) / s.step;
    sdc_ipool_for(p, (size_t)parts, 1, split_part, &s);
}

const char *sdc_igemm_backend(void) {
#if defined(SDC_HAVE_OPENBLAS)
    return "openblas";
#elif defined(SDC_HAVE_ACCELERATE)
    return "accelerate";
#else
    return "builtin";
#endif
}

#ifdef SDC_HAVE_OPENBLAS
/* OpenBLAS (its pthread builds) starts its worker threads when it loads, and each busy-waits
   for a first job for about 2^28 cycles (0.1 s) before it sleeps: in a short run on a
   2-core machine, a core taken from the pool. With one BLAS thread per caller they never get
   a job, so they are stopped. Weak: builds without it (OpenMP, serial) just lack the symbol. */
extern int blas_thread_shutdown_(void) __attribute__((weak));
#endif

/* Accelerate has no per-process thread setting to make here: its BLAS sizes its own threads. */
void sdc_igemm_set_threads(int n) {
#ifdef SDC_HAVE_OPENBLAS
    if (n > 0) openblas_set_num_threads(n);
    if (n == 1 && blas_thread_shutdown_) blas_thread_shutdown_();
#else
    (void)n;
#endif
}
