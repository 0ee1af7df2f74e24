/*
 * fuse.c — attention evaluated block by block: the three ops product → softmax → product that
 * both attention forms of SD graphs make (with the anchor's scale, a mul by a scalar constant
 * between product and softmax, when present) are run as one, a block of queries at a time, so the
 * attention weights (Sq × Sk per head: a gigabyte for a 64×64 latent's self-attention in
 * float32) are never held whole: each block's weights stay in cache between the products.
 *
 *   SPLIT_EINSUM (per head):  w = einsum("nchw,nwhu->nchu", kᵀ (B,Sk,1,d), q (B,d,1,Sq)) (B,Sk,1,Sq)
 *                             p = softmax(w, axis = 1)
 *                             o = einsum("nchw,nwhu->nchu", v (B,d,1,Sk), p)            (B,d,1,Sq)
 *   ORIGINAL:                 w = matmul(q (B,h,d,Sq), k (B,h,d,Sk), transpose_x)         (B,h,Sq,Sk)
 *                             p = softmax(w, axis = -1)
 *                             o = matmul(v (B,h,d,Sk), p, transpose_y)                     (B,h,d,Sq)
 *
 * Each element gets the arithmetic the three kernels give it (the products over the same K, the
 * softmax's order of sums, fp16 rounding of w and p where they are declared fp16). SPLIT_EINSUM's
 * products take sdc_igemm_bcast where it runs, as the unfused einsum does, whose sums do not
 * depend on the cut; elsewhere single-threaded BLAS, its query blocks inside the column parts
 * the unfused products are cut into. Either way its outputs are bit-identical to the unfused
 * run. ORIGINAL's first product is cut by query rows where the unfused one is cut by key
 * columns, which BLAS may round differently: within float32 rounding (it is the float32
 * reference's form). Products below FUSE_MIN_FLOPS are left to the unfused ops, which thread
 * them over heads (their weights are small).
 *
 * The loader (sdc_interp_fuse) marks the first two ops as computed by the third, which then
 * reads their inputs: liveness and the run (exec.c) account for that.
 */
#include <math.h>

#include "interp/interp.h"
#include "interp/vmath.h"

enum { QBLOCK = 64 }; /* queries per block (at least): weights of Sk × 64 floats, in cache */
#define FUSE_MIN_FLOPS 4e6            /* products below this stay unfused, threaded over heads (ops_nn.c) */

/* ---------------------------------------------------------------- matching (load time) */

/* How many times each slot is read, counted once for the whole program (an output counts as
   many readers: it is never fused away); NULL when out of memory. */
int *sdc_interp_count_readers(const sdc_model *m) {
    int *n = sdc_calloc((size_t)m->n_slots + 1, sizeof *n);
    if (!n) return NULL;
    for (int i = 0; i < m->n_ops; i++)
        for (int p = 0; p < m->ops[i].n_params; p++)
            for (int k = 0; k < m->ops[i].params[p].n; k++) n[m->ops[i].params[p].slots[k]]++;
    for (int i = 0; i < m->n_outputs; i++) n[m->outputs[i]] += 1000;
    return n;
}

int sdc_interp_maker(const sdc_model *m, int s, const char *type, int fused) {
    if (s < 0 || m->slots[s].kind != SL_OP || m->slots[s].producer < 0) return -1;
    int i = m->slots[s].producer;
    const iop *op = &m->ops[i];
    return op->def && op->def->fn && op->fused_into == fused && !strcmp(op->type, type) ? i : -1;
}

/* A small integer / bool constant parameter; `dflt` when absent; false when not a constant. */
static bool const_int(const sdc_model *m, const iop *op, const char *name, int64_t dflt, int64_t *out) {
    const iparam *p = sdc_rt_param(op, name);
    if (!p) {
        *out = dflt;
        return true;
    }
    if (p->n != 1) return false;
    const islot *sl = &m->slots[p->slots[0]];
    if (sl->kind != SL_CONST || !sl->val || sl->val->n != 1 || sl->val->dtype == MT_STRING) return false;
    *out = it_geti(sl->val, 0);
    return true;
}

static const char *const_str(const sdc_model *m, const iop *op, const char *name) {
    int s = sdc_rt_param_slot(op, name);
    const islot *sl = s >= 0 ? &m->slots[s] : NULL;
    return sl && sl->kind == SL_CONST && sl->val && sl->val->dtype == MT_STRING ? sl->val->s : NULL;
}

static bool is_type(const iop *op, const char *type) { return op->def && !strcmp(op->type, type); }

/* Whether einsum equation `eq` is "nchw,nwhu->nchu" up to the names of its letters (as the
   einsum kernel reads it): letters numbered by first appearance, separators kept. */
static bool is_nchw_einsum(const char *eq) {
    static const char want[] = "0123,0324->0124";
    char seen[16] = {0}, got[32];
    int n_seen = 0, len = 0;
    for (const char *p = eq; p && *p && len < (int)sizeof got - 1; p++) {
        if (*p == ' ') continue;
        if (*p == ',' || *p == '-' || *p == '>') {
            got[len++] = *p;
            continue;
        }
        int id = 0;
        while (id < n_seen && seen[id] != *p) id++;
        if (id == n_seen) {
            if (n_seen == 10) return false;
            seen[n_seen++] = *p;
        }
        got[len++] = (char)('0' + id);
    }
    got[len] = 0;
    return !strcmp(got, want);
}

static bool float_dtype(int dt) { return dt == MT_FP32 || dt == MT_FP16; }

/* A rank-4 fully known float slot. */
static bool known4(const islot *s) {
    if (s->rank != 4 || !float_dtype(s->dtype)) return false;
    for (int i = 0; i < 4; i++)
        if (s->shape[i] < 1) return false;
    return true;
}

/* The producer op of slot s when s is an op's only output read only once, else NULL. */
static const iop *single_use_producer(const sdc_model *m, const int *readers, int s, int *index) {
    const islot *sl = &m->slots[s];
    if (sl->kind != SL_OP || sl->producer < 0 || readers[s] != 1) return NULL;
    const iop *op = &m->ops[sl->producer];
    if (op->n_out != 1 || op->fused_into >= 0) return NULL;
    *index = sl->producer;
    return op;
}

/* The float scalar constant of slot s; false when s is not one. */
static bool const_scalar(const sdc_model *m, int s, float *out) {
    const islot *sl = &m->slots[s];
    if (sl->kind != SL_CONST || !sl->val || sl->val->n != 1 || !mt_is_float(sl->val->dtype)) return false;
    *out = sl->val->f[0];
    return true;
}

/* When slot s is the only output of a mul by a float scalar constant (either operand) read only
   by the softmax, that mul's index (*index) and the slot it scales (*scaled); else false. */
static bool scale_producer(const sdc_model *m, const int *readers, int s, int *index, int *scaled, float *scale) {
    int at;
    const iop *mul = single_use_producer(m, readers, s, &at);
    if (!mul || !is_type(mul, "mul")) return false;
    int x = sdc_rt_param_slot(mul, "x"), y = sdc_rt_param_slot(mul, "y");
    if (x < 0 || y < 0) return false;
    if (const_scalar(m, y, scale)) *scaled = x;
    else if (const_scalar(m, x, scale)) *scaled = y;
    else return false;
    if (m->slots[*scaled].dtype != m->slots[s].dtype || m->slots[*scaled].rank != 4) return false;
    *index = at;
    return true;
}

/* Whether ops a → [scale →] b → c (c the candidate) form an attention; fills the form and the
   scale op's index (-1: none). */
static bool match(const sdc_model *m, const int *readers, const iop *c, int *ia, int *iscale, int *ib, bool *split) {
    bool es = is_type(c, "einsum"), mm = is_type(c, "matmul");
    if (!es && !mm) return false;
    int ps, ws;
    if (es) {
        const iparam *v = sdc_rt_param(c, "values");
        if (!v || v->n != 2) return false;
        ps = v->slots[1];
        const char *eq = const_str(m, c, "equation");
        if (!is_nchw_einsum(eq)) return false;
    } else {
        int64_t tx, ty;
        if ((ps = sdc_rt_param_slot(c, "y")) < 0 || !const_int(m, c, "transpose_x", 0, &tx) ||
            !const_int(m, c, "transpose_y", 0, &ty) || tx || !ty)
            return false;
    }
    const iop *b = single_use_producer(m, readers, ps, ib);
    if (!b || !is_type(b, "softmax") || (ws = sdc_rt_param_slot(b, "x")) < 0) return false;
    int64_t axis;
    if (!const_int(m, b, "axis", -1, &axis)) return false;
    if (axis < 0) axis += 4;
    if (axis != (es ? 1 : 3)) return false; /* over keys */
    float scale;
    int scaled;
    *iscale = -1;
    if (scale_producer(m, readers, ws, iscale, &scaled, &scale)) ws = scaled;
    const iop *a = single_use_producer(m, readers, ws, ia);
    if (!a || !is_type(a, es ? "einsum" : "matmul")) return false;
    if (es) {
        const iparam *v = sdc_rt_param(a, "values");
        const char *eq = const_str(m, a, "equation");
        if (!v || v->n != 2 || !is_nchw_einsum(eq)) return false;
    } else {
        int64_t tx, ty;
        if (sdc_rt_param_slot(a, "x") < 0 || sdc_rt_param_slot(a, "y") < 0 || !const_int(m, a, "transpose_x", 0, &tx) ||
            !const_int(m, a, "transpose_y", 0, &ty) || !tx || ty)
            return false;
    }
    *split = es;
    return true;
}

/* q, k, v slots of a matched attention (c the last op). */
static void operands(const sdc_model *m, const iop *a, const iop *c, bool split, int *q, int *k, int *v) {
    if (split) {
        *k = sdc_rt_param(a, "values")->slots[0]; /* kᵀ (B,Sk,1,d) */
        *q = sdc_rt_param(a, "values")->slots[1];
        *v = sdc_rt_param(c, "values")->slots[0];
    } else {
        *q = sdc_rt_param_slot(a, "x");
        *k = sdc_rt_param_slot(a, "y");
        *v = sdc_rt_param_slot(c, "x");
    }
    (void)m;
}

/* Shapes that fit the block kernel without broadcasting, large enough for BLAS. */
static bool shapes_fit(const sdc_model *m, int q, int k, int v, int w, bool split) {
    const islot *Q = &m->slots[q], *K = &m->slots[k], *V = &m->slots[v], *W = &m->slots[w];
    if (!known4(Q) || !known4(K) || !known4(V) || !known4(W)) return false;
    int64_t d, sq, sk, dv;
    if (split) { /* kᵀ (B,Sk,1,d), q (B,d,1,Sq), v (B,dv,1,Sk) */
        sk = K->shape[1], d = K->shape[3], sq = Q->shape[3], dv = V->shape[1];
        if (Q->shape[1] != d || V->shape[3] != sk || K->shape[2] != 1 || Q->shape[2] != 1 || V->shape[2] != 1) return false;
        if (Q->shape[0] != K->shape[0] || V->shape[0] != K->shape[0]) return false;
    } else { /* q (B,h,d,Sq), k (B,h,d,Sk), v (B,h,dv,Sk) */
        d = Q->shape[2], sq = Q->shape[3], sk = K->shape[3], dv = V->shape[2];
        if (K->shape[2] != d || V->shape[3] != sk) return false;
        for (int i = 0; i < 2; i++)
            if (Q->shape[i] != K->shape[i] || V->shape[i] != K->shape[i]) return false;
    }
    return 2.0 * (double)sq * (double)sk * (double)d >= FUSE_MIN_FLOPS &&
           2.0 * (double)dv * (double)sq * (double)sk >= FUSE_MIN_FLOPS;
}

static const iop_def FUSED_ATTENTION = {"attention (fused)", sdc_kernel_fused_attention, 0, NULL};

void sdc_interp_fuse(sdc_model *m) {
    for (int i = 0; i < m->n_ops; i++)
        m->ops[i].fused_into = m->ops[i].fuse_first = m->ops[i].fuse_scale = m->ops[i].fuse_softmax = -1;
    int *readers = sdc_interp_count_readers(m);
    if (!readers) return; /* out of memory: the ops run unfused, with the same results */
    for (int i = 0; i < m->n_ops; i++) {
        iop *c = &m->ops[i];
        int ia, is, ib, q, k, v;
        bool split;
        if (c->n_out != 1 || !match(m, readers, c, &ia, &is, &ib, &split)) continue;
        operands(m, &m->ops[ia], c, split, &q, &k, &v);
        if (!shapes_fit(m, q, k, v, m->ops[ia].outs[0], split)) continue;
        m->ops[ia].fused_into = m->ops[ib].fused_into = i;
        if (is >= 0) m->ops[is].fused_into = i;
        c->fuse_first = ia;
        c->fuse_scale = is;
        c->fuse_softmax = ib;
        c->fuse_split = split;
        c->def = &FUSED_ATTENTION;
    }
    sdc_free(readers);
}

/* ---------------------------------------------------------------- the kernel */

typedef struct attn_ctx {
    bool split;
    int64_t G, d, dv, sq, sk, nblk; /* G: batch (× heads); nblk query blocks per batch item */
    const int64_t *blk0;            /* query block j is [blk0[j], blk0[j + 1]) */
    const float *q, *k, *v;
    float *o;
    bool round_w, round_p;
    bool scaled, round_s; /* the weights times `scale` (the mul between product and softmax) */
    float scale;
    int failed;
} attn_ctx;

/* What the ops between the first product and the softmax do to its n values, in their order:
   rounding to fp16 where declared, the scale's multiplication (the mul kernel's arithmetic). */
SDC_VECTORISE static void scale_block(float *s, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) s[i] *= scale;
}

static void before_softmax(const attn_ctx *c, float *s, size_t n) {
    if (c->round_w) sdc_round_f16(NULL, s, n);
    if (!c->scaled) return;
    scale_block(s, n, c->scale);
    if (c->round_s) sdc_round_f16(NULL, s, n);
}

/* softmax over the Sk rows of s (Sk × n, row stride n): softmax_blocks' arithmetic */
SDC_VECTORISE static void softmax_cols(float *s, int64_t L, int64_t n, float *mx, float *sum) {
    for (int64_t j = 0; j < n; j++) mx[j] = -INFINITY, sum[j] = 0;
    for (int64_t l = 0; l < L; l++) {
        const float *row = s + l * n;
        for (int64_t j = 0; j < n; j++) mx[j] = row[j] > mx[j] ? row[j] : mx[j];
    }
    for (int64_t j = 0; j < n; j++) mx[j] = mx[j] == -INFINITY ? 0.0f : mx[j];
    for (int64_t l = 0; l < L; l++) {
        float *row = s + l * n;
        for (int64_t j = 0; j < n; j++) row[j] = row[j] - mx[j];
        sdc_vec_exp(row, row, (size_t)n);
        for (int64_t j = 0; j < n; j++) sum[j] += row[j];
    }
    for (int64_t j = 0; j < n; j++) sum[j] = 1.0f / sum[j];
    for (int64_t l = 0; l < L; l++) {
        float *row = s + l * n;
        for (int64_t j = 0; j < n; j++) row[j] *= sum[j];
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
/* before_softmax and softmax_cols in three passes over s instead of nine, eight columns at a
   time, for n a multiple of 8: the same operations on every element in the same order (fp16
   rounding by the same conversion instruction, the same exp, sums over rows in row order), so
   the same bits. */
__attribute__((target("avx2,fma,f16c"))) static inline __m256 round8(__m256 v) {
    return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

__attribute__((target("avx2,fma,f16c"))) static void softmax_cols_avx2(const attn_ctx *c, float *s, int64_t L, int64_t n,
                                                                        float *mx, float *sum) {
    const __m256 scale = _mm256_set1_ps(c->scale), ninf = _mm256_set1_ps(-INFINITY);
    for (int64_t j = 0; j < n; j += 8) _mm256_storeu_ps(mx + j, ninf), _mm256_storeu_ps(sum + j, _mm256_setzero_ps());
    for (int64_t l = 0; l < L; l++) {
        float *row = s + l * n;
        for (int64_t j = 0; j < n; j += 8) {
            __m256 v = _mm256_loadu_ps(row + j);
            if (c->round_w) v = round8(v);
            if (c->scaled) {
                v = _mm256_mul_ps(v, scale);
                if (c->round_s) v = round8(v);
            }
            _mm256_storeu_ps(row + j, v);
            _mm256_storeu_ps(mx + j, _mm256_max_ps(v, _mm256_loadu_ps(mx + j))); /* a NaN is never the max */
        }
    }
    for (int64_t j = 0; j < n; j += 8) {
        __m256 m = _mm256_loadu_ps(mx + j);
        _mm256_storeu_ps(mx + j, _mm256_blendv_ps(m, _mm256_setzero_ps(), _mm256_cmp_ps(m, ninf, _CMP_EQ_OQ)));
    }
    for (int64_t l = 0; l < L; l++) {
        float *row = s + l * n;
        for (int64_t j = 0; j < n; j += 8) {
            __m256 e = sdc_exp8_avx2(_mm256_sub_ps(_mm256_loadu_ps(row + j), _mm256_loadu_ps(mx + j)));
            _mm256_storeu_ps(row + j, e);
            _mm256_storeu_ps(sum + j, _mm256_add_ps(_mm256_loadu_ps(sum + j), e));
        }
    }
    for (int64_t j = 0; j < n; j += 8) _mm256_storeu_ps(sum + j, _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_loadu_ps(sum + j)));
    for (int64_t l = 0; l < L; l++) {
        float *row = s + l * n;
        for (int64_t j = 0; j < n; j += 8) {
            __m256 v = _mm256_mul_ps(_mm256_loadu_ps(row + j), _mm256_loadu_ps(sum + j));
            _mm256_storeu_ps(row + j, c->round_p ? round8(v) : v);
        }
    }
}

/* softmax_cols_avx2 sixteen columns at a time (n a multiple of 16): the same operations lane for
   lane, so the same bits. */
__attribute__((target("avx512f"))) static inline __m512 round16(__m512 v) {
    return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

__attribute__((target("avx512f"))) static void softmax_cols_avx512(const attn_ctx *c, float *s, int64_t L, int64_t n, float *mx,
                                                                  float *sum) {
    const __m512 scale = _mm512_set1_ps(c->scale), ninf = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < n; j += 16) _mm512_storeu_ps(mx + j, ninf), _mm512_storeu_ps(sum + j, _mm512_setzero_ps());
    for (int64_t l = 0; l < L; l++) {
        float *row = s + l * n;
        for (int64_t j = 0; j < n; j += 16) {
            __m512 v = _mm512_loadu_ps(row + j);
            if (c->round_w) v = round16(v);
            if (c->scaled) {
                v = _mm512_mul_ps(v, scale);
                if (c->round_s) v = round16(v);
            }
            _mm512_storeu_ps(row + j, v);
            _mm512_storeu_ps(mx + j, _mm512_max_ps(v, _mm512_loadu_ps(mx + j)));
        }
    }
    for (int64_t j = 0; j < n; j += 16) {
        __m512 m = _mm512_loadu_ps(mx + j);
        _mm512_storeu_ps(mx + j, _mm512_mask_blend_ps(_mm512_cmp_ps_mask(m, ninf, _CMP_EQ_OQ), m, _mm512_setzero_ps()));
    }
    for (int64_t l = 0; l < L; l++) {
        float *row = s + l * n;
        for (int64_t j = 0; j < n; j += 16) {
            __m512 e = sdc_exp16_avx512(_mm512_sub_ps(_mm512_loadu_ps(row + j), _mm512_loadu_ps(mx + j)));
            _mm512_storeu_ps(row + j, e);
            _mm512_storeu_ps(sum + j, _mm512_add_ps(_mm512_loadu_ps(sum + j), e));
        }
    }
    for (int64_t j = 0; j < n; j += 16) _mm512_storeu_ps(sum + j, _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_loadu_ps(sum + j)));
    for (int64_t l = 0; l < L; l++) {
        float *row = s + l * n;
        for (int64_t j = 0; j < n; j += 16) {
            __m512 v = _mm512_mul_ps(_mm512_loadu_ps(row + j), _mm512_loadu_ps(sum + j));
            _mm512_storeu_ps(row + j, c->round_p ? round16(v) : v);
        }
    }
}
#endif

/* The split form's weights (Sk × n) from the first product to the second's input. */
static void split_softmax(const attn_ctx *c, float *s, int64_t n, float *mx, float *sum) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (n % 16 == 0 && sdc_cpu_avx512()) {
        softmax_cols_avx512(c, s, c->sk, n, mx, sum);
        return;
    }
    if (n % 8 == 0 && sdc_cpu_avx2()) {
        softmax_cols_avx2(c, s, c->sk, n, mx, sum);
        return;
    }
#endif
    size_t ns = (size_t)(c->sk * n);
    before_softmax(c, s, ns);
    softmax_cols(s, c->sk, n, mx, sum);
    if (c->round_p) sdc_round_f16(NULL, s, ns);
}

/* softmax of each of the n rows of s (n × L): softmax_lines' arithmetic. The sums run in
   double, element by element in order, each a chain of dependent additions; four rows' chains
   are interleaved so that they overlap (each row's sum is still taken in its own order). */
SDC_VECTORISE static void softmax_rows(float *s, int64_t n, int64_t L) {
    for (int64_t r0 = 0; r0 < n; r0 += 4) {
        int64_t k = n - r0 < 4 ? n - r0 : 4;
        double total[4] = {0, 0, 0, 0};
        for (int64_t r = r0; r < r0 + k; r++) {
            float *o = s + r * L, mx = sdc_vec_max(o, (size_t)L);
            if (mx == -INFINITY) mx = 0;
            for (int64_t i = 0; i < L; i++) o[i] = o[i] - mx;
            sdc_vec_exp(o, o, (size_t)L);
        }
        if (k == 4) {
            const float *a = s + r0 * L, *b = a + L, *c = b + L, *d = c + L;
            for (int64_t i = 0; i < L; i++) total[0] += a[i], total[1] += b[i], total[2] += c[i], total[3] += d[i];
        } else {
            for (int64_t r = 0; r < k; r++)
                for (int64_t i = 0; i < L; i++) total[r] += s[(r0 + r) * L + i];
        }
        for (int64_t r = 0; r < k; r++) {
            float *o = s + (r0 + r) * L, inv = (float)(1.0 / total[r]);
            for (int64_t i = 0; i < L; i++) o[i] *= inv;
        }
    }
}

static void attn_blocks(void *vctx, size_t b, size_t e) {
    attn_ctx *c = vctx;
    int64_t wide = 0;
    for (int64_t j = 0; j < c->nblk; j++) wide = c->blk0[j + 1] - c->blk0[j] > wide ? c->blk0[j + 1] - c->blk0[j] : wide;
    float *s = sdc_malloc(sizeof(float) * (size_t)(c->sk * wide + 2 * wide));
    if (!s) {
        c->failed = 1; /* benign race: every writer stores 1 */
        return;
    }
    float *mx = s + c->sk * wide, *sum = mx + wide;
    for (size_t blk = b; blk < e; blk++) {
        int64_t g = (int64_t)blk / c->nblk, j = (int64_t)blk % c->nblk, u0 = c->blk0[j], n = c->blk0[j + 1] - u0;
        const float *q = c->q + g * c->d * c->sq, *k = c->k + g * c->sk * c->d, *v = c->v + g * c->dv * c->sk;
        float *o = c->o + g * c->dv * c->sq;
        size_t ns = (size_t)(c->sk * n);
        if (c->split) { /* w (Sk × n) = kᵀ (Sk × d) · q[:, u0:u0+n] */
            if (!sdc_igemm_bcast(c->sk, n, c->d, k, c->d, q + u0, c->sq, s, n))
                sdc_igemm(NULL, false, false, c->sk, n, c->d, k, c->d, q + u0, c->sq, 0.0f, s, n);
            split_softmax(c, s, n, mx, sum);
            if (!sdc_igemm_bcast(c->dv, n, c->sk, v, c->sk, s, n, o + u0, c->sq))
                sdc_igemm(NULL, false, false, c->dv, n, c->sk, v, c->sk, s, n, 0.0f, o + u0, c->sq);
        } else { /* w (n × Sk) = q[:, u0:u0+n]ᵀ · k; o[:, u0:u0+n] = v · wᵀ */
            sdc_igemm(NULL, true, false, n, c->sk, c->d, q + u0, c->sq, k, c->sk, 0.0f, s, c->sk);
            before_softmax(c, s, ns);
            softmax_rows(s, n, c->sk);
            if (c->round_p) sdc_round_f16(NULL, s, ns);
            sdc_igemm(NULL, false, true, c->dv, n, c->sk, v, c->sk, s, c->sk, 0.0f, o + u0, c->sq);
        }
    }
    sdc_free(s);
}

/* OpenBLAS runs products of at most this many multiply-adds (M·N·K) through its small-matrix
   kernels, which round differently from the blocked kernel that the unfused products take. */
#define BLAS_SMALL_MNK 1e6

/* Query blocks inside the parts sdc_igemm cuts Sq into on `threads` threads (split by columns,
   in whole 16-column widths), about QBLOCK wide but wide enough (min_n) that no block's product
   takes BLAS's small-matrix path, so that BLAS meets every column as it does unfused: the same
   rounding. *n receives the count; free the array. */
static int64_t *query_blocks(int64_t sq, int threads, int64_t min_n, int64_t *n) {
    int64_t step = (sq + threads - 1) / threads, want = min_n > QBLOCK ? min_n : QBLOCK;
    if (threads > 1) step = (step + 15) / 16 * 16;
    int64_t *b = sdc_malloc(sizeof(int64_t) * (size_t)(sq / 16 + threads + 2)), k = 0;
    if (!b) return NULL;
    for (int64_t lo = 0; lo < sq; lo += step) {
        int64_t len = sq - lo < step ? sq - lo : step, parts = len / want > 1 ? len / want : 1;
        int64_t width = ((len + parts - 1) / parts + 15) / 16 * 16;
        for (int64_t u = lo; u < lo + len; u += width) b[k++] = u;
    }
    b[k] = sq;
    *n = k;
    return b;
}

sdc_status sdc_kernel_fused_attention(irun *r, const iop *op) {
    sdc_model *m = r->m;
    const iop *a = &m->ops[op->fuse_first], *sm = &m->ops[op->fuse_softmax];
    int qs, ks, vs;
    operands(m, a, op, op->fuse_split, &qs, &ks, &vs);
    itensor *q = sdc_interp_slot_value(r, a, qs), *k = q ? sdc_interp_slot_value(r, a, ks) : NULL;
    itensor *v = k ? sdc_interp_slot_value(r, op, vs) : NULL;
    if (!v) return r->err->code;
    const islot *Q = &m->slots[qs], *K = &m->slots[ks], *V = &m->slots[vs];
    attn_ctx c = {.split = op->fuse_split, .q = q->f, .k = k->f, .v = v->f};
    int64_t oshape[4];
    if (c.split) {
        c.G = K->shape[0], c.sk = K->shape[1], c.d = K->shape[3], c.sq = Q->shape[3], c.dv = V->shape[1];
        int64_t s[4] = {c.G, c.dv, 1, c.sq};
        memcpy(oshape, s, sizeof s);
    } else {
        c.G = K->shape[0] * K->shape[1], c.d = Q->shape[2], c.sq = Q->shape[3], c.sk = K->shape[3], c.dv = V->shape[2];
        int64_t s[4] = {K->shape[0], K->shape[1], c.dv, c.sq};
        memcpy(oshape, s, sizeof s);
    }
    itensor *o = sdc_rt_out(r, op, 0, 4, oshape);
    if (!o) return r->err->code;
    c.o = o->f;
    sdc_rt_flops(r, (double)c.G * (double)c.sq, (double)c.sk, (double)(c.d + c.dv));
    c.round_w = !m->exact_fp16_off && m->slots[a->outs[0]].dtype == MT_FP16;
    c.round_p = !m->exact_fp16_off && m->slots[sm->outs[0]].dtype == MT_FP16;
    if (op->fuse_scale >= 0) { /* match() checked: one operand is a float scalar constant, y tried first */
        const iop *mul = &m->ops[op->fuse_scale];
        c.scaled = const_scalar(m, sdc_rt_param_slot(mul, "y"), &c.scale) ||
                   const_scalar(m, sdc_rt_param_slot(mul, "x"), &c.scale);
        c.round_s = !m->exact_fp16_off && m->slots[mul->outs[0]].dtype == MT_FP16;
    }
    double per_col = fmin((double)c.sk * (double)c.d, (double)c.dv * (double)c.sk); /* M·K of either product */
    int64_t min_n = (int64_t)(BLAS_SMALL_MNK / per_col) + 1;
    int64_t *blk0 = query_blocks(c.sq, c.split ? sdc_ipool_size(sdc_rt_pool(r)) : 1, min_n, &c.nblk);
    if (!blk0) return sdc_rt_fail(r, op, SDC_E_NOMEM, "out of memory");
    c.blk0 = blk0;
    sdc_ipool_for(sdc_rt_pool(r), (size_t)(c.G * c.nblk), 1, attn_blocks, &c);
    sdc_free(blk0);
    if (c.failed) return sdc_rt_fail(r, op, SDC_E_NOMEM, "out of memory");
    return SDC_OK;
}
