/*
 * consts.c — values of the compression ops (reference/coreml-format.md §6.3), computed when an
 * op reads them: constexpr_lut_to_dense (iOS 16 packed form and iOS 18 typed form with
 * per-group tables and vectors), constexpr_affine_dequantize, constexpr_cast,
 * constexpr_sparse_to_dense (both forms) and constexpr_blockwise_shift_scale.
 *
 * Large parameters (indices, quantized data) are read from their stored form in chunks,
 * never expanded to int32 as a whole.
 */
#include "interp/interp.h"

#include "io/fp16.h"

/* A parameter read in chunks, from its stored form or from a decoded tensor. */
typedef struct preader {
    const csrc *src;
    const itensor *t;
    int dtype, rank;
    int64_t shape[SDC_MAX_RANK];
    size_t n;
} preader;

static sdc_status get_reader(irun *r, const iop *op, const char *name, bool required, preader *pr) {
    memset(pr, 0, sizeof *pr);
    const islot *sl = NULL;
    const csrc *src = sdc_rt_lazy(r, op, name, &sl);
    if (src) {
        pr->src = src;
        pr->dtype = sl->dtype;
        pr->rank = sl->rank;
        memcpy(pr->shape, sl->shape, sizeof(int64_t) * (size_t)sl->rank);
        pr->n = src->n;
        return SDC_OK;
    }
    itensor *t = sdc_rt_in(r, op, name);
    if (!t) {
        if (r->err->code) return r->err->code;
        return required ? sdc_rt_fail(r, op, SDC_E_FORMAT, "required parameter '%s' is missing", name) : SDC_OK;
    }
    if (t->dtype == MT_STRING) return sdc_rt_fail(r, op, SDC_E_FORMAT, "parameter '%s' must be a tensor", name);
    pr->t = t;
    pr->dtype = t->dtype;
    pr->rank = t->rank;
    memcpy(pr->shape, t->shape, sizeof(int64_t) * (size_t)t->rank);
    pr->n = t->n;
    return SDC_OK;
}

static bool present(const preader *p) { return p->src || p->t; }

static void read_i(const preader *p, size_t first, size_t n, int32_t *dst) {
    if (p->src) sdc_csrc_read_i(p->src, first, n, dst);
    else if (mt_is_float(p->dtype))
        for (size_t i = 0; i < n; i++) dst[i] = (int32_t)p->t->f[first + i];
    else memcpy(dst, p->t->i + first, n * 4);
}

static void read_f(const preader *p, size_t first, size_t n, float *dst) {
    if (p->src) sdc_csrc_read_f(p->src, first, n, dst);
    else if (mt_is_float(p->dtype)) memcpy(dst, p->t->f + first, n * 4);
    else
        for (size_t i = 0; i < n; i++) dst[i] = (float)p->t->i[first + i];
}

/* All values of a (small) parameter as float / int32, malloc'd. */
static float *all_f(const preader *p) {
    float *v = sdc_malloc(sizeof(float) * (p->n ? p->n : 1));
    if (v) read_f(p, 0, p->n, v);
    return v;
}

/* The bytes of a uint8 parameter (borrowed from the stored form, or copied into *owned). */
static const uint8_t *bytes_of(const preader *p, uint8_t **owned) {
    *owned = NULL;
    if (p->src && (p->src->fmt == RAW_U8 || p->src->fmt == RAW_I8)) return p->src->ptr;
    uint8_t *b = sdc_malloc(p->n + 1);
    if (!b) return NULL;
    int32_t tmp[256];
    for (size_t i = 0; i < p->n; i += 256) {
        size_t k = p->n - i < 256 ? p->n - i : 256;
        read_i(p, i, k, tmp);
        for (size_t j = 0; j < k; j++) b[i + j] = (uint8_t)tmp[j];
    }
    b[p->n] = 0;
    *owned = b;
    return b;
}

static int log2_exact(size_t n) {
    for (int b = 0; b < 31; b++)
        if ((size_t)1 << b == n) return b;
    return -1;
}

/* Output tensor with the declared (fully known) type, checked against the computed shape. */
static itensor *const_out(irun *r, const iop *op, int rank, const int64_t *shape) {
    const islot *sl = &r->m->slots[op->outs[0]];
    bool same = sl->rank == rank;
    for (int i = 0; same && i < rank; i++) same = sl->shape[i] == shape[i];
    if (!same) {
        char a[200], b[200];
        sdc_rt_fail(r, op, SDC_E_FORMAT, "computed shape %s differs from the declared %s", shape_str(rank, shape, a, sizeof a),
                shape_str(sl->rank, sl->shape, b, sizeof b));
        return NULL;
    }
    itensor *t = sdc_it_new(sl->dtype, rank, shape);
    if (!t) sdc_rt_fail(r, op, SDC_E_NOMEM, "out of memory for %s", sl->name);
    return t;
}

static void put(itensor *o, size_t i, float v) {
    if (mt_is_float(o->dtype)) o->f[i] = v;
    else o->i[i] = (int32_t)v;
}

enum { CHUNK = 65536 };

/* ---------------------------------------------------------------- lut_to_dense */

static sdc_status lut_ios16(irun *r, const iop *op, const preader *idx, const preader *lut, const preader *shp, itensor **out) {
    int64_t shape[SDC_MAX_RANK];
    if (shp->n > SDC_MAX_RANK || shp->rank != 1) return sdc_rt_fail(r, op, SDC_E_FORMAT, "shape must be a vector of at most %d values", SDC_MAX_RANK);
    int32_t sv[SDC_MAX_RANK];
    read_i(shp, 0, shp->n, sv);
    for (size_t i = 0; i < shp->n; i++) shape[i] = (uint32_t)sv[i];
    int nbits = log2_exact(lut->n);
    if (lut->rank != 1 || (nbits != 1 && nbits != 2 && nbits != 4 && nbits != 6 && nbits != 8))
        return sdc_rt_fail(r, op, SDC_E_FORMAT, "lut must be a vector of 2, 4, 16, 64 or 256 entries (has %zu)", lut->n);
    size_t n;
    if (!sdc_it_numel((int)shp->n, shape, &n)) return sdc_rt_fail(r, op, SDC_E_FORMAT, "shape is too large");
    if (idx->rank != 1 || idx->n != (n * (size_t)nbits + 7) / 8 || (idx->dtype != MT_UINT8 && idx->dtype != MT_INT8))
        return sdc_rt_fail(r, op, SDC_E_FORMAT, "indices must be uint8 [%zu] (ceil(%d bits × %zu / 8)), got %zu", (n * (size_t)nbits + 7) / 8, nbits,
                       n, idx->n);
    itensor *o = const_out(r, op, (int)shp->n, shape);
    if (!o) return r->err->code;
    float *table = all_f(lut);
    uint8_t *owned;
    const uint8_t *bytes = bytes_of(idx, &owned);
    if (!table || !bytes) {
        sdc_free(table);
        sdc_free(owned);
        sdc_it_free(o);
        return sdc_rt_fail(r, op, SDC_E_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) put(o, i, table[sdc_it_bits_at(bytes, i, nbits)]);
    sdc_free(table);
    sdc_free(owned);
    *out = o;
    return SDC_OK;
}

static sdc_status lut_ios18(irun *r, const iop *op, const preader *idx, const preader *lut, itensor **out) {
    int64_t vaxis;
    if (sdc_rt_int(r, op, "vector_axis", 0, &vaxis)) return r->err->code;
    int R = idx->rank;
    if (lut->rank != R + 2) return sdc_rt_fail(r, op, SDC_E_FORMAT, "lut must have rank rank(indices) + 2 = %d", R + 2);
    int64_t pal = lut->shape[R], vs = lut->shape[R + 1];
    if (vs < 1 || vs > 1 << 16) return sdc_rt_fail(r, op, SDC_E_FORMAT, "lut vector size %lld is out of range", (long long)vs);
    int nbits = mt_bits(idx->dtype);
    if (!mt_is_int(idx->dtype) || idx->dtype == MT_BOOL || nbits > 8 || pal != ((int64_t)1 << nbits))
        return sdc_rt_fail(r, op, SDC_E_FORMAT, "indices %s need a lut with %lld palettes, has %lld", mt_name(idx->dtype),
                       (long long)((int64_t)1 << (nbits > 8 ? 8 : nbits)), (long long)pal);
    int64_t blk[SDC_MAX_RANK], shape[SDC_MAX_RANK];
    for (int d = 0; d < R; d++) {
        if (lut->shape[d] < 1 || idx->shape[d] % lut->shape[d])
            return sdc_rt_fail(r, op, SDC_E_FORMAT, "indices dim %d (%lld) is not divisible by lut dim %lld", d, (long long)idx->shape[d],
                           (long long)lut->shape[d]);
        blk[d] = idx->shape[d] / lut->shape[d];
        shape[d] = idx->shape[d];
    }
    if (vs > 1) {
        if (!sdc_rt_param(op, "vector_axis") || !norm_axis(&vaxis, R))
            return sdc_rt_fail(r, op, SDC_E_FORMAT, "vector palettization needs a valid vector_axis");
        uint64_t grown;
        if (!sdc_mul_u64((uint64_t)shape[vaxis], (uint64_t)vs, &grown) || grown > ((uint64_t)1 << 40))
            return sdc_rt_fail(r, op, SDC_E_FORMAT, "vector palettization makes dimension %lld too large", (long long)vaxis);
        shape[vaxis] = (int64_t)grown;
    }
    itensor *o = const_out(r, op, R, shape);
    if (!o) return r->err->code;
    float *table = all_f(lut);
    int32_t *chunk = sdc_malloc(sizeof(int32_t) * CHUNK);
    if (!table || !chunk) {
        sdc_free(table);
        sdc_free(chunk);
        sdc_it_free(o);
        return sdc_rt_fail(r, op, SDC_E_NOMEM, "out of memory");
    }
    int64_t ost[SDC_MAX_RANK], lst[SDC_MAX_RANK];
    {
        int64_t s = 1;
        for (int d = R - 1; d >= 0; d--) ost[d] = s, s *= shape[d];
        s = pal * vs;
        for (int d = R - 1; d >= 0; d--) lst[d] = s, s *= lut->shape[d];
    }
    for (size_t c0 = 0; c0 < idx->n; c0 += CHUNK) {
        size_t k = idx->n - c0 < CHUNK ? idx->n - c0 : CHUNK;
        read_i(idx, c0, k, chunk);
        for (size_t j = 0; j < k; j++) {
            size_t i = c0 + j, rem = i;
            int64_t loff = 0, ooff = 0;
            for (int d = R - 1; d >= 0; d--) {
                int64_t c = (int64_t)(rem % (size_t)idx->shape[d]);
                rem /= (size_t)idx->shape[d];
                loff += (c / blk[d]) * lst[d];
                ooff += (vs > 1 && d == vaxis ? c * vs : c) * ost[d];
            }
            int64_t pi = chunk[j];
            if (pi < 0 || pi >= pal) pi = 0; /* cannot happen for in-range sub-byte values */
            for (int64_t v = 0; v < vs; v++) put(o, (size_t)(ooff + (vs > 1 ? v * ost[vaxis] : 0)), table[loff + pi * vs + v]);
        }
    }
    sdc_free(table);
    sdc_free(chunk);
    *out = o;
    return SDC_OK;
}

/* ---------------------------------------------------------------- affine / blockwise */

static sdc_status affine(irun *r, const iop *op, itensor **out) {
    preader q, zp, sc;
    int64_t axis;
    if (get_reader(r, op, "quantized_data", true, &q) || get_reader(r, op, "zero_point", true, &zp) ||
        get_reader(r, op, "scale", true, &sc) || sdc_rt_int(r, op, "axis", 0, &axis))
        return r->err->code;
    if (!norm_axis(&axis, q.rank) && q.rank > 0) return sdc_rt_fail(r, op, SDC_E_FORMAT, "axis out of range");
    size_t L = q.rank ? (size_t)q.shape[axis] : 1;
    if ((zp.n != 1 && zp.n != L) || (sc.n != 1 && sc.n != L))
        return sdc_rt_fail(r, op, SDC_E_FORMAT, "scale and zero_point must be scalars or vectors of quantized_data.shape[axis] = %zu", L);
    itensor *o = const_out(r, op, q.rank, q.shape);
    if (!o) return r->err->code;
    float *z = all_f(&zp), *s = all_f(&sc);
    int32_t *chunk = sdc_malloc(sizeof(int32_t) * CHUNK);
    if (!z || !s || !chunk) {
        sdc_free(z), sdc_free(s), sdc_free(chunk), sdc_it_free(o);
        return sdc_rt_fail(r, op, SDC_E_NOMEM, "out of memory");
    }
    size_t inner = 1;
    for (int d = (int)axis + 1; d < q.rank; d++) inner *= (size_t)q.shape[d];
    for (size_t c0 = 0; c0 < q.n; c0 += CHUNK) {
        size_t k = q.n - c0 < CHUNK ? q.n - c0 : CHUNK;
        read_i(&q, c0, k, chunk);
        for (size_t j = 0; j < k; j++) {
            size_t ch = ((c0 + j) / inner) % L;
            put(o, c0 + j, s[sc.n == 1 ? 0 : ch] * ((float)chunk[j] - z[zp.n == 1 ? 0 : ch]));
        }
    }
    sdc_free(z), sdc_free(s), sdc_free(chunk);
    *out = o;
    return SDC_OK;
}

static sdc_status blockwise(irun *r, const iop *op, itensor **out) {
    preader d, sc, of;
    if (get_reader(r, op, "data", true, &d) || get_reader(r, op, "scale", true, &sc) || get_reader(r, op, "offset", false, &of))
        return r->err->code;
    int R = d.rank;
    if (sc.rank != R || (present(&of) && (of.rank != R || of.n != sc.n)))
        return sdc_rt_fail(r, op, SDC_E_FORMAT, "data, scale and offset must have one rank and scale/offset one shape");
    int64_t blk[SDC_MAX_RANK], sst[SDC_MAX_RANK], s = 1;
    for (int k = R - 1; k >= 0; k--) {
        if (sc.shape[k] < 1 || d.shape[k] % sc.shape[k]) return sdc_rt_fail(r, op, SDC_E_FORMAT, "data dim %d is not a multiple of scale's", k);
        blk[k] = d.shape[k] / sc.shape[k];
        sst[k] = s;
        s *= sc.shape[k];
    }
    itensor *o = const_out(r, op, R, d.shape);
    if (!o) return r->err->code;
    float *sv = all_f(&sc), *ov = present(&of) ? all_f(&of) : NULL, *chunk = sdc_malloc(sizeof(float) * CHUNK);
    if (!sv || !chunk || (present(&of) && !ov)) {
        sdc_free(sv), sdc_free(ov), sdc_free(chunk), sdc_it_free(o);
        return sdc_rt_fail(r, op, SDC_E_NOMEM, "out of memory");
    }
    for (size_t c0 = 0; c0 < d.n; c0 += CHUNK) {
        size_t k = d.n - c0 < CHUNK ? d.n - c0 : CHUNK;
        read_f(&d, c0, k, chunk);
        for (size_t j = 0; j < k; j++) {
            size_t rem = c0 + j, si = 0;
            for (int q = R - 1; q >= 0; q--) {
                si += (size_t)((int64_t)(rem % (size_t)d.shape[q]) / blk[q] * sst[q]);
                rem /= (size_t)d.shape[q];
            }
            put(o, c0 + j, sv[si] * (chunk[j] - (ov ? ov[si] : 0.0f)));
        }
    }
    sdc_free(sv), sdc_free(ov), sdc_free(chunk);
    *out = o;
    return SDC_OK;
}

/* ---------------------------------------------------------------- cast, sparse */

static sdc_status cast_const(irun *r, const iop *op, itensor **out) {
    preader s;
    if (get_reader(r, op, "source_val", true, &s)) return r->err->code;
    itensor *o = const_out(r, op, s.rank, s.shape);
    if (!o) return r->err->code;
    if (mt_is_float(o->dtype)) read_f(&s, 0, s.n, o->f);
    else read_i(&s, 0, s.n, o->i);
    *out = o;
    return SDC_OK;
}

static sdc_status sparse(irun *r, const iop *op, itensor **out) {
    preader nz, mask, shp;
    if (get_reader(r, op, "nonzero_data", true, &nz) || get_reader(r, op, "mask", true, &mask) ||
        get_reader(r, op, "shape", false, &shp))
        return r->err->code;
    int64_t shape[SDC_MAX_RANK];
    int R;
    bool packed = present(&shp);
    if (packed) {
        if (shp.n > SDC_MAX_RANK) return sdc_rt_fail(r, op, SDC_E_FORMAT, "shape has too many values");
        int32_t sv[SDC_MAX_RANK];
        read_i(&shp, 0, shp.n, sv);
        R = (int)shp.n;
        for (int i = 0; i < R; i++) shape[i] = (uint32_t)sv[i];
    } else {
        R = mask.rank;
        memcpy(shape, mask.shape, sizeof(int64_t) * (size_t)R);
    }
    size_t n;
    if (!sdc_it_numel(R, shape, &n)) return sdc_rt_fail(r, op, SDC_E_FORMAT, "shape is too large");
    if (packed ? mask.n != (n + 7) / 8 : mask.n != n) return sdc_rt_fail(r, op, SDC_E_FORMAT, "mask size does not match the shape");
    itensor *o = const_out(r, op, R, shape);
    if (!o) return r->err->code;
    uint8_t *owned = NULL;
    const uint8_t *bytes = packed ? bytes_of(&mask, &owned) : NULL;
    int32_t *mchunk = packed ? NULL : sdc_malloc(sizeof(int32_t) * CHUNK);
    float *vals = all_f(&nz);
    if ((packed && !bytes) || (!packed && !mchunk) || !vals) {
        sdc_free(owned), sdc_free(mchunk), sdc_free(vals), sdc_it_free(o);
        return sdc_rt_fail(r, op, SDC_E_NOMEM, "out of memory");
    }
    size_t next = 0;
    sdc_status st = SDC_OK;
    for (size_t c0 = 0; c0 < n && !st; c0 += CHUNK) {
        size_t k = n - c0 < CHUNK ? n - c0 : CHUNK;
        if (!packed) read_i(&mask, c0, k, mchunk);
        for (size_t j = 0; j < k; j++) {
            bool set = packed ? sdc_it_bits_at(bytes, c0 + j, 1) : mchunk[j] != 0;
            if (set && next >= nz.n) {
                st = sdc_rt_fail(r, op, SDC_E_FORMAT, "mask has more set bits than nonzero_data has values (%zu)", nz.n);
                break;
            }
            put(o, c0 + j, set ? vals[next++] : 0.0f);
        }
    }
    if (!st && next != nz.n) st = sdc_rt_fail(r, op, SDC_E_FORMAT, "mask has %zu set bits for %zu values", next, nz.n);
    sdc_free(owned), sdc_free(mchunk), sdc_free(vals);
    if (st) {
        sdc_it_free(o);
        return st;
    }
    *out = o;
    return SDC_OK;
}

sdc_status sdc_constexpr_eval(irun *r, const iop *op, itensor **out) {
    *out = NULL;
    const iop *saved = r->op;
    r->op = op;
    sdc_status s;
    switch (op->def->code) {
    case C_LUT: {
        preader idx, lut, shp;
        if (get_reader(r, op, "indices", true, &idx) || get_reader(r, op, "lut", true, &lut) || get_reader(r, op, "shape", false, &shp)) {
            s = r->err->code;
            break;
        }
        s = present(&shp) ? lut_ios16(r, op, &idx, &lut, &shp, out) : lut_ios18(r, op, &idx, &lut, out);
        break;
    }
    case C_AFFINE: s = affine(r, op, out); break;
    case C_CAST: s = cast_const(r, op, out); break;
    case C_SPARSE: s = sparse(r, op, out); break;
    case C_BLOCKWISE: s = blockwise(r, op, out); break;
    default: s = sdc_rt_fail(r, op, SDC_E_INTERNAL, "unknown constexpr op");
    }
    if (!s && (*out)->dtype == MT_FP16) sdc_round_f16(NULL, (*out)->f, (*out)->n);
    r->op = saved;
    return s;
}
