/*
 * ops_elementwise.c — elementwise unary and binary ops with NumPy broadcasting, activations,
 * cast, clip and select.
 *
 * Broadcasting (NumPy rules: shapes aligned on the right, each dim equal or 1) is planned once
 * per op: size-1 dims are dropped and neighbouring dims that are contiguous for every operand
 * are merged, so the loop is "rows × one inner run" with a stride of 0 or 1 per operand in the
 * inner run. Rows are shared among threads.
 */
#include <math.h>

#include "interp/interp.h"

/* ---------------------------------------------------------------- broadcasting plan */

typedef struct bplan {
    int nops;
    int rank; /* collapsed, >= 1 */
    int64_t shape[SDC_MAX_RANK];
    int64_t st[3][SDC_MAX_RANK];
    size_t rows;
    int64_t inner;
} bplan;

/* Output shape of broadcasting ts[0..n); false when they do not broadcast. */
static bool bcast_shape(int n, itensor *const *ts, int *rank, int64_t *shape) {
    int R = 0;
    for (int k = 0; k < n; k++) R = ts[k]->rank > R ? ts[k]->rank : R;
    for (int d = 0; d < R; d++) {
        int64_t o = 1;
        for (int k = 0; k < n; k++) {
            int dd = d - (R - ts[k]->rank);
            int64_t v = dd >= 0 ? ts[k]->shape[dd] : 1;
            if (v == 1) continue;
            if (o != 1 && o != v) return false;
            o = v;
        }
        /* a 0-sized dim against 1 gives 0 */
        for (int k = 0; k < n; k++) {
            int dd = d - (R - ts[k]->rank);
            if (dd >= 0 && ts[k]->shape[dd] == 0) o = 0;
        }
        shape[d] = o;
    }
    *rank = R;
    return true;
}

static void bplan_make(bplan *p, int n, itensor *const *ts, int R, const int64_t *oshape) {
    int64_t st[3][SDC_MAX_RANK];
    for (int k = 0; k < n; k++) {
        int64_t s = 1;
        for (int d = R - 1; d >= 0; d--) {
            int dd = d - (R - ts[k]->rank);
            int64_t v = dd >= 0 ? ts[k]->shape[dd] : 1;
            st[k][d] = v == 1 ? 0 : s;
            s *= v;
        }
    }
    p->nops = n;
    p->rank = 0;
    for (int d = 0; d < R; d++) {
        if (oshape[d] == 1) continue;
        int r = p->rank;
        bool merge = r > 0;
        for (int k = 0; merge && k < n; k++) merge = p->st[k][r - 1] == st[k][d] * oshape[d];
        if (merge) {
            p->shape[r - 1] *= oshape[d];
            for (int k = 0; k < n; k++) p->st[k][r - 1] = st[k][d];
        } else {
            p->shape[r] = oshape[d];
            for (int k = 0; k < n; k++) p->st[k][r] = st[k][d];
            p->rank++;
        }
    }
    if (p->rank == 0) {
        p->rank = 1;
        p->shape[0] = 1;
        for (int k = 0; k < n; k++) p->st[k][0] = 0;
    }
    p->inner = p->shape[p->rank - 1];
    p->rows = 1;
    for (int d = 0; d < p->rank - 1; d++) p->rows *= (size_t)p->shape[d];
}

/* Offsets of row `row` in each operand. */
static void bplan_row(const bplan *p, size_t row, int64_t *off) {
    for (int k = 0; k < p->nops; k++) off[k] = 0;
    for (int d = p->rank - 2; d >= 0; d--) {
        int64_t i = (int64_t)(row % (size_t)p->shape[d]);
        row /= (size_t)p->shape[d];
        for (int k = 0; k < p->nops; k++) off[k] += i * p->st[k][d];
    }
}

static size_t row_grain(const bplan *p) {
    size_t g = (size_t)(32768 / (p->inner > 0 ? p->inner : 1));
    return g ? g : 1;
}

/* ---------------------------------------------------------------- binary */

typedef struct bin_ctx {
    bplan p;
    int code;
    const itensor *x, *y;
    itensor *o;
    bool fcompute; /* compute in float (else int64) */
} bin_ctx;

static inline float py_fmod(float a, float b) {
    float m = fmodf(a, b);
    if (m != 0 && ((m < 0) != (b < 0))) m += b;
    return m;
}

static inline int64_t py_idiv(int64_t a, int64_t b) {
    if (b == 0) return 0;
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) q--;
    return q;
}

static inline int64_t py_imod(int64_t a, int64_t b) {
    if (b == 0) return 0;
    int64_t m = a % b;
    if (m != 0 && ((m < 0) != (b < 0))) m += b;
    return m;
}

static inline double fbin(int code, float a, float b) {
    switch (code) {
    case B_ADD: return (double)(a + b);
    case B_SUB: return (double)(a - b);
    case B_MUL: return (double)(a * b);
    case B_REAL_DIV: return (double)(a / b);
    case B_FLOOR_DIV: return floorf(a / b);
    case B_MOD: return py_fmod(a, b);
    case B_POW: return powf(a, b);
    case B_MAXIMUM: return a > b || isnan(a) ? a : b;
    case B_MINIMUM: return a < b || isnan(a) ? a : b;
    case B_EQUAL: return a == b;
    case B_NOT_EQUAL: return a != b;
    case B_LESS: return a < b;
    case B_LESS_EQUAL: return a <= b;
    case B_GREATER: return a > b;
    case B_GREATER_EQUAL: return a >= b;
    case B_AND: return (a != 0) && (b != 0);
    case B_OR: return (a != 0) || (b != 0);
    case B_XOR: return (a != 0) != (b != 0);
    }
    return 0;
}

static inline int64_t ibin(int code, int64_t a, int64_t b) {
    switch (code) {
    case B_ADD: return a + b;
    case B_SUB: return a - b;
    case B_MUL: return a * b;
    case B_REAL_DIV: return b ? a / b : 0;
    case B_FLOOR_DIV: return py_idiv(a, b);
    case B_MOD: return py_imod(a, b);
    case B_POW: {
        if (b < 0) return a == 1 ? 1 : a == -1 ? (b % 2 ? -1 : 1) : 0;
        double r = pow((double)a, (double)b); /* saturated to int32 by the caller */
        return r > 9e18 ? INT64_MAX : r < -9e18 ? INT64_MIN : (int64_t)r;
    }
    case B_MAXIMUM: return a > b ? a : b;
    case B_MINIMUM: return a < b ? a : b;
    case B_EQUAL: return a == b;
    case B_NOT_EQUAL: return a != b;
    case B_LESS: return a < b;
    case B_LESS_EQUAL: return a <= b;
    case B_GREATER: return a > b;
    case B_GREATER_EQUAL: return a >= b;
    case B_AND: return a && b;
    case B_OR: return a || b;
    case B_XOR: return (a != 0) != (b != 0);
    }
    return 0;
}

static inline int32_t sat_i32(int64_t v) { return v > INT32_MAX ? INT32_MAX : v < INT32_MIN ? INT32_MIN : (int32_t)v; }

/* Fast float loops for the hot arithmetic ops (contiguous or scalar operands). */
#define FAST_LOOP(EXPR)                                                                          \
    do {                                                                                         \
        if (sx == 1 && sy == 1)                                                                  \
            for (int64_t j = 0; j < n; j++) {                                                    \
                float a = xa[j], b = ya[j];                                                      \
                oa[j] = (EXPR);                                                                  \
            }                                                                                    \
        else if (sx == 1 && sy == 0) {                                                           \
            float b = ya[0];                                                                     \
            for (int64_t j = 0; j < n; j++) {                                                    \
                float a = xa[j];                                                                 \
                oa[j] = (EXPR);                                                                  \
            }                                                                                    \
        } else if (sx == 0 && sy == 1) {                                                         \
            float a = xa[0];                                                                     \
            for (int64_t j = 0; j < n; j++) {                                                    \
                float b = ya[j];                                                                 \
                oa[j] = (EXPR);                                                                  \
            }                                                                                    \
        } else                                                                                   \
            for (int64_t j = 0; j < n; j++) {                                                    \
                float a = xa[j * sx], b = ya[j * sy];                                            \
                oa[j] = (EXPR);                                                                  \
            }                                                                                    \
    } while (0)

SDC_VECTORISE static void bin_rows(void *vctx, size_t r0, size_t r1) {
    bin_ctx *c = vctx;
    const bplan *p = &c->p;
    int64_t n = p->inner, sx = p->st[0][p->rank - 1], sy = p->st[1][p->rank - 1];
    bool ofloat = mt_is_float(c->o->dtype);
    for (size_t r = r0; r < r1; r++) {
        int64_t off[3];
        bplan_row(p, r, off);
        size_t oo = r * (size_t)n;
        if (c->fcompute && ofloat && mt_is_float(c->x->dtype) && mt_is_float(c->y->dtype) &&
            (c->code == B_ADD || c->code == B_SUB || c->code == B_MUL || c->code == B_REAL_DIV)) {
            const float *xa = c->x->f + off[0], *ya = c->y->f + off[1];
            float *oa = c->o->f + oo;
            switch (c->code) {
            case B_ADD: FAST_LOOP(a + b); break;
            case B_SUB: FAST_LOOP(a - b); break;
            case B_MUL: FAST_LOOP(a * b); break;
            default: FAST_LOOP(a / b); break;
            }
            continue;
        }
        for (int64_t j = 0; j < n; j++) {
            size_t ix = (size_t)(off[0] + j * sx), iy = (size_t)(off[1] + j * sy);
            if (c->fcompute) {
                double v = fbin(c->code, it_getf(c->x, ix), it_getf(c->y, iy));
                if (ofloat) c->o->f[oo + j] = (float)v;
                else c->o->i[oo + j] = isnan(v) ? 0 : sat_i32((int64_t)v);
            } else {
                int64_t v = ibin(c->code, it_geti(c->x, ix), it_geti(c->y, iy));
                if (ofloat) c->o->f[oo + j] = (float)v;
                else c->o->i[oo + j] = sat_i32(v);
            }
        }
    }
}

sdc_status sdc_kernel_binary(irun *r, const iop *op) {
    itensor *x = sdc_rt_req(r, op, "x"), *y = x ? sdc_rt_req(r, op, "y") : NULL;
    if (!x || !y) return r->err->code;
    if (x->dtype == MT_STRING || y->dtype == MT_STRING) return sdc_rt_fail(r, op, SDC_E_FORMAT, "string operands");
    itensor *ts[2] = {x, y};
    int rank;
    int64_t shape[SDC_MAX_RANK];
    char a[200], b[200];
    if (!bcast_shape(2, ts, &rank, shape))
        return sdc_rt_fail(r, op, SDC_E_FORMAT, "shapes %s and %s do not broadcast", shape_str(x->rank, x->shape, a, sizeof a),
                       shape_str(y->rank, y->shape, b, sizeof b));
    /* every loop reads an element before it writes the same element: in place is safe */
    itensor *o = sdc_rt_out_reuse(r, op, 0, sdc_rt_may_take(r, op, "x") ? "x" : "y", rank, shape);
    if (!o) return r->err->code;
    bin_ctx c = {.code = op->def->code, .x = x, .y = y, .o = o};
    bool cmp = c.code >= B_EQUAL;
    c.fcompute = mt_is_float(x->dtype) || mt_is_float(y->dtype) || (!cmp && mt_is_float(o->dtype));
    bplan_make(&c.p, 2, ts, rank, shape);
    if (o->n == 0) return SDC_OK;
    sdc_ipool_for(sdc_rt_pool(r), c.p.rows, row_grain(&c.p), bin_rows, &c);
    return SDC_OK;
}

/* ---------------------------------------------------------------- unary */

typedef struct un_ctx {
    int code;
    float eps, alpha, beta;
    const itensor *x;
    itensor *o;
    const float *ch_a, *ch_b; /* per-channel alpha/beta (prelu, softplus_parametric) */
    int64_t ch_n, ch_inner;
} un_ctx;

static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

static inline float funary(int code, float x, float eps) {
    switch (code) {
    case U_ABS: return fabsf(x);
    case U_ACOS: return acosf(x);
    case U_ASIN: return asinf(x);
    case U_ATAN: return atanf(x);
    case U_ATANH: return atanhf(x);
    case U_CEIL: return ceilf(x);
    case U_COS: return cosf(x);
    case U_COSH: return coshf(x);
    case U_ERF: return erff(x);
    case U_EXP: return expf(x);
    case U_EXP2: return exp2f(x);
    case U_FLOOR: return floorf(x);
    case U_ROUND: return rintf(x); /* half to even, as numpy.round */
    case U_SIGN: return x > 0 ? 1.0f : x < 0 ? -1.0f : 0.0f;
    case U_SIN: return sinf(x);
    case U_SINH: return sinhf(x);
    case U_SQRT: return sqrtf(x);
    case U_SQUARE: return x * x;
    case U_TAN: return tanf(x);
    case U_TANH: return tanhf(x);
    case U_RELU: return x > 0 ? x : 0.0f;
    case U_RELU6: return x < 0 ? 0.0f : x > 6 ? 6.0f : x;
    case U_SIGMOID: return sigmoidf(x);
    case U_SILU: return x * sigmoidf(x);
    case U_SOFTPLUS: return x > 20 ? x : log1pf(expf(x));
    case U_SOFTSIGN: return x / (1.0f + fabsf(x));
    case U_LOGICAL_NOT: return x == 0;
    case U_INVERSE: return 1.0f / (x + eps);
    case U_LOG: return logf(x + eps);
    case U_RSQRT: return 1.0f / sqrtf(x + eps);
    }
    return 0;
}

SDC_VECTORISE static void un_rows(void *vctx, size_t b, size_t e) {
    un_ctx *c = vctx;
    const itensor *x = c->x;
    itensor *o = c->o;
    bool xf = mt_is_float(x->dtype), of = mt_is_float(o->dtype);
    if (xf && of) {
        const float *xa = x->f;
        float *oa = o->f;
        float eps = c->eps;
        float t[256];
        switch (c->code) { /* the hot ones: vectorised exp, in blocks */
        case U_SILU:
            sdc_silu_block(xa + b, oa + b, e - b);
            return;
        case U_SIGMOID:
            for (size_t i = b; i < e; i += 256) {
                size_t k = e - i < 256 ? e - i : 256;
                for (size_t j = 0; j < k; j++) t[j] = -xa[i + j];
                sdc_vec_exp(t, t, k);
                for (size_t j = 0; j < k; j++) oa[i + j] = 1.0f / (1.0f + t[j]);
            }
            return;
        case U_EXP:
            sdc_vec_exp(xa + b, oa + b, e - b);
            return;
        /* GroupNorm's square and plain activations: one operation per element, in loops
           of their own so they vectorise (the switch of funary per element does not) */
        case U_SQUARE:
            for (size_t i = b; i < e; i++) oa[i] = xa[i] * xa[i];
            return;
        case U_RELU:
            for (size_t i = b; i < e; i++) oa[i] = xa[i] > 0 ? xa[i] : 0.0f;
            return;
        case U_ABS:
            for (size_t i = b; i < e; i++) oa[i] = fabsf(xa[i]);
            return;
        default:
            for (size_t i = b; i < e; i++) oa[i] = funary(c->code, xa[i], eps);
            return;
        }
    }
    for (size_t i = b; i < e; i++) {
        if (!xf && (c->code == U_ABS || c->code == U_SIGN || c->code == U_SQUARE || c->code == U_RELU ||
                    c->code == U_LOGICAL_NOT)) {
            int64_t v = x->i[i];
            int64_t w = c->code == U_ABS ? (v < 0 ? -v : v)
                        : c->code == U_SIGN ? (v > 0) - (v < 0)
                        : c->code == U_SQUARE ? v * v
                        : c->code == U_RELU ? (v > 0 ? v : 0)
                                            : v == 0;
            if (of) o->f[i] = (float)w;
            else o->i[i] = sat_i32(w);
        } else {
            float v = funary(c->code, it_getf(x, i), c->eps);
            if (of) o->f[i] = v;
            else o->i[i] = isnan(v) ? 0 : sat_i32((int64_t)v);
        }
    }
}

sdc_status sdc_kernel_unary(irun *r, const iop *op) {
    itensor *x = sdc_rt_req(r, op, "x");
    if (!x) return r->err->code;
    if (x->dtype == MT_STRING) return sdc_rt_fail(r, op, SDC_E_FORMAT, "string operand");
    un_ctx c = {.code = op->def->code, .x = x};
    float dflt = c.code == U_INVERSE ? 1e-4f : c.code == U_LOG ? 1e-45f : c.code == U_RSQRT ? 1e-12f : 0.0f;
    if (c.code == U_INVERSE || c.code == U_LOG || c.code == U_RSQRT) {
        if (sdc_rt_float(r, op, "epsilon", dflt, &c.eps)) return r->err->code;
    }
    c.o = sdc_rt_out_reuse(r, op, 0, "x", x->rank, x->shape); /* element by element: in place is safe */
    if (!c.o) return r->err->code;
    sdc_ipool_for(sdc_rt_pool(r), x->n, 16384, un_rows, &c);
    return SDC_OK;
}

/* ---------------------------------------------------------------- gelu and parametric activations */

SDC_VECTORISE void sdc_silu_block(const float *x, float *o, size_t n) {
    float t[256];
    for (size_t i = 0; i < n; i += 256) {
        size_t k = n - i < 256 ? n - i : 256;
        for (size_t j = 0; j < k; j++) t[j] = -x[i + j];
        sdc_vec_exp(t, t, k);
        for (size_t j = 0; j < k; j++) o[i + j] = x[i + j] / (1.0f + t[j]);
    }
}

static const char *const GELU_MODES[] = {"EXACT", "TANH_APPROXIMATION", "SIGMOID_APPROXIMATION"};

int sdc_gelu_code(const char *mode) {
    for (int i = 0; i < (int)SDC_COUNT_OF(GELU_MODES); i++)
        if (!strcmp(mode, GELU_MODES[i])) return i;
    return -1;
}

SDC_VECTORISE void sdc_gelu_block(int code, const float *x, float *o, size_t n) {
    if (code == 0)
        for (size_t i = 0; i < n; i++) o[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
    else if (code == 1)
        for (size_t i = 0; i < n; i++) {
            float v = x[i];
            o[i] = 0.5f * v * (1.0f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));
        }
    else
        for (size_t i = 0; i < n; i += 256) {
            float t[256];
            size_t k = n - i < 256 ? n - i : 256;
            for (size_t j = 0; j < k; j++) t[j] = -1.702f * x[i + j];
            sdc_vec_exp(t, t, k);
            for (size_t j = 0; j < k; j++) o[i + j] = x[i + j] / (1.0f + t[j]);
        }
}

static void gelu_rows(void *vctx, size_t b, size_t e) {
    un_ctx *c = vctx;
    sdc_gelu_block(c->code, c->x->f + b, c->o->f + b, e - b);
}

sdc_status sdc_kernel_gelu(irun *r, const iop *op) {
    itensor *x = sdc_rt_req(r, op, "x");
    const char *mode;
    if (!x || sdc_rt_str(r, op, "mode", "EXACT", &mode)) return r->err->code;
    un_ctx c = {.x = x, .code = sdc_gelu_code(mode)};
    if (c.code < 0) return sdc_rt_fail(r, op, SDC_E_FORMAT, "unknown mode '%s'", mode);
    if (!mt_is_float(x->dtype)) return sdc_rt_fail(r, op, SDC_E_FORMAT, "x must be fp16 or fp32, not %s", mt_name(x->dtype));
    c.o = sdc_rt_out_reuse(r, op, 0, "x", x->rank, x->shape); /* element by element: in place is safe */
    if (!c.o || !mt_is_float(c.o->dtype)) return c.o ? sdc_rt_fail(r, op, SDC_E_FORMAT, "output must be float") : r->err->code;
    sdc_ipool_for(sdc_rt_pool(r), x->n, 16384, gelu_rows, &c);
    return SDC_OK;
}

SDC_VECTORISE static void act_rows(void *vctx, size_t b, size_t e) {
    un_ctx *c = vctx;
    const float *x = c->x->f;
    float *o = c->o->f;
    float al = c->alpha, be = c->beta;
    for (size_t i = b; i < e; i++) {
        float v = x[i];
        if (c->ch_a) {
            int64_t ch = (int64_t)(i / (size_t)c->ch_inner) % c->ch_n;
            al = c->ch_a[ch];
            if (c->ch_b) be = c->ch_b[ch];
        }
        switch (c->code) {
        case A_LEAKY_RELU: o[i] = v >= 0 ? v : al * v; break;
        case A_ELU: o[i] = v > 0 ? v : al * (expf(v) - 1.0f); break;
        case A_THRESHOLD: o[i] = v > al ? v : al; break;
        case A_LINEAR: o[i] = al * v + be; break;
        case A_SIGMOID_HARD: {
            float t = al * v + be;
            o[i] = t < 0 ? 0.0f : t > 1 ? 1.0f : t;
            break;
        }
        case A_SCALED_TANH: o[i] = al * tanhf(be * v); break;
        case A_CLAMPED_RELU: {
            float p = v > 0 ? v : 0.0f, n = v < 0 ? v * al : 0.0f;
            o[i] = (p < be ? p : be) + (n < be ? n : be);
            break;
        }
        case A_SOFTPLUS_PARAM: o[i] = al * log1pf(expf(v * be)); break;
        case A_PRELU: o[i] = (v > 0 ? v : 0.0f) + (v < 0 ? v : 0.0f) * al; break;
        }
    }
}

sdc_status sdc_kernel_act_alpha(irun *r, const iop *op) {
    itensor *x = sdc_rt_req(r, op, "x");
    if (!x) return r->err->code;
    if (!mt_is_float(x->dtype)) return sdc_rt_fail(r, op, SDC_E_FORMAT, "x must be fp16 or fp32, not %s", mt_name(x->dtype));
    un_ctx c = {.code = op->def->code, .x = x};
    float da = 1.0f, db = 0.0f;
    switch (c.code) {
    case A_LEAKY_RELU: da = 0.01f; break;
    case A_SIGMOID_HARD: da = 0.2f, db = 0.5f; break;
    case A_SCALED_TANH: db = 1.0f; break;
    default: break;
    }
    if (c.code == A_PRELU || c.code == A_SOFTPLUS_PARAM) {
        itensor *a = sdc_rt_req(r, op, "alpha");
        itensor *bb = c.code == A_SOFTPLUS_PARAM ? sdc_rt_req(r, op, "beta") : NULL;
        if (!a || (c.code == A_SOFTPLUS_PARAM && !bb)) return r->err->code;
        if (x->rank < 3 || a->rank != 1 || a->shape[0] != x->shape[1] || !mt_is_float(a->dtype) ||
            (bb && (bb->rank != 1 || bb->shape[0] != x->shape[1] || !mt_is_float(bb->dtype))))
            return sdc_rt_fail(r, op, SDC_E_FORMAT, "x must be [B, C, ...] and alpha/beta float [C]");
        c.ch_a = a->f;
        c.ch_b = bb ? bb->f : NULL;
        c.ch_n = x->shape[1];
        c.ch_inner = 1;
        for (int d = 2; d < x->rank; d++) c.ch_inner *= x->shape[d];
        if (c.ch_inner == 0) c.ch_inner = 1;
    } else {
        if (sdc_rt_float(r, op, "alpha", da, &c.alpha) || sdc_rt_float(r, op, "beta", db, &c.beta)) return r->err->code;
        if ((c.code == A_THRESHOLD || c.code == A_CLAMPED_RELU) && !sdc_rt_param(op, "alpha"))
            return sdc_rt_fail(r, op, SDC_E_FORMAT, "required input 'alpha' is missing");
        if (c.code == A_CLAMPED_RELU && !sdc_rt_param(op, "beta"))
            return sdc_rt_fail(r, op, SDC_E_FORMAT, "required input 'beta' is missing");
    }
    c.o = sdc_rt_out(r, op, 0, x->rank, x->shape);
    if (!c.o) return r->err->code;
    if (!mt_is_float(c.o->dtype)) return sdc_rt_fail(r, op, SDC_E_FORMAT, "output must be float");
    sdc_ipool_for(sdc_rt_pool(r), x->n, 16384, act_rows, &c);
    return SDC_OK;
}

sdc_status sdc_kernel_clip(irun *r, const iop *op) {
    itensor *x = sdc_rt_req(r, op, "x");
    float lo, hi;
    if (!x || !sdc_rt_param(op, "alpha") || !sdc_rt_param(op, "beta"))
        return x ? sdc_rt_fail(r, op, SDC_E_FORMAT, "clip needs alpha and beta") : r->err->code;
    if (sdc_rt_float(r, op, "alpha", 0, &lo) || sdc_rt_float(r, op, "beta", 0, &hi)) return r->err->code;
    itensor *o = sdc_rt_out(r, op, 0, x->rank, x->shape);
    if (!o) return r->err->code;
    for (size_t i = 0; i < x->n; i++) {
        float v = it_getf(x, i);
        v = v < lo ? lo : v > hi ? hi : v;
        if (mt_is_float(o->dtype)) o->f[i] = v;
        else o->i[i] = (int32_t)v;
    }
    return SDC_OK;
}

/* ---------------------------------------------------------------- cast, select */

static int cast_target(const char *s) {
    static const struct {
        const char *name;
        int t;
    } T[] = {{"fp16", MT_FP16}, {"fp32", MT_FP32}, {"fp64", MT_FP64}, {"int32", MT_INT32}, {"int64", MT_INT64},
             {"bool", MT_BOOL}, {"int8", MT_INT8}, {"uint8", MT_UINT8}, {"int16", MT_INT16}, {"uint16", MT_UINT16}};
    for (size_t i = 0; i < SDC_COUNT_OF(T); i++)
        if (!strcmp(T[i].name, s)) return T[i].t;
    return 0;
}

static int32_t wrap_int(int64_t v, int t) {
    switch (t) {
    case MT_BOOL: return v != 0;
    case MT_INT8: return (int8_t)v;
    case MT_UINT8: return (uint8_t)v;
    case MT_INT16: return (int16_t)v;
    case MT_UINT16: return (uint16_t)v;
    default: return sat_i32(v);
    }
}

sdc_status sdc_kernel_cast(irun *r, const iop *op) {
    itensor *x = sdc_rt_req(r, op, "x");
    const char *dt;
    if (!x || sdc_rt_str(r, op, "dtype", NULL, &dt)) return r->err->code;
    if (!dt) return sdc_rt_fail(r, op, SDC_E_FORMAT, "required input 'dtype' is missing");
    int target = cast_target(dt);
    if (!target) return sdc_rt_fail(r, op, SDC_E_UNSUPPORTED, "cast to '%s' is not supported", dt);
    int decl = sdc_rt_out_dtype(r, op, 0);
    /* int64/fp64 targets are declared as such but held as int32/float */
    if (decl != target)
        return sdc_rt_fail(r, op, SDC_E_FORMAT, "dtype '%s' differs from the declared output type %s", dt, mt_name(decl));
    itensor *o = sdc_rt_out(r, op, 0, x->rank, x->shape);
    if (!o) return r->err->code;
    bool xf = mt_is_float(x->dtype), of = mt_is_float(o->dtype);
    for (size_t i = 0; i < x->n; i++) {
        if (of) {
            o->f[i] = it_getf(x, i);
        } else if (xf) {
            float v = x->f[i];
            if (target == MT_BOOL) o->i[i] = v != 0;
            else o->i[i] = isnan(v) ? 0 : wrap_int(v >= 9.2e18f ? INT64_MAX : v <= -9.2e18f ? INT64_MIN : (int64_t)v, target);
        } else {
            o->i[i] = wrap_int(x->i[i], target);
        }
    }
    return SDC_OK;
}

typedef struct sel_ctx {
    bplan p;
    const itensor *c, *a, *b;
    itensor *o;
} sel_ctx;

SDC_VECTORISE static void sel_rows(void *vctx, size_t r0, size_t r1) {
    sel_ctx *c = vctx;
    const bplan *p = &c->p;
    int64_t n = p->inner;
    bool of = mt_is_float(c->o->dtype);
    for (size_t r = r0; r < r1; r++) {
        int64_t off[3];
        bplan_row(p, r, off);
        for (int64_t j = 0; j < n; j++) {
            size_t ic = (size_t)(off[0] + j * p->st[0][p->rank - 1]);
            bool take_a = it_getf(c->c, ic) != 0;
            const itensor *src = take_a ? c->a : c->b;
            size_t is = (size_t)(off[take_a ? 1 : 2] + j * p->st[take_a ? 1 : 2][p->rank - 1]);
            if (of) c->o->f[r * (size_t)n + (size_t)j] = it_getf(src, is);
            else c->o->i[r * (size_t)n + (size_t)j] = (int32_t)it_geti(src, is);
        }
    }
}

sdc_status sdc_kernel_select(irun *r, const iop *op) {
    itensor *cond = sdc_rt_req(r, op, "cond"), *a = cond ? sdc_rt_req(r, op, "a") : NULL, *b = a ? sdc_rt_req(r, op, "b") : NULL;
    if (!b) return r->err->code;
    itensor *ts[3] = {cond, a, b};
    int rank;
    int64_t shape[SDC_MAX_RANK];
    if (!bcast_shape(3, ts, &rank, shape)) return sdc_rt_fail(r, op, SDC_E_FORMAT, "cond, a and b do not broadcast");
    itensor *o = sdc_rt_out(r, op, 0, rank, shape);
    if (!o) return r->err->code;
    sel_ctx c = {.c = cond, .a = a, .b = b, .o = o};
    bplan_make(&c.p, 3, ts, rank, shape);
    if (o->n) sdc_ipool_for(sdc_rt_pool(r), c.p.rows, row_grain(&c.p), sel_rows, &c);
    return SDC_OK;
}
