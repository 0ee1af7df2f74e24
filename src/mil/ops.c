/*
 * ops.c — MIL op constructors with operand checks and static shape inference.
 *
 * Every parameter whose MIL default is not None is written explicitly (coremltools does the
 * same, and the Core ML compiler is not documented to fill defaults), and which parameters
 * exist depends on the opset (e.g. gather's validate_indices appears in iOS17).
 */
#include "mil/graph_internal.h"

static bool is_float(sdc_dtype t) { return t == SDC_DT_F16 || t == SDC_DT_F32; }

static mil_var *out1(mil_op *op, sdc_dtype dtype, int rank, const int64_t *shape) {
    if (!op) return NULL;
    mil_var *v = op->outputs[0];
    v->type.dtype = dtype;
    v->type.rank = rank;
    if (rank) memcpy(v->type.shape, shape, (size_t)rank * sizeof *shape);
    return v;
}

static mil_var *same_as(mil_op *op, const mil_var *x) {
    return out1(op, x->type.dtype, x->type.rank, x->type.shape);
}

static void *shape_error(mil_graph *g, const char *op, const char *what, const mil_var *a, const mil_var *b) {
    char sa[128], sb[128];
    return sdc_mil_fail(g, SDC_E_INTERNAL, "%s in scope '%s': %s (%s %s vs %s %s)", op, g->scope, what,
                    a->name, sdc_mil_shape_str(&a->type, sa, sizeof sa), b ? b->name : "",
                    b ? sdc_mil_shape_str(&b->type, sb, sizeof sb) : "");
}

static bool require_float(mil_graph *g, const char *op, const mil_var *x) {
    if (is_float(x->type.dtype)) return true;
    sdc_mil_fail(g, SDC_E_INTERNAL, "%s in scope '%s': input %s has dtype %s, want F16 or F32", op,
             g->scope, x->name, sdc_dtype_name(x->type.dtype));
    return false;
}

static int norm_axis(int axis, int rank) { return axis < 0 ? axis + rank : axis; }

/* ---------------------------------------------------------------- elementwise */

static mil_var *binary(mil_graph *g, const char *type, mil_var *x, mil_var *y) {
    if (!x || !y || !sdc_mil_graph_ok(g)) return NULL;
    if (x->type.dtype != y->type.dtype)
        return sdc_mil_fail(g, SDC_E_INTERNAL, "%s in scope '%s': dtypes differ (%s %s vs %s %s)", type,
                        g->scope, x->name, sdc_dtype_name(x->type.dtype), y->name,
                        sdc_dtype_name(y->type.dtype));
    /* NumPy broadcasting from the trailing dimension */
    int rank = x->type.rank > y->type.rank ? x->type.rank : y->type.rank;
    int64_t shape[SDC_MAX_RANK];
    for (int i = 0; i < rank; i++) {
        int xi = x->type.rank - rank + i, yi = y->type.rank - rank + i;
        int64_t a = xi >= 0 ? x->type.shape[xi] : 1, b = yi >= 0 ? y->type.shape[yi] : 1;
        if (a != b && a != 1 && b != 1) return shape_error(g, type, "shapes do not broadcast", x, y);
        shape[i] = a == 1 ? b : a;
    }
    mil_op *op = sdc_mil_new_op(g, type, 1);
    if (!sdc_mil_param1(g, op, "x", x) || !sdc_mil_param1(g, op, "y", y)) return NULL;
    return out1(op, x->type.dtype, rank, shape);
}

mil_var *sdc_mil_add(mil_graph *g, mil_var *x, mil_var *y) { return binary(g, "add", x, y); }
mil_var *sdc_mil_sub(mil_graph *g, mil_var *x, mil_var *y) { return binary(g, "sub", x, y); }
mil_var *sdc_mil_mul(mil_graph *g, mil_var *x, mil_var *y) { return binary(g, "mul", x, y); }
mil_var *sdc_mil_real_div(mil_graph *g, mil_var *x, mil_var *y) { return binary(g, "real_div", x, y); }

mil_var *sdc_mil_maximum(mil_graph *g, mil_var *x, mil_var *y) { return binary(g, "maximum", x, y); }
mil_var *sdc_mil_pow(mil_graph *g, mil_var *x, mil_var *y) { return binary(g, "pow", x, y); }

static mil_var *compare(mil_graph *g, const char *type, mil_var *x, mil_var *y) {
    mil_var *v = binary(g, type, x, y);
    if (v) v->type.dtype = SDC_DT_BOOL;
    return v;
}
mil_var *sdc_mil_equal(mil_graph *g, mil_var *x, mil_var *y) { return compare(g, "equal", x, y); }
mil_var *sdc_mil_greater(mil_graph *g, mil_var *x, mil_var *y) { return compare(g, "greater", x, y); }

static mil_var *unary(mil_graph *g, const char *type, mil_var *x) {
    if (!x || !sdc_mil_graph_ok(g) || !require_float(g, type, x)) return NULL;
    mil_op *op = sdc_mil_new_op(g, type, 1);
    if (!sdc_mil_param1(g, op, "x", x)) return NULL;
    return same_as(op, x);
}

mil_var *sdc_mil_sigmoid(mil_graph *g, mil_var *x) { return unary(g, "sigmoid", x); }
mil_var *sdc_mil_silu(mil_graph *g, mil_var *x) { return unary(g, "silu", x); }
mil_var *sdc_mil_sqrt(mil_graph *g, mil_var *x) { return unary(g, "sqrt", x); }
mil_var *sdc_mil_square(mil_graph *g, mil_var *x) { return unary(g, "square", x); }
mil_var *sdc_mil_exp(mil_graph *g, mil_var *x) { return unary(g, "exp", x); }
mil_var *sdc_mil_sin(mil_graph *g, mil_var *x) { return unary(g, "sin", x); }
mil_var *sdc_mil_cos(mil_graph *g, mil_var *x) { return unary(g, "cos", x); }

mil_var *sdc_mil_rsqrt(mil_graph *g, mil_var *x, float epsilon) {
    if (!x || !sdc_mil_graph_ok(g) || !require_float(g, "rsqrt", x)) return NULL;
    mil_var *eps = sdc_mil_const_scalar(g, x->type.dtype, epsilon);
    mil_op *op = sdc_mil_new_op(g, "rsqrt", 1);
    if (!sdc_mil_param1(g, op, "x", x) || !sdc_mil_param1(g, op, "epsilon", eps)) return NULL;
    return same_as(op, x);
}

mil_var *sdc_mil_clip(mil_graph *g, mil_var *x, float lo, float hi) {
    if (!x || !sdc_mil_graph_ok(g) || !require_float(g, "clip", x)) return NULL;
    mil_var *a = sdc_mil_const_scalar(g, x->type.dtype, lo), *b = sdc_mil_const_scalar(g, x->type.dtype, hi);
    mil_op *op = sdc_mil_new_op(g, "clip", 1);
    if (!sdc_mil_param1(g, op, "x", x) || !sdc_mil_param1(g, op, "alpha", a) || !sdc_mil_param1(g, op, "beta", b)) return NULL;
    return same_as(op, x);
}

mil_var *sdc_mil_gelu(mil_graph *g, mil_var *x, const char *mode) {
    if (!x || !sdc_mil_graph_ok(g) || !require_float(g, "gelu", x)) return NULL;
    mil_var *m = sdc_mil_const_string(g, mode);
    mil_op *op = sdc_mil_new_op(g, "gelu", 1);
    if (!sdc_mil_param1(g, op, "x", x) || !sdc_mil_param1(g, op, "mode", m)) return NULL;
    return same_as(op, x);
}

mil_var *sdc_mil_cast(mil_graph *g, mil_var *x, sdc_dtype to) {
    if (!x || !sdc_mil_graph_ok(g)) return NULL;
    const char *name = to == SDC_DT_F16 ? "fp16" : to == SDC_DT_F32 ? "fp32" : to == SDC_DT_I32 ? "int32"
                     : to == SDC_DT_BOOL ? "bool" : to == SDC_DT_U16 ? "uint16" : NULL;
    if (!name) return sdc_mil_fail(g, SDC_E_INTERNAL, "cast to %s is not a MIL cast", sdc_dtype_name(to));
    mil_var *d = sdc_mil_const_string(g, name);
    mil_op *op = sdc_mil_new_op(g, "cast", 1);
    if (!sdc_mil_param1(g, op, "x", x) || !sdc_mil_param1(g, op, "dtype", d)) return NULL;
    return out1(op, to, x->type.rank, x->type.shape);
}

mil_var *sdc_mil_softmax(mil_graph *g, mil_var *x, int axis) {
    if (!x || !sdc_mil_graph_ok(g) || !require_float(g, "softmax", x)) return NULL;
    if (norm_axis(axis, x->type.rank) < 0 || norm_axis(axis, x->type.rank) >= x->type.rank)
        return shape_error(g, "softmax", "axis out of range", x, NULL);
    mil_var *a = sdc_mil_const_int(g, axis);
    mil_op *op = sdc_mil_new_op(g, "softmax", 1);
    if (!sdc_mil_param1(g, op, "x", x) || !sdc_mil_param1(g, op, "axis", a)) return NULL;
    return same_as(op, x);
}

/* ---------------------------------------------------------------- linear algebra */

mil_var *sdc_mil_linear(mil_graph *g, mil_var *x, mil_var *weight, mil_var *bias) {
    if (!x || !weight || !bias || !sdc_mil_graph_ok(g) || !require_float(g, "linear", x)) return NULL;
    const mil_type *xt = &x->type, *wt = &weight->type;
    if (xt->rank < 1 || xt->rank > 3 || wt->rank != 2 || xt->shape[xt->rank - 1] != wt->shape[1])
        return shape_error(g, "linear", "x [*, D_in] does not match weight [D_out, D_in]", x, weight);
    if (bias->type.rank != 1 || bias->type.shape[0] != wt->shape[0])
        return shape_error(g, "linear", "bias must be [D_out]", bias, weight);
    if (weight->type.dtype != x->type.dtype || bias->type.dtype != x->type.dtype)
        return shape_error(g, "linear", "weight/bias dtype differs from x", x, weight);
    mil_op *op = sdc_mil_new_op(g, "linear", 1);
    if (!sdc_mil_param1(g, op, "x", x) || !sdc_mil_param1(g, op, "weight", weight) ||
        !sdc_mil_param1(g, op, "bias", bias))
        return NULL;
    int64_t shape[SDC_MAX_RANK];
    memcpy(shape, xt->shape, sizeof shape);
    shape[xt->rank - 1] = wt->shape[0];
    return out1(op, x->type.dtype, xt->rank, shape);
}

mil_var *sdc_mil_matmul(mil_graph *g, mil_var *x, mil_var *y, bool transpose_x, bool transpose_y) {
    if (!x || !y || !sdc_mil_graph_ok(g) || !require_float(g, "matmul", x)) return NULL;
    const mil_type *a = &x->type, *b = &y->type;
    if (a->rank < 2 || b->rank < 2 || x->type.dtype != y->type.dtype)
        return shape_error(g, "matmul", "operands must be rank >= 2 with one dtype", x, y);
    int64_t m = transpose_x ? a->shape[a->rank - 1] : a->shape[a->rank - 2];
    int64_t k1 = transpose_x ? a->shape[a->rank - 2] : a->shape[a->rank - 1];
    int64_t k2 = transpose_y ? b->shape[b->rank - 1] : b->shape[b->rank - 2];
    int64_t n = transpose_y ? b->shape[b->rank - 2] : b->shape[b->rank - 1];
    if (k1 != k2) return shape_error(g, "matmul", "inner dimensions differ", x, y);
    int rank = a->rank > b->rank ? a->rank : b->rank;
    int64_t shape[SDC_MAX_RANK];
    for (int i = 0; i < rank - 2; i++) { /* batch dims broadcast */
        int ai = a->rank - rank + i, bi = b->rank - rank + i;
        int64_t da = ai >= 0 ? a->shape[ai] : 1, db = bi >= 0 ? b->shape[bi] : 1;
        if (da != db && da != 1 && db != 1) return shape_error(g, "matmul", "batch dims do not broadcast", x, y);
        shape[i] = da == 1 ? db : da;
    }
    shape[rank - 2] = m;
    shape[rank - 1] = n;
    mil_var *tx = sdc_mil_const_bool(g, transpose_x), *ty = sdc_mil_const_bool(g, transpose_y);
    mil_op *op = sdc_mil_new_op(g, "matmul", 1);
    if (!sdc_mil_param1(g, op, "x", x) || !sdc_mil_param1(g, op, "y", y) ||
        !sdc_mil_param1(g, op, "transpose_x", tx) || !sdc_mil_param1(g, op, "transpose_y", ty))
        return NULL;
    return out1(op, x->type.dtype, rank, shape);
}

mil_var *sdc_mil_layer_norm(mil_graph *g, mil_var *x, int n_axes, const int32_t *axes, mil_var *gamma,
                        mil_var *beta, float epsilon) {
    if (!x || !sdc_mil_graph_ok(g) || !require_float(g, "layer_norm", x)) return NULL;
    mil_type norm_shape = {x->type.dtype, n_axes, {0}};
    for (int i = 0; i < n_axes; i++) {
        int a = norm_axis(axes[i], x->type.rank);
        if (a < 0 || a >= x->type.rank) return shape_error(g, "layer_norm", "axis out of range", x, NULL);
        norm_shape.shape[i] = x->type.shape[a];
    }
    mil_var *affine[2] = {gamma, beta};
    for (int i = 0; i < 2; i++)
        if (affine[i] && (!sdc_mil_shape_eq(&affine[i]->type, &norm_shape) || affine[i]->type.dtype != x->type.dtype))
            return shape_error(g, "layer_norm", "gamma/beta must match x.shape[axes] and dtype", affine[i], x);
    mil_var *ax = sdc_mil_const_ints(g, n_axes, axes);
    mil_var *eps = sdc_mil_const_scalar(g, x->type.dtype, epsilon);
    mil_op *op = sdc_mil_new_op(g, "layer_norm", 1);
    if (!sdc_mil_param1(g, op, "x", x) || !sdc_mil_param1(g, op, "axes", ax)) return NULL;
    if (gamma && !sdc_mil_param1(g, op, "gamma", gamma)) return NULL;
    if (beta && !sdc_mil_param1(g, op, "beta", beta)) return NULL;
    if (!sdc_mil_param1(g, op, "epsilon", eps)) return NULL;
    return same_as(op, x);
}

mil_var *sdc_mil_batch_norm(mil_graph *g, mil_var *x, mil_var *mean, mil_var *variance, mil_var *gamma,
                         mil_var *beta, float epsilon) {
    if (!x || !mean || !variance || !gamma || !beta || !sdc_mil_graph_ok(g) || !require_float(g, "batch_norm", x))
        return NULL;
    if (x->type.rank < 3) return shape_error(g, "batch_norm", "x must be [N, C, *D]", x, NULL);
    mil_type per_channel = {x->type.dtype, 1, {x->type.shape[1]}};
    mil_var *params[4] = {mean, variance, gamma, beta};
    for (int i = 0; i < 4; i++)
        if (!sdc_mil_shape_eq(&params[i]->type, &per_channel) || params[i]->type.dtype != x->type.dtype)
            return shape_error(g, "batch_norm", "mean/variance/gamma/beta must be [C] of x's dtype", params[i], x);
    mil_var *eps = sdc_mil_const_scalar(g, x->type.dtype, epsilon);
    mil_op *op = sdc_mil_new_op(g, "batch_norm", 1);
    if (!sdc_mil_param1(g, op, "x", x) || !sdc_mil_param1(g, op, "mean", mean) ||
        !sdc_mil_param1(g, op, "variance", variance) || !sdc_mil_param1(g, op, "gamma", gamma) ||
        !sdc_mil_param1(g, op, "beta", beta) || !sdc_mil_param1(g, op, "epsilon", eps))
        return NULL;
    return same_as(op, x);
}

/* ---------------------------------------------------------------- shape ops */

mil_var *sdc_mil_reshape(mil_graph *g, mil_var *x, int rank, const int64_t *shape) {
    if (!x || !sdc_mil_graph_ok(g)) return NULL;
    mil_type t = {x->type.dtype, rank, {0}};
    memcpy(t.shape, shape, (size_t)rank * sizeof *shape);
    if (sdc_mil_numel(&t) != sdc_mil_numel(&x->type))
        return shape_error(g, "reshape", "element count changes", x, NULL);
    int32_t s32[SDC_MAX_RANK];
    for (int i = 0; i < rank; i++) s32[i] = (int32_t)shape[i];
    mil_var *s = sdc_mil_const_ints(g, rank, s32);
    mil_op *op = sdc_mil_new_op(g, "reshape", 1);
    if (!sdc_mil_param1(g, op, "x", x) || !sdc_mil_param1(g, op, "shape", s)) return NULL;
    return out1(op, t.dtype, rank, t.shape);
}

mil_var *sdc_mil_transpose(mil_graph *g, mil_var *x, int rank, const int32_t *perm) {
    if (!x || !sdc_mil_graph_ok(g)) return NULL;
    if (rank != x->type.rank) return shape_error(g, "transpose", "perm length differs from rank", x, NULL);
    int64_t shape[SDC_MAX_RANK];
    bool seen[SDC_MAX_RANK] = {0};
    for (int i = 0; i < rank; i++) {
        if (perm[i] < 0 || perm[i] >= rank || seen[perm[i]])
            return shape_error(g, "transpose", "perm is not a permutation", x, NULL);
        seen[perm[i]] = true;
        shape[i] = x->type.shape[perm[i]];
    }
    mil_var *p = sdc_mil_const_ints(g, rank, perm);
    mil_op *op = sdc_mil_new_op(g, "transpose", 1);
    if (!sdc_mil_param1(g, op, "x", x) || !sdc_mil_param1(g, op, "perm", p)) return NULL;
    return out1(op, x->type.dtype, rank, shape);
}

mil_var *sdc_mil_gather(mil_graph *g, mil_var *x, mil_var *indices, int axis) {
    if (!x || !indices || !sdc_mil_graph_ok(g)) return NULL;
    int a = norm_axis(axis, x->type.rank);
    if (a < 0 || a >= x->type.rank || indices->type.dtype != SDC_DT_I32)
        return shape_error(g, "gather", "axis out of range or indices not int32", x, indices);
    /* out = x.shape[:axis] + indices.shape + x.shape[axis+1:] */
    int64_t shape[SDC_MAX_RANK];
    int rank = 0;
    if (x->type.rank - 1 + indices->type.rank > SDC_MAX_RANK)
        return shape_error(g, "gather", "result rank too large", x, indices);
    for (int i = 0; i < a; i++) shape[rank++] = x->type.shape[i];
    for (int i = 0; i < indices->type.rank; i++) shape[rank++] = indices->type.shape[i];
    for (int i = a + 1; i < x->type.rank; i++) shape[rank++] = x->type.shape[i];
    mil_var *ax = sdc_mil_const_int(g, axis);
    mil_var *batch_dims = g->opset >= 6 ? sdc_mil_const_int(g, 0) : NULL;
    mil_var *validate = g->opset >= 7 ? sdc_mil_const_bool(g, false) : NULL;
    mil_op *op = sdc_mil_new_op(g, "gather", 1);
    if (!sdc_mil_param1(g, op, "x", x) || !sdc_mil_param1(g, op, "indices", indices) ||
        !sdc_mil_param1(g, op, "axis", ax))
        return NULL;
    if (batch_dims && !sdc_mil_param1(g, op, "batch_dims", batch_dims)) return NULL;
    if (validate && !sdc_mil_param1(g, op, "validate_indices", validate)) return NULL;
    return out1(op, x->type.dtype, rank, shape);
}

mil_var *sdc_mil_gather_nd(mil_graph *g, mil_var *x, mil_var *indices) {
    if (!x || !indices || !sdc_mil_graph_ok(g)) return NULL;
    const mil_type *it = &indices->type;
    bool int_ok = it->dtype == SDC_DT_I32 || (it->dtype == SDC_DT_U16 && g->opset >= 7);
    if (!int_ok || it->rank < 1 || it->shape[it->rank - 1] < 1 || it->shape[it->rank - 1] > x->type.rank ||
        it->rank - 1 + x->type.rank - it->shape[it->rank - 1] > SDC_MAX_RANK)
        return shape_error(g, "gather_nd", "indices [..., K] must be int32 (or uint16 from iOS17) with K <= rank of x", x, indices);
    /* out = indices.shape[:-1] + x.shape[K:] */
    int64_t shape[SDC_MAX_RANK];
    int rank = 0, K = (int)it->shape[it->rank - 1];
    for (int i = 0; i < it->rank - 1; i++) shape[rank++] = it->shape[i];
    for (int i = K; i < x->type.rank; i++) shape[rank++] = x->type.shape[i];
    mil_var *batch_dims = g->opset >= 6 ? sdc_mil_const_int(g, 0) : NULL;
    mil_var *validate = g->opset >= 7 ? sdc_mil_const_bool(g, false) : NULL;
    mil_op *op = sdc_mil_new_op(g, "gather_nd", 1);
    if (!sdc_mil_param1(g, op, "x", x) || !sdc_mil_param1(g, op, "indices", indices)) return NULL;
    if (batch_dims && !sdc_mil_param1(g, op, "batch_dims", batch_dims)) return NULL;
    if (validate && !sdc_mil_param1(g, op, "validate_indices", validate)) return NULL;
    return out1(op, x->type.dtype, rank, shape);
}

mil_var *sdc_mil_reduce_argmax(mil_graph *g, mil_var *x, int axis, bool keep_dims) {
    if (!x || !sdc_mil_graph_ok(g)) return NULL;
    int a = norm_axis(axis, x->type.rank);
    if (a < 0 || a >= x->type.rank) return shape_error(g, "reduce_argmax", "axis out of range", x, NULL);
    int64_t shape[SDC_MAX_RANK];
    int rank = 0;
    for (int i = 0; i < x->type.rank; i++) {
        if (i != a)
            shape[rank++] = x->type.shape[i];
        else if (keep_dims)
            shape[rank++] = 1;
    }
    mil_var *ax = sdc_mil_const_int(g, axis), *kd = sdc_mil_const_bool(g, keep_dims);
    mil_var *odt = g->opset >= 7 ? sdc_mil_const_string(g, "int32") : NULL;
    mil_op *op = sdc_mil_new_op(g, "reduce_argmax", 1);
    if (!sdc_mil_param1(g, op, "x", x) || !sdc_mil_param1(g, op, "axis", ax) ||
        !sdc_mil_param1(g, op, "keep_dims", kd))
        return NULL;
    if (odt && !sdc_mil_param1(g, op, "output_dtype", odt)) return NULL;
    return out1(op, SDC_DT_I32, rank, shape);
}

mil_var *sdc_mil_concat(mil_graph *g, int n, mil_var **values, int axis) {
    if (!sdc_mil_graph_ok(g) || n < 1) return NULL;
    for (int i = 0; i < n; i++)
        if (!values[i]) return NULL;
    const mil_type *t0 = &values[0]->type;
    int rank = t0->rank ? t0->rank : 1; /* rank-0 values count as [1] */
    int a = norm_axis(axis, rank);
    if (a < 0 || a >= rank) return shape_error(g, "concat", "axis out of range", values[0], NULL);
    int64_t shape[SDC_MAX_RANK] = {1};
    memcpy(shape, t0->shape, (size_t)t0->rank * sizeof *shape);
    shape[a] = 0;
    for (int i = 0; i < n; i++) {
        const mil_type *t = &values[i]->type;
        if (t->rank != t0->rank || t->dtype != t0->dtype)
            return shape_error(g, "concat", "rank or dtype differs", values[0], values[i]);
        for (int d = 0; d < t->rank; d++)
            if (d != a && t->shape[d] != t0->shape[d])
                return shape_error(g, "concat", "non-axis dims differ", values[0], values[i]);
        int64_t len = t->rank ? t->shape[a] : 1;
        shape[a] = shape[a] < 0 || len < 0 ? MIL_DIM_UNKNOWN : shape[a] + len;
    }
    mil_var *ax = sdc_mil_const_int(g, axis), *il = sdc_mil_const_bool(g, false);
    mil_op *op = sdc_mil_new_op(g, "concat", 1);
    if (!sdc_mil_set_param(g, op, "values", n, values) || !sdc_mil_param1(g, op, "axis", ax) ||
        !sdc_mil_param1(g, op, "interleave", il))
        return NULL;
    return out1(op, t0->dtype, rank, shape);
}

mil_var *sdc_mil_stack(mil_graph *g, int n, mil_var **values, int axis) {
    if (!sdc_mil_graph_ok(g) || n < 1) return NULL;
    for (int i = 0; i < n; i++)
        if (!values[i]) return NULL;
    const mil_type *t0 = &values[0]->type;
    int a = norm_axis(axis, t0->rank + 1);
    if (a < 0 || a > t0->rank || t0->rank + 1 > SDC_MAX_RANK) return shape_error(g, "stack", "axis out of range", values[0], NULL);
    for (int i = 1; i < n; i++)
        if (values[i]->type.rank != t0->rank || values[i]->type.dtype != t0->dtype ||
            memcmp(values[i]->type.shape, t0->shape, (size_t)t0->rank * sizeof *t0->shape))
            return shape_error(g, "stack", "shapes or dtypes differ", values[0], values[i]);
    /* out = shape[:axis] + [n] + shape[axis:] */
    int64_t shape[SDC_MAX_RANK];
    for (int d = 0, k = 0; d <= t0->rank; d++) shape[d] = d == a ? n : t0->shape[k++];
    mil_var *ax = sdc_mil_const_int(g, axis);
    mil_op *op = sdc_mil_new_op(g, "stack", 1);
    if (!sdc_mil_set_param(g, op, "values", n, values) || !sdc_mil_param1(g, op, "axis", ax)) return NULL;
    return out1(op, t0->dtype, t0->rank + 1, shape);
}

/* ---------------------------------------------------------------- convolution, reductions */

mil_var *sdc_mil_conv(mil_graph *g, mil_var *x, mil_var *weight, mil_var *bias, int stride, const int pad[4],
                  int groups) {
    if (!x || !weight || !sdc_mil_graph_ok(g) || !require_float(g, "conv", x)) return NULL;
    const mil_type *xt = &x->type, *wt = &weight->type;
    if (xt->rank != 4 || wt->rank != 4 || groups < 1 || xt->shape[1] % groups || wt->shape[0] % groups ||
        wt->shape[1] * groups != xt->shape[1] || wt->dtype != xt->dtype)
        return shape_error(g, "conv", "x [N, Cin, H, W] does not match weight [Cout, Cin/groups, kH, kW]", x, weight);
    if (bias && (bias->type.rank != 1 || bias->type.shape[0] != wt->shape[0] || bias->type.dtype != xt->dtype))
        return shape_error(g, "conv", "bias must be [Cout]", bias, weight);
    int64_t h = (xt->shape[2] + pad[0] + pad[1] - wt->shape[2]) / stride + 1;
    int64_t w = (xt->shape[3] + pad[2] + pad[3] - wt->shape[3]) / stride + 1;
    if (h < 1 || w < 1) return shape_error(g, "conv", "kernel larger than the padded input", x, weight);
    int32_t strides[2] = {stride, stride}, dil[2] = {1, 1}, pads[4] = {pad[0], pad[1], pad[2], pad[3]};
    mil_var *st = sdc_mil_const_ints(g, 2, strides), *pt = sdc_mil_const_string(g, "custom");
    mil_var *pd = sdc_mil_const_ints(g, 4, pads), *dl = sdc_mil_const_ints(g, 2, dil), *gr = sdc_mil_const_int(g, groups);
    mil_op *op = sdc_mil_new_op(g, "conv", 1);
    if (!sdc_mil_param1(g, op, "x", x) || !sdc_mil_param1(g, op, "weight", weight)) return NULL;
    if (bias && !sdc_mil_param1(g, op, "bias", bias)) return NULL;
    if (!sdc_mil_param1(g, op, "strides", st) || !sdc_mil_param1(g, op, "pad_type", pt) || !sdc_mil_param1(g, op, "pad", pd) ||
        !sdc_mil_param1(g, op, "dilations", dl) || !sdc_mil_param1(g, op, "groups", gr))
        return NULL;
    int64_t shape[4] = {xt->shape[0], wt->shape[0], h, w};
    return out1(op, xt->dtype, 4, shape);
}

mil_var *sdc_mil_reduce(mil_graph *g, const char *type, mil_var *x, int n_axes, const int32_t *axes, bool keep_dims) {
    if (!x || !sdc_mil_graph_ok(g)) return NULL;
    bool reduced[SDC_MAX_RANK] = {0};
    for (int i = 0; i < n_axes; i++) {
        int a = norm_axis(axes[i], x->type.rank);
        if (a < 0 || a >= x->type.rank || reduced[a]) return shape_error(g, type, "bad axes", x, NULL);
        reduced[a] = true;
    }
    int64_t shape[SDC_MAX_RANK];
    int rank = 0;
    for (int i = 0; i < x->type.rank; i++) {
        if (!reduced[i])
            shape[rank++] = x->type.shape[i];
        else if (keep_dims)
            shape[rank++] = 1;
    }
    mil_var *ax = sdc_mil_const_ints(g, n_axes, axes), *kd = sdc_mil_const_bool(g, keep_dims);
    mil_op *op = sdc_mil_new_op(g, type, 1);
    if (!sdc_mil_param1(g, op, "x", x) || !sdc_mil_param1(g, op, "axes", ax) || !sdc_mil_param1(g, op, "keep_dims", kd))
        return NULL;
    return out1(op, x->type.dtype, rank, shape);
}

mil_var *sdc_mil_upsample_nearest(mil_graph *g, mil_var *x, int scale_h, int scale_w) {
    if (!x || !sdc_mil_graph_ok(g) || !require_float(g, "upsample_nearest_neighbor", x)) return NULL;
    if (x->type.rank < 3 || scale_h < 1 || scale_w < 1)
        return shape_error(g, "upsample_nearest_neighbor", "needs rank >= 3 and positive scales", x, NULL);
    mil_var *sh = sdc_mil_const_int(g, scale_h), *sw = sdc_mil_const_int(g, scale_w);
    mil_op *op = sdc_mil_new_op(g, "upsample_nearest_neighbor", 1);
    if (!sdc_mil_param1(g, op, "x", x) || !sdc_mil_param1(g, op, "scale_factor_height", sh) ||
        !sdc_mil_param1(g, op, "scale_factor_width", sw))
        return NULL;
    int64_t shape[SDC_MAX_RANK];
    memcpy(shape, x->type.shape, sizeof shape);
    shape[x->type.rank - 2] *= scale_h;
    shape[x->type.rank - 1] *= scale_w;
    return out1(op, x->type.dtype, x->type.rank, shape);
}

/* ---------------------------------------------------------------- einsum */

mil_var *sdc_mil_einsum(mil_graph *g, const char *equation, mil_var *a, mil_var *b) {
    if (!a || !b || !sdc_mil_graph_ok(g) || !require_float(g, "einsum", a)) return NULL;
    const mil_type *at = &a->type, *bt = &b->type;
    int64_t shape[4];
    int rank;
    if (!strcmp(equation, "nchw,nwhu->nchu")) { /* a [N, C, H, W] · b [N, W, H, U] → [N, C, H, U] */
        if (at->rank != 4 || bt->rank != 4 || at->shape[3] != bt->shape[1] ||
            (at->shape[2] != bt->shape[2] && at->shape[2] != 1 && bt->shape[2] != 1) ||
            (at->shape[0] != bt->shape[0] && at->shape[0] != 1 && bt->shape[0] != 1))
            return shape_error(g, "einsum nchw,nwhu->nchu", "operand shapes do not match", a, b);
        shape[0] = at->shape[0] > bt->shape[0] ? at->shape[0] : bt->shape[0];
        shape[1] = at->shape[1];
        shape[2] = at->shape[2] > bt->shape[2] ? at->shape[2] : bt->shape[2];
        shape[3] = bt->shape[3];
        rank = 4;
    } else if (!strcmp(equation, "chw,whr->chr")) {
        if (at->rank != 3 || bt->rank != 3 || at->shape[2] != bt->shape[0] || at->shape[1] != bt->shape[1])
            return shape_error(g, "einsum chw,whr->chr", "operand shapes do not match", a, b);
        shape[0] = at->shape[0];
        shape[1] = at->shape[1];
        shape[2] = bt->shape[2];
        rank = 3;
    } else {
        return sdc_mil_fail(g, SDC_E_INTERNAL, "einsum: equation '%s' is not one MIL supports", equation);
    }
    if (at->dtype != bt->dtype) return shape_error(g, "einsum", "dtypes differ", a, b);
    mil_var *vals[2] = {a, b};
    mil_var *eq = sdc_mil_const_string(g, equation);
    mil_op *op = sdc_mil_new_op(g, "einsum", 1);
    if (!sdc_mil_set_param(g, op, "values", 2, vals) || !sdc_mil_param1(g, op, "equation", eq)) return NULL;
    return out1(op, at->dtype, rank, shape);
}

/* ---------------------------------------------------------------- split, slice, dims */

bool sdc_mil_split(mil_graph *g, mil_var *x, int axis, int n, const int64_t *sizes, mil_var **out) {
    if (!x || !sdc_mil_graph_ok(g) || n < 1) return false;
    int a = norm_axis(axis, x->type.rank);
    int64_t total = 0;
    for (int i = 0; i < n; i++) total += sizes[i];
    if (a < 0 || a >= x->type.rank || total != x->type.shape[a]) {
        shape_error(g, "split", "sizes do not add up to the axis length", x, NULL);
        return false;
    }
    int32_t s32[64];
    if (n > 64) return sdc_mil_fail(g, SDC_E_INTERNAL, "split: too many pieces") != NULL;
    for (int i = 0; i < n; i++) s32[i] = (int32_t)sizes[i];
    mil_var *ss = sdc_mil_const_ints(g, n, s32), *ax = sdc_mil_const_int(g, axis);
    mil_op *op = sdc_mil_new_op(g, "split", n);
    if (!sdc_mil_param1(g, op, "x", x) || !sdc_mil_param1(g, op, "split_sizes", ss) || !sdc_mil_param1(g, op, "axis", ax))
        return false;
    for (int i = 0; i < n; i++) {
        mil_var *v = op->outputs[i];
        v->type = x->type;
        v->type.shape[a] = sizes[i];
        out[i] = v;
    }
    return true;
}

mil_var *sdc_mil_slice(mil_graph *g, mil_var *x, int axis, int64_t begin, int64_t end) {
    if (!x || !sdc_mil_graph_ok(g)) return NULL;
    int a = norm_axis(axis, x->type.rank), r = x->type.rank;
    if (a < 0 || a >= r || begin < 0 || end <= begin || end > x->type.shape[a])
        return shape_error(g, "slice_by_index", "range outside the axis", x, NULL);
    int32_t b[SDC_MAX_RANK] = {0}, e[SDC_MAX_RANK] = {0}, st[SDC_MAX_RANK];
    int32_t bm[SDC_MAX_RANK], em[SDC_MAX_RANK];
    for (int i = 0; i < r; i++) {
        st[i] = 1;
        bm[i] = em[i] = i != a; /* masked axes are taken whole */
        if (i == a) {
            b[i] = (int32_t)begin;
            e[i] = (int32_t)end;
        }
    }
    mil_var *vb = sdc_mil_const_ints(g, r, b), *ve = sdc_mil_const_ints(g, r, e), *vs = sdc_mil_const_ints(g, r, st);
    mil_var *vbm = sdc_mil_const_bools(g, r, bm), *vem = sdc_mil_const_bools(g, r, em);
    int32_t zeros[SDC_MAX_RANK] = {0};
    mil_var *vsq = sdc_mil_const_bools(g, r, zeros);
    mil_op *op = sdc_mil_new_op(g, "slice_by_index", 1);
    if (!sdc_mil_param1(g, op, "x", x) || !sdc_mil_param1(g, op, "begin", vb) || !sdc_mil_param1(g, op, "end", ve) ||
        !sdc_mil_param1(g, op, "stride", vs) || !sdc_mil_param1(g, op, "begin_mask", vbm) ||
        !sdc_mil_param1(g, op, "end_mask", vem) || !sdc_mil_param1(g, op, "squeeze_mask", vsq))
        return NULL;
    mil_type t = x->type;
    t.shape[a] = end - begin;
    return out1(op, t.dtype, t.rank, t.shape);
}

mil_var *sdc_mil_pad_constant(mil_graph *g, mil_var *x, const int32_t pad[4], float value) {
    if (!x || !sdc_mil_graph_ok(g) || !require_float(g, "pad", x)) return NULL;
    if (x->type.rank != 4 || pad[0] < 0 || pad[1] < 0 || pad[2] < 0 || pad[3] < 0)
        return shape_error(g, "pad", "x must be rank 4 and the padding non-negative", x, NULL);
    int32_t all[8] = {0, 0, 0, 0, pad[0], pad[1], pad[2], pad[3]}; /* before/after per axis */
    mil_var *vp = sdc_mil_const_ints(g, 8, all), *vm = sdc_mil_const_string(g, "constant");
    mil_var *vc = sdc_mil_const_scalar(g, x->type.dtype, value);
    mil_op *op = sdc_mil_new_op(g, "pad", 1);
    if (!sdc_mil_param1(g, op, "x", x) || !sdc_mil_param1(g, op, "pad", vp) || !sdc_mil_param1(g, op, "mode", vm) ||
        !sdc_mil_param1(g, op, "constant_val", vc))
        return NULL;
    mil_type t = x->type;
    t.shape[2] += pad[0] + pad[1];
    t.shape[3] += pad[2] + pad[3];
    return out1(op, t.dtype, t.rank, t.shape);
}

mil_var *sdc_mil_expand_dims(mil_graph *g, mil_var *x, int n_axes, const int32_t *axes) {
    if (!x || !sdc_mil_graph_ok(g)) return NULL;
    int rank = x->type.rank + n_axes;
    if (rank > SDC_MAX_RANK) return shape_error(g, "expand_dims", "rank too large", x, NULL);
    bool inserted[SDC_MAX_RANK] = {0};
    for (int i = 0; i < n_axes; i++) {
        int a = norm_axis(axes[i], rank);
        if (a < 0 || a >= rank || inserted[a]) return shape_error(g, "expand_dims", "bad axes", x, NULL);
        inserted[a] = true;
    }
    int64_t shape[SDC_MAX_RANK];
    for (int i = 0, k = 0; i < rank; i++) shape[i] = inserted[i] ? 1 : x->type.shape[k++];
    mil_var *ax = sdc_mil_const_ints(g, n_axes, axes);
    mil_op *op = sdc_mil_new_op(g, "expand_dims", 1);
    if (!sdc_mil_param1(g, op, "x", x) || !sdc_mil_param1(g, op, "axes", ax)) return NULL;
    return out1(op, x->type.dtype, rank, shape);
}

mil_var *sdc_mil_squeeze(mil_graph *g, mil_var *x, int n_axes, const int32_t *axes) {
    if (!x || !sdc_mil_graph_ok(g)) return NULL;
    bool drop[SDC_MAX_RANK] = {0};
    for (int i = 0; i < n_axes; i++) {
        int a = norm_axis(axes[i], x->type.rank);
        if (a < 0 || a >= x->type.rank || x->type.shape[a] != 1)
            return shape_error(g, "squeeze", "axis is not of size 1", x, NULL);
        drop[a] = true;
    }
    int64_t shape[SDC_MAX_RANK];
    int rank = 0;
    for (int i = 0; i < x->type.rank; i++)
        if (!drop[i]) shape[rank++] = x->type.shape[i];
    mil_var *ax = sdc_mil_const_ints(g, n_axes, axes);
    mil_op *op = sdc_mil_new_op(g, "squeeze", 1);
    if (!sdc_mil_param1(g, op, "x", x) || !sdc_mil_param1(g, op, "axes", ax)) return NULL;
    return out1(op, x->type.dtype, rank, shape);
}

mil_var *sdc_mil_slice_squeeze(mil_graph *g, mil_var *x, int axis, int64_t index) {
    if (!x || !sdc_mil_graph_ok(g)) return NULL;
    int a = norm_axis(axis, x->type.rank), r = x->type.rank;
    if (a < 0 || a >= r || index < 0 || index >= x->type.shape[a])
        return shape_error(g, "slice_by_index", "index outside the axis", x, NULL);
    int32_t b[SDC_MAX_RANK] = {0}, e[SDC_MAX_RANK] = {0}, st[SDC_MAX_RANK], bm[SDC_MAX_RANK], em[SDC_MAX_RANK],
            sq[SDC_MAX_RANK] = {0};
    for (int i = 0; i < r; i++) {
        st[i] = 1;
        bm[i] = em[i] = i != a; /* the other axes are taken whole */
    }
    b[a] = (int32_t)index;
    e[a] = (int32_t)index + 1;
    sq[a] = 1;
    mil_var *vb = sdc_mil_const_ints(g, r, b), *ve = sdc_mil_const_ints(g, r, e), *vs = sdc_mil_const_ints(g, r, st);
    mil_var *vbm = sdc_mil_const_bools(g, r, bm), *vem = sdc_mil_const_bools(g, r, em), *vsq = sdc_mil_const_bools(g, r, sq);
    mil_op *op = sdc_mil_new_op(g, "slice_by_index", 1);
    if (!sdc_mil_param1(g, op, "x", x) || !sdc_mil_param1(g, op, "begin", vb) || !sdc_mil_param1(g, op, "end", ve) ||
        !sdc_mil_param1(g, op, "stride", vs) || !sdc_mil_param1(g, op, "begin_mask", vbm) ||
        !sdc_mil_param1(g, op, "end_mask", vem) || !sdc_mil_param1(g, op, "squeeze_mask", vsq))
        return NULL;
    int64_t shape[SDC_MAX_RANK];
    for (int i = 0, k = 0; i < r; i++)
        if (i != a) shape[k++] = x->type.shape[i];
    return out1(op, x->type.dtype, r - 1, shape);
}

/* ---------------------------------------------------------------- tile, select, and the ops
   whose output sizes only the run knows */

static bool has_unknown_dim(const mil_type *t) {
    for (int i = 0; i < t->rank; i++)
        if (t->shape[i] < 0) return true;
    return false;
}

mil_var *sdc_mil_tile(mil_graph *g, mil_var *x, const int64_t *reps) {
    if (!x || !sdc_mil_graph_ok(g)) return NULL;
    int r = x->type.rank;
    int32_t r32[SDC_MAX_RANK];
    int64_t shape[SDC_MAX_RANK];
    for (int i = 0; i < r; i++) {
        if (reps[i] < 1 || reps[i] > INT32_MAX || x->type.shape[i] < 0)
            return shape_error(g, "tile", "reps must be >= 1 on known dims", x, NULL);
        r32[i] = (int32_t)reps[i];
        shape[i] = x->type.shape[i] * reps[i];
    }
    mil_var *vr = sdc_mil_const_ints(g, r, r32);
    mil_op *op = sdc_mil_new_op(g, "tile", 1);
    if (!sdc_mil_param1(g, op, "x", x) || !sdc_mil_param1(g, op, "reps", vr)) return NULL;
    return out1(op, x->type.dtype, r, shape);
}

mil_var *sdc_mil_tile_by(mil_graph *g, mil_var *x, mil_var *reps) {
    if (!x || !reps || !sdc_mil_graph_ok(g)) return NULL;
    if (reps->type.dtype != SDC_DT_I32 || reps->type.rank != 1 || reps->type.shape[0] != x->type.rank)
        return shape_error(g, "tile", "reps must be int32 [rank(x)]", x, reps);
    mil_op *op = sdc_mil_new_op(g, "tile", 1);
    if (!sdc_mil_param1(g, op, "x", x) || !sdc_mil_param1(g, op, "reps", reps)) return NULL;
    int64_t shape[SDC_MAX_RANK];
    for (int i = 0; i < x->type.rank; i++) shape[i] = MIL_DIM_UNKNOWN;
    return out1(op, x->type.dtype, x->type.rank, shape);
}

mil_var *sdc_mil_select(mil_graph *g, mil_var *cond, mil_var *a, mil_var *b) {
    if (!cond || !a || !b || !sdc_mil_graph_ok(g)) return NULL;
    if (cond->type.dtype != SDC_DT_BOOL || a->type.dtype != b->type.dtype)
        return shape_error(g, "select", "cond must be BOOL and a, b one dtype", a, b);
    const mil_type *ts[3] = {&cond->type, &a->type, &b->type};
    int rank = 0;
    for (int k = 0; k < 3; k++) rank = ts[k]->rank > rank ? ts[k]->rank : rank;
    int64_t shape[SDC_MAX_RANK];
    for (int i = 0; i < rank; i++) { /* NumPy broadcasting from the trailing dimension */
        shape[i] = 1;
        for (int k = 0; k < 3; k++) {
            int j = ts[k]->rank - rank + i;
            int64_t d = j >= 0 ? ts[k]->shape[j] : 1;
            if (d < 0) return shape_error(g, "select", "unknown dims do not broadcast", a, b);
            if (d != 1 && shape[i] != 1 && d != shape[i]) return shape_error(g, "select", "shapes do not broadcast", a, b);
            if (d != 1) shape[i] = d;
        }
    }
    mil_op *op = sdc_mil_new_op(g, "select", 1);
    if (!sdc_mil_param1(g, op, "cond", cond) || !sdc_mil_param1(g, op, "a", a) || !sdc_mil_param1(g, op, "b", b))
        return NULL;
    return out1(op, a->type.dtype, rank, shape);
}

mil_var *sdc_mil_shape(mil_graph *g, mil_var *x) {
    if (!x || !sdc_mil_graph_ok(g)) return NULL;
    mil_op *op = sdc_mil_new_op(g, "shape", 1);
    if (!sdc_mil_param1(g, op, "x", x)) return NULL;
    int64_t shape[1] = {x->type.rank};
    return out1(op, SDC_DT_I32, 1, shape);
}

mil_var *sdc_mil_non_zero(mil_graph *g, mil_var *x) {
    if (!x || !sdc_mil_graph_ok(g)) return NULL;
    if (x->type.rank < 1) return shape_error(g, "non_zero", "x must have rank >= 1", x, NULL);
    mil_op *op = sdc_mil_new_op(g, "non_zero", 1);
    if (!sdc_mil_param1(g, op, "x", x)) return NULL;
    int64_t shape[2] = {MIL_DIM_UNKNOWN, x->type.rank};
    return out1(op, SDC_DT_I32, 2, shape);
}

mil_var *sdc_mil_scatter_nd(mil_graph *g, mil_var *data, mil_var *indices, mil_var *updates, const char *mode) {
    if (!data || !indices || !updates || !sdc_mil_graph_ok(g)) return NULL;
    const mil_type *dt = &data->type, *it = &indices->type, *ut = &updates->type;
    int64_t K = it->rank ? it->shape[it->rank - 1] : -1;
    if (it->dtype != SDC_DT_I32 || it->rank < 1 || K < 1 || K > dt->rank || has_unknown_dim(dt))
        return shape_error(g, "scatter_nd", "indices must be int32 [..., K], K <= rank(data) known", data, indices);
    /* updates = indices.shape[:-1] + data.shape[K:]; unknown dims match anything */
    bool ok = ut->dtype == dt->dtype && ut->rank == it->rank - 1 + dt->rank - (int)K;
    for (int i = 0; ok && i < ut->rank; i++) {
        int64_t want = i < it->rank - 1 ? it->shape[i] : dt->shape[K + i - (it->rank - 1)];
        ok = want < 0 || ut->shape[i] < 0 || want == ut->shape[i];
    }
    if (!ok) return shape_error(g, "scatter_nd", "updates do not match indices and data", updates, data);
    mil_var *m = sdc_mil_const_string(g, mode);
    /* iOS17's scatter_nd gained validate_indices (default false) */
    mil_var *validate = g->opset >= 7 ? sdc_mil_const_bool(g, false) : NULL;
    mil_op *op = sdc_mil_new_op(g, "scatter_nd", 1);
    if (!sdc_mil_param1(g, op, "data", data) || !sdc_mil_param1(g, op, "indices", indices) ||
        !sdc_mil_param1(g, op, "updates", updates) || !sdc_mil_param1(g, op, "mode", m))
        return NULL;
    if (validate && !sdc_mil_param1(g, op, "validate_indices", validate)) return NULL;
    return same_as(op, data);
}
