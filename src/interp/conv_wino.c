/*
 * conv_wino.c — 3×3 convolutions (stride 1, no dilation, one group) by Winograd's F(2×2, 3×3):
 * each 2×2 block of outputs from a 4×4 patch of input with 16 products per input channel where
 * the direct sum takes 36. The 16 products of all channels are 16 matrix products (sdc_igemm),
 * between the transformed weights U = G·g·Gᵀ [16][Cout][Cin] and the transformed input patches
 * V = Bᵀ·d·B [16][Cin][tiles]; the output is Aᵀ·m·A. The transforms take sums and differences
 * (and halves, for the weights: exact), so the result differs from the direct sum only by fp32
 * rounding in another order.
 *
 * The output is made a block of tile rows at a time per thread, so that V and the products
 * (16 × (Cin + Cout) × tiles floats) stay within a few MiB.
 *
 * A non-finite input value reaches every output of its 2×2 blocks through the transforms' sums
 * and differences (as NaN where the direct sum might give ±Inf): still non-finite, which is what
 * the check looks for.
 */
#include <math.h>

#include "interp/interp.h"

enum {
    WINO_BLOCK_FLOATS = 1 << 20, /* V and M of a block: 4 MiB per thread */
};

/* ---------------------------------------------------------------- weights: U = G·g·Gᵀ */

typedef struct wino_w_ctx {
    const sdc_wino_conv *c;
    float *U; /* [16][Cout][Cin] */
} wino_w_ctx;

/* Pairs (co, ci) [b, e) of the flattened [Cout][Cin] plane: G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1]
   down the kernel's rows, then across. */
SDC_VECTORISE static void wino_weights_run(const float *restrict w, float *restrict U, int64_t plane, int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) {
        const float *g = w + i * 9; /* [3][3] */
        float t[4][3];
        for (int j = 0; j < 3; j++) {
            float g0 = g[j], g1 = g[3 + j], g2 = g[6 + j];
            t[0][j] = g0, t[1][j] = 0.5f * (g0 + g1 + g2), t[2][j] = 0.5f * (g0 - g1 + g2), t[3][j] = g2;
        }
        for (int r = 0; r < 4; r++) {
            U[(r * 4 + 0) * plane + i] = t[r][0];
            U[(r * 4 + 1) * plane + i] = 0.5f * (t[r][0] + t[r][1] + t[r][2]);
            U[(r * 4 + 2) * plane + i] = 0.5f * (t[r][0] - t[r][1] + t[r][2]);
            U[(r * 4 + 3) * plane + i] = t[r][2];
        }
    }
}

static void wino_weights(void *vctx, size_t b, size_t e) {
    const wino_w_ctx *x = vctx;
    int64_t Cin = x->c->Cin;
    wino_weights_run(x->c->w, x->U, x->c->Cout * Cin, (int64_t)b * Cin, (int64_t)e * Cin);
}

/* ---------------------------------------------------------------- input: V = Bᵀ·d·B */

/* E[j], O[j] for one j near the row's ends: padded columns 2j and 2j + 1, zero outside */
static inline void wino_split_edge(const float *src, int64_t W, int64_t pl, int64_t j, float *E, float *O) {
    int64_t c0 = 2 * j - pl, c1 = c0 + 1;
    E[j] = c0 >= 0 && c0 < W ? src[c0] : 0.0f;
    O[j] = c1 >= 0 && c1 < W ? src[c1] : 0.0f;
}

/* Input row `row` (any, zero outside) split into its even and odd padded columns: E[j] is
   padded column 2j, O[j] column 2j + 1, for j in [0, n). */
SDC_VECTORISE static void wino_split_row(const sdc_wino_conv *c, const float *plane, int64_t row, int64_t n, float *restrict E,
                                         float *restrict O) {
    if (row < 0 || row >= c->H) {
        memset(E, 0, sizeof(float) * (size_t)n);
        memset(O, 0, sizeof(float) * (size_t)n);
        return;
    }
    const float *restrict src = plane + row * c->W;
    int64_t W = c->W, pl = c->pl;
    int64_t lo = (pl + 1) / 2, hi = (W + pl - 1) / 2; /* j in [lo, hi): columns 2j - pl and 2j + 1 - pl inside */
    if (hi > n) hi = n;
    if (lo > hi) lo = hi;
    for (int64_t j = 0; j < lo; j++) wino_split_edge(src, W, pl, j, E, O);
    const float *restrict s = src + 2 * lo - pl;
    for (int64_t j = 0; j < hi - lo; j++) E[lo + j] = s[2 * j], O[lo + j] = s[2 * j + 1];
    for (int64_t j = hi; j < n; j++) wino_split_edge(src, W, pl, j, E, O);
}

/* Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1] down four rows p0..p3 (n values each) */
SDC_VECTORISE static void wino_down(const float *restrict p0, const float *restrict p1, const float *restrict p2,
                                    const float *restrict p3, float *restrict t0, float *restrict t1, float *restrict t2,
                                    float *restrict t3, int64_t n) {
    for (int64_t j = 0; j < n; j++) {
        t0[j] = p0[j] - p2[j];
        t1[j] = p1[j] + p2[j];
        t2[j] = p2[j] - p1[j];
        t3[j] = p1[j] - p3[j];
    }
}

/* The same across a row's columns, tile t holding columns 2t .. 2t+3 (even E, odd O):
   v0..v3 receive tw values */
SDC_VECTORISE static void wino_across(const float *restrict E, const float *restrict O, float *restrict v0, float *restrict v1,
                                      float *restrict v2, float *restrict v3, int64_t tw) {
    for (int64_t t = 0; t < tw; t++) {
        v0[t] = E[t] - E[t + 1];
        v1[t] = O[t] + E[t + 1];
        v2[t] = E[t + 1] - O[t];
        v3[t] = O[t] - O[t + 1];
    }
}

/* ---------------------------------------------------------------- output: Y = Aᵀ·m·A */

/* Aᵀ = [1 1 1 0; 0 1 -1 -1] down the four values m0..m3 of each tile: r0, r1 */
SDC_VECTORISE static void wino_out_down(const float *restrict m0, const float *restrict m1, const float *restrict m2,
                                        const float *restrict m3, float *restrict r0, float *restrict r1, int64_t tw) {
    for (int64_t t = 0; t < tw; t++) {
        r0[t] = m0[t] + m1[t] + m2[t];
        r1[t] = m1[t] - m2[t] - m3[t];
    }
}

/* ... then across (r[0..3]: the four columns), into one output row y: columns 2t and 2t + 1
   (the last one only when Wo is even), plus the bias */
SDC_VECTORISE static void wino_out_across(const float *restrict r0, const float *restrict r1, const float *restrict r2,
                                          const float *restrict r3, float *restrict y, int64_t tw, int64_t Wo, float bias) {
    int64_t full = Wo / 2;
    for (int64_t t = 0; t < full; t++) {
        y[2 * t] = r0[t] + r1[t] + r2[t] + bias;
        y[2 * t + 1] = r1[t] - r2[t] - r3[t] + bias;
    }
    if (full < tw) y[2 * full] = r0[full] + r1[full] + r2[full] + bias;
}

/* ---------------------------------------------------------------- blocks of tile rows */

typedef struct wino_ctx {
    const sdc_wino_conv *c;
    const float *U;
    int64_t th, tw, rows; /* tiles down and across; tile rows per block */
    int64_t n;            /* the image */
    _Atomic int oom;
} wino_ctx;

static void wino_blocks(void *vctx, size_t b, size_t e) {
    wino_ctx *x = vctx;
    const sdc_wino_conv *c = x->c;
    int64_t tw = x->tw, TB = x->rows * tw, Cin = c->Cin, Cout = c->Cout;
    size_t cap_v = 0, cap_m = 0, cap_r = 0, n1 = (size_t)(tw + 1);
    float *V = sdc_ibuf_alloc(sizeof(float) * (size_t)(16 * Cin * TB), &cap_v);
    float *Mb = sdc_ibuf_alloc(sizeof(float) * (size_t)(16 * Cout * TB), &cap_m);
    float *rows = sdc_ibuf_alloc(sizeof(float) * 16 * n1, &cap_r); /* 4 input rows' E, O; their transforms */
    if (!V || !Mb || !rows) {
        x->oom = 1;
        sdc_ibuf_free(V, cap_v), sdc_ibuf_free(Mb, cap_m), sdc_ibuf_free(rows, cap_r);
        return;
    }
    float *E[4], *O[4], *TE[4], *TO[4]; /* TE, TO also serve the output's r0, r1 of four columns */
    for (int k = 0; k < 4; k++) E[k] = rows + k * n1, O[k] = rows + (4 + k) * n1, TE[k] = rows + (8 + k) * n1, TO[k] = rows + (12 + k) * n1;
    for (size_t blk = b; blk < e; blk++) {
        int64_t ti0 = (int64_t)blk * x->rows, nrows = x->th - ti0 < x->rows ? x->th - ti0 : x->rows, nt = nrows * tw;
        for (int64_t ci = 0; ci < Cin; ci++) {
            const float *plane = c->x + (x->n * Cin + ci) * c->H * c->W;
            for (int64_t r = 0; r < nrows; r++) {
                int64_t row0 = 2 * (ti0 + r) - c->pt;
                for (int k = 0; k < 4; k++) wino_split_row(c, plane, row0 + k, tw + 1, E[k], O[k]);
                wino_down(E[0], E[1], E[2], E[3], TE[0], TE[1], TE[2], TE[3], tw + 1);
                wino_down(O[0], O[1], O[2], O[3], TO[0], TO[1], TO[2], TO[3], tw + 1);
                float *v = V + ci * nt + r * tw; /* v + q · Cin · nt: transformed value q */
                int64_t qs = Cin * nt;
                for (int i = 0; i < 4; i++) wino_across(TE[i], TO[i], v + (4 * i) * qs, v + (4 * i + 1) * qs, v + (4 * i + 2) * qs, v + (4 * i + 3) * qs, tw);
            }
        }
        for (int q = 0; q < 16; q++) /* M_q [Cout][nt] = U_q [Cout][Cin] · V_q [Cin][nt] */
            sdc_igemm(NULL, false, false, Cout, nt, Cin, x->U + (int64_t)q * Cout * Cin, Cin, V + (int64_t)q * Cin * nt, nt, 0.0f,
                      Mb + (int64_t)q * Cout * nt, nt);
        int64_t qs = Cout * nt;
        for (int64_t co = 0; co < Cout; co++) {
            float *oplane = c->o + (x->n * Cout + co) * c->Ho * c->Wo;
            float bias = c->bias ? c->bias[co] : 0.0f;
            for (int64_t r = 0; r < nrows; r++) {
                int64_t orow = 2 * (ti0 + r);
                const float *m = Mb + co * nt + r * tw; /* m + q · qs: value q */
                for (int j = 0; j < 4; j++) wino_out_down(m + j * qs, m + (4 + j) * qs, m + (8 + j) * qs, m + (12 + j) * qs, TE[j], TO[j], tw);
                float *y0 = oplane + orow * c->Wo;
                wino_out_across(TE[0], TE[1], TE[2], TE[3], y0, tw, c->Wo, bias);
                if (c->round) sdc_round_f16(NULL, y0, (size_t)c->Wo);
                if (orow + 1 < c->Ho) {
                    wino_out_across(TO[0], TO[1], TO[2], TO[3], y0 + c->Wo, tw, c->Wo, bias);
                    if (c->round) sdc_round_f16(NULL, y0 + c->Wo, (size_t)c->Wo);
                }
            }
        }
    }
    sdc_ibuf_free(V, cap_v), sdc_ibuf_free(Mb, cap_m), sdc_ibuf_free(rows, cap_r);
}

int sdc_conv_winograd(ipool *p, const sdc_wino_conv *c) {
    int64_t th = (c->Ho + 1) / 2, tw = (c->Wo + 1) / 2;
    if (th * tw < SDC_WINO_MIN_TILES || c->Cin < 1 || c->Cout < 1) return 0;
    size_t cap_u = 0;
    float *U = sdc_ibuf_alloc(sizeof(float) * (size_t)(16 * c->Cout * c->Cin), &cap_u);
    if (!U) return -1;
    wino_w_ctx wc = {c, U};
    sdc_ipool_for(p, (size_t)c->Cout, 1, wino_weights, &wc);
    int64_t per_row = 16 * (c->Cin + c->Cout) * tw, rows = WINO_BLOCK_FLOATS / per_row;
    if (rows < 1) rows = 1;
    int64_t T = sdc_ipool_size(p), even = (th + 2 * T - 1) / (2 * T); /* at least two blocks per thread */
    if (rows > even) rows = even;
    wino_ctx x = {c, U, th, tw, rows, 0, 0};
    for (int64_t n = 0; n < c->N && !x.oom; n++) {
        x.n = n;
        sdc_ipool_for(p, (size_t)((th + rows - 1) / rows), 1, wino_blocks, &x);
    }
    sdc_ibuf_free(U, cap_u);
    return x.oom ? -1 : 1;
}
