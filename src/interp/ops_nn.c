/*
 * ops_nn.c — linear, matmul, einsum, conv (through sdc_igemm and its special cases: few rows,
 * einsum's in-place kernel, Winograd), softmax, layer/instance/batch
 * norm and scaled_dot_product_attention.
 *
 * Sums run in fp32 inside the GEMM and in double for the normalisation statistics; results are
 * rounded to the declared dtype by the executor.
 */
#include <math.h>

#include "interp/interp.h"

static bool all_float(const itensor *a, const itensor *b) {
    return a && b && mt_is_float(a->dtype) && mt_is_float(b->dtype);
}

/* Many small independent products: threads over the batch, each product on one thread
   (sdc_igemm without a pool: BLAS where built with it); large ones: one after another, each
   threaded by sdc_igemm. */
typedef struct batch_gemm {
    bool ta, tb;
    int64_t M, N, K, lda, ldb, ldc;
    size_t count;
    const float **A, **B;
    float **C;
} batch_gemm;

static void batch_rows(void *ctx, size_t b, size_t e) {
    batch_gemm *g = ctx;
    for (size_t i = b; i < e; i++)
        sdc_igemm(NULL, g->ta, g->tb, g->M, g->N, g->K, g->A[i], g->lda, g->B[i], g->ldb, 0.0f, g->C[i], g->ldc);
}

static void run_batch(ipool *p, batch_gemm *g) {
    double flops = 2.0 * (double)g->M * (double)g->N * (double)g->K;
    if (g->count > 1 && flops < 4e6) {
        sdc_ipool_for(p, g->count, 1, batch_rows, g);
        return;
    }
    for (size_t i = 0; i < g->count; i++)
        sdc_igemm(p, g->ta, g->tb, g->M, g->N, g->K, g->A[i], g->lda, g->B[i], g->ldb, 0.0f, g->C[i], g->ldc);
}

/* Columns per piece when sdc_igemm_bcast runs a batch: pieces over products and columns, since
   its sums do not depend on the cut. */
#define BCAST_COLS 256

/* Column pieces per product. */
static size_t bcast_pieces(const batch_gemm *g) { return (size_t)((g->N + BCAST_COLS - 1) / BCAST_COLS); }

static void batch_bcast_pieces(void *ctx, size_t b, size_t e) {
    batch_gemm *g = ctx;
    size_t per = bcast_pieces(g);
    for (size_t i = b; i < e; i++) {
        size_t prod = i / per;
        int64_t j0 = (int64_t)(i % per) * BCAST_COLS, n = g->N - j0 < BCAST_COLS ? g->N - j0 : BCAST_COLS;
        sdc_igemm_bcast(g->M, n, g->K, g->A[prod], g->lda, g->B[prod] + j0, g->ldb, g->C[prod] + j0, g->ldc);
    }
}

/* A batch of untransposed products through sdc_igemm_bcast where it runs, else run_batch. */
static void run_batch_nn(ipool *p, batch_gemm *g) {
    if (!sdc_igemm_bcast_runs() || g->ta || g->tb) {
        run_batch(p, g);
        return;
    }
    sdc_ipool_for(p, g->count * bcast_pieces(g), 1, batch_bcast_pieces, g);
}

static void free_batch(batch_gemm *g) {
    sdc_free(g->A);
    sdc_free(g->B);
    sdc_free(g->C);
}

static sdc_status alloc_batch(irun *r, const iop *op, batch_gemm *g, size_t count) {
    g->count = count;
    g->A = sdc_malloc(sizeof *g->A * (count ? count : 1));
    g->B = sdc_malloc(sizeof *g->B * (count ? count : 1));
    g->C = sdc_malloc(sizeof *g->C * (count ? count : 1));
    if (g->A && g->B && g->C) return SDC_OK;
    free_batch(g); /* the ones that were allocated */
    return sdc_rt_fail(r, op, SDC_E_NOMEM, "out of memory");
}

/* ---------------------------------------------------------------- linear */

typedef struct lin16_ctx {
    const uint8_t *w16; /* [dout, din] fp16 */
    const float *x;
    float *o;
    int64_t M, din, dout, rows;
    float beta;
    int failed;
} lin16_ctx;

/* Weight rows block by block: expand into a per-thread buffer that stays in cache, multiply. */
static void lin16_blocks(void *ctx, size_t b, size_t e) {
    lin16_ctx *c = ctx;
    size_t cap;
    float *buf = sdc_ibuf_alloc(sizeof(float) * (size_t)(c->rows * c->din + 1), &cap);
    if (!buf) {
        c->failed = 1;
        return;
    }
    for (size_t k = b; k < e; k++) {
        int64_t j0 = (int64_t)k * c->rows, n = c->dout - j0 < c->rows ? c->dout - j0 : c->rows;
        sdc_f16_expand(NULL, c->w16 + 2 * (size_t)(j0 * c->din), buf, (size_t)(n * c->din));
        sdc_igemm(NULL, false, true, c->M, n, c->din, c->x, c->din, buf, c->din, c->beta, c->o + j0, c->dout);
    }
    sdc_ibuf_free(buf, cap);
}

sdc_status sdc_kernel_linear(irun *r, const iop *op) {
    /* An fp16 weight stored in the package is expanded a block of rows at a time into a
       cache-sized buffer, each block multiplied right away: the weight is read once, as fp16,
       and never held in fp32 as a whole. */
    const islot *ws = NULL;
    const csrc *lazy = sdc_rt_lazy(r, op, "weight", &ws);
    if (lazy && (lazy->fmt != RAW_F16 || ws->rank != 2)) lazy = NULL;
    itensor *x = sdc_rt_req(r, op, "x"), *w = x && !lazy ? sdc_rt_req(r, op, "weight") : NULL;
    if (!x || (!lazy && !w)) return r->err->code;
    itensor *b = sdc_rt_in(r, op, "bias");
    if (r->err->code) return r->err->code;
    char a1[200], a2[200];
    int wrank = lazy ? ws->rank : w->rank;
    const int64_t *wshape = lazy ? ws->shape : w->shape;
    if (!mt_is_float(x->dtype) || !mt_is_float(lazy ? ws->dtype : w->dtype))
        return sdc_rt_fail(r, op, SDC_E_UNSUPPORTED, "x and weight must be fp16 or fp32");
    if (x->rank < 1 || wrank != 2 || x->shape[x->rank - 1] != wshape[1])
        return sdc_rt_fail(r, op, SDC_E_FORMAT, "x %s does not match weight %s [D_out, D_in]", shape_str(x->rank, x->shape, a1, sizeof a1),
                       shape_str(wrank, wshape, a2, sizeof a2));
    int64_t dout = wshape[0], din = wshape[1];
    if (b && (b->rank != 1 || b->shape[0] != dout || !mt_is_float(b->dtype)))
        return sdc_rt_fail(r, op, SDC_E_FORMAT, "bias %s must be float [%lld]", shape_str(b->rank, b->shape, a1, sizeof a1), (long long)dout);
    int64_t shape[SDC_MAX_RANK];
    memcpy(shape, x->shape, sizeof(int64_t) * (size_t)x->rank);
    shape[x->rank - 1] = dout;
    itensor *o = sdc_rt_out(r, op, 0, x->rank, shape);
    if (!o) return r->err->code;
    if (o->n == 0) return SDC_OK;
    int64_t M = (int64_t)(o->n / (size_t)dout);
    sdc_rt_flops(r, (double)M, (double)dout, (double)din);
    /* few rows (a text encoder's tokens): packed once, w expanded straight into the kernel's
       layout, the bias and the fp16 rounding in its last pass; elsewhere (or on processors
       without AVX-512) through sdc_igemm */
    bool round = o->dtype == MT_FP16 && !r->m->exact_fp16_off;
    int few = sdc_igemm_few(sdc_rt_pool(r), M, dout, din, x->f, lazy ? (const void *)lazy->ptr : (const void *)w->f,
                            lazy != NULL, b ? b->f : NULL, round, o->f, dout);
    if (few < 0) return sdc_rt_fail(r, op, SDC_E_NOMEM, "out of memory");
    if (few) {
        r->rounded = round;
        return SDC_OK;
    }
    if (b) {
        for (int64_t i = 0; i < M; i++) memcpy(o->f + i * dout, b->f, sizeof(float) * (size_t)dout);
    }
    float beta = b ? 1.0f : 0.0f;
    if (!lazy) {
        sdc_igemm(sdc_rt_pool(r), false, true, M, dout, din, x->f, din, w->f, din, beta, o->f, dout);
        return SDC_OK;
    }
    /* blocks of about 512 KiB of fp32, in a multiple of the thread count */
    int64_t T = sdc_ipool_size(sdc_rt_pool(r)), blocks = (dout * din * 4 + (1 << 19) - 1) >> 19;
    blocks = (blocks + T - 1) / T * T;
    int64_t rows = (dout + blocks - 1) / blocks;
    rows = (rows + 15) / 16 * 16;
    if (rows > dout) rows = dout;
    lin16_ctx c = {lazy->ptr, x->f, o->f, M, din, dout, rows, beta, 0};
    sdc_ipool_for(sdc_rt_pool(r), (size_t)((dout + rows - 1) / rows), 1, lin16_blocks, &c);
    if (c.failed) return sdc_rt_fail(r, op, SDC_E_NOMEM, "out of memory");
    return SDC_OK;
}

/* ---------------------------------------------------------------- matmul */

sdc_status sdc_kernel_matmul(irun *r, const iop *op) {
    itensor *x = sdc_rt_req(r, op, "x"), *y = x ? sdc_rt_req(r, op, "y") : NULL;
    bool tx, ty;
    if (!y || sdc_rt_bool(r, op, "transpose_x", false, &tx) || sdc_rt_bool(r, op, "transpose_y", false, &ty)) return r->err->code;
    if (!all_float(x, y)) return sdc_rt_fail(r, op, SDC_E_UNSUPPORTED, "x and y must be fp16 or fp32");
    if (x->rank < 1 || y->rank < 1) return sdc_rt_fail(r, op, SDC_E_FORMAT, "operands must have rank >= 1");
    /* NumPy rules: a 1-D x is [1, K] (row dropped after), a 1-D y is [K, 1] (column dropped) */
    int64_t xs[SDC_MAX_RANK + 1], ys[SDC_MAX_RANK + 1];
    int xr = x->rank, yr = y->rank;
    bool x1 = xr == 1, y1 = yr == 1;
    if (x1) {
        xs[0] = 1, xs[1] = x->shape[0], xr = 2, tx = false;
    } else {
        memcpy(xs, x->shape, sizeof(int64_t) * (size_t)xr);
    }
    if (y1) {
        ys[0] = y->shape[0], ys[1] = 1, yr = 2, ty = false;
    } else {
        memcpy(ys, y->shape, sizeof(int64_t) * (size_t)yr);
    }
    int64_t M = tx ? xs[xr - 1] : xs[xr - 2], K = tx ? xs[xr - 2] : xs[xr - 1];
    int64_t K2 = ty ? ys[yr - 1] : ys[yr - 2], N = ty ? ys[yr - 2] : ys[yr - 1];
    char a1[200], a2[200];
    if (K != K2)
        return sdc_rt_fail(r, op, SDC_E_FORMAT, "inner dimensions differ: x %s%s, y %s%s", shape_str(x->rank, x->shape, a1, sizeof a1),
                       tx ? "ᵀ" : "", shape_str(y->rank, y->shape, a2, sizeof a2), ty ? "ᵀ" : "");
    /* broadcast the batch dims */
    int xb = xr - 2, yb = yr - 2, br = xb > yb ? xb : yb;
    int64_t bs[SDC_MAX_RANK], bx[SDC_MAX_RANK], by[SDC_MAX_RANK];
    for (int d = 0; d < br; d++) {
        int64_t dx = d - (br - xb) >= 0 ? xs[d - (br - xb)] : 1, dy = d - (br - yb) >= 0 ? ys[d - (br - yb)] : 1;
        if (dx != dy && dx != 1 && dy != 1)
            return sdc_rt_fail(r, op, SDC_E_FORMAT, "batch dims of x %s and y %s do not broadcast",
                           shape_str(x->rank, x->shape, a1, sizeof a1), shape_str(y->rank, y->shape, a2, sizeof a2));
        bs[d] = dx == 1 ? dy : dx;
        bx[d] = dx;
        by[d] = dy;
    }
    int orank = 0;
    int64_t oshape[SDC_MAX_RANK + 2];
    for (int d = 0; d < br; d++) oshape[orank++] = bs[d];
    if (!x1) oshape[orank++] = M;
    if (!y1) oshape[orank++] = N;
    if (orank > SDC_MAX_RANK) return sdc_rt_fail(r, op, SDC_E_UNSUPPORTED, "result rank too large");
    itensor *o = sdc_rt_out(r, op, 0, orank, oshape);
    if (!o) return r->err->code;
    size_t nb = 1;
    for (int d = 0; d < br; d++) nb *= (size_t)bs[d];
    size_t xmat = (size_t)(M * K), ymat = (size_t)(K * N), omat = (size_t)(M * N);
    int64_t lda = tx ? M : K, ldb = ty ? K : N;
    if (o->n == 0) return SDC_OK;
    sdc_rt_flops(r, (double)nb * (double)M, (double)N, (double)K);
    bool y_shared = true, x_full = true;
    for (int d = 0; d < br; d++) {
        y_shared = y_shared && by[d] == 1;
        x_full = x_full && bx[d] == bs[d];
    }
    if (y_shared && x_full && !tx) { /* one product: batches of x stacked as rows */
        sdc_igemm(sdc_rt_pool(r), false, ty, (int64_t)nb * M, N, K, x->f, lda, y->f, ldb, 0.0f, o->f, N);
        return SDC_OK;
    }
    batch_gemm g = {.ta = tx, .tb = ty, .M = M, .N = N, .K = K, .lda = lda, .ldb = ldb, .ldc = N};
    if (alloc_batch(r, op, &g, nb)) return r->err->code;
    for (size_t b = 0; b < nb; b++) {
        size_t rem = b, ox = 0, oy = 0, sx = 1, sy = 1;
        for (int d = br - 1; d >= 0; d--) {
            size_t i = rem % (size_t)bs[d];
            rem /= (size_t)bs[d];
            ox += (bx[d] == 1 ? 0 : i) * sx;
            oy += (by[d] == 1 ? 0 : i) * sy;
            sx *= (size_t)bx[d];
            sy *= (size_t)by[d];
        }
        g.A[b] = x->f + ox * xmat;
        g.B[b] = y->f + oy * ymat;
        g.C[b] = o->f + b * omat;
    }
    run_batch(sdc_rt_pool(r), &g);
    free_batch(&g);
    return SDC_OK;
}

/* ---------------------------------------------------------------- einsum */

/* Maps the equation's letters to ids in order of first appearance (coremltools'
   parse_einsum_equation) and checks it is one of the two supported forms. */
static int einsum_form(const char *eq) {
    char a[16], b[16], c[16];
    int na = 0, nb = 0, nc = 0, part = 0;
    for (const char *p = eq; *p; p++) {
        if (*p == ' ') continue;
        if (*p == ',') {
            if (part != 0) return 0;
            part = 1;
        } else if (p[0] == '-' && p[1] == '>') {
            if (part != 1) return 0;
            part = 2;
            p++;
        } else {
            char ch = *p;
            if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z'))) return 0;
            if (part == 0 && na < 15) a[na++] = ch;
            else if (part == 1 && nb < 15) b[nb++] = ch;
            else if (part == 2 && nc < 15) c[nc++] = ch;
            else return 0;
        }
    }
    if (part != 2) return 0;
    char seen[48];
    int ns = 0, ia[16], ib[16], ic[16];
    char *all[3] = {a, b, c};
    int ns_[3] = {na, nb, nc}, *ids[3] = {ia, ib, ic};
    for (int t = 0; t < 3; t++)
        for (int i = 0; i < ns_[t]; i++) {
            int id = -1;
            for (int k = 0; k < ns; k++)
                if (seen[k] == all[t][i]) id = k;
            if (id < 0) {
                seen[ns] = all[t][i];
                id = ns++;
            }
            ids[t][i] = id;
        }
    static const int a4[] = {0, 1, 2, 3}, b4[] = {0, 3, 2, 4}, c4[] = {0, 1, 2, 4};
    static const int a3[] = {0, 1, 2}, b3[] = {2, 1, 3}, c3[] = {0, 1, 3};
    if (na == 4 && nb == 4 && nc == 4 && !memcmp(ia, a4, sizeof a4) && !memcmp(ib, b4, sizeof b4) && !memcmp(ic, c4, sizeof c4))
        return 4;
    if (na == 3 && nb == 3 && nc == 3 && !memcmp(ia, a3, sizeof a3) && !memcmp(ib, b3, sizeof b3) && !memcmp(ic, c3, sizeof c3))
        return 3;
    return 0;
}

sdc_status sdc_kernel_einsum(irun *r, const iop *op) {
    const iparam *vp = sdc_rt_param(op, "values");
    const char *eq;
    if (!vp || vp->n != 2) return sdc_rt_fail(r, op, SDC_E_FORMAT, "'values' must hold two tensors");
    itensor *x = sdc_rt_in_at(r, op, "values", 0), *y = x ? sdc_rt_in_at(r, op, "values", 1) : NULL;
    if (!y || sdc_rt_str(r, op, "equation", NULL, &eq)) return r->err->code;
    if (!eq) return sdc_rt_fail(r, op, SDC_E_FORMAT, "required input 'equation' is missing");
    int form = einsum_form(eq);
    if (!form)
        return sdc_rt_fail(r, op, SDC_E_UNSUPPORTED, "equation '%s' is not one of the supported forms (nchw,nwhu->nchu and chw,whr->chr)", eq);
    if (!all_float(x, y)) return sdc_rt_fail(r, op, SDC_E_UNSUPPORTED, "operands must be fp16 or fp32");
    char a1[200], a2[200];
    if (x->rank != form || y->rank != form)
        return sdc_rt_fail(r, op, SDC_E_FORMAT, "equation '%s' needs rank-%d operands, got %s and %s", eq, form,
                       shape_str(x->rank, x->shape, a1, sizeof a1), shape_str(y->rank, y->shape, a2, sizeof a2));
    /* view both as rank 4 [B, C, H, W] · [B, W, H, U] */
    int64_t X[4], Y[4];
    if (form == 4) {
        memcpy(X, x->shape, sizeof X);
        memcpy(Y, y->shape, sizeof Y);
    } else {
        X[0] = Y[0] = 1;
        memcpy(X + 1, x->shape, 3 * sizeof(int64_t));
        memcpy(Y + 1, y->shape, 3 * sizeof(int64_t));
    }
    if (X[3] != Y[1] || (X[0] != Y[0] && X[0] != 1 && Y[0] != 1) || (X[2] != Y[2] && X[2] != 1 && Y[2] != 1))
        return sdc_rt_fail(r, op, SDC_E_FORMAT, "operands %s and %s do not fit '%s'", shape_str(x->rank, x->shape, a1, sizeof a1),
                       shape_str(y->rank, y->shape, a2, sizeof a2), eq);
    int64_t B = X[0] > Y[0] ? X[0] : Y[0], C = X[1], H = X[2] > Y[2] ? X[2] : Y[2], W = X[3], U = Y[3];
    int64_t oshape[4] = {B, C, H, U};
    itensor *o = sdc_rt_out(r, op, 0, form, form == 4 ? oshape : oshape + 1);
    if (!o) return r->err->code;
    if (o->n == 0) return SDC_OK;
    sdc_rt_flops(r, (double)(B * H) * (double)C, (double)U, (double)W);
    batch_gemm g = {.M = C, .N = U, .K = W, .lda = X[2] * W, .ldb = Y[2] * U, .ldc = H * U};
    if (alloc_batch(r, op, &g, (size_t)(B * H))) return r->err->code;
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            size_t i = (size_t)(b * H + h);
            int64_t bx = X[0] == 1 ? 0 : b, by = Y[0] == 1 ? 0 : b, hx = X[2] == 1 ? 0 : h, hy = Y[2] == 1 ? 0 : h;
            g.A[i] = x->f + bx * C * X[2] * W + hx * W;
            g.B[i] = y->f + by * W * Y[2] * U + hy * U;
            g.C[i] = o->f + b * C * H * U + h * U;
        }
    run_batch_nn(sdc_rt_pool(r), &g); /* the fused attention's split form takes the same kernel: the same bits */
    free_batch(&g);
    return SDC_OK;
}

/* ---------------------------------------------------------------- conv */

typedef struct conv_geom {
    int64_t cin_g, k[3], in[3], out[3], s[3], d[3], pb[3]; /* spatial as 3-D */
    int64_t P;                                              /* output positions */
    int64_t kdim;                                           /* cin_g · prod(k) */
} conv_geom;

typedef struct im2col_ctx {
    const conv_geom *g;
    const float *x; /* [cin_g, in0, in1, in2] of this (n, group) */
    float *cols;    /* [kdim, tile] */
    int64_t p0, tile;
} im2col_ctx;

/* One output line's stretch of a cols row: positions o2 in [o2a, o2b) of output line (o0, o1)
   for kernel tap (k0, k1, k2) of one input channel, into dst. Taps outside the input are 0;
   along the innermost axis the valid positions form one run, copied with memcpy when the
   stride is 1. */
static void im2col_stretch(const conv_geom *g, const float *src, int64_t o0, int64_t o1, int64_t o2a, int64_t o2b, int64_t k0,
                           int64_t k1, int64_t k2, float *dst) {
    int64_t i0 = o0 * g->s[0] - g->pb[0] + k0 * g->d[0], i1 = o1 * g->s[1] - g->pb[1] + k1 * g->d[1];
    int64_t n = o2b - o2a;
    if (i0 < 0 || i0 >= g->in[0] || i1 < 0 || i1 >= g->in[1]) {
        memset(dst, 0, sizeof(float) * (size_t)n);
        return;
    }
    const float *line = src + (i0 * g->in[1] + i1) * g->in[2];
    int64_t off = k2 * g->d[2] - g->pb[2], s2 = g->s[2]; /* i2 = o2 * s2 + off */
    /* valid o2: 0 <= o2 * s2 + off < in2 */
    int64_t lo = off >= 0 ? 0 : (-off + s2 - 1) / s2, hi = g->in[2] - off <= 0 ? 0 : (g->in[2] - off + s2 - 1) / s2;
    lo = lo < o2a ? o2a : lo > o2b ? o2b : lo;
    hi = hi < lo ? lo : hi > o2b ? o2b : hi;
    if (lo > o2a) memset(dst, 0, sizeof(float) * (size_t)(lo - o2a));
    if (s2 == 1) {
        memcpy(dst + (lo - o2a), line + lo + off, sizeof(float) * (size_t)(hi - lo));
    } else {
        for (int64_t o2 = lo; o2 < hi; o2++) dst[o2 - o2a] = line[o2 * s2 + off];
    }
    if (hi < o2b) memset(dst + (hi - o2a), 0, sizeof(float) * (size_t)(o2b - hi));
}

/* cols rows [r0, r1): row (ci, k0, k1, k2) holds input channel ci at that kernel tap for the
   output positions [p0, p0 + tile), walked one output line at a time. */
static void im2col_rows(void *vctx, size_t r0, size_t r1) {
    im2col_ctx *c = vctx;
    const conv_geom *g = c->g;
    int64_t ksz = g->k[0] * g->k[1] * g->k[2];
    for (size_t row = r0; row < r1; row++) {
        int64_t ci = (int64_t)row / ksz, kr = (int64_t)row % ksz;
        int64_t k0 = kr / (g->k[1] * g->k[2]), k1 = (kr / g->k[2]) % g->k[1], k2 = kr % g->k[2];
        const float *src = c->x + ci * g->in[0] * g->in[1] * g->in[2];
        float *dst = c->cols + (int64_t)row * c->tile;
        for (int64_t p = c->p0, end = c->p0 + c->tile; p < end;) {
            int64_t line = p / g->out[2], o2 = p % g->out[2];
            int64_t o2b = g->out[2] - o2 < end - p ? g->out[2] : o2 + (end - p);
            im2col_stretch(g, src, line / g->out[1], line % g->out[1], o2, o2b, k0, k1, k2, dst + (p - c->p0));
            p += o2b - o2;
        }
    }
}

/* 8 MiB of columns per thread: of 0.5, 2 and 8 MiB, 8 was fastest on the full-size VAE decoder.
   Up to 8 MiB of columns in all (every conv of the small test models) the columns are made at
   once and one product is split over the pool, as before the tiles: their results stay the
   same bit for bit (the BLAS's sums depend on how the columns are cut). */
enum { CONV_TILE_FLOATS = 2 << 20, CONV_SMALL_FLOATS = 2 << 20 };

typedef struct conv_tiles_ctx {
    const conv_geom *g;
    const float *x, *w, *bias; /* this (n, group)'s input [cin_g, *in], weight [cout_g, kdim], bias [cout_g] */
    float *o;                  /* [cout_g, P] */
    int64_t cout_g, tile;
    bool round;                /* to fp16: the output's declared rounding, done here while the rows are hot */
    _Atomic int oom;
} conv_tiles_ctx;

/* The last pass over `rows` output rows (stride ld) at positions [p0, p0 + t): the bias (one
   value per row) and the rounding to fp16 the output's dtype declares, in the order the
   executor would apply them: the same bits. */
static void conv_epilogue(float *o, int64_t rows, int64_t ld, int64_t p0, int64_t t, const float *bias, bool round) {
    for (int64_t co = 0; co < rows; co++) {
        float *row = o + co * ld + p0;
        if (bias) {
            float bv = bias[co];
            for (int64_t p = 0; p < t; p++) row[p] += bv;
        }
        if (round) sdc_round_f16(NULL, row, (size_t)t);
    }
}

typedef struct conv_rows_ctx {
    float *o;            /* [N, Cout, P] */
    const float *bias;   /* [Cout] or NULL */
    int64_t cout, P;
    bool round;
} conv_rows_ctx;

/* conv_epilogue over output rows [b, e) of all N · Cout. */
static void conv_rows(void *vctx, size_t b, size_t e) {
    conv_rows_ctx *c = vctx;
    for (size_t i = b; i < e; i++)
        conv_epilogue(c->o + (int64_t)i * c->P, 1, c->P, 0, c->P, c->bias ? c->bias + (int64_t)i % c->cout : NULL, c->round);
}

/* Output positions per tile: the tile's column buffer [kdim, tile] is sized to stay in the
   thread's cache between im2col writing it and the product reading it, but wide enough that
   the product's repacking of the weights stays small against its arithmetic. */
static int64_t conv_tile_len(const conv_geom *g, int threads) {
    int64_t t = CONV_TILE_FLOATS / g->kdim;
    if (t < 256) t = 256;
    t = (t + 15) / 16 * 16; /* whole vector widths */
    int64_t even = (g->P + 2 * threads - 1) / (2 * threads); /* at least two tiles per thread */
    if (t > even) t = even < 16 ? 16 : even;
    return t;
}

/* Tiles [t0, t1) of the output positions: each one im2col into this thread's buffer, one
   single-threaded product into the output rows, and the bias added while the rows are hot. */
static void conv_tiles(void *vctx, size_t t0, size_t t1) {
    conv_tiles_ctx *c = vctx;
    const conv_geom *g = c->g;
    size_t cap = 0;
    float *cols = sdc_ibuf_alloc(sizeof(float) * (size_t)(g->kdim * c->tile), &cap); /* [kdim, tile] */
    if (!cols) {
        c->oom = 1;
        return;
    }
    for (size_t ti = t0; ti < t1; ti++) {
        int64_t p0 = (int64_t)ti * c->tile, t = g->P - p0 < c->tile ? g->P - p0 : c->tile;
        im2col_ctx ic = {g, c->x, cols, p0, t};
        im2col_rows(&ic, 0, (size_t)g->kdim);
        sdc_igemm(NULL, false, false, c->cout_g, t, g->kdim, c->w, g->kdim, cols, t, 0.0f, c->o + p0, g->P);
        conv_epilogue(c->o, c->cout_g, g->P, p0, t, c->bias, c->round);
    }
    sdc_ibuf_free(cols, cap);
}

sdc_status sdc_kernel_conv(irun *r, const iop *op) {
    itensor *x = sdc_rt_req(r, op, "x"), *w = x ? sdc_rt_req(r, op, "weight") : NULL;
    if (!w) return r->err->code;
    itensor *b = sdc_rt_in(r, op, "bias");
    if (r->err->code) return r->err->code;
    char a1[200], a2[200];
    if (!all_float(x, w)) return sdc_rt_fail(r, op, SDC_E_UNSUPPORTED, "x and weight must be fp16 or fp32");
    int S = x->rank - 2;
    if (S < 1 || S > 3 || w->rank != x->rank)
        return sdc_rt_fail(r, op, SDC_E_FORMAT, "x %s and weight %s must be [N, C, 1-3 spatial dims] of one rank",
                       shape_str(x->rank, x->shape, a1, sizeof a1), shape_str(w->rank, w->shape, a2, sizeof a2));
    int64_t groups, strides[3], dil[3], pad[6];
    int ns, nd, np;
    bool has_s, has_d, has_p;
    const char *pad_type;
    if (sdc_rt_int(r, op, "groups", 1, &groups) || sdc_rt_ints(r, op, "strides", strides, 3, &ns, &has_s) ||
        sdc_rt_ints(r, op, "dilations", dil, 3, &nd, &has_d) || sdc_rt_ints(r, op, "pad", pad, 6, &np, &has_p) ||
        sdc_rt_str(r, op, "pad_type", "valid", &pad_type))
        return r->err->code;
    if ((has_s && ns != S) || (has_d && nd != S))
        return sdc_rt_fail(r, op, SDC_E_FORMAT, "strides and dilations must have %d values", S);
    int64_t N = x->shape[0], Cin = x->shape[1], Cout = w->shape[0];
    if (groups < 1 || Cin % groups || Cout % groups || w->shape[1] != Cin / groups)
        return sdc_rt_fail(r, op, SDC_E_FORMAT, "x %s, weight %s and groups %lld do not fit ([C_out, C_in/groups, *K])",
                       shape_str(x->rank, x->shape, a1, sizeof a1), shape_str(w->rank, w->shape, a2, sizeof a2), (long long)groups);
    if (b && (b->n != (size_t)Cout || b->rank != 1 || !mt_is_float(b->dtype)))
        return sdc_rt_fail(r, op, SDC_E_FORMAT, "bias must be float [%lld]", (long long)Cout);
    conv_geom g;
    g.cin_g = Cin / groups;
    int off = 3 - S;
    for (int i = 0; i < 3; i++) g.k[i] = g.in[i] = g.s[i] = g.d[i] = 1, g.pb[i] = 0;
    int64_t pa[3] = {0, 0, 0};
    for (int i = 0; i < S; i++) {
        int j = i + off;
        g.in[j] = x->shape[2 + i];
        g.k[j] = w->shape[2 + i];
        g.s[j] = has_s ? strides[i] : 1;
        g.d[j] = has_d ? dil[i] : 1;
        if (g.s[j] < 1 || g.d[j] < 1 || g.k[j] < 1) return sdc_rt_fail(r, op, SDC_E_FORMAT, "strides, dilations and kernel sizes must be >= 1");
        int64_t eff = (g.k[j] - 1) * g.d[j] + 1;
        if (!strcmp(pad_type, "valid")) {
            g.pb[j] = pa[j] = 0;
        } else if (!strcmp(pad_type, "custom")) {
            if (!has_p || np != 2 * S) return sdc_rt_fail(r, op, SDC_E_FORMAT, "pad_type 'custom' needs pad with %d values", 2 * S);
            g.pb[j] = pad[2 * i];
            pa[j] = pad[2 * i + 1];
            if (g.pb[j] < 0 || pa[j] < 0) return sdc_rt_fail(r, op, SDC_E_FORMAT, "negative padding");
        } else if (!strcmp(pad_type, "same") || !strcmp(pad_type, "same_lower")) {
            int64_t outd = (g.in[j] + g.s[j] - 1) / g.s[j];
            int64_t total = (outd - 1) * g.s[j] + eff - g.in[j];
            if (total < 0) total = 0;
            g.pb[j] = pad_type[4] ? total - total / 2 : total / 2; /* same_lower puts the odd one before */
            pa[j] = total - g.pb[j];
        } else {
            return sdc_rt_fail(r, op, SDC_E_FORMAT, "unknown pad_type '%s'", pad_type);
        }
        int64_t span = g.in[j] + g.pb[j] + pa[j] - eff;
        if (span < 0) return sdc_rt_fail(r, op, SDC_E_FORMAT, "kernel %lld (dilated %lld) is larger than the padded input", (long long)g.k[j], (long long)eff);
        g.out[j] = span / g.s[j] + 1;
    }
    for (int i = 0; i < off; i++) g.out[i] = 1;
    int64_t oshape[5] = {N, Cout};
    for (int i = 0; i < S; i++) oshape[2 + i] = g.out[i + off];
    itensor *o = sdc_rt_out(r, op, 0, x->rank, oshape);
    if (!o) return r->err->code;
    g.P = g.out[0] * g.out[1] * g.out[2];
    g.kdim = g.cin_g * g.k[0] * g.k[1] * g.k[2];
    int64_t cout_g = Cout / groups, in_sz = g.in[0] * g.in[1] * g.in[2];
    sdc_rt_flops(r, (double)(N * Cout), (double)g.P, (double)g.kdim);
    bool round = o->dtype == MT_FP16 && !r->m->exact_fp16_off;
    r->rounded = round; /* by conv_epilogue */
    if (S == 2 && groups == 1 && g.k[1] == 3 && g.k[2] == 3 && g.s[1] == 1 && g.s[2] == 1 && g.d[1] == 1 && g.d[2] == 1 && o->n) {
        sdc_wino_conv wc = {N, Cin, Cout, g.in[1], g.in[2], g.out[1], g.out[2], g.pb[1], g.pb[2], x->f, w->f, b ? b->f : NULL, o->f, round};
        int done = sdc_conv_winograd(sdc_rt_pool(r), &wc);
        if (done < 0) return sdc_rt_fail(r, op, SDC_E_NOMEM, "out of memory for the Winograd buffers");
        if (done) return SDC_OK;
    }
    bool direct = g.k[0] * g.k[1] * g.k[2] == 1 && g.s[0] * g.s[1] * g.s[2] == 1 && g.pb[0] + g.pb[1] + g.pb[2] == 0 &&
                  pa[0] + pa[1] + pa[2] == 0;
    if (!direct && o->n && g.kdim * g.P > CONV_SMALL_FLOATS) {
        conv_tiles_ctx c = {&g, NULL, NULL, b ? b->f : NULL, NULL, cout_g, conv_tile_len(&g, sdc_ipool_size(sdc_rt_pool(r))),
                            round, 0};
        for (int64_t n = 0; n < N && !c.oom; n++)
            for (int64_t gi = 0; gi < groups && !c.oom; gi++) {
                c.x = x->f + (n * Cin + gi * g.cin_g) * in_sz;
                c.w = w->f + gi * cout_g * g.kdim;
                c.o = o->f + (n * Cout + gi * cout_g) * g.P;
                c.bias = b ? b->f + gi * cout_g : NULL;
                sdc_ipool_for(sdc_rt_pool(r), (size_t)((g.P + c.tile - 1) / c.tile), 1, conv_tiles, &c);
            }
        if (c.oom) return sdc_rt_fail(r, op, SDC_E_NOMEM, "out of memory for the im2col buffer");
        return SDC_OK;
    }
    size_t cols_cap = 0; /* the small case: all columns at once, im2col then one product over the pool */
    float *cols = direct || o->n == 0 ? NULL : sdc_ibuf_alloc(sizeof(float) * (size_t)(g.kdim * g.P), &cols_cap);
    if (!direct && o->n && !cols) return sdc_rt_fail(r, op, SDC_E_NOMEM, "out of memory for the im2col buffer");
    for (int64_t n = 0; n < N && o->n; n++)
        for (int64_t gi = 0; gi < groups; gi++) {
            const float *xg = x->f + (n * Cin + gi * g.cin_g) * in_sz;
            const float *wg = w->f + gi * cout_g * g.kdim;
            float *og = o->f + (n * Cout + gi * cout_g) * g.P;
            if (!direct) {
                im2col_ctx c = {&g, xg, cols, 0, g.P};
                sdc_ipool_for(sdc_rt_pool(r), (size_t)g.kdim, (size_t)(8192 / g.P) + 1, im2col_rows, &c);
                xg = cols;
            }
            sdc_igemm(sdc_rt_pool(r), false, false, cout_g, g.P, g.kdim, wg, g.kdim, xg, g.P, 0.0f, og, g.P);
        }
    sdc_ibuf_free(cols, cols_cap);
    conv_rows_ctx e = {o->f, b ? b->f : NULL, Cout, g.P, round};
    if ((b || round) && o->n) sdc_ipool_for(sdc_rt_pool(r), (size_t)(N * Cout), (size_t)(16384 / g.P) + 1, conv_rows, &e);
    return SDC_OK;
}

/* ---------------------------------------------------------------- softmax */

typedef struct sm_ctx {
    const float *x;
    float *o;
    int64_t L, inner, chunks; /* chunks: blocks of SM_W lines along inner, per outer index */
} sm_ctx;

enum { SM_W = 256 };

/* Softmax along a contiguous axis: one line at a time. */
SDC_VECTORISE static void softmax_lines(void *vctx, size_t b, size_t e) {
    sm_ctx *c = vctx;
    for (size_t line = b; line < e; line++) {
        const float *x = c->x + line * (size_t)c->L;
        float *o = c->o + line * (size_t)c->L;
        float mx = sdc_vec_max(x, (size_t)c->L);
        if (mx == -INFINITY) mx = 0; /* all -inf: exp gives 0s, the sum 0, the result NaN as NumPy's */
        for (int64_t i = 0; i < c->L; i++) o[i] = x[i] - mx;
        sdc_vec_exp(o, o, (size_t)c->L);
        double sum = 0;
        for (int64_t i = 0; i < c->L; i++) sum += o[i];
        float inv = (float)(1.0 / sum);
        for (int64_t i = 0; i < c->L; i++) o[i] *= inv;
    }
}

/* Softmax along a strided axis: SM_W neighbouring lines at a time, walking the axis row by row
   in three passes (max, exp and sum, scale); each pass reads SM_W contiguous floats of a row
   (a kilobyte: whole cache lines, one page), so the attention weights' softmax over keys of
   SPLIT_EINSUM streams through memory instead of touching one page per element. Every line
   gets the same arithmetic in the same order as one at a time would. */
SDC_VECTORISE static void softmax_blocks(void *vctx, size_t b, size_t e) {
    sm_ctx *c = vctx;
    float mx[SM_W], sum[SM_W];
    for (size_t blk = b; blk < e; blk++) {
        size_t outer = blk / (size_t)c->chunks;
        int64_t i0 = (int64_t)(blk % (size_t)c->chunks) * SM_W;
        int64_t n = c->inner - i0 < SM_W ? c->inner - i0 : SM_W;
        const float *x = c->x + outer * (size_t)(c->L * c->inner) + i0;
        float *o = c->o + outer * (size_t)(c->L * c->inner) + i0;
        for (int64_t j = 0; j < n; j++) mx[j] = -INFINITY, sum[j] = 0;
        for (int64_t l = 0; l < c->L; l++) {
            const float *row = x + l * c->inner;
            for (int64_t j = 0; j < n; j++) mx[j] = row[j] > mx[j] ? row[j] : mx[j];
        }
        for (int64_t j = 0; j < n; j++) mx[j] = mx[j] == -INFINITY ? 0.0f : mx[j];
        for (int64_t l = 0; l < c->L; l++) { /* in[j] is read before out[j] is written: x == o is fine */
            const float *in = x + l * c->inner;
            float *out = o + l * c->inner;
            for (int64_t j = 0; j < n; j++) out[j] = in[j] - mx[j];
            sdc_vec_exp(out, out, (size_t)n);
            for (int64_t j = 0; j < n; j++) sum[j] += out[j];
        }
        for (int64_t j = 0; j < n; j++) sum[j] = 1.0f / sum[j];
        for (int64_t l = 0; l < c->L; l++) {
            float *row = o + l * c->inner;
            for (int64_t j = 0; j < n; j++) row[j] *= sum[j];
        }
    }
}

sdc_status sdc_kernel_softmax(irun *r, const iop *op) {
    itensor *x = sdc_rt_req(r, op, "x");
    int64_t axis;
    if (!x || sdc_rt_int(r, op, "axis", -1, &axis)) return r->err->code;
    if (!mt_is_float(x->dtype)) return sdc_rt_fail(r, op, SDC_E_FORMAT, "x must be fp16 or fp32");
    if (!norm_axis(&axis, x->rank)) return sdc_rt_fail(r, op, SDC_E_FORMAT, "axis %lld is out of range", (long long)axis);
    itensor *o = sdc_rt_out_reuse(r, op, 0, "x", x->rank, x->shape); /* both passes read a value before writing it */
    if (!o) return r->err->code;
    sm_ctx c = {x->f, o->f, x->shape[axis], 1, 0};
    for (int d = (int)axis + 1; d < x->rank; d++) c.inner *= x->shape[d];
    if (o->n == 0) return SDC_OK;
    size_t outer = x->n / (size_t)(c.L * c.inner);
    if (c.inner == 1) {
        sdc_ipool_for(sdc_rt_pool(r), outer, (size_t)(4096 / c.L) + 1, softmax_lines, &c);
    } else {
        c.chunks = (c.inner + SM_W - 1) / SM_W;
        sdc_ipool_for(sdc_rt_pool(r), outer * (size_t)c.chunks, 1, softmax_blocks, &c);
    }
    return SDC_OK;
}

/* ---------------------------------------------------------------- normalisation */

static void offsets(int rank, const int64_t *shape, const bool *sel, bool want, size_t *out) {
    int64_t stride[SDC_MAX_RANK], idx[SDC_MAX_RANK] = {0};
    int64_t s = 1;
    for (int d = rank - 1; d >= 0; d--) {
        stride[d] = s;
        s *= shape[d];
    }
    size_t n = 0, off = 0;
    for (;;) {
        out[n++] = off;
        int d = rank - 1;
        for (; d >= 0; d--) {
            if (sel[d] != want) continue;
            if (++idx[d] < shape[d]) {
                off += (size_t)stride[d];
                break;
            }
            off -= (size_t)(stride[d] * (shape[d] - 1));
            idx[d] = 0;
        }
        if (d < 0) break;
    }
}

sdc_status sdc_red_plan_make(irun *r, const iop *op, const itensor *x, const bool *reduced, red_plan *p) {
    p->nk = p->nr = 1;
    for (int d = 0; d < x->rank; d++) {
        if (reduced[d]) p->nr *= (size_t)x->shape[d];
        else p->nk *= (size_t)x->shape[d];
    }
    p->kept = sdc_malloc(sizeof(size_t) * (p->nk ? p->nk : 1));
    p->red = sdc_malloc(sizeof(size_t) * (p->nr ? p->nr : 1));
    if (!p->kept || !p->red) {
        sdc_free(p->kept);
        sdc_free(p->red);
        return sdc_rt_fail(r, op, SDC_E_NOMEM, "out of memory");
    }
    if (x->n) {
        offsets(x->rank, x->shape, reduced, false, p->kept);
        offsets(x->rank, x->shape, reduced, true, p->red);
    }
    return SDC_OK;
}

void sdc_red_plan_free(red_plan *p) {
    sdc_free(p->kept);
    sdc_free(p->red);
}

typedef struct norm_ctx {
    red_plan p;
    const float *x;
    float *o;
    const float *gamma, *beta; /* indexed by the reduced position (layer_norm) */
    const float *cg, *cb;      /* indexed by channel (instance_norm) */
    int64_t C;
    float eps;
} norm_ctx;

enum { NORM_RUN = 64 }; /* positions normalised side by side */

/* Positions k0 .. k0 + n (n <= NORM_RUN) whose values lie next to each other
   (kept[k0 + i] = kept[k0] + i: a layer norm over the channels of (B, C, 1, S), whose reduced
   values are S apart), side by side: each pass walks a channel's n neighbours instead of one
   value per cache line. Each position's statistics are summed in double over j in order. */
SDC_VECTORISE static void norm_run(const norm_ctx *c, size_t k0, size_t n) {
    size_t nr = c->p.nr, base = c->p.kept[k0];
    double s[NORM_RUN] = {0}, v[NORM_RUN] = {0}, mean[NORM_RUN];
    float inv[NORM_RUN], m[NORM_RUN], cg[NORM_RUN], cb[NORM_RUN];
    for (size_t j = 0; j < nr; j++) {
        const float *x = c->x + base + c->p.red[j];
        for (size_t i = 0; i < n; i++) s[i] += x[i];
    }
    for (size_t i = 0; i < n; i++) mean[i] = s[i] / (double)nr;
    for (size_t j = 0; j < nr; j++) {
        const float *x = c->x + base + c->p.red[j];
        for (size_t i = 0; i < n; i++) {
            double d = x[i] - mean[i];
            v[i] += d * d;
        }
    }
    for (size_t i = 0; i < n; i++) {
        inv[i] = (float)(1.0 / sqrt(v[i] / (double)nr + (double)c->eps)), m[i] = (float)mean[i];
        cg[i] = c->cg ? c->cg[(k0 + i) % (size_t)c->C] : 1.0f, cb[i] = c->cb ? c->cb[(k0 + i) % (size_t)c->C] : 0.0f;
    }
    for (size_t j = 0; j < nr; j++) {
        const float *x = c->x + base + c->p.red[j];
        float *o = c->o + base + c->p.red[j], gj = c->gamma ? c->gamma[j] : 1.0f, bj = c->beta ? c->beta[j] : 0.0f;
        for (size_t i = 0; i < n; i++) {
            float y = (x[i] - m[i]) * inv[i];
            if (c->gamma) y *= gj;
            if (c->beta) y += bj;
            o[i] = y * cg[i] + cb[i];
        }
    }
}

/* How many positions from k on (at most NORM_RUN, before e) lie next to each other. */
static size_t adjacent_run(const red_plan *p, size_t k, size_t e) {
    size_t n = 1;
    while (n < NORM_RUN && k + n < e && p->kept[k + n] == p->kept[k] + n) n++;
    return n;
}

/* Positions [b, e), each run of neighbours side by side (a run of one where they are not). */
static void norm_rows(void *vctx, size_t b, size_t e) {
    const norm_ctx *c = vctx;
    for (size_t k = b, run; k < e; k += run) {
        run = adjacent_run(&c->p, k, e);
        norm_run(c, k, run);
    }
}

sdc_status sdc_kernel_layer_norm(irun *r, const iop *op) {
    itensor *x = sdc_rt_req(r, op, "x");
    if (!x) return r->err->code;
    itensor *gamma = sdc_rt_in(r, op, "gamma"), *beta = r->err->code ? NULL : sdc_rt_in(r, op, "beta");
    int64_t axes[SDC_MAX_RANK];
    int na;
    bool has_axes;
    norm_ctx c = {0};
    if (r->err->code || sdc_rt_ints(r, op, "axes", axes, SDC_MAX_RANK, &na, &has_axes) || sdc_rt_float(r, op, "epsilon", 1e-5f, &c.eps))
        return r->err->code;
    if (!mt_is_float(x->dtype)) return sdc_rt_fail(r, op, SDC_E_FORMAT, "x must be fp16 or fp32");
    bool red[SDC_MAX_RANK] = {false};
    if (!has_axes)
        for (int d = 0; d < x->rank; d++) red[d] = true;
    for (int i = 0; i < na; i++) {
        if (!norm_axis(&axes[i], x->rank) || red[axes[i]])
            return sdc_rt_fail(r, op, SDC_E_FORMAT, "axes must be distinct and in [-rank, rank)");
        red[axes[i]] = true;
    }
    size_t nr = 1;
    for (int d = 0; d < x->rank; d++)
        if (red[d]) nr *= (size_t)x->shape[d];
    if ((gamma && (gamma->n != nr || !mt_is_float(gamma->dtype))) || (beta && (beta->n != nr || !mt_is_float(beta->dtype))))
        return sdc_rt_fail(r, op, SDC_E_FORMAT, "gamma/beta must be float with x.shape[axes] (%zu elements)", nr);
    itensor *o = sdc_rt_out(r, op, 0, x->rank, x->shape);
    if (!o) return r->err->code;
    if (o->n == 0) return SDC_OK;
    if (sdc_red_plan_make(r, op, x, red, &c.p)) return r->err->code;
    c.x = x->f;
    c.o = o->f;
    c.gamma = gamma ? gamma->f : NULL;
    c.beta = beta ? beta->f : NULL;
    sdc_ipool_for(sdc_rt_pool(r), c.p.nk, (size_t)(16384 / (nr ? nr : 1)) + 1, norm_rows, &c);
    sdc_red_plan_free(&c.p);
    return SDC_OK;
}

sdc_status sdc_kernel_instance_norm(irun *r, const iop *op) {
    itensor *x = sdc_rt_req(r, op, "x");
    if (!x) return r->err->code;
    itensor *gamma = sdc_rt_in(r, op, "gamma"), *beta = r->err->code ? NULL : sdc_rt_in(r, op, "beta");
    norm_ctx c = {0};
    if (r->err->code || sdc_rt_float(r, op, "epsilon", 1e-5f, &c.eps)) return r->err->code;
    if (!mt_is_float(x->dtype) || x->rank < 3) return sdc_rt_fail(r, op, SDC_E_FORMAT, "x must be float [N, C, *D] with rank >= 3");
    c.C = x->shape[1];
    if ((gamma && (gamma->n != (size_t)c.C || !mt_is_float(gamma->dtype))) || (beta && (beta->n != (size_t)c.C || !mt_is_float(beta->dtype))))
        return sdc_rt_fail(r, op, SDC_E_FORMAT, "gamma/beta must be float [%lld]", (long long)c.C);
    bool red[SDC_MAX_RANK] = {false};
    for (int d = 2; d < x->rank; d++) red[d] = true;
    itensor *o = sdc_rt_out(r, op, 0, x->rank, x->shape);
    if (!o) return r->err->code;
    if (o->n == 0) return SDC_OK;
    if (sdc_red_plan_make(r, op, x, red, &c.p)) return r->err->code;
    c.x = x->f;
    c.o = o->f;
    c.cg = gamma ? gamma->f : NULL;
    c.cb = beta ? beta->f : NULL;
    sdc_ipool_for(sdc_rt_pool(r), c.p.nk, 1, norm_rows, &c);
    sdc_red_plan_free(&c.p);
    return SDC_OK;
}

typedef struct bn_ctx {
    const float *x, *mean, *sd, *gamma, *beta; /* sd: sqrtf(variance + eps) per channel */
    float *o;
    size_t C, inner;
} bn_ctx;

/* Planes [b, e) of (N·C) planes of `inner` values, each channel's arithmetic as one element's. */
SDC_VECTORISE static void bn_planes(void *vctx, size_t b, size_t e) {
    const bn_ctx *c = vctx;
    for (size_t pl = b; pl < e; pl++) {
        size_t ch = pl % c->C;
        float m = c->mean[ch], sd = c->sd[ch], g = c->gamma ? c->gamma[ch] : 1.0f, be = c->beta ? c->beta[ch] : 0.0f;
        const float *x = c->x + pl * c->inner;
        float *o = c->o + pl * c->inner;
        if (c->gamma && c->beta)
            for (size_t i = 0; i < c->inner; i++) o[i] = (x[i] - m) / sd * g + be;
        else
            for (size_t i = 0; i < c->inner; i++) {
                float y = (x[i] - m) / sd;
                if (c->gamma) y *= g;
                if (c->beta) y += be;
                o[i] = y;
            }
    }
}

sdc_status sdc_kernel_batch_norm(irun *r, const iop *op) {
    itensor *x = sdc_rt_req(r, op, "x"), *mean = x ? sdc_rt_req(r, op, "mean") : NULL, *var = mean ? sdc_rt_req(r, op, "variance") : NULL;
    if (!var) return r->err->code;
    itensor *gamma = sdc_rt_in(r, op, "gamma"), *beta = r->err->code ? NULL : sdc_rt_in(r, op, "beta");
    float eps;
    if (r->err->code || sdc_rt_float(r, op, "epsilon", 1e-5f, &eps)) return r->err->code;
    if (!mt_is_float(x->dtype) || x->rank < 2) return sdc_rt_fail(r, op, SDC_E_FORMAT, "x must be float [N, C, *D]");
    size_t C = (size_t)x->shape[1];
    itensor *ps[4] = {mean, var, gamma, beta};
    for (int i = 0; i < 4; i++)
        if (ps[i] && (ps[i]->n != C || !mt_is_float(ps[i]->dtype)))
            return sdc_rt_fail(r, op, SDC_E_FORMAT, "mean, variance, gamma and beta must be float [%zu]", C);
    itensor *o = sdc_rt_out_reuse(r, op, 0, "x", x->rank, x->shape); /* element by element: in place is safe */
    if (!o) return r->err->code;
    size_t inner = 1;
    for (int d = 2; d < x->rank; d++) inner *= (size_t)x->shape[d];
    if (o->n == 0) return SDC_OK;
    float *sd = sdc_malloc(sizeof(float) * C); /* [C] */
    if (!sd) return sdc_rt_fail(r, op, SDC_E_NOMEM, "out of memory");
    for (size_t ch = 0; ch < C; ch++) sd[ch] = sqrtf(var->f[ch] + eps);
    bn_ctx c = {x->f, mean->f, sd, gamma ? gamma->f : NULL, beta ? beta->f : NULL, o->f, C, inner};
    sdc_ipool_for(sdc_rt_pool(r), x->n / inner, (size_t)(16384 / inner) + 1, bn_planes, &c);
    sdc_free(sd);
    return SDC_OK;
}

/* ---------------------------------------------------------------- scaled_dot_product_attention */

sdc_status sdc_kernel_sdpa(irun *r, const iop *op) {
    itensor *q = sdc_rt_req(r, op, "query"), *k = q ? sdc_rt_req(r, op, "key") : NULL, *v = k ? sdc_rt_req(r, op, "value") : NULL;
    if (!v) return r->err->code;
    itensor *mask = sdc_rt_in(r, op, "attn_mask");
    if (r->err->code) return r->err->code;
    if (!all_float(q, k) || !mt_is_float(v->dtype)) return sdc_rt_fail(r, op, SDC_E_UNSUPPORTED, "query, key and value must be float");
    int R = q->rank;
    if (R < 3 || k->rank != R || v->rank != R) return sdc_rt_fail(r, op, SDC_E_FORMAT, "query, key and value must have one rank >= 3");
    int64_t L = q->shape[R - 2], E = q->shape[R - 1], S = k->shape[R - 2], EV = v->shape[R - 1];
    size_t nb = 1;
    for (int d = 0; d < R - 2; d++) {
        if (k->shape[d] != q->shape[d] || v->shape[d] != q->shape[d])
            return sdc_rt_fail(r, op, SDC_E_UNSUPPORTED, "batch dims of query, key and value must be equal");
        nb *= (size_t)q->shape[d];
    }
    if (k->shape[R - 1] != E || v->shape[R - 2] != S) return sdc_rt_fail(r, op, SDC_E_FORMAT, "key must be [*, S, E] and value [*, S, EV]");
    int64_t oshape[SDC_MAX_RANK];
    memcpy(oshape, q->shape, sizeof(int64_t) * (size_t)R);
    oshape[R - 1] = EV;
    itensor *o = sdc_rt_out(r, op, 0, R, oshape);
    if (!o) return r->err->code;
    /* mask broadcast to [*batch, L, S] */
    int64_t mst[SDC_MAX_RANK] = {0};
    if (mask) {
        if (mask->rank > R) return sdc_rt_fail(r, op, SDC_E_FORMAT, "attn_mask has a larger rank than query");
        int64_t s = 1;
        for (int d = R - 1; d >= 0; d--) {
            int dd = d - (R - mask->rank);
            int64_t want = d == R - 1 ? S : d == R - 2 ? L : q->shape[d];
            int64_t have = dd >= 0 ? mask->shape[dd] : 1;
            if (have != 1 && have != want) return sdc_rt_fail(r, op, SDC_E_FORMAT, "attn_mask does not broadcast to [*, L, S]");
            mst[d] = have == 1 ? 0 : s;
            s *= have;
        }
    }
    float *scores = sdc_malloc(sizeof(float) * (size_t)(L * S + 1));
    if (!scores) return sdc_rt_fail(r, op, SDC_E_NOMEM, "out of memory");
    float scale = 1.0f / sqrtf((float)E);
    sdc_rt_flops(r, (double)nb * (double)L, (double)S, (double)(E + EV));
    for (size_t b = 0; b < nb; b++) {
        sdc_igemm(sdc_rt_pool(r), false, true, L, S, E, q->f + b * (size_t)(L * E), E, k->f + b * (size_t)(S * E), E, 0.0f, scores, S);
        size_t mb = 0, rem = b;
        for (int d = R - 3; d >= 0; d--) {
            mb += (rem % (size_t)q->shape[d]) * (size_t)mst[d];
            rem /= (size_t)q->shape[d];
        }
        for (int64_t i = 0; i < L; i++) {
            float *row = scores + i * S, mx = -INFINITY;
            for (int64_t j = 0; j < S; j++) {
                row[j] *= scale;
                if (mask) {
                    size_t mi = mb + (size_t)(i * mst[R - 2] + j * mst[R - 1]);
                    if (mask->dtype == MT_BOOL) row[j] = mask->i[mi] ? row[j] : -INFINITY;
                    else row[j] += it_getf(mask, mi);
                }
                mx = row[j] > mx ? row[j] : mx;
            }
            double sum = 0;
            for (int64_t j = 0; j < S; j++) {
                row[j] = mx == -INFINITY ? 0.0f : expf(row[j] - mx);
                sum += row[j];
            }
            for (int64_t j = 0; j < S; j++) row[j] = sum > 0 ? (float)(row[j] / sum) : 0.0f;
        }
        sdc_igemm(sdc_rt_pool(r), false, false, L, EV, S, scores, S, v->f + b * (size_t)(S * EV), EV, 0.0f, o->f + b * (size_t)(L * EV), EV);
    }
    sdc_free(scores);
    return SDC_OK;
}
