/*
 * fuse_norm.c — GroupNorm's standardisation run as one op. SD graphs lower group_norm as
 * coremltools does, each step its own op (src/nets/blocks.c):
 *
 *   mean = reduce_mean(h, trailing axes, keep_dims)      (B, G, 1, ...)
 *   dev  = sub(h, mean)                                   h's shape
 *   sq   = square(dev)
 *   var  = reduce_mean(sq, the same axes, keep_dims)
 *   std  = sqrt(add(var, eps))                            eps a scalar constant
 *   out  = real_div(dev, std)
 *
 * Unfused, that is eight passes over an activation of up to 256 MB (at the VAE's 512x512) and
 * five writes, plus each fp16 result's rounding pass. Fused, each group is read three times
 * (mean; deviations and their squares' sum; the result) and written once, the group's values
 * staying in cache between passes. Every value gets the arithmetic the unfused kernels give it:
 * the same float operations, each step rounded to fp16 where its slot is declared fp16 (unless
 * the run turned rounding off), and the means summed in double by sdc_sum_f64's lanes and
 * order (the squares' sum streamed block by block through the same lanes): the output is
 * bit-identical to the unfused ops.
 *
 * When h is a reshape read by nothing else (GroupNorm's view of (B, C, H, W) as groups), the
 * reshape is computed too: the chain reads the reshaped value's buffer, and no copy is made.
 *
 * The loader (sdc_interp_fuse_norm, after fuse.c) marks the six (seven) ops as computed by the
 * real_div, which reads h: liveness and the run (exec.c) account for that as for attention.
 * A chain is fused only when none of its intermediate values is read elsewhere or is an output.
 *
 * When the result's only reader is a silu (through a reshape back to (B, C, H, W), as in every
 * ResNet block), the silu is computed too, in the last pass while the values are in cache, with
 * the silu kernel's arithmetic (sdc_silu_block) on the standardised
 * value rounded as declared: the silu op then computes the chain.
 */
#include <math.h>

#include "interp/interp.h"

#include "io/fp16.h"

/* ---------------------------------------------------------------- matching (load time) */

typedef struct gn_chain {
    int mean_op, sub_op, square_op, var_op, add_op, sqrt_op; /* op indices */
    int h, eps;                                                /* slots: the input, the epsilon constant */
    int reshape_op, src; /* the reshape making h from src, computed too (-1: h is read as it is) */
} gn_chain;

/* The op of type `type` that makes slot s (its only output) and is fused into op `fused`
   (-1: not fused), or -1. */
static int maker(const sdc_model *m, int s, const char *type, int fused) {
    int i = sdc_interp_maker(m, s, type, fused);
    return i >= 0 && m->ops[i].n_out == 1 ? i : -1;
}

/* Walks from the real_div back to h; false when the ops do not have the chain's form (types
   and wiring only: gn_fits checks values, shapes and readers). `fused`: what the chain's ops
   are fused into (-1 when matching, the real_div's index when running). */
static bool gn_walk(const sdc_model *m, const iop *div, int fused, gn_chain *c) {
    if (!div->def || strcmp(div->type, "real_div") || div->n_out != 1) return false;
    int dev = sdc_rt_param_slot(div, "x");
    if ((c->sqrt_op = maker(m, sdc_rt_param_slot(div, "y"), "sqrt", fused)) < 0) return false;
    if ((c->add_op = maker(m, sdc_rt_param_slot(&m->ops[c->sqrt_op], "x"), "add", fused)) < 0) return false;
    const iop *add = &m->ops[c->add_op];
    int ax = sdc_rt_param_slot(add, "x"), ay = sdc_rt_param_slot(add, "y");
    bool x_const = ax >= 0 && m->slots[ax].kind == SL_CONST;
    c->eps = x_const ? ax : ay;
    if (c->eps < 0) return false;
    if ((c->var_op = maker(m, x_const ? ay : ax, "reduce_mean", fused)) < 0) return false;
    if ((c->square_op = maker(m, sdc_rt_param_slot(&m->ops[c->var_op], "x"), "square", fused)) < 0) return false;
    if (sdc_rt_param_slot(&m->ops[c->square_op], "x") != dev || (c->sub_op = maker(m, dev, "sub", fused)) < 0) return false;
    const iop *sub = &m->ops[c->sub_op];
    c->h = sdc_rt_param_slot(sub, "x");
    if ((c->mean_op = maker(m, sdc_rt_param_slot(sub, "y"), "reduce_mean", fused)) < 0) return false;
    if (c->h < 0 || sdc_rt_param_slot(&m->ops[c->mean_op], "x") != c->h) return false;
    c->reshape_op = maker(m, c->h, "reshape", fused);
    c->src = c->reshape_op >= 0 ? sdc_rt_param_slot(&m->ops[c->reshape_op], "x") : -1;
    if (c->src < 0) c->reshape_op = -1;
    return true;
}

static bool float_slot(const islot *s) { return s->dtype == MT_FP16 || s->dtype == MT_FP32; }

static bool same_shape(const islot *a, int rank, const int64_t *shape) {
    if (a->rank != rank) return false;
    for (int d = 0; d < rank; d++)
        if (a->shape[d] != shape[d]) return false;
    return true;
}

/* reduce_mean over the trailing axes [first, rank) with keep_dims true, all constants. */
static bool trailing_mean(const sdc_model *m, const iop *op, int rank, int *first) {
    int sa = sdc_rt_param_slot(op, "axes"), sk = sdc_rt_param_slot(op, "keep_dims");
    const itensor *axes = sa >= 0 ? m->slots[sa].val : NULL, *keep = sk >= 0 ? m->slots[sk].val : NULL;
    if (!axes || !keep || axes->dtype == MT_STRING || keep->dtype == MT_STRING || keep->n != 1 || it_geti(keep, 0) == 0 ||
        axes->n < 1 || axes->n > (size_t)rank)
        return false;
    bool red[SDC_MAX_RANK] = {false};
    for (size_t i = 0; i < axes->n; i++) {
        int64_t a = it_geti(axes, i);
        if (!norm_axis(&a, rank) || red[a]) return false;
        red[a] = true;
    }
    *first = rank - (int)axes->n;
    for (int d = *first; d < rank; d++)
        if (!red[d]) return false;
    return *first >= 1;
}

/* Whether the reshape making h can be computed too: h read by the chain only, made from a
   value of h's dtype and element count (a reshape only renames the row-major positions, so
   the chain reads that value's buffer as h: the copy is never made). */
static bool reshape_fits(const sdc_model *m, const int *readers, const gn_chain *c) {
    const islot *h = &m->slots[c->h], *src = &m->slots[c->src];
    if (readers[c->h] != 2 || src->dtype != h->dtype || src->rank < 1) return false;
    size_t nh, ns;
    return sdc_interp_shape_known(src) && sdc_it_numel(h->rank, h->shape, &nh) && sdc_it_numel(src->rank, src->shape, &ns) &&
           nh == ns;
}

/* Values, shapes, dtypes and readers of a walked chain ending at op `div`. */
static bool gn_fits(const sdc_model *m, const int *readers, const iop *div, gn_chain *c) {
    const islot *h = &m->slots[c->h];
    int R = h->rank, first;
    if (R < 2 || R > SDC_MAX_RANK || !float_slot(h)) return false;
    for (int d = 0; d < R; d++)
        if (h->shape[d] < 1) return false;
    if (!trailing_mean(m, &m->ops[c->mean_op], R, &first) || !trailing_mean(m, &m->ops[c->var_op], R, &first))
        return false;
    int64_t grp[SDC_MAX_RANK]; /* (B, G, 1, ...) */
    for (int d = 0; d < R; d++) grp[d] = d < first ? h->shape[d] : 1;
    const islot *eps = &m->slots[c->eps];
    if (eps->kind != SL_CONST || !eps->val || eps->val->n != 1 || !mt_is_float(eps->val->dtype) || eps->rank > R) return false;
    /* intermediate values: one reader each (dev: the square and the division), never outputs */
    const struct {
        int slot, reads;
        bool group; /* shaped like the group statistics, else like h */
    } vals[] = {
        {m->ops[c->mean_op].outs[0], 1, true}, {m->ops[c->sub_op].outs[0], 2, false},
        {m->ops[c->square_op].outs[0], 1, false}, {m->ops[c->var_op].outs[0], 1, true},
        {m->ops[c->add_op].outs[0], 1, true}, {m->ops[c->sqrt_op].outs[0], 1, true},
    };
    for (size_t i = 0; i < SDC_COUNT_OF(vals); i++) {
        const islot *s = &m->slots[vals[i].slot];
        if (readers[vals[i].slot] != vals[i].reads || !float_slot(s) ||
            !same_shape(s, R, vals[i].group ? grp : h->shape))
            return false;
    }
    const islot *out = &m->slots[div->outs[0]];
    if (!float_slot(out) || !same_shape(out, R, h->shape)) return false;
    if (c->reshape_op >= 0 && !reshape_fits(m, readers, c)) c->reshape_op = -1;
    return true;
}

static const iop_def FUSED_GROUP_NORM = {"group norm (fused)", sdc_kernel_fused_group_norm, 0, NULL};
static const iop_def FUSED_GROUP_NORM_SILU = {"group norm + silu (fused)", sdc_kernel_fused_group_norm, 0, NULL};

/* The one op after op `from` that reads slot s, of type `type`, with s as its input x, or -1. */
static int sole_reader(const sdc_model *m, const int *readers, int from, int s, const char *type) {
    if (readers[s] != 1) return -1;
    for (int j = from + 1; j < m->n_ops; j++) {
        const iop *op = &m->ops[j];
        for (int p = 0; p < op->n_params; p++)
            for (int k = 0; k < op->params[p].n; k++)
                if (op->params[p].slots[k] == s)
                    return op->def && op->n_out == 1 && op->fused_into < 0 && op->fuse_first < 0 &&
                                   !strcmp(op->type, type) && sdc_rt_param_slot(op, "x") == s
                               ? j
                               : -1;
    }
    return -1;
}

/* The silu reading the chain's result (directly, or through a reshape read by nothing else),
   with the result's dtype and element count: its index and the reshape's (-1: none), or -1. */
static int silu_after(const sdc_model *m, const int *readers, int div, int *reshape) {
    int d = m->ops[div].outs[0];
    *reshape = sole_reader(m, readers, div, d, "reshape");
    int x = *reshape >= 0 ? m->ops[*reshape].outs[0] : d;
    int silu = sole_reader(m, readers, *reshape >= 0 ? *reshape : div, x, "silu");
    if (silu < 0) return -1;
    const islot *ds = &m->slots[d], *xs = &m->slots[x], *os = &m->slots[m->ops[silu].outs[0]];
    size_t nd, nx, no;
    if (xs->dtype != ds->dtype || os->dtype != ds->dtype || !sdc_it_numel(ds->rank, ds->shape, &nd) ||
        !sdc_it_numel(xs->rank, xs->shape, &nx) || !sdc_it_numel(os->rank, os->shape, &no) || nd != nx || nx != no)
        return -1;
    return silu;
}

/* The real_div a fused silu computes the chain of (through its reshape, if any), or -1. */
static int div_under_silu(const sdc_model *m, const iop *silu, int fused) {
    int x = sdc_rt_param_slot(silu, "x"), r = maker(m, x, "reshape", fused);
    return maker(m, r >= 0 ? sdc_rt_param_slot(&m->ops[r], "x") : x, "real_div", fused);
}

void sdc_interp_fuse_norm(sdc_model *m) {
    int *readers = sdc_interp_count_readers(m);
    if (!readers) return; /* out of memory: the ops run unfused */
    for (int i = 0; i < m->n_ops; i++) {
        iop *div = &m->ops[i];
        gn_chain c;
        if (div->fused_into >= 0 || div->fuse_first >= 0 || !gn_walk(m, div, -1, &c) || !gn_fits(m, readers, div, &c)) continue;
        int reshape, silu = silu_after(m, readers, i, &reshape), at = silu >= 0 ? silu : i;
        const int chain[] = {c.mean_op, c.sub_op, c.square_op, c.var_op, c.add_op, c.sqrt_op,
                             c.reshape_op >= 0 ? c.reshape_op : c.mean_op, silu >= 0 ? i : c.mean_op,
                             silu >= 0 && reshape >= 0 ? reshape : c.mean_op};
        int first = at;
        for (size_t k = 0; k < SDC_COUNT_OF(chain); k++) {
            m->ops[chain[k]].fused_into = at;
            first = chain[k] < first ? chain[k] : first;
        }
        m->ops[at].fuse_first = first;
        m->ops[at].def = silu >= 0 ? &FUSED_GROUP_NORM_SILU : &FUSED_GROUP_NORM;
    }
    sdc_free(readers);
}

/* ---------------------------------------------------------------- the kernel */

enum { GN_BLOCK = 2048 }; /* values per block of a pass (a multiple of 8: sdc_sum8_add's lanes) */

typedef struct gn_ctx {
    const float *x;
    float *o;
    size_t n; /* values per group */
    float eps;
    bool silu; /* then silu of the result */
    /* fp16 rounding of each step's result, as its slot is declared */
    bool r_mean, r_dev, r_sq, r_var, r_add, r_std, r_out, r_silu;
} gn_ctx;

static inline float rnd(bool on, float v) { return on ? sdc_f16_to_f32(sdc_f32_to_f16(v)) : v; }

/* dev[j] = x[j] - mean for a block, rounded as the sub's result */
SDC_VECTORISE static void deviations(const float *x, float mean, float *dev, size_t n, bool round) {
    for (size_t j = 0; j < n; j++) dev[j] = x[j] - mean;
    if (round) sdc_round_f16(NULL, dev, n);
}

SDC_VECTORISE static void gn_groups(void *vctx, size_t b, size_t e) {
    const gn_ctx *c = vctx;
    float dev[GN_BLOCK], sq[GN_BLOCK];
    for (size_t g = b; g < e; g++) {
        const float *x = c->x + g * c->n;
        float *o = c->o + g * c->n;
        float mean = rnd(c->r_mean, (float)(sdc_sum_f64(x, c->n, false) / (double)c->n));
        double lanes[8] = {0}, sum_sq = 0;
        size_t n8 = c->n - c->n % 8;
        for (size_t j0 = 0; j0 < c->n; j0 += GN_BLOCK) {
            size_t k = c->n - j0 < GN_BLOCK ? c->n - j0 : GN_BLOCK;
            deviations(x + j0, mean, dev, k, c->r_dev);
            for (size_t j = 0; j < k; j++) sq[j] = dev[j] * dev[j];
            if (c->r_sq) sdc_round_f16(NULL, sq, k);
            size_t full = j0 + k <= n8 ? k : n8 - j0; /* the last n % 8 squares are added at the end */
            sdc_sum8_add(lanes, sq, full, false);
            if (j0 + k == c->n) sum_sq = sdc_sum8_end(lanes, sq + full, k - full, false);
        }
        float var = rnd(c->r_var, (float)(sum_sq / (double)c->n));
        float std = rnd(c->r_std, sqrtf(rnd(c->r_add, var + c->eps)));
        for (size_t j0 = 0; j0 < c->n; j0 += GN_BLOCK) { /* x is read before o is written: o == x is fine */
            size_t k = c->n - j0 < GN_BLOCK ? c->n - j0 : GN_BLOCK;
            deviations(x + j0, mean, dev, k, c->r_dev);
            for (size_t j = 0; j < k; j++) o[j0 + j] = dev[j] / std;
            if (c->r_out) sdc_round_f16(NULL, o + j0, k);
            if (c->silu) sdc_silu_block(o + j0, o + j0, k);
            if (c->silu && c->r_silu) sdc_round_f16(NULL, o + j0, k);
        }
    }
}

/* Elements of a fully known slot (gn_fits checked that it is). */
static size_t o_count(const islot *s) {
    size_t n = 0;
    return sdc_it_numel(s->rank, s->shape, &n) ? n : 0;
}

sdc_status sdc_kernel_fused_group_norm(irun *r, const iop *op) {
    sdc_model *m = r->m;
    gn_chain ch;
    int index = (int)(op - m->ops), div = op->def == &FUSED_GROUP_NORM_SILU ? div_under_silu(m, op, index) : index;
    if (div < 0 || !gn_walk(m, &m->ops[div], index, &ch))
        return sdc_rt_fail(r, op, SDC_E_INTERNAL, "the fused group norm lost its chain");
    int in = ch.reshape_op >= 0 ? ch.src : ch.h; /* h, or the value h would be a reshape of */
    itensor *h = sdc_interp_slot_value(r, op, in), *eps = h ? sdc_interp_slot_value(r, op, ch.eps) : NULL;
    if (!eps) return r->err->code;
    int first;
    const islot *hs = &m->slots[ch.h], *os = &m->slots[op->outs[0]];
    if (!trailing_mean(m, &m->ops[ch.mean_op], hs->rank, &first) || h->n != o_count(os))
        return sdc_rt_fail(r, op, SDC_E_INTERNAL, "the fused group norm lost its axes");
    size_t n = 1;
    for (int d = first; d < hs->rank; d++) n *= (size_t)hs->shape[d];
    /* the output takes h's buffer when this op is h's last reader (computing in place is safe) */
    const islot *is = &m->slots[in];
    itensor *o;
    if (is->last_use == index && is->kind != SL_CONST && !h->borrowed && h->dtype == os->dtype && !r->vals[op->outs[0]]) {
        r->vals[in] = NULL;
        h->rank = os->rank;
        memcpy(h->shape, os->shape, sizeof(int64_t) * (size_t)os->rank);
        r->vals[op->outs[0]] = o = h;
    } else if (!(o = sdc_rt_out(r, op, 0, os->rank, os->shape))) {
        return r->err->code;
    }
    bool round = !m->exact_fp16_off;
#define R16(op_index) (round && m->slots[m->ops[op_index].outs[0]].dtype == MT_FP16)
    gn_ctx c = {h->f, o->f, n, it_getf(eps, 0), div != index, R16(ch.mean_op), R16(ch.sub_op), R16(ch.square_op),
                R16(ch.var_op), R16(ch.add_op), R16(ch.sqrt_op), R16(div), round && os->dtype == MT_FP16};
#undef R16
    r->rounded = round && os->dtype == MT_FP16; /* the last pass rounded the output */
    sdc_ipool_for(sdc_rt_pool(r), h->n / n, 1, gn_groups, &c);
    return SDC_OK;
}
