/*
 * gemm_few.c — x · wᵀ for a linear layer with few rows of x (a text encoder's 77 tokens), with
 * w read straight from the package (fp16 or fp32).
 *
 * Through BLAS, one call per block of w packs x again for every block and packs each block of w
 * a second time after it was expanded from fp16; with 77 rows those copies cost about as much
 * as the product. Here each thread packs x once per op into its own buffer (shared panels would
 * be read from the other core's cache), and each tile of FEW_NR weight rows is expanded
 * (or copied) straight into the layout the kernel reads, then multiplied by every panel of x
 * while it sits in this core's cache. The expansion of the next tile is spread over the kernel's
 * loop, so that its loads wait for memory while the FMAs run.
 *
 * Each output is one fp32 sum over k in order (padding adds exact zeros), plus the bias, rounded
 * to fp16 when the output is fp16: the bits of an fmaf loop, bias add and rounding pass.
 */
#include <math.h>
#include <stdint.h>

#include "interp/interp.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#include "interp/vmath.h"

enum {
    FEW_NR = 12, /* weight rows per tile: 24 accumulators with a panel of 32 rows of x */
    FEW_KB = 16, /* k per chunk: one cache line of fp32 per weight row */
    FEW_XPF = 32, /* x's rows asked into L1 this many k ahead (they come from L2) */
};

/* Layouts, K16 = K rounded up to FEW_KB:
   - a weight tile [K16 / FEW_KB][FEW_NR][FEW_KB]: the chunk of FEW_KB values of each row lies
     in one cache line, so the kernel reaches weight (k, r) at a constant offset from one pointer;
   - x panels [K16][width] of 32 rows (16 for the last ones), zero past M and past K. */

typedef struct few_ctx {
    int64_t M, N, K, K16, ldc;
    int64_t n32, n16; /* panels of 32 rows, then at most one of 16 */
    const float *x; /* [M×K] */
    const uint8_t *w;
    bool w16;
    const float *bias; /* [N] or NULL */
    bool round;        /* to fp16 */
    float *C;
    _Atomic int oom;
} few_ctx;

/* ---------------------------------------------------------------- packing w */

/* A tile's packing as a stream of pieces, each FEW_KB values of one weight row; they go row by
   row, so the reads are sequential. */
typedef struct few_pack {
    const few_ctx *c;
    int64_t n0;   /* the tile's first weight row */
    float *wt;    /* its buffer */
    int64_t r, j; /* the next piece: row r (FEW_NR when none is left), chunk j */
    bool plain;   /* no piece of the tile reaches past N or K */
} few_pack;

/* A piece past the last row (zeros) or reaching past K (zeros there). */
static void few_pack_edge(const few_ctx *c, int64_t n, int64_t k0, float *d) {
    int64_t valid = n >= c->N ? 0 : c->K - k0 < FEW_KB ? c->K - k0 : FEW_KB;
    if (valid > 0) {
        size_t at = (size_t)(n * c->K + k0);
        if (c->w16) sdc_f16_expand(NULL, c->w + 2 * at, d, (size_t)valid);
        else memcpy(d, (const float *)(const void *)c->w + at, sizeof(float) * (size_t)valid);
    }
    memset(d + valid, 0, sizeof(float) * (size_t)(FEW_KB - valid));
}

/* Up to `count` pieces. With `edges` false it stops at the first piece few_pack_edge must make:
   the kernels call it so, and must hold no function call, which would make the compiler save
   their accumulators around it. */
__attribute__((target("avx512f,f16c"), always_inline)) static inline void few_pack_pieces(few_pack *s, int64_t count,
                                                                                          bool edges) {
    const few_ctx *c = s->c;
    int64_t chunks = c->K16 / FEW_KB, r = s->r, j = s->j; /* locals: the stores below may alias *s */
    if (s->plain) { /* every piece whole: the source runs on row after row, the destination jumps */
        const uint8_t *src = c->w + (c->w16 ? 2 : 4) * (size_t)((s->n0 + r) * c->K + j * FEW_KB);
        float *d = s->wt + j * FEW_KB * FEW_NR + r * FEW_KB;
        if (c->w16) {
            for (; count > 0 && r < FEW_NR; count--) {
                _mm512_storeu_ps(d, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)src)));
                src += 32, d += FEW_KB * FEW_NR;
                if (++j == chunks) j = 0, r++, d = s->wt + r * FEW_KB;
            }
        } else {
            for (; count > 0 && r < FEW_NR; count--) {
                _mm512_storeu_ps(d, _mm512_loadu_ps((const float *)(const void *)src));
                src += 64, d += FEW_KB * FEW_NR;
                if (++j == chunks) j = 0, r++, d = s->wt + r * FEW_KB;
            }
        }
        s->r = r, s->j = j;
        return;
    }
    for (; count > 0 && r < FEW_NR; count--) {
        int64_t n = s->n0 + r, k0 = j * FEW_KB;
        float *d = s->wt + k0 * FEW_NR + r * FEW_KB;
        size_t at = (size_t)(n * c->K + k0);
        if (n >= c->N || k0 + FEW_KB > c->K) {
            if (!edges) break;
            few_pack_edge(c, n, k0, d);
        } else if (c->w16) {
            _mm512_storeu_ps(d, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(c->w + 2 * at))));
        } else {
            _mm512_storeu_ps(d, _mm512_loadu_ps((const float *)(const void *)c->w + at));
        }
        if (++j == chunks) j = 0, r++;
    }
    s->r = r, s->j = j;
}

/* The pieces of a tile not packed yet, edges included. */
__attribute__((target("avx512f,f16c"))) static void few_pack_rest(few_pack *s) { few_pack_pieces(s, INT64_MAX, true); }

/* What a kernel call does besides its product, once per chunk of k: `per_chunk` pieces of the
   next tile, and `pf_per_chunk` cache lines of the tile after it, [pf, pf_end), asked into L2,
   so that those pieces come from L2 when their turn comes. */
typedef struct few_side {
    few_pack *next;
    int64_t per_chunk;
    const char *pf, *pf_end;
    int64_t pf_per_chunk;
} few_side;

__attribute__((target("avx512f,f16c"), always_inline)) static inline void few_side_step(few_side *sd) {
    few_pack_pieces(sd->next, sd->per_chunk, false);
    for (int64_t q = 0; q < sd->pf_per_chunk && sd->pf < sd->pf_end; q++, sd->pf += 64) _mm_prefetch(sd->pf, _MM_HINT_T1);
}

/* ---------------------------------------------------------------- kernels */

/* The line of x's panels `at` floats on, asked into L1; past the panels' end too (a prefetch
   never faults), so the address is made as an integer: such a pointer may not be formed. */
__attribute__((target("avx512f,f16c"), always_inline)) static inline void few_prefetch_x(const float *xp, int64_t at) {
    _mm_prefetch((const char *)((uintptr_t)xp + (uintptr_t)at * sizeof(float)), _MM_HINT_T0);
}

#define FEW_REGS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)

/* tile[r][0..31] = Σ_k x(k, 0..31) · w(k, r) over one panel of 32 rows: per k, 2 loads of x,
   12 broadcasts of w, 24 FMAs */
#define FEW_ACC2(r) __m512 a##r = _mm512_setzero_ps(), b##r = _mm512_setzero_ps();
#define FEW_FMA2(r)                                                                                                    \
    {                                                                                                                  \
        __m512 wv = _mm512_set1_ps(wc[(r) * FEW_KB + kk]);                                                              \
        a##r = _mm512_fmadd_ps(x0, wv, a##r);                                                                          \
        b##r = _mm512_fmadd_ps(x1, wv, b##r);                                                                          \
    }
#define FEW_STORE2(r)                                                                                                  \
    _mm512_storeu_ps(tile + (r) * 32, a##r);                                                                           \
    _mm512_storeu_ps(tile + (r) * 32 + 16, b##r);

__attribute__((target("avx512f,f16c"))) static void few_kernel32(int64_t K16, const float *restrict xp, const float *restrict wt,
                                                                  float *restrict tile, few_side *sd) {
    FEW_REGS(FEW_ACC2)
    for (int64_t k0 = 0; k0 < K16; k0 += FEW_KB) {
        const float *wc = wt + k0 * FEW_NR;
        few_side_step(sd);
        for (int kk = 0; kk < FEW_KB; kk++) {
            few_prefetch_x(xp, (k0 + kk + FEW_XPF) * 32);
            few_prefetch_x(xp, (k0 + kk + FEW_XPF) * 32 + 16);
            __m512 x0 = _mm512_loadu_ps(xp + (k0 + kk) * 32), x1 = _mm512_loadu_ps(xp + (k0 + kk) * 32 + 16);
            FEW_REGS(FEW_FMA2)
        }
    }
    FEW_REGS(FEW_STORE2)
}

/* the same over a panel of 16 rows: tile[r][0..15] */
#define FEW_ACC1(r) __m512 a##r = _mm512_setzero_ps();
#define FEW_FMA1(r) a##r = _mm512_fmadd_ps(x0, _mm512_set1_ps(wc[(r) * FEW_KB + kk]), a##r);
#define FEW_STORE1(r) _mm512_storeu_ps(tile + (r) * 32, a##r);

__attribute__((target("avx512f,f16c"))) static void few_kernel16(int64_t K16, const float *restrict xp, const float *restrict wt,
                                                                  float *restrict tile, few_side *sd) {
    FEW_REGS(FEW_ACC1)
    for (int64_t k0 = 0; k0 < K16; k0 += FEW_KB) {
        const float *wc = wt + k0 * FEW_NR;
        few_side_step(sd);
        for (int kk = 0; kk < FEW_KB; kk++) {
            few_prefetch_x(xp, (k0 + kk + FEW_XPF) * 16);
            __m512 x0 = _mm512_loadu_ps(xp + (k0 + kk) * 16);
            FEW_REGS(FEW_FMA1)
        }
    }
    FEW_REGS(FEW_STORE1)
}

/* C[m0 + i][n0 + r] = tile[r][i] + bias[n0 + r] for the rows and weight rows that exist,
   rounded to fp16 when the output's dtype declares it (the executor's rounding: the same
   conversion, RNE, overflow to ±Inf), so that C is written once. */
__attribute__((target("avx512f,f16c"))) static void few_store_tile(const few_ctx *c, const float *tile, int64_t m0, int64_t rows,
                                                                    int64_t n0) {
    int64_t nr = c->N - n0 < FEW_NR ? c->N - n0 : FEW_NR;
    __mmask16 mask = (__mmask16)((1u << nr) - 1);
    __m512i at = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi32(32));
    __m512 bias = c->bias ? _mm512_maskz_loadu_ps(mask, c->bias + n0) : _mm512_setzero_ps();
    for (int64_t i = 0; i < rows; i++) {
        __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mask, at, tile + i, 4); /* tile[r][i], r < nr */
        if (c->bias) v = _mm512_add_ps(v, bias);
        if (c->round) v = _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        _mm512_mask_storeu_ps(c->C + (m0 + i) * c->ldc + n0, mask, v);
    }
}

/* ---------------------------------------------------------------- driver */

/* x [M×K] into its panels: for each k, each group of 16 rows gathered into one vector (rows
   past M and k past K are zeros). */
__attribute__((target("avx512f"))) static void few_pack_x(const few_ctx *c, float *panel) {
    const __m512i rows = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                            _mm512_set1_epi32((int)c->K)); /* 15 · K < 2^31: sdc_igemm_few */
    for (int64_t p = 0, m0 = 0; p < c->n32 + c->n16; p++) {
        int64_t width = p < c->n32 ? 32 : 16;
        for (int64_t g = 0; g < width; g += 16) {
            int64_t valid = c->M - (m0 + g);
            __mmask16 mask = valid >= 16 ? (__mmask16)0xffff : valid > 0 ? (__mmask16)((1u << valid) - 1) : 0;
            const float *src = c->x + (valid > 0 ? (m0 + g) * c->K : 0);
            for (int64_t k = 0; k < c->K16; k++) {
                __m512 v = k < c->K ? _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mask, rows, src + k, 4) : _mm512_setzero_ps();
                _mm512_storeu_ps(panel + k * width + g, v);
            }
        }
        panel += c->K16 * width;
        m0 += width;
    }
}

/* Tiles [t0, t1) of FEW_NR weight rows, in two buffers: while every panel of x passes over one,
   the next is packed into the other. */
static void few_tiles(void *vctx, size_t t0, size_t t1) {
    few_ctx *c = vctx;
    size_t cap = 0, tile_floats = (size_t)(FEW_NR * c->K16), x_floats = (size_t)(c->K16 * (32 * c->n32 + 16 * c->n16));
    float *bufs = sdc_ibuf_alloc(sizeof(float) * (2 * tile_floats + x_floats), &cap); /* two tiles, then x's panels */
    if (!bufs) {
        c->oom = 1;
        return;
    }
    float *xpanels = bufs + 2 * tile_floats;
    few_pack_x(c, xpanels);
    float tile[FEW_NR * 32];
    int64_t panels = c->n32 + c->n16, chunks = panels * (c->K16 / FEW_KB);
    size_t esize = c->w16 ? 2 : 4, tile_bytes = esize * (size_t)(FEW_NR * c->K);
    const char *w_end = (const char *)c->w + esize * (size_t)(c->N * c->K);
    few_pack first = {c, (int64_t)t0 * FEW_NR, bufs, 0, 0, false};
    few_pack_rest(&first);
    for (size_t t = t0; t < t1; t++) {
        int64_t n0 = (int64_t)t * FEW_NR;
        float *wt = bufs + ((t - t0) & 1) * tile_floats;
        few_pack next = {c, n0 + FEW_NR, bufs + ((t - t0 + 1) & 1) * tile_floats, t + 1 < t1 ? 0 : FEW_NR, 0,
                         c->K % FEW_KB == 0 && n0 + 2 * FEW_NR <= c->N};
        few_side sd = {&next, (FEW_NR * (c->K16 / FEW_KB) + chunks - 1) / chunks, NULL, NULL,
                       (int64_t)(tile_bytes / 64 + (size_t)chunks - 1) / chunks};
        if (t + 2 < t1) { /* the tile after next, whose rows follow next's in w */
            sd.pf = (const char *)c->w + esize * (size_t)((n0 + 2 * FEW_NR) * c->K);
            sd.pf_end = sd.pf + tile_bytes < w_end ? sd.pf + tile_bytes : w_end;
        }
        const float *xp = xpanels;
        for (int64_t p = 0; p < c->n32; p++, xp += c->K16 * 32) {
            few_kernel32(c->K16, xp, wt, tile, &sd);
            int64_t m0 = p * 32;
            few_store_tile(c, tile, m0, c->M - m0 < 32 ? c->M - m0 : 32, n0);
        }
        if (c->n16) {
            few_kernel16(c->K16, xp, wt, tile, &sd);
            few_store_tile(c, tile, c->n32 * 32, c->M - c->n32 * 32, n0);
        }
        few_pack_rest(&next);
    }
    sdc_ibuf_free(bufs, cap);
}

#endif

int sdc_igemm_few(ipool *p, int64_t M, int64_t N, int64_t K, const float *x, const void *w, bool w16, const float *bias,
                  bool round, float *C, int64_t ldc) {
#if defined(__x86_64__) && defined(__GNUC__)
    /* x's packing gathers 16 rows K apart with 32-bit offsets */
    if (M < 1 || M > SDC_IGEMM_FEW_MAX || N < 1 || K < 1 || K > INT32_MAX / 16 || !sdc_cpu_avx512()) return 0;
    /* panels of 32 rows, the last one of 16 when at most 16 remain */
    int64_t rest = M % 32;
    few_ctx c = {M, N, K, (K + FEW_KB - 1) / FEW_KB * FEW_KB, ldc, M / 32 + (rest > 16), rest > 0 && rest <= 16,
                 x, w, w16, bias, round, C, 0};
    /* one run of neighbouring tiles per thread, so that each packs ahead within its run */
    size_t tiles = (size_t)((N + FEW_NR - 1) / FEW_NR), T = (size_t)sdc_ipool_size(p);
    sdc_ipool_for(p, tiles, (tiles + T - 1) / T, few_tiles, &c);
    return c.oom ? -1 : 1;
#else
    (void)p, (void)M, (void)N, (void)K, (void)x, (void)w, (void)w16, (void)bias, (void)round, (void)C, (void)ldc;
    return 0;
#endif
}
