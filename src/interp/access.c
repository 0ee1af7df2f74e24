/*
 * access.c — what kernels and constexpr values see of a run (interp.h): errors naming the op,
 * parameters by name, their values (constants decoded on use), scalars with defaults, and
 * outputs checked against their declared shapes.
 *
 * It calls nothing above it: a constexpr value is computed through its op's row of the op
 * table (iop_def.value), not by name, so consts.c and the kernels can use these accessors
 * without a circle.
 */
#include "interp/interp.h"

#include <math.h>

sdc_status sdc_rt_fail(irun *r, const iop *op, sdc_status code, const char *fmt, ...) {
    char msg[800];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (op) return sdc_fail(r->err, code, "%s: op '%s' (%s): %s", r->m->path, op->name, op->type, msg);
    return sdc_fail(r->err, code, "%s: %s", r->m->path, msg);
}

const iparam *sdc_rt_param(const iop *op, const char *name) {
    for (int i = 0; i < op->n_params; i++)
        if (!strcmp(op->params[i].name, name)) return &op->params[i];
    return NULL;
}

int sdc_rt_param_slot(const iop *op, const char *name) {
    const iparam *p = sdc_rt_param(op, name);
    return p && p->n == 1 ? p->slots[0] : -1;
}

ipool *sdc_rt_pool(irun *r) { return r->m->pool; }

static itensor *push_temp(irun *r, const iop *op, itensor *t) {
    if (r->n_temps == r->cap_temps) {
        int cap = r->cap_temps ? r->cap_temps * 2 : 16;
        itensor **temps = sdc_realloc(r->temps, sizeof *temps * (size_t)cap);
        if (!temps) {
            sdc_it_free(t);
            sdc_rt_fail(r, op, SDC_E_NOMEM, "out of memory");
            return NULL;
        }
        r->temps = temps;
        r->cap_temps = cap;
    }
    r->temps[r->n_temps++] = t;
    return t;
}

itensor *sdc_interp_slot_value(irun *r, const iop *op, int s) {
    sdc_model *m = r->m;
    islot *sl = &m->slots[s];
    if (r->vals && r->vals[s]) return r->vals[s];
    if (sl->kind != SL_CONST) {
        sdc_rt_fail(r, op, SDC_E_INTERNAL, "value '%s' is not available", sl->name);
        return NULL;
    }
    if (sl->val) return sl->val;
    itensor *t = NULL;
    if (sl->src.kind == CS_CONSTEXPR) {
        const iop *maker = &m->ops[sl->src.op];
        if (maker->def->value(r, maker, &t)) return NULL;
        return push_temp(r, op, t);
    }
    /* fp32 and int32 data stored as such (and aligned, as blob data always is) are used in
       place: no copy */
    if (((sl->dtype == MT_FP32 && sl->src.fmt == RAW_F32) || (sl->dtype == MT_INT32 && sl->src.fmt == RAW_I32)) &&
        ((uintptr_t)sl->src.ptr & 3) == 0) {
        t = sdc_it_view(sl->dtype, sl->rank, sl->shape, (void *)sl->src.ptr);
        if (!t) {
            sdc_rt_fail(r, op, SDC_E_NOMEM, "out of memory");
            return NULL;
        }
        return push_temp(r, op, t);
    }
    t = sdc_it_new(sl->dtype, sl->rank, sl->shape);
    if (!t) {
        sdc_rt_fail(r, op, SDC_E_NOMEM, "out of memory decoding constant '%s'", sl->name);
        return NULL;
    }
    if (mt_is_float(sl->dtype)) {
        if (sl->src.fmt == RAW_F16) sdc_f16_expand(m->pool, sl->src.ptr, t->f, t->n);
        else sdc_csrc_read_f(&sl->src, 0, t->n, t->f);
        if (sl->dtype == MT_FP16 && sl->src.fmt != RAW_F16) sdc_round_f16(m->pool, t->f, t->n);
    } else {
        sdc_csrc_read_i(&sl->src, 0, t->n, t->i);
    }
    return push_temp(r, op, t);
}

/* Kernels compute on numbers: a string value (a const like `mode`) reaches a kernel only
   through sdc_rt_str, so a malformed package wiring one into a tensor input is refused here,
   for every op at once, instead of in each kernel (their t->f / t->i are NULL for strings). */
static itensor *refuse_string(irun *r, const iop *op, const char *name, itensor *t) {
    if (!t || t->dtype != MT_STRING) return t;
    sdc_rt_fail(r, op, SDC_E_FORMAT, "input '%s' is a string where a tensor is expected", name);
    return NULL;
}

itensor *sdc_rt_in_at(irun *r, const iop *op, const char *name, int k) {
    const iparam *p = sdc_rt_param(op, name);
    if (!p || k < 0 || k >= p->n) return NULL;
    return refuse_string(r, op, name, sdc_interp_slot_value(r, op, p->slots[k]));
}

/* The one value of input `name`, string or not (NULL when absent). */
static itensor *any_value(irun *r, const iop *op, const char *name) {
    const iparam *p = sdc_rt_param(op, name);
    if (!p) return NULL;
    if (p->n != 1) {
        sdc_rt_fail(r, op, SDC_E_FORMAT, "input '%s' has %d values where one is expected", name, p->n);
        return NULL;
    }
    return sdc_interp_slot_value(r, op, p->slots[0]);
}

itensor *sdc_rt_in(irun *r, const iop *op, const char *name) {
    return refuse_string(r, op, name, any_value(r, op, name));
}

itensor *sdc_rt_req(irun *r, const iop *op, const char *name) {
    if (!sdc_rt_param(op, name)) {
        sdc_rt_fail(r, op, SDC_E_FORMAT, "required input '%s' is missing", name);
        return NULL;
    }
    return sdc_rt_in(r, op, name);
}

const csrc *sdc_rt_lazy(irun *r, const iop *op, const char *name, const islot **slot) {
    const iparam *p = sdc_rt_param(op, name);
    if (!p || p->n != 1) return NULL;
    const islot *sl = &r->m->slots[p->slots[0]];
    if (sl->kind != SL_CONST || sl->val || sl->src.kind != CS_RAW) return NULL;
    if (slot) *slot = sl;
    return &sl->src;
}

static itensor *scalar_param(irun *r, const iop *op, const char *name, bool *absent) {
    *absent = !sdc_rt_param(op, name);
    if (*absent) return NULL;
    itensor *t = sdc_rt_in(r, op, name);
    if (t && (t->n != 1 || t->dtype == MT_STRING)) {
        sdc_rt_fail(r, op, SDC_E_FORMAT, "input '%s' must be a scalar", name);
        return NULL;
    }
    return t;
}

sdc_status sdc_rt_int(irun *r, const iop *op, const char *name, int64_t dflt, int64_t *out) {
    bool absent;
    itensor *t = scalar_param(r, op, name, &absent);
    if (absent) {
        *out = dflt;
        return SDC_OK;
    }
    if (!t) return r->err->code;
    if (!mt_is_int(t->dtype)) return sdc_rt_fail(r, op, SDC_E_FORMAT, "input '%s' must be an integer", name);
    *out = t->i[0];
    return SDC_OK;
}

sdc_status sdc_rt_float(irun *r, const iop *op, const char *name, float dflt, float *out) {
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

sdc_status sdc_rt_bool(irun *r, const iop *op, const char *name, bool dflt, bool *out) {
    float f = 0;
    sdc_status s = sdc_rt_float(r, op, name, dflt ? 1.0f : 0.0f, &f);
    if (!s) *out = f != 0;
    return s;
}

sdc_status sdc_rt_str(irun *r, const iop *op, const char *name, const char *dflt, const char **out) {
    if (!sdc_rt_param(op, name)) {
        *out = dflt;
        return SDC_OK;
    }
    itensor *t = any_value(r, op, name);
    if (!t) return r->err->code;
    if (t->dtype != MT_STRING || !t->s) return sdc_rt_fail(r, op, SDC_E_FORMAT, "input '%s' must be a string", name);
    *out = t->s;
    return SDC_OK;
}

sdc_status sdc_rt_ints(irun *r, const iop *op, const char *name, int64_t *out, int max, int *n, bool *present) {
    *n = 0;
    if (present) *present = false;
    if (!sdc_rt_param(op, name)) return SDC_OK;
    itensor *t = sdc_rt_in(r, op, name);
    if (!t) return r->err->code;
    if (t->rank > 1 || t->dtype == MT_STRING || t->n > (size_t)max)
        return sdc_rt_fail(r, op, SDC_E_FORMAT, "input '%s' must be a vector of at most %d integers", name, max);
    for (size_t i = 0; i < t->n; i++) {
        /* a float list (malformed, or read from run-time data) must hold whole numbers that an
           int32 keeps (below 2^31 in magnitude): NaN or 1e30 would otherwise become an arbitrary size or index */
        if (mt_is_float(t->dtype) && !(t->f[i] == truncf(t->f[i]) && fabsf(t->f[i]) < 0x1p31f))
            return sdc_rt_fail(r, op, SDC_E_FORMAT, "input '%s' element %zu (%g) is not an int32 value", name, i,
                               (double)t->f[i]);
        out[i] = it_geti(t, i);
    }
    *n = (int)t->n;
    if (present) *present = true;
    return SDC_OK;
}

int sdc_rt_out_dtype(const irun *r, const iop *op, int k) { return r->m->slots[op->outs[k]].dtype; }

/* Budget for an output whose declared shape leaves a dim to the run (tile with run-time reps,
   non_zero): the size then comes from input data, so a crafted input could ask for any
   amount. Real graphs (the safety checker's tail) make such tensors no larger than the
   image; allowed is the larger of 1 GiB and 4x the largest tensor the graph declares with
   every dim known. Found on first need, once per run (a graph with flexible input shapes has
   many such outputs). */
#define RUNTIME_BUDGET_MIN ((uint64_t)1 << 30)

bool sdc_interp_shape_known(const islot *sl) {
    for (int d = 0; d < sl->rank; d++)
        if (sl->shape[d] < 0) return false;
    return true;
}

static uint64_t runtime_budget_bytes(irun *r) {
    if (r->runtime_budget) return r->runtime_budget;
    const sdc_model *m = r->m;
    uint64_t largest = 0;
    for (int s = 0; s < m->n_slots; s++) {
        const islot *sl = &m->slots[s];
        size_t n;
        if (sdc_interp_shape_known(sl) && sdc_it_numel(sl->rank, sl->shape, &n) && (uint64_t)n * 4 > largest) largest = (uint64_t)n * 4;
    }
    return r->runtime_budget = largest > RUNTIME_BUDGET_MIN / 4 ? largest * 4 : RUNTIME_BUDGET_MIN;
}

/* Whether output slot s may have this shape: a size that no tensor holds is a malformed
   shape, not a failed allocation; a run-time size must fit the budget above. */
static bool output_size_ok(irun *r, const iop *op, const islot *sl, int rank, const int64_t *shape) {
    size_t n;
    char a[200];
    if (!sdc_it_numel(rank, shape, &n)) {
        sdc_rt_fail(r, op, SDC_E_FORMAT, "output '%s': shape %s is too large", sl->name, shape_str(rank, shape, a, sizeof a));
        return false;
    }
    uint64_t budget;
    if (!sdc_interp_shape_known(sl) && (uint64_t)n * 4 > (budget = runtime_budget_bytes(r))) {
        sdc_rt_fail(r, op, SDC_E_FORMAT, "output '%s': run-time shape %s needs %llu MiB, over the %llu MiB allowed for "
                    "tensors sized by run-time data", sl->name, shape_str(rank, shape, a, sizeof a),
                    (unsigned long long)((uint64_t)n * 4 >> 20), (unsigned long long)(budget >> 20));
        return false;
    }
    return true;
}

itensor *sdc_rt_out(irun *r, const iop *op, int k, int rank, const int64_t *shape) {
    if (k >= op->n_out) {
        sdc_rt_fail(r, op, SDC_E_FORMAT, "declares %d outputs, the op makes at least %d", op->n_out, k + 1);
        return NULL;
    }
    int s = op->outs[k];
    const islot *sl = &r->m->slots[s];
    bool same = sl->rank == rank;
    for (int i = 0; same && i < rank; i++) same = sl->shape[i] < 0 || sl->shape[i] == shape[i];
    if (!same) {
        char a[200], b[200];
        sdc_rt_fail(r, op, SDC_E_FORMAT, "output '%s': computed shape %s differs from the declared %s", sl->name,
                shape_str(rank, shape, a, sizeof a), shape_str(sl->rank, sl->shape, b, sizeof b));
        return NULL;
    }
    if (sl->dtype == MT_STRING) {
        sdc_rt_fail(r, op, SDC_E_UNSUPPORTED, "output '%s' is a string", sl->name);
        return NULL;
    }
    if (!output_size_ok(r, op, sl, rank, shape)) return NULL;
    itensor *t = sdc_it_new(sl->dtype, rank, shape);
    if (!t) {
        sdc_rt_fail(r, op, SDC_E_NOMEM, "out of memory for output '%s' %s", sl->name, shape_str(rank, shape, (char[200]){0}, 200));
        return NULL;
    }
    if (r->vals[s]) sdc_it_free(r->vals[s]);
    r->vals[s] = t;
    return t;
}


/* Whether the op may overwrite slot s's value: a runtime value (not a constant, not borrowed)
   that this op reads last, through one binding only. */
static bool can_take(const irun *r, const iop *op, int s) {
    const sdc_model *m = r->m;
    int index = (int)(op - m->ops), uses = 0;
    const itensor *t = r->vals ? r->vals[s] : NULL;
    if (!t || t->borrowed || m->slots[s].kind == SL_CONST || m->slots[s].last_use != index) return false;
    for (int p = 0; p < op->n_params; p++)
        for (int k = 0; k < op->params[p].n; k++) uses += op->params[p].slots[k] == s;
    return uses == 1;
}

bool sdc_rt_may_take(irun *r, const iop *op, const char *name) {
    const iparam *p = sdc_rt_param(op, name);
    return p && p->n == 1 && can_take(r, op, p->slots[0]);
}

itensor *sdc_rt_out_reuse(irun *r, const iop *op, int k, const char *name, int rank, const int64_t *shape) {
    const iparam *p = sdc_rt_param(op, name);
    if (k < op->n_out && sdc_rt_may_take(r, op, name)) {
        itensor *t = r->vals[p->slots[0]];
        const islot *sl = &r->m->slots[op->outs[k]];
        bool same = t->dtype == sl->dtype && t->rank == rank && sl->rank == rank;
        for (int i = 0; same && i < rank; i++)
            same = t->shape[i] == shape[i] && (sl->shape[i] < 0 || sl->shape[i] == shape[i]);
        if (same && !r->vals[op->outs[k]]) {
            r->vals[p->slots[0]] = NULL;
            r->vals[op->outs[k]] = t;
            return t;
        }
    }
    return sdc_rt_out(r, op, k, rank, shape);
}
