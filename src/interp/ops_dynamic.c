/*
 * ops_dynamic.c — ops whose output size only the values decide: non_zero (the coordinates
 * of the set elements, [?, rank]) and scatter_nd, which writes a run-time number of updates.
 * The safety checker's `images[mask] = 0.0` comes out of coremltools as these two (with
 * shape, tile and select around them computing the count).
 *
 * Values are held as float or int32 (interp.h); shapes are computed here and checked against
 * the declared ones, whose unknown dimensions (-1) accept any size.
 */
#include "interp/interp.h"

/* ---------------------------------------------------------------- non_zero */

sdc_status sdc_kernel_non_zero(irun *r, const iop *op) {
    itensor *x = sdc_rt_req(r, op, "x");
    if (!x) return r->err->code;
    if (x->rank < 1 || x->dtype == MT_STRING) return sdc_rt_fail(r, op, SDC_E_FORMAT, "x must be a tensor of rank >= 1");
    if (mt_is_float(sdc_rt_out_dtype(r, op, 0))) return sdc_rt_fail(r, op, SDC_E_FORMAT, "output must be an integer tensor");
    size_t count = 0;
    for (size_t i = 0; i < x->n; i++) count += mt_is_float(x->dtype) ? x->f[i] != 0.0f : x->i[i] != 0;
    int64_t shape[2] = {(int64_t)count, x->rank};
    itensor *o = sdc_rt_out(r, op, 0, 2, shape);
    if (!o) return r->err->code;
    int32_t *dst = o->i;
    for (size_t i = 0; i < x->n; i++) {
        if (mt_is_float(x->dtype) ? x->f[i] == 0.0f : x->i[i] == 0) continue;
        size_t rem = i; /* row-major coordinates of element i, last dim first */
        for (int d = x->rank - 1; d >= 0; d--) {
            dst[d] = (int32_t)(rem % (size_t)x->shape[d]);
            rem /= (size_t)x->shape[d];
        }
        dst += x->rank;
    }
    return SDC_OK;
}

/* ---------------------------------------------------------------- scatter_nd */

/* in double, which holds every int32 and rounds float sums and products as float would */
typedef double (*combine_fn)(double old, double update);
static double c_update(double o, double u) { (void)o; return u; }
static double c_add(double o, double u) { return o + u; }
static double c_sub(double o, double u) { return o - u; }
static double c_mul(double o, double u) { return o * u; }
static double c_div(double o, double u) { return o / u; }
static double c_max(double o, double u) { return o > u ? o : u; }
static double c_min(double o, double u) { return o < u ? o : u; }

/* MIL scatter modes: how an update meets the value already there */
static const struct {
    const char *name;
    combine_fn fn;
} MODES[] = {
    {"update", c_update}, {"add", c_add}, {"sub", c_sub}, {"mul", c_mul},
    {"div", c_div},       {"max", c_max}, {"min", c_min},
};

static combine_fn mode_fn(const char *name) {
    for (size_t i = 0; i < SDC_COUNT_OF(MODES); i++)
        if (!strcmp(MODES[i].name, name)) return MODES[i].fn;
    return NULL;
}

/* an integer result back to int32: truncated toward zero and saturated, never undefined */
static int32_t int_result(double v) {
    if (!(v == v)) return 0;
    return v >= 2147483647.0 ? INT32_MAX : v <= -2147483648.0 ? INT32_MIN : (int32_t)v;
}

/* updates must be indices.shape[:-1] + data.shape[K:] */
static bool updates_fit(const itensor *data, const itensor *indices, const itensor *updates, int K) {
    int lead = indices->rank - 1;
    if (updates->rank != lead + data->rank - K) return false;
    for (int d = 0; d < updates->rank; d++)
        if (updates->shape[d] != (d < lead ? indices->shape[d] : data->shape[K + d - lead])) return false;
    return true;
}

sdc_status sdc_kernel_scatter_nd(irun *r, const iop *op) {
    itensor *data = sdc_rt_req(r, op, "data"), *indices = data ? sdc_rt_req(r, op, "indices") : NULL;
    itensor *updates = indices ? sdc_rt_req(r, op, "updates") : NULL;
    const char *mode;
    if (!updates || sdc_rt_str(r, op, "mode", "add", &mode)) return r->err->code;
    combine_fn fn = mode_fn(mode);
    if (!fn) return sdc_rt_fail(r, op, SDC_E_UNSUPPORTED, "mode '%s' is not a scatter mode", mode);
    if (mt_is_float(indices->dtype) || indices->rank < 1)
        return sdc_rt_fail(r, op, SDC_E_FORMAT, "indices must be an integer tensor [..., K]");
    int K = (int)indices->shape[indices->rank - 1];
    char a[200], b[200];
    if (K < 1 || K > data->rank || !updates_fit(data, indices, updates, K))
        return sdc_rt_fail(r, op, SDC_E_FORMAT, "indices %s and updates %s do not fit data %s",
                           shape_str(indices->rank, indices->shape, a, sizeof a),
                           shape_str(updates->rank, updates->shape, b, sizeof b),
                           shape_str(data->rank, data->shape, (char[200]){0}, 200));
    bool fl = mt_is_float(data->dtype);
    if (fl != mt_is_float(updates->dtype) || fl != mt_is_float(sdc_rt_out_dtype(r, op, 0)) || data->dtype == MT_STRING)
        return sdc_rt_fail(r, op, SDC_E_FORMAT, "data, updates and the output must be held alike");
    itensor *o = sdc_rt_out(r, op, 0, data->rank, data->shape);
    if (!o) return r->err->code;
    memcpy(o->p, data->p, data->n * 4);
    size_t inner = 1, tuples = indices->n / (size_t)K;
    for (int d = K; d < data->rank; d++) inner *= (size_t)data->shape[d];
    for (size_t t = 0; t < tuples; t++) {
        size_t off;
        if (sdc_index_tuple_offset(data->shape, indices->i + t * (size_t)K, K, &off) >= 0)
            return sdc_rt_fail(r, op, SDC_E_FORMAT, "index tuple %zu lies outside data %s", t,
                               shape_str(data->rank, data->shape, a, sizeof a));
        off *= inner;
        for (size_t j = 0; j < inner; j++) {
            size_t u = t * inner + j;
            if (fl) o->f[off + j] = (float)fn(o->f[off + j], updates->f[u]);
            else o->i[off + j] = int_result(fn(o->i[off + j], updates->i[u]));
        }
    }
    return SDC_OK;
}
