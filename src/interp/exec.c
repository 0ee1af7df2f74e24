/*
 * exec.c — the public interpreter API: load, describe, predict; the op table; and the
 * accessors kernels use to read parameters and create outputs (interp.h).
 *
 * predict walks the ops in block order. Before an op runs, the constants it reads are
 * decoded from their stored form into temporaries; after it, the temporaries are freed, its
 * fp16 outputs are rounded to fp16, and every runtime value whose last reader it was is freed.
 */
#include <unistd.h>

#include "interp/interp.h"
#include "io/fp16.h"
#include "io/npy.h"

sdc_status interp_model_load(const char *pkg, sdc_model *m, sdc_err *err);
void interp_model_release(sdc_model *m);

/* ---------------------------------------------------------------- op table */

static const iop_def DEFS[] = {
    /* elementwise unary */
    {"abs", k_unary, U_ABS, false},
    {"acos", k_unary, U_ACOS, false},
    {"asin", k_unary, U_ASIN, false},
    {"atan", k_unary, U_ATAN, false},
    {"atanh", k_unary, U_ATANH, false},
    {"ceil", k_unary, U_CEIL, false},
    {"cos", k_unary, U_COS, false},
    {"cosh", k_unary, U_COSH, false},
    {"erf", k_unary, U_ERF, false},
    {"exp", k_unary, U_EXP, false},
    {"exp2", k_unary, U_EXP2, false},
    {"floor", k_unary, U_FLOOR, false},
    {"round", k_unary, U_ROUND, false},
    {"sign", k_unary, U_SIGN, false},
    {"sin", k_unary, U_SIN, false},
    {"sinh", k_unary, U_SINH, false},
    {"sqrt", k_unary, U_SQRT, false},
    {"square", k_unary, U_SQUARE, false},
    {"tan", k_unary, U_TAN, false},
    {"tanh", k_unary, U_TANH, false},
    {"relu", k_unary, U_RELU, false},
    {"relu6", k_unary, U_RELU6, false},
    {"sigmoid", k_unary, U_SIGMOID, false},
    {"silu", k_unary, U_SILU, false},
    {"softplus", k_unary, U_SOFTPLUS, false},
    {"softsign", k_unary, U_SOFTSIGN, false},
    {"logical_not", k_unary, U_LOGICAL_NOT, false},
    {"inverse", k_unary, U_INVERSE, false},
    {"log", k_unary, U_LOG, false},
    {"rsqrt", k_unary, U_RSQRT, false},
    /* activations with parameters */
    {"gelu", k_gelu, 0, false},
    {"leaky_relu", k_act_alpha, A_LEAKY_RELU, false},
    {"elu", k_act_alpha, A_ELU, false},
    {"threshold", k_act_alpha, A_THRESHOLD, false},
    {"linear_activation", k_act_alpha, A_LINEAR, false},
    {"sigmoid_hard", k_act_alpha, A_SIGMOID_HARD, false},
    {"scaled_tanh", k_act_alpha, A_SCALED_TANH, false},
    {"clamped_relu", k_act_alpha, A_CLAMPED_RELU, false},
    {"softplus_parametric", k_act_alpha, A_SOFTPLUS_PARAM, false},
    {"prelu", k_act_alpha, A_PRELU, false},
    {"clip", k_clip, 0, false},
    {"softmax", k_softmax, 0, false},
    /* elementwise binary */
    {"add", k_binary, B_ADD, false},
    {"sub", k_binary, B_SUB, false},
    {"mul", k_binary, B_MUL, false},
    {"real_div", k_binary, B_REAL_DIV, false},
    {"floor_div", k_binary, B_FLOOR_DIV, false},
    {"mod", k_binary, B_MOD, false},
    {"pow", k_binary, B_POW, false},
    {"maximum", k_binary, B_MAXIMUM, false},
    {"minimum", k_binary, B_MINIMUM, false},
    {"equal", k_binary, B_EQUAL, false},
    {"not_equal", k_binary, B_NOT_EQUAL, false},
    {"less", k_binary, B_LESS, false},
    {"less_equal", k_binary, B_LESS_EQUAL, false},
    {"greater", k_binary, B_GREATER, false},
    {"greater_equal", k_binary, B_GREATER_EQUAL, false},
    {"logical_and", k_binary, B_AND, false},
    {"logical_or", k_binary, B_OR, false},
    {"logical_xor", k_binary, B_XOR, false},
    {"select", k_select, 0, false},
    {"cast", k_cast, 0, false},
    /* linear algebra, normalization */
    {"linear", k_linear, 0, false},
    {"matmul", k_matmul, 0, false},
    {"einsum", k_einsum, 0, false},
    {"conv", k_conv, 0, false},
    {"layer_norm", k_layer_norm, 0, false},
    {"instance_norm", k_instance_norm, 0, false},
    {"batch_norm", k_batch_norm, 0, false},
    {"scaled_dot_product_attention", k_sdpa, 0, false},
    /* reductions */
    {"reduce_sum", k_reduce, R_SUM, false},
    {"reduce_mean", k_reduce, R_MEAN, false},
    {"reduce_max", k_reduce, R_MAX, false},
    {"reduce_min", k_reduce, R_MIN, false},
    {"reduce_prod", k_reduce, R_PROD, false},
    {"reduce_l1_norm", k_reduce, R_L1_NORM, false},
    {"reduce_l2_norm", k_reduce, R_L2_NORM, false},
    {"reduce_log_sum", k_reduce, R_LOG_SUM, false},
    {"reduce_log_sum_exp", k_reduce, R_LOG_SUM_EXP, false},
    {"reduce_sum_square", k_reduce, R_SUM_SQUARE, false},
    {"reduce_argmax", k_reduce_arg, 0, false},
    {"reduce_argmin", k_reduce_arg, 1, false},
    /* shapes and indexing */
    {"reshape", k_reshape, 0, false},
    {"transpose", k_transpose, 0, false},
    {"expand_dims", k_expand_dims, 0, false},
    {"squeeze", k_squeeze, 0, false},
    {"identity", k_identity, 0, false},
    {"concat", k_concat, 0, false},
    {"stack", k_stack, 0, false},
    {"split", k_split, 0, false},
    {"slice_by_index", k_slice_by_index, 0, false},
    {"slice_by_size", k_slice_by_size, 0, false},
    {"gather", k_gather, 0, false},
    {"tile", k_tile, 0, false},
    {"pad", k_pad, 0, false},
    {"band_part", k_band_part, 0, false},
    {"fill", k_fill, 0, false},
    {"range_1d", k_range_1d, 0, false},
    {"upsample_nearest_neighbor", k_upsample_nn, 0, false},
    {"shape", k_shape, 0, false},
    /* compression: values, not steps */
    {"constexpr_lut_to_dense", k_constexpr, C_LUT, true},
    {"constexpr_affine_dequantize", k_constexpr, C_AFFINE, true},
    {"constexpr_cast", k_constexpr, C_CAST, true},
    {"constexpr_sparse_to_dense", k_constexpr, C_SPARSE, true},
    {"constexpr_blockwise_shift_scale", k_constexpr, C_BLOCKWISE, true},
};

const iop_def *iop_find(const char *type) {
    for (size_t i = 0; i < SDC_COUNT_OF(DEFS); i++)
        if (!strcmp(DEFS[i].type, type)) return &DEFS[i];
    return NULL;
}

/* ---------------------------------------------------------------- kernel accessors */

sdc_status rt_fail(irun *r, const iop *op, sdc_status code, const char *fmt, ...) {
    char msg[800];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (op) return sdc_fail(r->err, code, "%s: op '%s' (%s): %s", r->m->path, op->name, op->type, msg);
    return sdc_fail(r->err, code, "%s: %s", r->m->path, msg);
}

const iparam *rt_param(const iop *op, const char *name) {
    for (int i = 0; i < op->n_params; i++)
        if (!strcmp(op->params[i].name, name)) return &op->params[i];
    return NULL;
}

ipool *rt_pool(irun *r) { return r->m->pool; }

static itensor *push_temp(irun *r, const iop *op, itensor *t) {
    if (r->n_temps == r->cap_temps) {
        int cap = r->cap_temps ? r->cap_temps * 2 : 16;
        itensor **temps = sdc_realloc(r->temps, sizeof *temps * (size_t)cap);
        if (!temps) {
            it_free(t);
            rt_fail(r, op, SDC_E_NOMEM, "out of memory");
            return NULL;
        }
        r->temps = temps;
        r->cap_temps = cap;
    }
    r->temps[r->n_temps++] = t;
    return t;
}

/* The value of slot s for op (decoding a constant when needed). */
static itensor *slot_value(irun *r, const iop *op, int s) {
    sdc_model *m = r->m;
    islot *sl = &m->slots[s];
    if (r->vals && r->vals[s]) return r->vals[s];
    if (sl->kind != SL_CONST) {
        rt_fail(r, op, SDC_E_INTERNAL, "value '%s' is not available", sl->name);
        return NULL;
    }
    if (sl->val) return sl->val;
    itensor *t = NULL;
    if (sl->src.kind == CS_CONSTEXPR) {
        if (constexpr_eval(r, &m->ops[sl->src.op], &t)) return NULL;
        return push_temp(r, op, t);
    }
    /* fp32 and int32 data stored as such (and aligned, as blob data always is) are used in
       place: no copy */
    if (((sl->dtype == MT_FP32 && sl->src.fmt == RAW_F32) || (sl->dtype == MT_INT32 && sl->src.fmt == RAW_I32)) &&
        ((uintptr_t)sl->src.ptr & 3) == 0) {
        t = it_view(sl->dtype, sl->rank, sl->shape, (void *)sl->src.ptr);
        if (!t) {
            rt_fail(r, op, SDC_E_NOMEM, "out of memory");
            return NULL;
        }
        return push_temp(r, op, t);
    }
    t = it_new(sl->dtype, sl->rank, sl->shape);
    if (!t) {
        rt_fail(r, op, SDC_E_NOMEM, "out of memory decoding constant '%s'", sl->name);
        return NULL;
    }
    if (mt_is_float(sl->dtype)) {
        if (sl->src.fmt == RAW_F16) f16_expand(m->pool, sl->src.ptr, t->f, t->n);
        else csrc_read_f(&sl->src, 0, t->n, t->f);
        if (sl->dtype == MT_FP16 && sl->src.fmt != RAW_F16) round_f16(m->pool, t->f, t->n);
    } else {
        csrc_read_i(&sl->src, 0, t->n, t->i);
    }
    return push_temp(r, op, t);
}

itensor *rt_in_at(irun *r, const iop *op, const char *name, int k) {
    const iparam *p = rt_param(op, name);
    if (!p || k < 0 || k >= p->n) return NULL;
    return slot_value(r, op, p->slots[k]);
}

itensor *rt_in(irun *r, const iop *op, const char *name) {
    const iparam *p = rt_param(op, name);
    if (!p) return NULL;
    if (p->n != 1) {
        rt_fail(r, op, SDC_E_FORMAT, "input '%s' has %d values where one is expected", name, p->n);
        return NULL;
    }
    return slot_value(r, op, p->slots[0]);
}

itensor *rt_req(irun *r, const iop *op, const char *name) {
    if (!rt_param(op, name)) {
        rt_fail(r, op, SDC_E_FORMAT, "required input '%s' is missing", name);
        return NULL;
    }
    return rt_in(r, op, name);
}

const csrc *rt_lazy(irun *r, const iop *op, const char *name, const islot **slot) {
    const iparam *p = rt_param(op, name);
    if (!p || p->n != 1) return NULL;
    const islot *sl = &r->m->slots[p->slots[0]];
    if (sl->kind != SL_CONST || sl->val || sl->src.kind != CS_RAW) return NULL;
    if (slot) *slot = sl;
    return &sl->src;
}

static itensor *scalar_param(irun *r, const iop *op, const char *name, bool *absent) {
    *absent = !rt_param(op, name);
    if (*absent) return NULL;
    itensor *t = rt_in(r, op, name);
    if (t && (t->n != 1 || t->dtype == MT_STRING)) {
        rt_fail(r, op, SDC_E_FORMAT, "input '%s' must be a scalar", name);
        return NULL;
    }
    return t;
}

sdc_status rt_int(irun *r, const iop *op, const char *name, int64_t dflt, int64_t *out) {
    bool absent;
    itensor *t = scalar_param(r, op, name, &absent);
    if (absent) {
        *out = dflt;
        return SDC_OK;
    }
    if (!t) return r->err->code;
    if (!mt_is_int(t->dtype)) return rt_fail(r, op, SDC_E_FORMAT, "input '%s' must be an integer", name);
    *out = t->i[0];
    return SDC_OK;
}

sdc_status rt_float(irun *r, const iop *op, const char *name, float dflt, float *out) {
    bool absent;
    itensor *t = scalar_param(r, op, name, &absent);
    if (absent) {
        *out = dflt;
        return SDC_OK;
    }
    if (!t) return r->err->code;
    *out = it_getf(t, 0);
    return SDC_OK;
}

sdc_status rt_bool(irun *r, const iop *op, const char *name, bool dflt, bool *out) {
    float f = 0;
    sdc_status s = rt_float(r, op, name, dflt ? 1.0f : 0.0f, &f);
    if (!s) *out = f != 0;
    return s;
}

sdc_status rt_str(irun *r, const iop *op, const char *name, const char *dflt, const char **out) {
    if (!rt_param(op, name)) {
        *out = dflt;
        return SDC_OK;
    }
    itensor *t = rt_in(r, op, name);
    if (!t) return r->err->code;
    if (t->dtype != MT_STRING || !t->s) return rt_fail(r, op, SDC_E_FORMAT, "input '%s' must be a string", name);
    *out = t->s;
    return SDC_OK;
}

sdc_status rt_ints(irun *r, const iop *op, const char *name, int64_t *out, int max, int *n, bool *present) {
    *n = 0;
    if (present) *present = false;
    if (!rt_param(op, name)) return SDC_OK;
    itensor *t = rt_in(r, op, name);
    if (!t) return r->err->code;
    if (t->rank > 1 || t->dtype == MT_STRING || t->n > (size_t)max)
        return rt_fail(r, op, SDC_E_FORMAT, "input '%s' must be a vector of at most %d integers", name, max);
    for (size_t i = 0; i < t->n; i++) out[i] = it_geti(t, i);
    *n = (int)t->n;
    if (present) *present = true;
    return SDC_OK;
}

int rt_out_dtype(const irun *r, const iop *op, int k) { return r->m->slots[op->outs[k]].dtype; }

itensor *rt_out(irun *r, const iop *op, int k, int rank, const int64_t *shape) {
    if (k >= op->n_out) {
        rt_fail(r, op, SDC_E_FORMAT, "declares %d outputs, the op makes at least %d", op->n_out, k + 1);
        return NULL;
    }
    int s = op->outs[k];
    const islot *sl = &r->m->slots[s];
    bool same = sl->rank == rank;
    for (int i = 0; same && i < rank; i++) same = sl->shape[i] < 0 || sl->shape[i] == shape[i];
    if (!same) {
        char a[200], b[200];
        rt_fail(r, op, SDC_E_FORMAT, "output '%s': computed shape %s differs from the declared %s", sl->name,
                shape_str(rank, shape, a, sizeof a), shape_str(sl->rank, sl->shape, b, sizeof b));
        return NULL;
    }
    if (sl->dtype == MT_STRING) {
        rt_fail(r, op, SDC_E_UNSUPPORTED, "output '%s' is a string", sl->name);
        return NULL;
    }
    itensor *t = it_new(sl->dtype, rank, shape);
    if (!t) {
        rt_fail(r, op, SDC_E_NOMEM, "out of memory for output '%s' %s", sl->name, shape_str(rank, shape, (char[200]){0}, 200));
        return NULL;
    }
    if (r->vals[s]) it_free(r->vals[s]);
    r->vals[s] = t;
    return t;
}

sdc_status k_constexpr(irun *r, const iop *op) {
    return rt_fail(r, op, SDC_E_INTERNAL, "constexpr ops are values, not steps");
}

/* ---------------------------------------------------------------- public API */

sdc_status sdc_model_load(const char *package_path, const sdc_model_options *options, sdc_model **out, char *errbuf,
                          size_t err_size) {
    sdc_err err = {0};
    sdc_model_options opt = {0};
    if (options) opt = *options;
    *out = NULL;
    sdc_model *m = sdc_calloc(1, sizeof *m);
    sdc_status s = SDC_OK;
    if (!m || !(m->path = sdc_strdup(package_path))) s = sdc_fail(&err, SDC_E_NOMEM, "out of memory");
    if (!s) {
        m->exact_fp16_off = opt.no_fp16_rounding;
        s = interp_model_load(package_path, m, &err);
    }
    if (!s) {
        int n = opt.n_threads > 0 ? opt.n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
        if (n < 1) n = 1;
        igemm_set_threads(1); /* the pool's threads split every product (gemm.c) */
        m->pool = ipool_new(n);
        if (!m->pool) s = sdc_fail(&err, SDC_E_NOMEM, "out of memory");
    }
    if (s) {
        sdc_model_free(m);
    } else {
        *out = m;
    }
    if (errbuf && err_size) snprintf(errbuf, err_size, "%s", s ? err.msg : "");
    return s;
}

void sdc_model_free(sdc_model *m) {
    if (!m) return;
    interp_model_release(m);
    ipool_free(m->pool);
    sdc_free(m->path);
    sdc_free(m);
}

int sdc_model_n_inputs(const sdc_model *m) { return m->n_inputs; }
int sdc_model_n_outputs(const sdc_model *m) { return m->n_outputs; }
const sdc_ndarray *sdc_model_input(const sdc_model *m, int i) { return i >= 0 && i < m->n_inputs ? &m->in_desc[i] : NULL; }
const sdc_ndarray *sdc_model_output(const sdc_model *m, int i) { return i >= 0 && i < m->n_outputs ? &m->out_desc[i] : NULL; }

static sdc_status bind_input(irun *r, int idx, const sdc_ndarray *a) {
    sdc_model *m = r->m;
    const sdc_ndarray *d = &m->in_desc[idx];
    int s = m->inputs[idx];
    const islot *sl = &m->slots[s];
    char want[200], got[200];
    shape_str(d->rank, d->shape, want, sizeof want);
    bool same = a->rank == d->rank;
    for (int i = 0; same && i < d->rank; i++) same = d->shape[i] < 0 ? a->shape[i] >= 1 : a->shape[i] == d->shape[i];
    if (!same)
        return sdc_fail(r->err, SDC_E_ARG, "%s: input '%s' has shape %s, the model expects %s %s", m->path, d->name,
                        shape_str(a->rank, a->shape, got, sizeof got), want, sdc_nd_dtype_name(d->dtype));
    if (a->dtype != d->dtype && a->dtype != SDC_ND_F32)
        return sdc_fail(r->err, SDC_E_ARG, "%s: input '%s' is %s, the model expects %s %s (float32 is also converted)", m->path,
                        d->name, sdc_nd_dtype_name(a->dtype), sdc_nd_dtype_name(d->dtype), want);
    if (!a->data && sdc_ndarray_numel(a))
        return sdc_fail(r->err, SDC_E_ARG, "%s: input '%s' has no data", m->path, d->name);
    itensor *t = it_new(sl->dtype, a->rank, a->shape);
    if (!t) return sdc_fail(r->err, SDC_E_NOMEM, "%s: out of memory for input '%s'", m->path, d->name);
    r->vals[s] = t;
    if (a->dtype == SDC_ND_F16) {
        f16_expand(m->pool, a->data, t->f, t->n);
    } else if (a->dtype == SDC_ND_I32) {
        memcpy(t->i, a->data, t->n * 4);
    } else if (mt_is_float(sl->dtype)) {
        memcpy(t->f, a->data, t->n * 4);
        if (sl->dtype == MT_FP16) round_f16(m->pool, t->f, t->n);
    } else {
        const float *f = a->data;
        for (size_t i = 0; i < t->n; i++) {
            if (!(f[i] == (float)(int32_t)f[i]) || f[i] >= 2147483648.0f)
                return sdc_fail(r->err, SDC_E_ARG, "%s: input '%s' is int32; float32 value %g at element %zu is not an integer",
                                m->path, d->name, (double)f[i], i);
            t->i[i] = (int32_t)f[i];
        }
    }
    return SDC_OK;
}

static void free_temps(irun *r) {
    for (int i = 0; i < r->n_temps; i++) it_free(r->temps[i]);
    r->n_temps = 0;
}

static sdc_status run_op(irun *r, int i) {
    sdc_model *m = r->m;
    const iop *op = &m->ops[i];
    r->op = op;
    sdc_status s = op->def->fn(r, op);
    free_temps(r);
    if (s) return s;
    for (int k = 0; k < op->n_out; k++) {
        int o = op->outs[k];
        itensor *t = r->vals[o];
        if (!t) return rt_fail(r, op, SDC_E_INTERNAL, "output %d was not computed", k);
        if (t->dtype == MT_FP16 && !m->exact_fp16_off) round_f16(m->pool, t->f, t->n);
        else if (t->dtype == MT_BF16 && !m->exact_fp16_off)
            for (size_t e = 0; e < t->n; e++) t->f[e] = sdc_bf16_to_f32(sdc_f32_to_bf16(t->f[e]));
        if (m->slots[o].last_use < 0) { /* nobody reads it */
            it_free(t);
            r->vals[o] = NULL;
        }
    }
    for (int p = 0; p < op->n_params; p++) {
        for (int k = 0; k < op->params[p].n; k++) {
            int sidx = op->params[p].slots[k];
            if (m->slots[sidx].last_use == i && r->vals[sidx]) {
                it_free(r->vals[sidx]);
                r->vals[sidx] = NULL;
            }
        }
    }
    return SDC_OK;
}

static sdc_status make_output(irun *r, int i, sdc_ndarray *o) {
    sdc_model *m = r->m;
    int s = m->outputs[i];
    itensor *t = slot_value(r, NULL, s);
    if (!t) return r->err->code;
    o->name = sdc_strdup(m->slots[s].name);
    o->dtype = (sdc_nd_dtype)m->out_dtype[i];
    o->rank = t->rank;
    memcpy(o->shape, t->shape, sizeof(int64_t) * (size_t)t->rank);
    o->data = sdc_malloc(t->n * (o->dtype == SDC_ND_F16 ? 2 : 4));
    if (!o->name || !o->data) return sdc_fail(r->err, SDC_E_NOMEM, "out of memory");
    if (o->dtype == SDC_ND_F16) {
        uint16_t *h = o->data;
        for (size_t e = 0; e < t->n; e++) h[e] = sdc_f32_to_f16(it_getf(t, e));
    } else if (o->dtype == SDC_ND_F32) {
        float *f = o->data;
        for (size_t e = 0; e < t->n; e++) f[e] = it_getf(t, e);
    } else {
        int32_t *d = o->data;
        if (mt_is_float(t->dtype))
            for (size_t e = 0; e < t->n; e++) d[e] = (int32_t)t->f[e];
        else
            memcpy(d, t->i, t->n * 4);
    }
    return SDC_OK;
}

sdc_status sdc_model_predict(sdc_model *m, const sdc_ndarray *inputs, int n_inputs, sdc_ndarray **outputs, int *n_outputs,
                             char *errbuf, size_t err_size) {
    sdc_err err = {0};
    irun r = {.m = m, .err = &err};
    sdc_status s = SDC_OK;
    sdc_ndarray *outs = NULL;
    *outputs = NULL;
    *n_outputs = 0;
    r.vals = sdc_calloc((size_t)m->n_slots, sizeof *r.vals);
    if (!r.vals) s = sdc_fail(&err, SDC_E_NOMEM, "out of memory");
    /* inputs: each declared one exactly once, nothing else */
    for (int k = 0; !s && k < n_inputs; k++) {
        int idx = -1;
        for (int i = 0; i < m->n_inputs; i++)
            if (inputs[k].name && !strcmp(inputs[k].name, m->in_desc[i].name)) idx = i;
        if (idx < 0) {
            char names[600] = "";
            size_t len = 0;
            for (int i = 0; i < m->n_inputs && len < sizeof names; i++)
                len += (size_t)snprintf(names + len, sizeof names - len, "%s%s", i ? ", " : "", m->in_desc[i].name);
            s = sdc_fail(&err, SDC_E_ARG, "%s: '%s' is not an input of the model (inputs: %s)", m->path,
                         inputs[k].name ? inputs[k].name : "(null)", names);
        } else if (r.vals[m->inputs[idx]]) {
            s = sdc_fail(&err, SDC_E_ARG, "%s: input '%s' is given twice", m->path, inputs[k].name);
        } else {
            s = bind_input(&r, idx, &inputs[k]);
        }
    }
    for (int i = 0; !s && i < m->n_inputs; i++) {
        if (!r.vals[m->inputs[i]]) {
            char want[200];
            s = sdc_fail(&err, SDC_E_ARG, "%s: input '%s' is missing (expected %s %s)", m->path, m->in_desc[i].name,
                         sdc_nd_dtype_name(m->in_desc[i].dtype), shape_str(m->in_desc[i].rank, m->in_desc[i].shape, want, sizeof want));
        }
    }
    for (int i = 0; !s && i < m->n_ops; i++) {
        if (!m->ops[i].def || m->ops[i].def->constexpr_op) continue; /* const and constexpr: values */
        s = run_op(&r, i);
    }
    if (!s) {
        outs = sdc_calloc((size_t)m->n_outputs + 1, sizeof *outs);
        if (!outs) s = sdc_fail(&err, SDC_E_NOMEM, "out of memory");
        for (int i = 0; !s && i < m->n_outputs; i++) s = make_output(&r, i, &outs[i]);
        free_temps(&r);
    }
    if (r.vals)
        for (int i = 0; i < m->n_slots; i++) it_free(r.vals[i]);
    free_temps(&r);
    sdc_free(r.temps);
    sdc_free(r.vals);
    ibuf_trim();
    if (s) {
        sdc_ndarrays_free(outs, m->n_outputs);
    } else {
        *outputs = outs;
        *n_outputs = m->n_outputs;
    }
    if (errbuf && err_size) snprintf(errbuf, err_size, "%s", s ? err.msg : "");
    return s;
}

void sdc_ndarrays_free(sdc_ndarray *arrays, int n) {
    if (!arrays) return;
    for (int i = 0; i < n; i++) {
        sdc_free((void *)arrays[i].name);
        sdc_free(arrays[i].data);
    }
    sdc_free(arrays);
}

float *sdc_ndarray_to_f32(const sdc_ndarray *a) {
    size_t n = sdc_ndarray_numel(a);
    float *f = sdc_malloc(n * sizeof *f);
    if (!f) return NULL;
    for (size_t i = 0; i < n; i++) {
        if (a->dtype == SDC_ND_F32) f[i] = ((const float *)a->data)[i];
        else if (a->dtype == SDC_ND_F16) f[i] = sdc_f16_to_f32(((const uint16_t *)a->data)[i]);
        else f[i] = (float)((const int32_t *)a->data)[i];
    }
    return f;
}
