/*
 * fuse_geglu.c — the GEGLU feed-forward's middle as one op. SD's transformer blocks split the
 * projection in two along the channels and multiply one half by the gelu of the other
 * (src/nets/unet.c):
 *
 *   a, b = split(h, 2 equal parts, axis)       h (B, 2C, 1, S) → (B, C, 1, S) each
 *   out  = mul(a, gelu(b))
 *
 * Unfused, that is two copies of h's halves, a pass for the gelu and one for the product
 * (several GB a step at SDXL's sizes). Fused, the mul reads both halves where they lie in h
 * and writes its result once. Every value gets the arithmetic of the three kernels: the halves
 * are h's values, the gelu is sdc_gelu_block's, rounded as the gelu's result is declared, and
 * the product is rounded as the mul's: the output is bit-identical.
 *
 * The loader (sdc_interp_fuse_geglu) marks the split and the gelu as computed by the mul,
 * which then reads h (liveness and exec.c account for that); only when the halves and the
 * gelu's result are read by nothing else and are not outputs.
 */
#include "interp/interp.h"

/* ---------------------------------------------------------------- matching (load time) */

typedef struct geglu {
    int split_op, gelu_op;
    int gated; /* which half (0, 1) goes through the gelu */
} geglu;

/* Walks from the mul back to the split (types and wiring only); `fused` as sdc_interp_maker's. */
static bool geglu_walk(const sdc_model *m, const iop *mul, int fused, geglu *gg) {
    if (!mul->def || strcmp(mul->type, "mul") || mul->n_out != 1) return false;
    int x = sdc_rt_param_slot(mul, "x"), y = sdc_rt_param_slot(mul, "y"), other = x;
    gg->gelu_op = sdc_interp_maker(m, y, "gelu", fused);
    if (gg->gelu_op < 0) {
        gg->gelu_op = sdc_interp_maker(m, x, "gelu", fused);
        other = y;
    }
    if (gg->gelu_op < 0 || m->ops[gg->gelu_op].n_out != 1) return false;
    int b = sdc_rt_param_slot(&m->ops[gg->gelu_op], "x");
    gg->split_op = sdc_interp_maker(m, b, "split", fused);
    if (gg->split_op < 0 || sdc_interp_maker(m, other, "split", fused) != gg->split_op) return false;
    const iop *sp = &m->ops[gg->split_op];
    if (sp->n_out != 2 || other == b) return false;
    gg->gated = b == sp->outs[1];
    return (gg->gated ? sp->outs[0] : sp->outs[1]) == other;
}

/* Halves of one shape, of the dtype of h, the gelu's and the mul's results float; the halves
   and the gelu's result read once (by the gelu and the mul) and not outputs. */
static bool geglu_fits(const sdc_model *m, const int *readers, const iop *mul, const geglu *gg) {
    const iop *sp = &m->ops[gg->split_op], *ge = &m->ops[gg->gelu_op];
    int hs = sdc_rt_param_slot(sp, "x");
    if (hs < 0) return false;
    const islot *h = &m->slots[hs], *p0 = &m->slots[sp->outs[0]], *p1 = &m->slots[sp->outs[1]];
    const islot *g = &m->slots[ge->outs[0]], *o = &m->slots[mul->outs[0]];
    if (h->rank < 1 || !sdc_interp_shape_known(h) || !sdc_interp_shape_known(p0) || p0->rank != h->rank ||
        p1->rank != h->rank || g->rank != h->rank || o->rank != h->rank)
        return false;
    for (int d = 0; d < h->rank; d++)
        if (p0->shape[d] != p1->shape[d] || g->shape[d] != p0->shape[d] || o->shape[d] != p0->shape[d] ||
            (h->shape[d] != p0->shape[d] && h->shape[d] != 2 * p0->shape[d]))
            return false;
    bool floats = mt_is_float(h->dtype) && p0->dtype == h->dtype && p1->dtype == h->dtype && mt_is_float(g->dtype) &&
                  mt_is_float(o->dtype);
    return floats && readers[sp->outs[0]] == 1 && readers[sp->outs[1]] == 1 && readers[ge->outs[0]] == 1;
}

static const iop_def FUSED_GEGLU = {"split + gelu + mul (fused)", sdc_kernel_fused_geglu, 0, NULL};

void sdc_interp_fuse_geglu(sdc_model *m) {
    int *readers = sdc_interp_count_readers(m);
    if (!readers) return; /* out of memory: the ops run unfused */
    for (int i = 0; i < m->n_ops; i++) {
        iop *mul = &m->ops[i];
        geglu gg;
        if (mul->fused_into >= 0 || mul->fuse_first >= 0 || !geglu_walk(m, mul, -1, &gg) || !geglu_fits(m, readers, mul, &gg))
            continue;
        m->ops[gg.split_op].fused_into = m->ops[gg.gelu_op].fused_into = i;
        mul->fuse_first = gg.split_op < gg.gelu_op ? gg.split_op : gg.gelu_op;
        mul->def = &FUSED_GEGLU;
    }
    sdc_free(readers);
}

/* ---------------------------------------------------------------- the kernel */

enum { GEGLU_BLOCK = 1024 };

typedef struct geglu_ctx {
    const float *h; /* (outer, 2, half) */
    float *o;       /* (outer, half) */
    size_t half, blocks; /* values per half; blocks of GEGLU_BLOCK per half */
    int code, gated;
    bool round_gelu, round_out;
} geglu_ctx;

static void geglu_blocks(void *vctx, size_t b, size_t e) {
    const geglu_ctx *c = vctx;
    float t[GEGLU_BLOCK];
    for (size_t k = b; k < e; k++) {
        size_t ou = k / c->blocks, j0 = k % c->blocks * GEGLU_BLOCK, n = c->half - j0 < GEGLU_BLOCK ? c->half - j0 : GEGLU_BLOCK;
        const float *a = c->h + (2 * ou + (size_t)(1 - c->gated)) * c->half + j0, *g = c->h + (2 * ou + (size_t)c->gated) * c->half + j0;
        float *o = c->o + ou * c->half + j0;
        sdc_gelu_block(c->code, g, t, n);
        if (c->round_gelu) sdc_round_f16(NULL, t, n);
        for (size_t j = 0; j < n; j++) o[j] = a[j] * t[j];
        if (c->round_out) sdc_round_f16(NULL, o, n);
    }
}

sdc_status sdc_kernel_fused_geglu(irun *r, const iop *op) {
    sdc_model *m = r->m;
    geglu gg;
    if (!geglu_walk(m, op, (int)(op - m->ops), &gg)) return sdc_rt_fail(r, op, SDC_E_INTERNAL, "the fused GEGLU lost its ops");
    const iop *sp = &m->ops[gg.split_op], *ge = &m->ops[gg.gelu_op];
    itensor *h = sdc_rt_req(r, sp, "x");
    int64_t axis;
    const char *mode;
    if (!h || sdc_rt_int(r, sp, "axis", 0, &axis) || sdc_rt_str(r, ge, "mode", "EXACT", &mode)) return r->err->code;
    geglu_ctx c = {.h = h->f, .code = sdc_gelu_code(mode), .gated = gg.gated};
    if (c.code < 0) return sdc_rt_fail(r, ge, SDC_E_FORMAT, "unknown mode '%s'", mode);
    const islot *part = &m->slots[sp->outs[0]];
    bool halves = mt_is_float(h->dtype) && norm_axis(&axis, h->rank) && h->rank == part->rank;
    for (int d = 0; halves && d < h->rank; d++) halves = h->shape[d] == part->shape[d] * (d == axis ? 2 : 1);
    if (!halves) {
        char a1[200], a2[200];
        return sdc_rt_fail(r, sp, SDC_E_FORMAT, "x %s is not two halves %s along axis %lld", shape_str(h->rank, h->shape, a1, sizeof a1),
                           shape_str(part->rank, part->shape, a2, sizeof a2), (long long)axis);
    }
    size_t outer = 1;
    for (int d = 0; d < axis; d++) outer *= (size_t)h->shape[d];
    itensor *o = sdc_rt_out(r, op, 0, part->rank, part->shape);
    if (!o) return r->err->code;
    if (o->n == 0) return SDC_OK;
    bool rounding = !m->exact_fp16_off;
    c.o = o->f;
    c.half = o->n / outer;
    c.blocks = (c.half + GEGLU_BLOCK - 1) / GEGLU_BLOCK;
    c.round_gelu = rounding && m->slots[ge->outs[0]].dtype == MT_FP16;
    c.round_out = rounding && o->dtype == MT_FP16;
    r->rounded = c.round_out;
    sdc_ipool_for(sdc_rt_pool(r), outer * c.blocks, 1, geglu_blocks, &c);
    return SDC_OK;
}
