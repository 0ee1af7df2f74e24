/*
 * ops_tensor.c — shape and indexing ops (reshape, transpose, expand_dims, squeeze, concat,
 * stack, split, slice_by_index/size, gather, gather_nd, tile, pad, band_part, fill, range_1d,
 * upsample_nearest_neighbor, shape) and reductions.
 *
 * Every value is held in 4-byte elements (float or int32), so copies are type-blind; a shape
 * op only checks that the declared output is held the same way as its input.
 */
#include <math.h>

#include "interp/interp.h"

static bool same_store(const itensor *a, int dtype) { return mt_is_float(a->dtype) == mt_is_float(dtype); }

static sdc_status check_store(irun *r, const iop *op, const itensor *x) {
    int d = sdc_rt_out_dtype(r, op, 0);
    if (!same_store(x, d) || x->dtype == MT_STRING)
        return sdc_rt_fail(r, op, SDC_E_FORMAT, "output type %s does not match the input's %s", mt_name(d), mt_name(x->dtype));
    return SDC_OK;
}

/* x itself under the new shape, when this op reads x last and the declared output agrees
   (dtype, and every known dim): reshaping a value nobody else reads needs no copy. NULL when
   it may not, and the caller copies (sdc_rt_out then reports a shape mismatch). */
static itensor *take_as(irun *r, const iop *op, itensor *x, int rank, const int64_t *shape) {
    if (op->n_out < 1 || !sdc_rt_may_take(r, op, "x")) return NULL;
    const islot *sl = &r->m->slots[op->outs[0]];
    bool same = !r->vals[op->outs[0]] && sl->dtype == x->dtype && sl->rank == rank;
    for (int i = 0; same && i < rank; i++) same = sl->shape[i] < 0 || sl->shape[i] == shape[i];
    if (!same) return NULL;
    r->vals[sdc_rt_param(op, "x")->slots[0]] = NULL;
    x->rank = rank;
    memcpy(x->shape, shape, sizeof(int64_t) * (size_t)rank);
    r->vals[op->outs[0]] = x;
    return x;
}

static itensor *copy_out(irun *r, const iop *op, itensor *x, int rank, const int64_t *shape) {
    if (check_store(r, op, x)) return NULL;
    itensor *o = take_as(r, op, x, rank, shape);
    if (o) return o;
    o = sdc_rt_out(r, op, 0, rank, shape);
    if (o) memcpy(o->p, x->p, x->n * 4);
    return o;
}

/* ---------------------------------------------------------------- strided copy */

typedef struct scopy {
    int rank;
    int64_t shape[SDC_MAX_RANK];
    int64_t st[SDC_MAX_RANK]; /* source strides in elements (may be negative) */
    const uint32_t *src;      /* element (0, ..., 0) */
    uint32_t *dst;
} scopy;

SDC_VECTORISE static void scopy_rows(void *vctx, size_t r0, size_t r1) {
    scopy *c = vctx;
    int64_t n = c->shape[c->rank - 1], s = c->st[c->rank - 1];
    for (size_t row = r0; row < r1; row++) {
        size_t rem = row;
        int64_t off = 0;
        for (int d = c->rank - 2; d >= 0; d--) {
            off += (int64_t)(rem % (size_t)c->shape[d]) * c->st[d];
            rem /= (size_t)c->shape[d];
        }
        uint32_t *dst = c->dst + row * (size_t)n;
        const uint32_t *src = c->src + off;
        if (s == 1) memcpy(dst, src, (size_t)n * 4);
        else
            for (int64_t j = 0; j < n; j++) dst[j] = src[j * s];
    }
}

static void strided_copy(irun *r, scopy *c) {
    if (c->rank == 0) {
        c->dst[0] = c->src[0];
        return;
    }
    size_t rows = 1;
    for (int d = 0; d < c->rank - 1; d++) rows *= (size_t)c->shape[d];
    int64_t inner = c->shape[c->rank - 1];
    if (rows == 0 || inner == 0) return;
    sdc_ipool_for(sdc_rt_pool(r), rows, (size_t)(65536 / inner) + 1, scopy_rows, c);
}

static void strides_of(int rank, const int64_t *shape, int64_t *st) {
    int64_t s = 1;
    for (int d = rank - 1; d >= 0; d--) {
        st[d] = s;
        s *= shape[d];
    }
}

/* ---------------------------------------------------------------- reshape family */

sdc_status sdc_kernel_reshape(irun *r, const iop *op) {
    itensor *x = sdc_rt_req(r, op, "x");
    int64_t shape[SDC_MAX_RANK];
    int n;
    bool has;
    if (!x || sdc_rt_ints(r, op, "shape", shape, SDC_MAX_RANK, &n, &has)) return r->err->code;
    if (!has) return sdc_rt_fail(r, op, SDC_E_FORMAT, "required input 'shape' is missing");
    /* 0 copies the input dim aligned from the right (iOS 17 rule; equals the iOS 15 rule when
       the lengths match), or 1 when there is none; one -1 takes what is left */
    int infer = -1;
    size_t known = 1;
    for (int i = 0; i < n; i++) {
        if (shape[i] == 0) {
            int j = x->rank - (n - i);
            shape[i] = j >= 0 ? x->shape[j] : 1;
        }
        if (shape[i] == -1) {
            if (infer >= 0) return sdc_rt_fail(r, op, SDC_E_FORMAT, "shape has more than one -1");
            infer = i;
        } else if (shape[i] < 0) {
            return sdc_rt_fail(r, op, SDC_E_FORMAT, "shape has a negative dimension %lld", (long long)shape[i]);
        } else {
            known *= (size_t)shape[i];
        }
    }
    if (infer >= 0) {
        if (known == 0 || x->n % known) return sdc_rt_fail(r, op, SDC_E_FORMAT, "cannot infer the -1 dimension for %zu elements", x->n);
        shape[infer] = (int64_t)(x->n / known);
        known *= (size_t)shape[infer];
    }
    char a[200], b[200];
    if (known != x->n)
        return sdc_rt_fail(r, op, SDC_E_FORMAT, "cannot reshape %s to %s", shape_str(x->rank, x->shape, a, sizeof a), shape_str(n, shape, b, sizeof b));
    return copy_out(r, op, x, n, shape) ? SDC_OK : r->err->code;
}

sdc_status sdc_kernel_identity(irun *r, const iop *op) {
    itensor *x = sdc_rt_req(r, op, "x");
    if (!x) return r->err->code;
    return copy_out(r, op, x, x->rank, x->shape) ? SDC_OK : r->err->code;
}

sdc_status sdc_kernel_expand_dims(irun *r, const iop *op) {
    itensor *x = sdc_rt_req(r, op, "x");
    int64_t axes[SDC_MAX_RANK];
    int n;
    bool has;
    if (!x || sdc_rt_ints(r, op, "axes", axes, SDC_MAX_RANK, &n, &has)) return r->err->code;
    int R = x->rank + n;
    if (!has || n < 1 || R > SDC_MAX_RANK) return sdc_rt_fail(r, op, SDC_E_FORMAT, "axes must hold 1..%d values", SDC_MAX_RANK - x->rank);
    bool newdim[SDC_MAX_RANK] = {false};
    for (int i = 0; i < n; i++) {
        if (!norm_axis(&axes[i], R) || newdim[axes[i]]) return sdc_rt_fail(r, op, SDC_E_FORMAT, "axis %lld is out of range or repeated", (long long)axes[i]);
        newdim[axes[i]] = true;
    }
    int64_t shape[SDC_MAX_RANK];
    for (int d = 0, k = 0; d < R; d++) shape[d] = newdim[d] ? 1 : x->shape[k++];
    return copy_out(r, op, x, R, shape) ? SDC_OK : r->err->code;
}

sdc_status sdc_kernel_squeeze(irun *r, const iop *op) {
    itensor *x = sdc_rt_req(r, op, "x");
    int64_t axes[SDC_MAX_RANK];
    int n;
    bool has;
    if (!x || sdc_rt_ints(r, op, "axes", axes, SDC_MAX_RANK, &n, &has)) return r->err->code;
    bool drop[SDC_MAX_RANK] = {false};
    if (!has) {
        for (int d = 0; d < x->rank; d++) drop[d] = x->shape[d] == 1;
    } else {
        for (int i = 0; i < n; i++) {
            if (!norm_axis(&axes[i], x->rank)) return sdc_rt_fail(r, op, SDC_E_FORMAT, "axis %lld is out of range", (long long)axes[i]);
            drop[axes[i]] = x->shape[axes[i]] == 1; /* a non-1 axis is left alone, as PyTorch does */
        }
    }
    int64_t shape[SDC_MAX_RANK];
    int R = 0;
    for (int d = 0; d < x->rank; d++)
        if (!drop[d]) shape[R++] = x->shape[d];
    return copy_out(r, op, x, R, shape) ? SDC_OK : r->err->code;
}

sdc_status sdc_kernel_transpose(irun *r, const iop *op) {
    itensor *x = sdc_rt_req(r, op, "x");
    int64_t perm[SDC_MAX_RANK];
    int n;
    bool has;
    if (!x || sdc_rt_ints(r, op, "perm", perm, SDC_MAX_RANK, &n, &has)) return r->err->code;
    if (!has || n != x->rank) return sdc_rt_fail(r, op, SDC_E_FORMAT, "perm must have %d values", x->rank);
    bool seen[SDC_MAX_RANK] = {false};
    int64_t xst[SDC_MAX_RANK];
    strides_of(x->rank, x->shape, xst);
    scopy c = {.rank = n, .src = x->p};
    for (int i = 0; i < n; i++) {
        if (!norm_axis(&perm[i], n) || seen[perm[i]]) return sdc_rt_fail(r, op, SDC_E_FORMAT, "perm is not a permutation");
        seen[perm[i]] = true;
        c.shape[i] = x->shape[perm[i]];
        c.st[i] = xst[perm[i]];
    }
    if (check_store(r, op, x)) return r->err->code;
    itensor *o = sdc_rt_out(r, op, 0, n, c.shape);
    if (!o) return r->err->code;
    c.dst = o->p;
    strided_copy(r, &c);
    return SDC_OK;
}

/* ---------------------------------------------------------------- concat, stack, split */

static sdc_status concat_common(irun *r, const iop *op, bool stack) {
    const iparam *vp = sdc_rt_param(op, "values");
    int64_t axis;
    bool interleave;
    if (!vp) return sdc_rt_fail(r, op, SDC_E_FORMAT, "required input 'values' is missing");
    if (sdc_rt_int(r, op, "axis", 0, &axis) || sdc_rt_bool(r, op, "interleave", false, &interleave)) return r->err->code;
    if (!stack && !sdc_rt_param(op, "axis")) return sdc_rt_fail(r, op, SDC_E_FORMAT, "required input 'axis' is missing");
    int nv = vp->n;
    itensor **vs = sdc_malloc(sizeof *vs * (size_t)nv);
    if (!vs) return sdc_rt_fail(r, op, SDC_E_NOMEM, "out of memory");
    sdc_status st = SDC_OK;
    for (int i = 0; i < nv && !st; i++)
        if (!(vs[i] = sdc_rt_in_at(r, op, "values", i))) st = r->err->code;
    if (st) goto done;
    const itensor *x0 = vs[0];
    /* rank-0 values (coremltools' form of torch's list of scalars) join into a vector, as
       stacking them would */
    if (x0->rank == 0) stack = true;
    int R = stack ? x0->rank + 1 : x0->rank;
    if (R < 1 || R > SDC_MAX_RANK || !norm_axis(&axis, R)) {
        st = sdc_rt_fail(r, op, SDC_E_FORMAT, "axis out of range");
        goto done;
    }
    int64_t shape[SDC_MAX_RANK];
    for (int d = 0, k = 0; d < R; d++) shape[d] = stack && d == axis ? nv : x0->shape[k++];
    if (!stack) shape[axis] = 0;
    char a[200], b[200];
    for (int i = 0; i < nv; i++) {
        bool ok = vs[i]->rank == x0->rank && same_store(vs[i], x0->dtype);
        for (int d = 0; ok && d < x0->rank; d++) ok = (!stack && d == axis) || vs[i]->shape[d] == x0->shape[d];
        if (ok && interleave) ok = vs[i]->shape[axis] == x0->shape[axis];
        if (!ok) {
            st = sdc_rt_fail(r, op, SDC_E_FORMAT, "value %d %s does not fit value 0 %s", i, shape_str(vs[i]->rank, vs[i]->shape, a, sizeof a),
                         shape_str(x0->rank, x0->shape, b, sizeof b));
            goto done;
        }
        if (!stack) shape[axis] += vs[i]->shape[axis];
    }
    if ((st = check_store(r, op, x0))) goto done;
    itensor *o = sdc_rt_out(r, op, 0, R, shape);
    if (!o) {
        st = r->err->code;
        goto done;
    }
    size_t outer = 1, inner = 1;
    for (int d = 0; d < axis; d++) outer *= (size_t)shape[d];
    for (int d = (int)axis + 1; d < R; d++) inner *= (size_t)shape[d];
    uint32_t *dst = o->p;
    for (size_t ou = 0; ou < outer; ou++) {
        if (interleave) {
            size_t len = stack ? 1 : (size_t)x0->shape[axis];
            for (size_t j = 0; j < len; j++)
                for (int i = 0; i < nv; i++) {
                    memcpy(dst, (uint32_t *)vs[i]->p + (ou * len + j) * inner, inner * 4);
                    dst += inner;
                }
        } else {
            for (int i = 0; i < nv; i++) {
                size_t blk = (stack ? 1 : (size_t)vs[i]->shape[axis]) * inner;
                memcpy(dst, (uint32_t *)vs[i]->p + ou * blk, blk * 4);
                dst += blk;
            }
        }
    }
done:
    sdc_free(vs);
    return st;
}

sdc_status sdc_kernel_concat(irun *r, const iop *op) { return concat_common(r, op, false); }
sdc_status sdc_kernel_stack(irun *r, const iop *op) { return concat_common(r, op, true); }

sdc_status sdc_kernel_split(irun *r, const iop *op) {
    itensor *x = sdc_rt_req(r, op, "x");
    int64_t axis, num, sizes[4096];
    int ns;
    bool has_sizes;
    if (!x || sdc_rt_int(r, op, "axis", 0, &axis) || sdc_rt_int(r, op, "num_splits", 0, &num) ||
        sdc_rt_ints(r, op, "split_sizes", sizes, 4096, &ns, &has_sizes))
        return r->err->code;
    if (!sdc_rt_param(op, "axis")) return sdc_rt_fail(r, op, SDC_E_FORMAT, "required input 'axis' is missing");
    if (!norm_axis(&axis, x->rank)) return sdc_rt_fail(r, op, SDC_E_FORMAT, "axis out of range");
    int64_t L = x->shape[axis];
    if (!has_sizes) {
        if (!sdc_rt_param(op, "num_splits")) return sdc_rt_fail(r, op, SDC_E_FORMAT, "needs num_splits or split_sizes");
        if (num < 1 || num > 4096 || L % num) return sdc_rt_fail(r, op, SDC_E_FORMAT, "num_splits %lld does not divide %lld", (long long)num, (long long)L);
        ns = (int)num;
        for (int i = 0; i < ns; i++) sizes[i] = L / num;
    }
    int64_t sum = 0;
    for (int i = 0; i < ns; i++) {
        if (sizes[i] < 0) return sdc_rt_fail(r, op, SDC_E_FORMAT, "negative split size");
        sum += sizes[i];
    }
    if (sum != L || ns != op->n_out)
        return sdc_rt_fail(r, op, SDC_E_FORMAT, "%d pieces summing to %lld for a dim of %lld and %d declared outputs", ns, (long long)sum,
                       (long long)L, op->n_out);
    size_t outer = 1, inner = 1;
    for (int d = 0; d < axis; d++) outer *= (size_t)x->shape[d];
    for (int d = (int)axis + 1; d < x->rank; d++) inner *= (size_t)x->shape[d];
    int64_t start = 0;
    for (int i = 0; i < ns; i++) {
        int64_t shape[SDC_MAX_RANK];
        memcpy(shape, x->shape, sizeof(int64_t) * (size_t)x->rank);
        shape[axis] = sizes[i];
        if (!same_store(x, sdc_rt_out_dtype(r, op, i))) return sdc_rt_fail(r, op, SDC_E_FORMAT, "output type differs from the input's");
        itensor *o = sdc_rt_out(r, op, i, x->rank, shape);
        if (!o) return r->err->code;
        size_t blk = (size_t)sizes[i] * inner;
        for (size_t ou = 0; ou < outer; ou++)
            memcpy((uint32_t *)o->p + ou * blk, (uint32_t *)x->p + (ou * (size_t)L + (size_t)start) * inner, blk * 4);
        start += sizes[i];
    }
    return SDC_OK;
}

/* ---------------------------------------------------------------- slices */

sdc_status sdc_kernel_slice_by_index(irun *r, const iop *op) {
    itensor *x = sdc_rt_req(r, op, "x");
    int64_t begin[SDC_MAX_RANK], end[SDC_MAX_RANK], stride[SDC_MAX_RANK], bm[SDC_MAX_RANK], em[SDC_MAX_RANK], sm[SDC_MAX_RANK];
    int nb, ne, ns, nbm, nem, nsm;
    bool hb, he, hs, hbm, hem, hsm;
    if (!x || sdc_rt_ints(r, op, "begin", begin, SDC_MAX_RANK, &nb, &hb) || sdc_rt_ints(r, op, "end", end, SDC_MAX_RANK, &ne, &he) ||
        sdc_rt_ints(r, op, "stride", stride, SDC_MAX_RANK, &ns, &hs) || sdc_rt_ints(r, op, "begin_mask", bm, SDC_MAX_RANK, &nbm, &hbm) ||
        sdc_rt_ints(r, op, "end_mask", em, SDC_MAX_RANK, &nem, &hem) || sdc_rt_ints(r, op, "squeeze_mask", sm, SDC_MAX_RANK, &nsm, &hsm))
        return r->err->code;
    int R = x->rank;
    if (!hb || !he || nb != R || ne != R || (hs && ns != R) || (hbm && nbm != R) || (hem && nem != R) || (hsm && nsm != R))
        return sdc_rt_fail(r, op, SDC_E_FORMAT, "begin, end, stride and masks must have %d values", R);
    int64_t xst[SDC_MAX_RANK];
    strides_of(R, x->shape, xst);
    scopy c = {.src = x->p};
    int64_t base = 0;
    for (int d = 0; d < R; d++) {
        int64_t L = x->shape[d], s = hs ? stride[d] : 1, b = begin[d], e = end[d], start, count;
        bool bmask = hbm && bm[d], emask = hem && em[d], sq = hsm && sm[d];
        if (sq) {
            start = bmask ? 0 : b < 0 ? b + L : b;
            if (start < 0 || start >= L) return sdc_rt_fail(r, op, SDC_E_FORMAT, "squeezed index %lld is out of range for dim %d of size %lld", (long long)b, d, (long long)L);
            base += start * xst[d];
            continue;
        }
        if (s == 0) return sdc_rt_fail(r, op, SDC_E_FORMAT, "stride 0 in dim %d", d);
        if (s > 0) {
            start = bmask ? 0 : b < 0 ? b + L : b;
            int64_t stop = emask ? L : e < 0 ? e + L : e;
            start = start < 0 ? 0 : start > L ? L : start;
            stop = stop < 0 ? 0 : stop > L ? L : stop;
            count = stop > start ? (stop - start + s - 1) / s : 0;
        } else {
            start = bmask ? L - 1 : b < 0 ? b + L : b;
            int64_t stop = emask ? -1 : e < 0 ? e + L : e;
            start = start < -1 ? -1 : start > L - 1 ? L - 1 : start;
            stop = stop < -1 ? -1 : stop > L - 1 ? L - 1 : stop;
            count = start > stop ? (start - stop + (-s) - 1) / (-s) : 0;
        }
        if (count > 0) base += start * xst[d];
        c.shape[c.rank] = count;
        c.st[c.rank] = s * xst[d];
        c.rank++;
    }
    if (check_store(r, op, x)) return r->err->code;
    itensor *o = sdc_rt_out(r, op, 0, c.rank, c.shape);
    if (!o) return r->err->code;
    if (o->n == 0) return SDC_OK;
    c.src = (const uint32_t *)x->p + base;
    c.dst = o->p;
    strided_copy(r, &c);
    return SDC_OK;
}

sdc_status sdc_kernel_slice_by_size(irun *r, const iop *op) {
    itensor *x = sdc_rt_req(r, op, "x");
    int64_t begin[SDC_MAX_RANK], size[SDC_MAX_RANK];
    int nb, ns;
    bool hb, hs;
    if (!x || sdc_rt_ints(r, op, "begin", begin, SDC_MAX_RANK, &nb, &hb) || sdc_rt_ints(r, op, "size", size, SDC_MAX_RANK, &ns, &hs))
        return r->err->code;
    int R = x->rank;
    if (!hb || !hs || nb != R || ns != R) return sdc_rt_fail(r, op, SDC_E_FORMAT, "begin and size must have %d values", R);
    int64_t xst[SDC_MAX_RANK], base = 0;
    strides_of(R, x->shape, xst);
    scopy c = {.rank = R};
    for (int d = 0; d < R; d++) {
        int64_t L = x->shape[d], b = begin[d] < 0 ? begin[d] + L : begin[d];
        int64_t n = size[d] == -1 ? L - b : size[d];
        if (b < 0 || b > L || n < 0 || b + n > L)
            return sdc_rt_fail(r, op, SDC_E_FORMAT, "begin %lld size %lld is outside dim %d of size %lld", (long long)begin[d], (long long)size[d], d, (long long)L);
        base += b * xst[d];
        c.shape[d] = n;
        c.st[d] = xst[d];
    }
    if (check_store(r, op, x)) return r->err->code;
    itensor *o = sdc_rt_out(r, op, 0, R, c.shape);
    if (!o) return r->err->code;
    if (o->n == 0) return SDC_OK;
    c.src = (const uint32_t *)x->p + base;
    c.dst = o->p;
    strided_copy(r, &c);
    return SDC_OK;
}

/* ---------------------------------------------------------------- gather */

sdc_status sdc_kernel_gather(irun *r, const iop *op) {
    /* A large constant table (a token embedding) is read row by row from its stored form. */
    const islot *xs = NULL;
    const csrc *lazy = sdc_rt_lazy(r, op, "x", &xs);
    itensor *x = lazy ? NULL : sdc_rt_req(r, op, "x");
    if (!lazy && !x) return r->err->code;
    itensor *idx = sdc_rt_req(r, op, "indices");
    int64_t axis, bd;
    bool validate;
    if (!idx || sdc_rt_int(r, op, "axis", 0, &axis) || sdc_rt_int(r, op, "batch_dims", 0, &bd) ||
        sdc_rt_bool(r, op, "validate_indices", false, &validate))
        return r->err->code;
    int xr = lazy ? xs->rank : x->rank, xdt = lazy ? xs->dtype : x->dtype;
    const int64_t *xshape = lazy ? xs->shape : x->shape;
    if (!mt_is_int(idx->dtype)) return sdc_rt_fail(r, op, SDC_E_FORMAT, "indices must be integers, not %s", mt_name(idx->dtype));
    if (!norm_axis(&axis, xr)) return sdc_rt_fail(r, op, SDC_E_FORMAT, "axis out of range");
    if (bd < 0 || bd > axis || bd > idx->rank) return sdc_rt_fail(r, op, SDC_E_FORMAT, "batch_dims %lld is invalid", (long long)bd);
    for (int d = 0; d < bd; d++)
        if (xshape[d] != idx->shape[d]) return sdc_rt_fail(r, op, SDC_E_FORMAT, "batch dims of x and indices differ");
    int R = xr - 1 + idx->rank - (int)bd;
    if (R > SDC_MAX_RANK) return sdc_rt_fail(r, op, SDC_E_UNSUPPORTED, "result rank too large");
    int64_t shape[SDC_MAX_RANK];
    int k = 0;
    for (int d = 0; d < axis; d++) shape[k++] = xshape[d];
    for (int d = (int)bd; d < idx->rank; d++) shape[k++] = idx->shape[d];
    for (int d = (int)axis + 1; d < xr; d++) shape[k++] = xshape[d];
    int od = sdc_rt_out_dtype(r, op, 0);
    if (mt_is_float(od) != mt_is_float(xdt)) return sdc_rt_fail(r, op, SDC_E_FORMAT, "output type %s does not match x %s", mt_name(od), mt_name(xdt));
    itensor *o = sdc_rt_out(r, op, 0, R, shape);
    if (!o) return r->err->code;
    size_t B = 1, outer = 1, inner = 1, ni = 1;
    for (int d = 0; d < bd; d++) B *= (size_t)xshape[d];
    for (int d = (int)bd; d < axis; d++) outer *= (size_t)xshape[d];
    for (int d = (int)axis + 1; d < xr; d++) inner *= (size_t)xshape[d];
    for (int d = (int)bd; d < idx->rank; d++) ni *= (size_t)idx->shape[d];
    int64_t L = xshape[axis];
    uint32_t *dst = o->p;
    for (size_t b = 0; b < B; b++)
        for (size_t ou = 0; ou < outer; ou++)
            for (size_t j = 0; j < ni; j++) {
                int64_t i = idx->i[b * ni + j];
                if (i < 0) i += L;
                if (i < 0 || i >= L)
                    return sdc_rt_fail(r, op, SDC_E_ARG, "index %d is out of range for axis %lld of size %lld", idx->i[b * ni + j], (long long)axis,
                                   (long long)L);
                size_t src = ((b * outer + ou) * (size_t)L + (size_t)i) * inner;
                if (lazy) {
                    if (mt_is_float(xdt)) sdc_csrc_read_f(lazy, src, inner, (float *)dst);
                    else sdc_csrc_read_i(lazy, src, inner, (int32_t *)dst);
                } else {
                    memcpy(dst, (uint32_t *)x->p + src, inner * 4);
                }
                dst += inner;
            }
    return SDC_OK; /* an fp16 result is rounded by the executor, whatever the stored form */
}

int sdc_index_tuple_offset(const int64_t *shape, const int32_t *idx, int K, size_t *off) {
    size_t o = 0;
    for (int d = 0; d < K; d++) {
        int64_t L = shape[d], i = idx[d] < 0 ? idx[d] + L : idx[d];
        if (i < 0 || i >= L) return d;
        o = o * (size_t)L + (size_t)i;
    }
    *off = o;
    return -1;
}

/* gather_nd: the last dim of indices holds K coordinates into x's axes batch_dims..batch_dims+K-1;
   out = indices.shape[:-1] + x.shape[batch_dims + K:] (coremltools' iOS15-iOS17 definitions). */
sdc_status sdc_kernel_gather_nd(irun *r, const iop *op) {
    itensor *x = sdc_rt_req(r, op, "x"), *idx = sdc_rt_req(r, op, "indices");
    int64_t bd;
    bool validate;
    /* indices are always bounds-checked, whatever validate_indices says */
    if (!x || !idx || sdc_rt_int(r, op, "batch_dims", 0, &bd) || sdc_rt_bool(r, op, "validate_indices", false, &validate))
        return r->err->code;
    if (!mt_is_int(idx->dtype)) return sdc_rt_fail(r, op, SDC_E_FORMAT, "indices must be integers, not %s", mt_name(idx->dtype));
    if (idx->rank < 1) return sdc_rt_fail(r, op, SDC_E_FORMAT, "indices must have rank >= 1");
    int64_t K = idx->shape[idx->rank - 1];
    if (bd < 0 || bd >= idx->rank || K < 1 || bd + K > x->rank)
        return sdc_rt_fail(r, op, SDC_E_FORMAT, "batch_dims %lld with %lld coordinates does not fit x of rank %d", (long long)bd, (long long)K, x->rank);
    for (int d = 0; d < bd; d++)
        if (x->shape[d] != idx->shape[d]) return sdc_rt_fail(r, op, SDC_E_FORMAT, "batch dims of x and indices differ");
    int R = idx->rank - 1 + x->rank - (int)(bd + K);
    if (R > SDC_MAX_RANK) return sdc_rt_fail(r, op, SDC_E_UNSUPPORTED, "result rank too large");
    int64_t shape[SDC_MAX_RANK];
    int k = 0;
    for (int d = 0; d < idx->rank - 1; d++) shape[k++] = idx->shape[d];
    for (int d = (int)(bd + K); d < x->rank; d++) shape[k++] = x->shape[d];
    if (check_store(r, op, x)) return r->err->code;
    itensor *o = sdc_rt_out(r, op, 0, R, shape);
    if (!o) return r->err->code;
    size_t B = 1, per_batch = 1, inner = 1, tuples = 1;
    for (int d = 0; d < bd; d++) B *= (size_t)x->shape[d];
    for (int d = (int)(bd + K); d < x->rank; d++) inner *= (size_t)x->shape[d];
    for (int d = (int)bd; d < x->rank; d++) per_batch *= (size_t)x->shape[d];
    for (int d = (int)bd; d < idx->rank - 1; d++) tuples *= (size_t)idx->shape[d];
    const int32_t *ip = idx->i;
    uint32_t *dst = o->p;
    for (size_t b = 0; b < B; b++)
        for (size_t t = 0; t < tuples; t++, ip += K) {
            size_t off;
            int c = sdc_index_tuple_offset(x->shape + bd, ip, (int)K, &off);
            if (c >= 0)
                return sdc_rt_fail(r, op, SDC_E_ARG, "index %d is out of range for axis %lld of size %lld", ip[c],
                                   (long long)(bd + c), (long long)x->shape[bd + c]);
            memcpy(dst, (const uint32_t *)x->p + b * per_batch + off * inner, inner * 4);
            dst += inner;
        }
    return SDC_OK;
}

/* ---------------------------------------------------------------- tile, pad, band_part */

sdc_status sdc_kernel_tile(irun *r, const iop *op) {
    itensor *x = sdc_rt_req(r, op, "x");
    int64_t reps[SDC_MAX_RANK];
    int n;
    bool has;
    if (!x || sdc_rt_ints(r, op, "reps", reps, SDC_MAX_RANK, &n, &has)) return r->err->code;
    if (!has || n != x->rank) return sdc_rt_fail(r, op, SDC_E_FORMAT, "reps must have %d values", x->rank);
    int64_t shape[SDC_MAX_RANK];
    for (int d = 0; d < n; d++) {
        /* 0 happens with run-time reps: no elements to scatter (a safe image's empty non_zero) */
        if (reps[d] < 0) return sdc_rt_fail(r, op, SDC_E_FORMAT, "reps must be >= 0");
        if (__builtin_mul_overflow(x->shape[d], reps[d], &shape[d]))
            return sdc_rt_fail(r, op, SDC_E_FORMAT, "reps %lld times dim %d (%lld) is too large", (long long)reps[d], d,
                               (long long)x->shape[d]);
    }
    if (check_store(r, op, x)) return r->err->code;
    itensor *o = sdc_rt_out(r, op, 0, n, shape);
    if (!o) return r->err->code;
    int64_t xst[SDC_MAX_RANK];
    strides_of(n, x->shape, xst);
    const uint32_t *src = x->p;
    uint32_t *dst = o->p;
    for (size_t i = 0; i < o->n; i++) {
        size_t rem = i, off = 0;
        for (int d = n - 1; d >= 0; d--) {
            off += (size_t)((int64_t)(rem % (size_t)shape[d]) % x->shape[d] * xst[d]);
            rem /= (size_t)shape[d];
        }
        dst[i] = src[off];
    }
    return SDC_OK;
}

sdc_status sdc_kernel_pad(irun *r, const iop *op) {
    itensor *x = sdc_rt_req(r, op, "x");
    int64_t pad[2 * SDC_MAX_RANK];
    int np;
    bool has;
    const char *mode;
    float cval;
    if (!x || sdc_rt_ints(r, op, "pad", pad, 2 * SDC_MAX_RANK, &np, &has) || sdc_rt_str(r, op, "mode", "constant", &mode) ||
        sdc_rt_float(r, op, "constant_val", 0.0f, &cval))
        return r->err->code;
    int m = !strcmp(mode, "constant") ? 0 : !strcmp(mode, "reflect") ? 1 : !strcmp(mode, "replicate") ? 2 : -1;
    if (m < 0) return sdc_rt_fail(r, op, SDC_E_FORMAT, "unknown mode '%s'", mode);
    if (!has || np % 2 || np / 2 > x->rank) return sdc_rt_fail(r, op, SDC_E_FORMAT, "pad must have 2·N values, N <= rank");
    int R = x->rank, first = R - np / 2;
    int64_t before[SDC_MAX_RANK] = {0}, shape[SDC_MAX_RANK];
    for (int d = 0; d < R; d++) {
        int64_t b = d >= first ? pad[2 * (d - first)] : 0, a = d >= first ? pad[2 * (d - first) + 1] : 0;
        if (b < 0 || a < 0) return sdc_rt_fail(r, op, SDC_E_FORMAT, "negative padding");
        if ((m == 1 && (b > x->shape[d] - 1 || a > x->shape[d] - 1)) || (m == 2 && (b || a) && x->shape[d] == 0))
            return sdc_rt_fail(r, op, SDC_E_FORMAT, "padding of dim %d is too large for mode '%s'", d, mode);
        before[d] = b;
        shape[d] = x->shape[d] + b + a;
    }
    if (check_store(r, op, x)) return r->err->code;
    itensor *o = sdc_rt_out(r, op, 0, R, shape);
    if (!o) return r->err->code;
    int64_t xst[SDC_MAX_RANK];
    strides_of(R, x->shape, xst);
    bool fl = mt_is_float(x->dtype);
    for (size_t i = 0; i < o->n; i++) {
        size_t rem = i;
        int64_t off = 0;
        bool outside = false;
        for (int d = R - 1; d >= 0; d--) {
            int64_t j = (int64_t)(rem % (size_t)shape[d]) - before[d], L = x->shape[d];
            rem /= (size_t)shape[d];
            if (j < 0 || j >= L) {
                if (m == 0) outside = true;
                else if (m == 1) j = j < 0 ? -j : 2 * (L - 1) - j;
                else j = j < 0 ? 0 : L - 1;
            }
            off += j * xst[d];
        }
        if (outside) {
            if (fl) o->f[i] = cval;
            else o->i[i] = (int32_t)cval;
        } else {
            o->i[i] = x->i[off];
        }
    }
    return SDC_OK;
}

sdc_status sdc_kernel_band_part(irun *r, const iop *op) {
    itensor *x = sdc_rt_req(r, op, "x");
    int64_t lower, upper;
    if (!x || sdc_rt_int(r, op, "lower", -1, &lower) || sdc_rt_int(r, op, "upper", -1, &upper)) return r->err->code;
    if (x->rank < 2) return sdc_rt_fail(r, op, SDC_E_FORMAT, "x must have rank >= 2");
    itensor *o = copy_out(r, op, x, x->rank, x->shape);
    if (!o) return r->err->code;
    int64_t M = x->shape[x->rank - 2], N = x->shape[x->rank - 1];
    for (size_t i = 0; i < o->n; i++) {
        int64_t n = (int64_t)(i % (size_t)N), m = (int64_t)((i / (size_t)N) % (size_t)M);
        bool keep = (lower < 0 || m - n <= lower) && (upper < 0 || n - m <= upper);
        if (!keep) o->i[i] = 0; /* 0 is also +0.0f */
    }
    return SDC_OK;
}

/* ---------------------------------------------------------------- fill, range_1d, shape */

sdc_status sdc_kernel_fill(irun *r, const iop *op) {
    int64_t shape[SDC_MAX_RANK];
    int n;
    bool has;
    float v;
    if (sdc_rt_ints(r, op, "shape", shape, SDC_MAX_RANK, &n, &has) || sdc_rt_float(r, op, "value", 0.0f, &v)) return r->err->code;
    if (!has) return sdc_rt_fail(r, op, SDC_E_FORMAT, "required input 'shape' is missing");
    for (int d = 0; d < n; d++)
        if (shape[d] < 0) return sdc_rt_fail(r, op, SDC_E_FORMAT, "negative dimension");
    itensor *o = sdc_rt_out(r, op, 0, n, shape);
    if (!o) return r->err->code;
    for (size_t i = 0; i < o->n; i++) {
        if (mt_is_float(o->dtype)) o->f[i] = v;
        else o->i[i] = (int32_t)v;
    }
    return SDC_OK;
}

sdc_status sdc_kernel_range_1d(irun *r, const iop *op) {
    itensor *e = sdc_rt_req(r, op, "end"), *s = e ? sdc_rt_req(r, op, "start") : NULL, *st = s ? sdc_rt_req(r, op, "step") : NULL;
    if (!st) return r->err->code;
    if (e->n != 1 || s->n != 1 || st->n != 1) return sdc_rt_fail(r, op, SDC_E_FORMAT, "start, end and step must be scalars");
    double a = it_getf(s, 0), b = it_getf(e, 0), c = it_getf(st, 0);
    bool ints = !mt_is_float(s->dtype);
    if (ints) a = (double)s->i[0], b = (double)e->i[0], c = (double)st->i[0];
    if (c == 0) return sdc_rt_fail(r, op, SDC_E_FORMAT, "step is 0");
    double cnt = ceil((b - a) / c);
    if (cnt < 0) cnt = 0;
    if (cnt > 1e9) return sdc_rt_fail(r, op, SDC_E_FORMAT, "range too long");
    int64_t shape[1] = {(int64_t)cnt};
    itensor *o = sdc_rt_out(r, op, 0, 1, shape);
    if (!o) return r->err->code;
    for (int64_t i = 0; i < shape[0]; i++) {
        if (mt_is_float(o->dtype)) o->f[i] = (float)(a + (double)i * c);
        else o->i[i] = (int32_t)(a + (double)i * c);
    }
    return SDC_OK;
}

sdc_status sdc_kernel_shape(irun *r, const iop *op) {
    itensor *x = sdc_rt_req(r, op, "x");
    if (!x) return r->err->code;
    int64_t shape[1] = {x->rank};
    itensor *o = sdc_rt_out(r, op, 0, 1, shape);
    if (!o) return r->err->code;
    for (int d = 0; d < x->rank; d++) {
        if (mt_is_float(o->dtype)) o->f[d] = (float)x->shape[d];
        else o->i[d] = (int32_t)x->shape[d];
    }
    return SDC_OK;
}

/* ---------------------------------------------------------------- upsample */

typedef struct up_ctx {
    const uint32_t *src;
    uint32_t *dst;
    int64_t H, W, H2, W2;
    const int64_t *row_of, *col_of; /* source row of each output row, column of each column */
} up_ctx;

/* Output rows [b, e) of all planes (row index = plane · H2 + i). */
SDC_VECTORISE static void up_rows(void *vctx, size_t b, size_t e) {
    const up_ctx *c = vctx;
    for (size_t row = b; row < e; row++) {
        size_t plane = row / (size_t)c->H2, i = row % (size_t)c->H2;
        const uint32_t *s = c->src + (plane * (size_t)c->H + (size_t)c->row_of[i]) * (size_t)c->W;
        uint32_t *d = c->dst + row * (size_t)c->W2;
        if (row > b && i > 0 && c->row_of[i] == c->row_of[i - 1]) { /* the row above (written by this call), again */
            memcpy(d, d - c->W2, (size_t)c->W2 * 4);
            continue;
        }
        for (int64_t j = 0; j < c->W2; j++) d[j] = s[c->col_of[j]];
    }
}

sdc_status sdc_kernel_upsample_nn(irun *r, const iop *op) {
    itensor *x = sdc_rt_req(r, op, "x");
    float sh, sw;
    if (!x || sdc_rt_float(r, op, "scale_factor_height", 1.0f, &sh) || sdc_rt_float(r, op, "scale_factor_width", 1.0f, &sw))
        return r->err->code;
    if (x->rank < 3 || !(sh > 0) || !(sw > 0)) return sdc_rt_fail(r, op, SDC_E_FORMAT, "x must have rank >= 3 and the scales be > 0");
    int R = x->rank;
    int64_t H = x->shape[R - 2], W = x->shape[R - 1], shape[SDC_MAX_RANK];
    memcpy(shape, x->shape, sizeof(int64_t) * (size_t)R);
    int64_t H2 = (int64_t)floor((double)sh * (double)H), W2 = (int64_t)floor((double)sw * (double)W);
    shape[R - 2] = H2;
    shape[R - 1] = W2;
    if (check_store(r, op, x)) return r->err->code;
    itensor *o = sdc_rt_out(r, op, 0, R, shape);
    if (!o || o->n == 0) return r->err->code;
    int64_t *idx = sdc_malloc(sizeof(int64_t) * (size_t)(H2 + W2)); /* [H2 + W2] */
    if (!idx) return sdc_rt_fail(r, op, SDC_E_NOMEM, "out of memory");
    for (int64_t i = 0; i < H2; i++) {
        int64_t si = (int64_t)floor((double)i / (double)sh);
        idx[i] = si > H - 1 ? H - 1 : si;
    }
    for (int64_t j = 0; j < W2; j++) {
        int64_t sj = (int64_t)floor((double)j / (double)sw);
        idx[H2 + j] = sj > W - 1 ? W - 1 : sj;
    }
    up_ctx c = {x->p, o->p, H, W, H2, W2, idx, idx + H2};
    size_t planes = x->n / (size_t)(H * W);
    sdc_ipool_for(sdc_rt_pool(r), planes * (size_t)H2, (size_t)(65536 / W2) + 1, up_rows, &c);
    sdc_free(idx);
    return SDC_OK;
}

/* ---------------------------------------------------------------- reductions */

typedef struct reduce_ctx {
    red_plan p;
    const itensor *x;
    itensor *o;
    int code;
    bool contiguous; /* float x reduced over its trailing dims by a sum-like code: sum_rows */
} reduce_ctx;

/* The hot reductions (GroupNorm's reduce_mean over a group, layer statistics): each kept
   position's values are one contiguous run. */
static void sum_rows(reduce_ctx *c, size_t b, size_t e) {
    size_t nr = c->p.nr;
    bool sq = c->code == R_SUM_SQUARE || c->code == R_L2_NORM;
    for (size_t k = b; k < e; k++) {
        double acc = sdc_sum_f64(c->x->f + c->p.kept[k], nr, sq);
        if (c->code == R_MEAN) acc /= (double)nr;
        else if (c->code == R_L2_NORM) acc = sqrt(acc);
        if (mt_is_float(c->o->dtype)) c->o->f[k] = (float)acc;
        else c->o->i[k] = (int32_t)acc;
    }
}

SDC_VECTORISE static void reduce_rows(void *vctx, size_t b, size_t e) {
    reduce_ctx *c = vctx;
    size_t nr = c->p.nr;
    if (c->contiguous) {
        sum_rows(c, b, e);
        return;
    }
    bool xf = mt_is_float(c->x->dtype);
    for (size_t k = b; k < e; k++) {
        size_t base = c->p.kept[k];
        double acc;
        switch (c->code) {
        case R_MAX: acc = -INFINITY; break;
        case R_MIN: acc = INFINITY; break;
        case R_PROD: acc = 1; break;
        default: acc = 0;
        }
        double mx = -INFINITY;
        if (c->code == R_LOG_SUM_EXP)
            for (size_t j = 0; j < nr; j++) {
                double v = it_getf(c->x, base + c->p.red[j]);
                mx = v > mx ? v : mx;
            }
        for (size_t j = 0; j < nr; j++) {
            size_t i = base + c->p.red[j];
            double v = xf ? (double)c->x->f[i] : (double)c->x->i[i];
            switch (c->code) {
            case R_SUM: case R_MEAN: case R_LOG_SUM: acc += v; break;
            case R_MAX: acc = v > acc ? v : acc; break;
            case R_MIN: acc = v < acc ? v : acc; break;
            case R_PROD: acc *= v; break;
            case R_L1_NORM: acc += fabs(v); break;
            case R_L2_NORM: case R_SUM_SQUARE: acc += v * v; break;
            case R_LOG_SUM_EXP: acc += exp(v - mx); break;
            }
        }
        switch (c->code) {
        case R_MEAN: acc /= (double)(nr ? nr : 1); break;
        case R_L2_NORM: acc = sqrt(acc); break;
        case R_LOG_SUM: acc = log(acc); break;
        case R_LOG_SUM_EXP: acc = mx + log(acc); break;
        default: break;
        }
        if (mt_is_float(c->o->dtype)) c->o->f[k] = (float)acc;
        else c->o->i[k] = (int32_t)acc;
    }
}

static sdc_status reduced_shape(irun *r, const iop *op, const itensor *x, bool *red, bool keep, int *R, int64_t *shape) {
    *R = 0;
    for (int d = 0; d < x->rank; d++) {
        if (!red[d]) shape[(*R)++] = x->shape[d];
        else if (keep) shape[(*R)++] = 1;
    }
    return SDC_OK;
}

sdc_status sdc_kernel_reduce(irun *r, const iop *op) {
    itensor *x = sdc_rt_req(r, op, "x");
    int64_t axes[SDC_MAX_RANK];
    int na;
    bool has, keep;
    if (!x || sdc_rt_ints(r, op, "axes", axes, SDC_MAX_RANK, &na, &has) || sdc_rt_bool(r, op, "keep_dims", false, &keep)) return r->err->code;
    if (x->dtype == MT_STRING) return sdc_rt_fail(r, op, SDC_E_FORMAT, "string operand");
    bool red[SDC_MAX_RANK] = {false};
    if (!has)
        for (int d = 0; d < x->rank; d++) red[d] = true;
    for (int i = 0; i < na; i++) {
        if (!norm_axis(&axes[i], x->rank)) return sdc_rt_fail(r, op, SDC_E_FORMAT, "axis %lld is out of range", (long long)axes[i]);
        red[axes[i]] = true;
    }
    int R;
    int64_t shape[SDC_MAX_RANK];
    reduced_shape(r, op, x, red, keep, &R, shape);
    itensor *o = sdc_rt_out(r, op, 0, R, shape);
    if (!o) return r->err->code;
    if (o->n == 0) return SDC_OK;
    reduce_ctx c = {.x = x, .o = o, .code = op->def->code};
    if (x->n == 0) { /* empty reductions: identities */
        for (size_t k = 0; k < o->n; k++) {
            double v = c.code == R_PROD ? 1 : c.code == R_MAX ? -INFINITY : c.code == R_MIN ? INFINITY : c.code == R_MEAN ? NAN : 0;
            if (mt_is_float(o->dtype)) o->f[k] = (float)v;
            else o->i[k] = 0;
        }
        return SDC_OK;
    }
    if (sdc_red_plan_make(r, op, x, red, &c.p)) return r->err->code;
    /* reduced offsets rise strictly from 0, so a last one of nr - 1 means they are 0..nr-1 */
    c.contiguous = mt_is_float(x->dtype) && c.p.red[c.p.nr - 1] == c.p.nr - 1 &&
                   (c.code == R_SUM || c.code == R_MEAN || c.code == R_SUM_SQUARE || c.code == R_L2_NORM);
    sdc_ipool_for(sdc_rt_pool(r), c.p.nk, (size_t)(16384 / (c.p.nr ? c.p.nr : 1)) + 1, reduce_rows, &c);
    sdc_red_plan_free(&c.p);
    return SDC_OK;
}

sdc_status sdc_kernel_reduce_arg(irun *r, const iop *op) {
    itensor *x = sdc_rt_req(r, op, "x");
    int64_t axis;
    bool keep;
    if (!x || sdc_rt_int(r, op, "axis", -1, &axis) || sdc_rt_bool(r, op, "keep_dims", false, &keep)) return r->err->code;
    if (!norm_axis(&axis, x->rank)) return sdc_rt_fail(r, op, SDC_E_FORMAT, "axis out of range");
    if (x->shape[axis] == 0) return sdc_rt_fail(r, op, SDC_E_FORMAT, "empty axis");
    bool red[SDC_MAX_RANK] = {false};
    red[axis] = true;
    int R;
    int64_t shape[SDC_MAX_RANK];
    reduced_shape(r, op, x, red, keep, &R, shape);
    itensor *o = sdc_rt_out(r, op, 0, R, shape);
    if (!o) return r->err->code;
    size_t L = (size_t)x->shape[axis], inner = 1;
    for (int d = (int)axis + 1; d < x->rank; d++) inner *= (size_t)x->shape[d];
    bool argmin = op->def->code == 1;
    for (size_t k = 0; k < o->n; k++) {
        size_t base = (k / inner) * L * inner + k % inner;
        size_t best = 0;
        double bv = it_getf(x, base);
        for (size_t j = 1; j < L; j++) {
            double v = mt_is_float(x->dtype) ? x->f[base + j * inner] : x->i[base + j * inner];
            if (argmin ? v < bv : v > bv) bv = v, best = j;
        }
        if (mt_is_float(o->dtype)) o->f[k] = (float)best;
        else o->i[k] = (int32_t)best;
    }
    return SDC_OK;
}
