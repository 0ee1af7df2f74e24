/*
 * load.c — reads and validates a package into the interpreter's flat program (interp.h).
 *
 * Manifest.json → root model item → model.mlmodel (protobuf, our trimmed schema) → function
 * `main` → the block of its opset. Every byte is untrusted: value types (dtype, rank ≤ 8,
 * dims), immediate sizes against the declared shape, blob records (sentinel, dtype code
 * against the declared dtype, offsets and sizes inside weight.bin), names bound before use
 * and never rebound, and op types known. Errors name the model file and the op or value.
 */
#include "coreml/blob.h"
#include "coreml/package.h"
#include "interp/interp.h"
#include "io/fp16.h"

enum { MAX_CONSTEXPR_DEPTH = 8 };

#define EAGER_ELEMS 4096 /* constants this small are decoded once at load */

typedef Sdc__Coreml__Model PModel;
typedef Sdc__Coreml__Value PValue;
typedef Sdc__Coreml__ValueType PValueType;
typedef Sdc__Coreml__Operation POp;
typedef Sdc__Coreml__Block PBlock;

struct ifile {
    char *name; /* as written in the BlobFileValue */
    sdc_blob_file blob;
};

/* ---------------------------------------------------------------- load state */

typedef struct loader {
    sdc_model *m;
    const sdc_package *pkg;
    const char *model_path; /* .../Data/com.apple.CoreML/model.mlmodel */
    sdc_err *err;
    sdc_strmap *names;
    int anon; /* counter for inline values */
} loader;

int sdc_interp_new_slot(sdc_model *m, const char *name) {
    if (m->n_slots == m->cap_slots) {
        int cap = m->cap_slots ? m->cap_slots * 2 : 256;
        islot *s = sdc_realloc(m->slots, sizeof *s * (size_t)cap);
        if (!s) return -1;
        m->slots = s;
        m->cap_slots = cap;
    }
    islot *s = &m->slots[m->n_slots];
    memset(s, 0, sizeof *s);
    s->name = name;
    s->producer = -1;
    s->last_use = -1;
    return m->n_slots++;
}

static int new_slot(loader *L, const char *name) { return sdc_interp_new_slot(L->m, name); }

/* Binds a fresh name to a new slot (SSA: rebinding is an error). */
static int bind_name(loader *L, const char *name, const char *what) {
    if (!name || !*name) {
        sdc_fail(L->err, SDC_E_FORMAT, "%s: %s has an empty name", L->model_path, what);
        return -1;
    }
    if (sdc_strmap_get(L->names, name) >= 0) {
        sdc_fail(L->err, SDC_E_FORMAT, "%s: value '%s' (%s) is defined twice", L->model_path, name, what);
        return -1;
    }
    char *copy = sdc_arena_strdup(&L->m->arena, name);
    int s = copy ? new_slot(L, copy) : -1;
    if (s < 0 || !sdc_strmap_put(L->names, copy, s)) {
        sdc_fail(L->err, SDC_E_NOMEM, "out of memory");
        return -1;
    }
    return s;
}

/* ---------------------------------------------------------------- types */

static sdc_status parse_type(loader *L, const PValueType *vt, islot *s, const char *what) {
    if (!vt || vt->type_case != SDC__COREML__VALUE_TYPE__TYPE_TENSOR_TYPE || !vt->tensortype)
        return sdc_fail(L->err, SDC_E_UNSUPPORTED, "%s: %s: only tensor types are supported (lists, tuples and dictionaries are not)",
                        L->model_path, what);
    const Sdc__Coreml__TensorType *tt = vt->tensortype;
    int dt = (int)tt->datatype;
    if (!mt_valid(dt))
        return sdc_fail(L->err, SDC_E_UNSUPPORTED, "%s: %s: data type code %d is not supported", L->model_path, what, dt);
    if (tt->rank < 0 || tt->rank > SDC_MAX_RANK || (size_t)tt->rank != tt->n_dimensions)
        return sdc_fail(L->err, SDC_E_FORMAT, "%s: %s: rank %lld with %zu dimensions (rank must be known, 0..%d)", L->model_path,
                        what, (long long)tt->rank, tt->n_dimensions, SDC_MAX_RANK);
    s->dtype = dt;
    s->rank = (int)tt->rank;
    for (int i = 0; i < s->rank; i++) {
        const Sdc__Coreml__Dimension *d = tt->dimensions[i];
        if (d && d->dimension_case == SDC__COREML__DIMENSION__DIMENSION_CONSTANT && d->constant) {
            if (d->constant->size > ((uint64_t)1 << 40))
                return sdc_fail(L->err, SDC_E_FORMAT, "%s: %s: dimension %d is too large", L->model_path, what, i);
            s->shape[i] = (int64_t)d->constant->size;
        } else if (d && d->dimension_case == SDC__COREML__DIMENSION__DIMENSION_UNKNOWN) {
            if (d->unknown && d->unknown->variadic)
                return sdc_fail(L->err, SDC_E_UNSUPPORTED, "%s: %s: variadic dimensions are not supported", L->model_path, what);
            s->shape[i] = -1;
        } else {
            return sdc_fail(L->err, SDC_E_FORMAT, "%s: %s: dimension %d is not set", L->model_path, what, i);
        }
    }
    /* the known dimensions alone must stay within bounds; unknown ones (-1) are checked when
       a prediction binds them */
    int64_t known[SDC_MAX_RANK];
    for (int i = 0; i < s->rank; i++) known[i] = s->shape[i] < 0 ? 1 : s->shape[i];
    size_t n;
    if (!sdc_it_numel(s->rank, known, &n))
        return sdc_fail(L->err, SDC_E_FORMAT, "%s: %s: shape is too large", L->model_path, what);
    return SDC_OK;
}

/* ---------------------------------------------------------------- blob files */

static sdc_status open_blob_file(loader *L, const char *name, struct ifile **out) {
    sdc_model *m = L->m;
    for (int i = 0; i < m->n_files; i++) {
        if (!strcmp(m->files[i].name, name)) {
            *out = &m->files[i];
            return SDC_OK;
        }
    }
    char path[8192];
    sdc_status st = sdc_package_blob_path(L->pkg, name, path, sizeof path, L->err);
    if (st) return st;
    struct ifile *files = sdc_realloc(m->files, sizeof *files * (size_t)(m->n_files + 1));
    if (!files) return sdc_fail(L->err, SDC_E_NOMEM, "out of memory");
    m->files = files;
    struct ifile *f = &m->files[m->n_files];
    /* not populated: a run maps each op's weights in before the op and drops them in batches
       after it (exec.c), so memory holds one op's weights and less than 64 MiB of those
       already read, not the file */
    if ((st = sdc_blob_file_open(path, false, &f->blob, L->err))) return st;
    f->name = sdc_arena_strdup(&m->arena, name);
    if (!f->name) {
        sdc_blob_file_close(&f->blob);
        return sdc_fail(L->err, SDC_E_NOMEM, "out of memory");
    }
    m->n_files++;
    *out = f;
    return SDC_OK;
}

/* The blob storage code of a MIL dtype: every code the format defines, not only those the
   writer uses. */
static uint32_t blob_code(int dt) {
    const sdc_dtype_info *d = sdc_dtype_info_of(dt);
    return d ? d->blob : 0;
}

raw_fmt sdc_interp_raw_fmt(int dt, int *bits) {
    const sdc_dtype_info *d = sdc_dtype_info_of(dt);
    *bits = d ? d->bits : 0;
    if (!d) return RAW_BITS;
    /* by width in bytes */
    static const raw_fmt ieee_fmt[] = {[2] = RAW_F16, [4] = RAW_F32, [8] = RAW_F64};
    static const raw_fmt signed_fmt[] = {[1] = RAW_I8, [2] = RAW_I16, [4] = RAW_I32, [8] = RAW_I64};
    static const raw_fmt unsigned_fmt[] = {[1] = RAW_U8, [2] = RAW_U16, [4] = RAW_U32, [8] = RAW_U64};
    int bytes = d->bits / 8;
    bool whole = d->bits % 8 == 0 && bytes >= 1 && bytes <= 8;
    switch (d->enc) {
    case SDC_ENC_IEEE: return ieee_fmt[bytes];
    case SDC_ENC_BFLOAT: return RAW_BF16;
    case SDC_ENC_BOOL: return RAW_U8;
    case SDC_ENC_SIGNED: return whole ? signed_fmt[bytes] : RAW_SBITS;
    default: return whole ? unsigned_fmt[bytes] : RAW_BITS; /* uint1..uint6 */
    }
}

static uint64_t packed_bytes(size_t n, int bits) { return ((uint64_t)n * (uint64_t)bits + 7) / 8; }

static sdc_status blob_source(loader *L, const Sdc__Coreml__Value__BlobFileValue *b, islot *s, const char *what) {
    struct ifile *f;
    sdc_status st = open_blob_file(L, b->filename ? b->filename : "", &f);
    if (st) return st;
    size_t n;
    sdc_it_numel(s->rank, s->shape, &n);
    uint32_t want = blob_code(s->dtype);
    uint64_t off = b->offset;
    if (!want)
        return sdc_fail(L->err, SDC_E_UNSUPPORTED, "%s: %s: %s values cannot be stored in a blob", L->model_path, what,
                        mt_name(s->dtype));
    for (int i = 0; i < s->rank; i++)
        if (s->shape[i] < 0)
            return sdc_fail(L->err, SDC_E_FORMAT, "%s: %s: a blob value needs a fully known shape", L->model_path, what);
    sdc_blob_record rec;
    if (!sdc_blob_record_at(&f->blob, off, &rec))
        return sdc_fail(L->err, SDC_E_FORMAT, "%s: %s: blob offset %llu is outside %s", L->model_path, what,
                        (unsigned long long)off, f->name);
    /* read: its page goes (with the file cached in 2 MiB folios, each record read would keep
       its 2 MiB mapped: all of SDXL's 5 GB weight file by the end of the load) */
    sdc_map_drop(f->blob.map.data + off, SDC_BLOB_HEADER);
    if (!rec.sentinel_ok)
        return sdc_fail(L->err, SDC_E_FORMAT, "%s: %s: no blob record at offset %llu of %s (bad sentinel)", L->model_path, what,
                        (unsigned long long)off, f->name);
    if (rec.code != want)
        return sdc_fail(L->err, SDC_E_FORMAT, "%s: %s: blob at offset %llu has dtype code %u but the value is %s (code %u)",
                        L->model_path, what, (unsigned long long)off, rec.code, mt_name(s->dtype), want);
    uint64_t need = packed_bytes(n, mt_bits(s->dtype));
    if (rec.size != need || !sdc_blob_data_inside(&f->blob, &rec) || rec.padding_bits >= 8)
        return sdc_fail(L->err, SDC_E_FORMAT,
                        "%s: %s: blob at offset %llu holds %llu bytes at %llu, but shape %s of %s needs %llu bytes inside the %zu-byte file",
                        L->model_path, what, (unsigned long long)off, (unsigned long long)rec.size, (unsigned long long)rec.data,
                        shape_str(s->rank, s->shape, (char[160]){0}, 160), mt_name(s->dtype), (unsigned long long)need,
                        f->blob.map.size);
    s->src.kind = CS_RAW;
    s->src.fmt = sdc_interp_raw_fmt(s->dtype, &s->src.bits);
    s->src.ptr = f->blob.map.data + rec.data;
    s->src.n = n;
    s->src.mapped = true;
    return SDC_OK;
}

static sdc_status immediate_source(loader *L, const Sdc__Coreml__Value__ImmediateValue *iv, islot *s, const char *what) {
    size_t n;
    sdc_it_numel(s->rank, s->shape, &n);
    for (int i = 0; i < s->rank; i++)
        if (s->shape[i] < 0)
            return sdc_fail(L->err, SDC_E_FORMAT, "%s: %s: an immediate value needs a fully known shape", L->model_path, what);
    if (iv->value_case != SDC__COREML__VALUE__IMMEDIATE_VALUE__VALUE_TENSOR || !iv->tensor)
        return sdc_fail(L->err, SDC_E_UNSUPPORTED, "%s: %s: only tensor immediate values are supported", L->model_path, what);
    const Sdc__Coreml__TensorValue *tv = iv->tensor;
    int dt = s->dtype;
    csrc *c = &s->src;
    c->kind = CS_RAW;
    c->n = n;
    size_t have = 0;
    bool ok_type = true;
    switch (tv->value_case) {
    case SDC__COREML__TENSOR_VALUE__VALUE_FLOATS:
        ok_type = mt_is_float(dt);
        c->fmt = RAW_F32;
        c->ptr = (const uint8_t *)tv->floats->values;
        have = tv->floats->n_values;
        break;
    case SDC__COREML__TENSOR_VALUE__VALUE_DOUBLES:
        ok_type = mt_is_float(dt);
        c->fmt = RAW_F64;
        c->ptr = (const uint8_t *)tv->doubles->values;
        have = tv->doubles->n_values;
        break;
    case SDC__COREML__TENSOR_VALUE__VALUE_INTS:
        ok_type = mt_is_int(dt) && mt_bits(dt) <= 32;
        c->fmt = RAW_I32;
        c->ptr = (const uint8_t *)tv->ints->values;
        have = tv->ints->n_values;
        break;
    case SDC__COREML__TENSOR_VALUE__VALUE_LONG_INTS:
        ok_type = mt_is_int(dt);
        c->fmt = RAW_I64;
        c->ptr = (const uint8_t *)tv->longints->values;
        have = tv->longints->n_values;
        for (size_t i = 0; ok_type && i < have; i++)
            if (tv->longints->values[i] > INT32_MAX || tv->longints->values[i] < INT32_MIN)
                return sdc_fail(L->err, SDC_E_UNSUPPORTED, "%s: %s: 64-bit integer %lld does not fit in int32", L->model_path, what,
                                (long long)tv->longints->values[i]);
        break;
    case SDC__COREML__TENSOR_VALUE__VALUE_BOOLS:
        ok_type = dt == MT_BOOL;
        c->fmt = RAW_PBOOL;
        c->ptr = (const uint8_t *)tv->bools->values;
        have = tv->bools->n_values;
        break;
    case SDC__COREML__TENSOR_VALUE__VALUE_STRINGS:
        if (dt != MT_STRING || tv->strings->n_values != 1 || s->rank != 0)
            return sdc_fail(L->err, SDC_E_UNSUPPORTED, "%s: %s: only scalar strings are supported", L->model_path, what);
        c->kind = CS_NONE;
        s->val = sdc_arena_alloc(&L->m->arena, sizeof(itensor));
        if (!s->val) return sdc_fail(L->err, SDC_E_NOMEM, "out of memory");
        s->val->dtype = MT_STRING;
        s->val->n = 1;
        s->val->s = tv->strings->values[0];
        return SDC_OK;
    case SDC__COREML__TENSOR_VALUE__VALUE_BYTES: {
        int bits;
        c->fmt = sdc_interp_raw_fmt(dt, &bits);
        c->bits = bits;
        ok_type = bits > 0 && dt != MT_FP64 && dt != MT_INT64 && dt != MT_UINT64;
        if (dt == MT_BOOL) c->fmt = RAW_U8;
        c->ptr = tv->bytes->values.data;
        if (ok_type && tv->bytes->values.len != packed_bytes(n, bits))
            return sdc_fail(L->err, SDC_E_FORMAT, "%s: %s: %zu bytes for shape %s of %s (expected %llu)", L->model_path, what,
                            tv->bytes->values.len, shape_str(s->rank, s->shape, (char[160]){0}, 160), mt_name(dt),
                            (unsigned long long)packed_bytes(n, bits));
        have = n;
        break;
    }
    case SDC__COREML__TENSOR_VALUE__VALUE__NOT_SET:
    default:
        ok_type = n == 0;
        c->fmt = RAW_F32;
        c->ptr = NULL;
        have = 0;
        break;
    }
    if (!ok_type || dt == MT_STRING)
        return sdc_fail(L->err, SDC_E_FORMAT, "%s: %s: immediate value of kind %d does not fit its type %s", L->model_path, what,
                        (int)tv->value_case, mt_name(dt));
    if (have != n)
        return sdc_fail(L->err, SDC_E_FORMAT, "%s: %s: %zu values for shape %s (%zu elements)", L->model_path, what, have,
                        shape_str(s->rank, s->shape, (char[160]){0}, 160), n);
    return SDC_OK;
}

/* A Value (const op's `val`, a constexpr attribute, or an inline binding) into slot s. The
   type comes from `type` (the output's) or, failing that, from the value's own. */
static sdc_status value_source(loader *L, const PValue *v, const PValueType *type, int s, const char *what) {
    if (!v) return sdc_fail(L->err, SDC_E_FORMAT, "%s: %s: missing value", L->model_path, what);
    islot *sl = &L->m->slots[s];
    sdc_status st = parse_type(L, type ? type : v->type, sl, what);
    if (st) return st;
    if (type && v->type) { /* the value's own type must agree with the declared one */
        islot tmp = {0};
        st = parse_type(L, v->type, &tmp, what);
        if (st) return st;
        bool same = tmp.dtype == sl->dtype && tmp.rank == sl->rank;
        for (int i = 0; same && i < sl->rank; i++) same = tmp.shape[i] == sl->shape[i];
        if (!same)
            return sdc_fail(L->err, SDC_E_FORMAT, "%s: %s: value type %s %s differs from the declared %s %s", L->model_path, what,
                            mt_name(tmp.dtype), shape_str(tmp.rank, tmp.shape, (char[160]){0}, 160), mt_name(sl->dtype),
                            shape_str(sl->rank, sl->shape, (char[160]){0}, 160));
    }
    sl->kind = SL_CONST;
    if (v->value_case == SDC__COREML__VALUE__VALUE_BLOB_FILE_VALUE && v->blobfilevalue)
        return blob_source(L, v->blobfilevalue, sl, what);
    if (v->value_case == SDC__COREML__VALUE__VALUE_IMMEDIATE_VALUE && v->immediatevalue)
        return immediate_source(L, v->immediatevalue, sl, what);
    return sdc_fail(L->err, SDC_E_FORMAT, "%s: %s: value has neither an immediate nor a blob", L->model_path, what);
}

/* ---------------------------------------------------------------- ops */

static sdc_status add_param(loader *L, iop *op, int *cap, const char *name, int n) {
    if (op->n_params == *cap) {
        int c = *cap ? *cap * 2 : 8;
        iparam *p = sdc_arena_alloc(&L->m->arena, sizeof *p * (size_t)c);
        if (!p) return sdc_fail(L->err, SDC_E_NOMEM, "out of memory");
        if (op->n_params) memcpy(p, op->params, sizeof *p * (size_t)op->n_params);
        op->params = p;
        *cap = c;
    }
    iparam *p = &op->params[op->n_params++];
    p->name = sdc_arena_strdup(&L->m->arena, name);
    p->n = n;
    p->slots = sdc_arena_alloc(&L->m->arena, sizeof(int) * (size_t)(n ? n : 1));
    if (!p->name || !p->slots) return sdc_fail(L->err, SDC_E_NOMEM, "out of memory");
    return SDC_OK;
}

static const char *op_label(const POp *po, char *buf, size_t size) {
    /* coremltools writes the op's name as attribute `name` (a scalar string) */
    for (size_t i = 0; i < po->n_attributes; i++) {
        const PValue *v = po->attributes[i]->value;
        if (strcmp(po->attributes[i]->key, "name") || !v || v->value_case != SDC__COREML__VALUE__VALUE_IMMEDIATE_VALUE ||
            !v->immediatevalue || v->immediatevalue->value_case != SDC__COREML__VALUE__IMMEDIATE_VALUE__VALUE_TENSOR ||
            !v->immediatevalue->tensor || v->immediatevalue->tensor->value_case != SDC__COREML__TENSOR_VALUE__VALUE_STRINGS ||
            v->immediatevalue->tensor->strings->n_values != 1)
            continue;
        snprintf(buf, size, "%s", v->immediatevalue->tensor->strings->values[0]);
        return buf;
    }
    /* else the first output's name */
    snprintf(buf, size, "%s", po->n_outputs && po->outputs[0] && po->outputs[0]->name ? po->outputs[0]->name : "?");
    return buf;
}

static sdc_status load_op(loader *L, const POp *po, int index) {
    sdc_model *m = L->m;
    iop *op = &m->ops[index];
    char label[512], what[1200];
    op_label(po, label, sizeof label);
    op->type = sdc_arena_strdup(&m->arena, po->type ? po->type : "");
    op->name = sdc_arena_strdup(&m->arena, label);
    if (!op->type || !op->name) return sdc_fail(L->err, SDC_E_NOMEM, "out of memory");
    snprintf(what, sizeof what, "op '%s' (%s)", op->name, op->type);
    bool is_const = !strcmp(op->type, "const");
    op->def = is_const ? NULL : sdc_iop_find(op->type);
    if (!is_const && !op->def)
        return sdc_fail(L->err, SDC_E_UNSUPPORTED, "%s: op type '%s' (op '%s') is not supported by the interpreter", L->model_path,
                        op->type, op->name);
    if (po->n_outputs < 1 || po->n_outputs > 4096)
        return sdc_fail(L->err, SDC_E_FORMAT, "%s: %s: has %zu outputs", L->model_path, what, po->n_outputs);
    if (is_const && po->n_outputs != 1)
        return sdc_fail(L->err, SDC_E_FORMAT, "%s: %s: a const op has exactly one output", L->model_path, what);
    bool constexpr_op = op->def && op->def->value;

    /* parameters: inputs (and, for iOS 16 constexpr ops, attributes) */
    int cap = 0;
    for (size_t i = 0; i < po->n_inputs; i++) {
        const Sdc__Coreml__Operation__InputsEntry *e = po->inputs[i];
        if (!e->key || !e->value) return sdc_fail(L->err, SDC_E_FORMAT, "%s: %s: malformed input entry", L->model_path, what);
        if (sdc_rt_param(op, e->key))
            return sdc_fail(L->err, SDC_E_FORMAT, "%s: %s: input '%s' is given twice", L->model_path, what, e->key);
        size_t nb = e->value->n_arguments;
        if (nb < 1 || nb > 65536)
            return sdc_fail(L->err, SDC_E_FORMAT, "%s: %s: input '%s' has %zu bindings", L->model_path, what, e->key, nb);
        sdc_status st = add_param(L, op, &cap, e->key, (int)nb);
        if (st) return st;
        iparam *p = &op->params[op->n_params - 1];
        for (size_t k = 0; k < nb; k++) {
            const Sdc__Coreml__Argument__Binding *b = e->value->arguments[k];
            if (b && b->binding_case == SDC__COREML__ARGUMENT__BINDING__BINDING_NAME) {
                int s = sdc_strmap_get(L->names, b->name ? b->name : "");
                if (s < 0)
                    return sdc_fail(L->err, SDC_E_FORMAT, "%s: %s: input '%s' uses '%s', which is not defined before it",
                                    L->model_path, what, e->key, b->name ? b->name : "");
                if (constexpr_op && m->slots[s].kind != SL_CONST)
                    return sdc_fail(L->err, SDC_E_FORMAT, "%s: %s: input '%s' must be a constant", L->model_path, what, e->key);
                p->slots[k] = s;
            } else if (b && b->binding_case == SDC__COREML__ARGUMENT__BINDING__BINDING_VALUE) {
                char iw[1400];
                snprintf(iw, sizeof iw, "%s input '%s'", what, e->key);
                char anon[64];
                snprintf(anon, sizeof anon, "<inline %d>", L->anon++);
                char *nm = sdc_arena_strdup(&m->arena, anon);
                int s = nm ? new_slot(L, nm) : -1;
                if (s < 0) return sdc_fail(L->err, SDC_E_NOMEM, "out of memory");
                st = value_source(L, b->value, NULL, s, iw);
                if (st) return st;
                p->slots[k] = s;
            } else {
                return sdc_fail(L->err, SDC_E_FORMAT, "%s: %s: input '%s' has an empty binding", L->model_path, what, e->key);
            }
        }
    }
    const PValue *const_val = NULL;
    for (size_t i = 0; i < po->n_attributes; i++) {
        const Sdc__Coreml__Operation__AttributesEntry *a = po->attributes[i];
        if (!a->key || !strcmp(a->key, "name")) continue;
        if (is_const) {
            if (!strcmp(a->key, "val")) const_val = a->value;
            continue;
        }
        if (!constexpr_op) continue; /* other attributes carry no semantics we use */
        if (sdc_rt_param(op, a->key))
            return sdc_fail(L->err, SDC_E_FORMAT, "%s: %s: parameter '%s' is given twice", L->model_path, what, a->key);
        sdc_status st = add_param(L, op, &cap, a->key, 1);
        if (st) return st;
        char iw[1400], anon[64];
        snprintf(iw, sizeof iw, "%s attribute '%s'", what, a->key);
        snprintf(anon, sizeof anon, "<attribute %d>", L->anon++);
        char *nm = sdc_arena_strdup(&m->arena, anon);
        int s = nm ? new_slot(L, nm) : -1;
        if (s < 0) return sdc_fail(L->err, SDC_E_NOMEM, "out of memory");
        st = value_source(L, a->value, NULL, s, iw);
        if (st) return st;
        op->params[op->n_params - 1].slots[0] = s;
    }

    /* outputs */
    op->n_out = (int)po->n_outputs;
    op->outs = sdc_arena_alloc(&m->arena, sizeof(int) * po->n_outputs);
    if (!op->outs) return sdc_fail(L->err, SDC_E_NOMEM, "out of memory");
    for (size_t k = 0; k < po->n_outputs; k++) {
        const Sdc__Coreml__NamedValueType *nv = po->outputs[k];
        char ow[1400];
        snprintf(ow, sizeof ow, "%s output '%s'", what, nv && nv->name ? nv->name : "");
        int s = bind_name(L, nv ? nv->name : NULL, ow);
        if (s < 0) return L->err->code;
        op->outs[k] = s;
        islot *sl = &m->slots[s];
        sl->producer = index;
        if (is_const) {
            if (!const_val) return sdc_fail(L->err, SDC_E_FORMAT, "%s: %s: const op without a 'val' attribute", L->model_path, what);
            sdc_status st = value_source(L, const_val, nv->type, s, ow);
            if (st) return st;
        } else {
            sdc_status st = parse_type(L, nv->type, sl, ow);
            if (st) return st;
            if (constexpr_op) {
                /* Constexpr values are expanded on use by recursing through their inputs, so
                   a crafted chain could exhaust the stack: real packages chain 1 to 3 deep. */
                int depth = 1;
                for (int pi = 0; pi < op->n_params; pi++)
                    for (int j = 0; j < op->params[pi].n; j++) {
                        const islot *in = &m->slots[op->params[pi].slots[j]];
                        if (in->kind == SL_CONST && in->src.kind == CS_CONSTEXPR && in->src.depth + 1 > depth)
                            depth = in->src.depth + 1;
                    }
                if (depth > MAX_CONSTEXPR_DEPTH)
                    return sdc_fail(L->err, SDC_E_FORMAT, "%s: %s: constexpr ops chained more than %d deep",
                                    L->model_path, what, MAX_CONSTEXPR_DEPTH);
                sl->kind = SL_CONST;
                sl->src.kind = CS_CONSTEXPR;
                sl->src.op = index;
                sl->src.depth = depth;
                if (po->n_outputs != 1)
                    return sdc_fail(L->err, SDC_E_FORMAT, "%s: %s: a constexpr op has one output", L->model_path, what);
            } else {
                sl->kind = SL_OP;
            }
        }
    }
    return SDC_OK;
}

/* ---------------------------------------------------------------- manifest */

/* ---------------------------------------------------------------- descriptions */

/* The ndarray dtype of a MultiArray description, or -1 for those predictions do not return. */
static int nd_from_array_type(int t) {
    const sdc_dtype_info *d = sdc_dtype_by_array_type(t);
    return d ? sdc_dtype_to_nd(d->code) : -1;
}

static int nd_from_mt(int t) {
    if (t == MT_FP16) return SDC_ND_F16;
    if (mt_is_float(t)) return SDC_ND_F32;
    return SDC_ND_I32;
}

static const Sdc__Coreml__FeatureDescription *find_feature(Sdc__Coreml__FeatureDescription **f, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (f[i] && f[i]->name && !strcmp(f[i]->name, name)) return f[i];
    return NULL;
}

static sdc_status describe(loader *L, const PModel *pm) {
    sdc_model *m = L->m;
    const Sdc__Coreml__ModelDescription *d = pm->description;
    m->in_desc = sdc_arena_alloc(&m->arena, sizeof(sdc_ndarray) * (size_t)(m->n_inputs + 1));
    m->out_desc = sdc_arena_alloc(&m->arena, sizeof(sdc_ndarray) * (size_t)(m->n_outputs + 1));
    m->out_dtype = sdc_arena_alloc(&m->arena, sizeof(int) * (size_t)(m->n_outputs + 1));
    if (!m->in_desc || !m->out_desc || !m->out_dtype) return sdc_fail(L->err, SDC_E_NOMEM, "out of memory");
    for (int i = 0; i < m->n_inputs; i++) {
        const islot *s = &m->slots[m->inputs[i]];
        sdc_ndarray *a = &m->in_desc[i];
        a->name = s->name;
        a->rank = s->rank;
        memcpy(a->shape, s->shape, sizeof(int64_t) * (size_t)s->rank);
        if (s->dtype != MT_FP32 && s->dtype != MT_FP16 && s->dtype != MT_INT32)
            return sdc_fail(L->err, SDC_E_UNSUPPORTED, "%s: input '%s' is %s (supported: fp32, fp16, int32)", L->model_path,
                            s->name, mt_name(s->dtype));
        a->dtype = (sdc_nd_dtype)nd_from_mt(s->dtype);
    }
    for (int i = 0; i < m->n_outputs; i++) {
        const islot *s = &m->slots[m->outputs[i]];
        sdc_ndarray *a = &m->out_desc[i];
        a->name = s->name;
        a->rank = s->rank;
        memcpy(a->shape, s->shape, sizeof(int64_t) * (size_t)s->rank);
        if (s->dtype == MT_STRING)
            return sdc_fail(L->err, SDC_E_UNSUPPORTED, "%s: output '%s' is a string", L->model_path, s->name);
        int dt = nd_from_mt(s->dtype);
        /* the description's dtype is what Core ML hands back */
        const Sdc__Coreml__FeatureDescription *f = d ? find_feature(d->output, d->n_output, s->name) : NULL;
        if (f && f->type && f->type->type_case == SDC__COREML__FEATURE_TYPE__TYPE_MULTI_ARRAY_TYPE && f->type->multiarraytype) {
            int t = nd_from_array_type((int)f->type->multiarraytype->datatype);
            if (t >= 0) dt = t;
        }
        a->dtype = (sdc_nd_dtype)dt;
        m->out_dtype[i] = dt;
    }
    /* every described input must be a function input */
    for (size_t i = 0; d && i < d->n_input; i++) {
        const char *nm = d->input[i] && d->input[i]->name ? d->input[i]->name : "";
        bool found = false;
        for (int k = 0; k < m->n_inputs && !found; k++) found = !strcmp(m->slots[m->inputs[k]].name, nm);
        if (!found)
            return sdc_fail(L->err, SDC_E_FORMAT, "%s: described input '%s' is not an input of function main", L->model_path, nm);
    }
    return SDC_OK;
}

/* ---------------------------------------------------------------- entry */

static sdc_status build(loader *L, const PModel *pm) {
    sdc_model *m = L->m;
    if (pm->type_case != SDC__COREML__MODEL__TYPE_ML_PROGRAM || !pm->mlprogram)
        return sdc_fail(L->err, SDC_E_UNSUPPORTED, "%s: not an ML Program (neural networks and pipelines are not supported)",
                        L->model_path);
    const Sdc__Coreml__Program *prog = pm->mlprogram;
    if (prog->version != 1)
        return sdc_fail(L->err, SDC_E_UNSUPPORTED, "%s: program version %lld (expected 1)", L->model_path, (long long)prog->version);
    const Sdc__Coreml__Function *fn = NULL;
    for (size_t i = 0; i < prog->n_functions; i++)
        if (prog->functions[i]->key && !strcmp(prog->functions[i]->key, "main")) fn = prog->functions[i]->value;
    if (!fn) return sdc_fail(L->err, SDC_E_FORMAT, "%s: the program has no function 'main'", L->model_path);
    const PBlock *blk = NULL;
    for (size_t i = 0; i < fn->n_block_specializations; i++)
        if (fn->opset && fn->block_specializations[i]->key && !strcmp(fn->block_specializations[i]->key, fn->opset))
            blk = fn->block_specializations[i]->value;
    if (!blk)
        return sdc_fail(L->err, SDC_E_FORMAT, "%s: function main has no block for its opset '%s'", L->model_path,
                        fn->opset ? fn->opset : "");
    if (blk->n_operations > (1u << 24) || fn->n_inputs > 4096 || blk->n_outputs > 4096)
        return sdc_fail(L->err, SDC_E_FORMAT, "%s: too many ops, inputs or outputs", L->model_path);

    m->inputs = sdc_arena_alloc(&m->arena, sizeof(int) * (fn->n_inputs + 1));
    m->outputs = sdc_arena_alloc(&m->arena, sizeof(int) * (blk->n_outputs + 1));
    m->ops = sdc_calloc(blk->n_operations + 1, sizeof(iop));
    if (!m->inputs || !m->outputs || !m->ops) return sdc_fail(L->err, SDC_E_NOMEM, "out of memory");
    for (size_t i = 0; i < fn->n_inputs; i++) {
        const Sdc__Coreml__NamedValueType *nv = fn->inputs[i];
        char what[600];
        snprintf(what, sizeof what, "function input '%s'", nv && nv->name ? nv->name : "");
        int s = bind_name(L, nv ? nv->name : NULL, what);
        if (s < 0) return L->err->code;
        sdc_status st = parse_type(L, nv->type, &m->slots[s], what);
        if (st) return st;
        m->slots[s].kind = SL_INPUT;
        m->inputs[m->n_inputs++] = s;
    }
    for (size_t i = 0; i < blk->n_operations; i++) {
        if (!blk->operations[i]) return sdc_fail(L->err, SDC_E_FORMAT, "%s: empty operation %zu", L->model_path, i);
        sdc_status st = load_op(L, blk->operations[i], (int)i);
        m->n_ops = (int)i + 1;
        if (st) return st;
    }
    for (size_t i = 0; i < blk->n_outputs; i++) {
        int s = sdc_strmap_get(L->names, blk->outputs[i] ? blk->outputs[i] : "");
        if (s < 0) return sdc_fail(L->err, SDC_E_FORMAT, "%s: block output '%s' is not defined", L->model_path, blk->outputs[i]);
        for (int k = 0; k < m->n_outputs; k++)
            if (m->outputs[k] == s)
                return sdc_fail(L->err, SDC_E_FORMAT, "%s: block output '%s' is listed twice", L->model_path, blk->outputs[i]);
        m->outputs[m->n_outputs++] = s;
    }
    return describe(L, pm);
}

void sdc_interp_liveness(sdc_model *m) {
    for (int i = 0; i < m->n_ops; i++) {
        int reader = m->ops[i].fused_into >= 0 ? m->ops[i].fused_into : i; /* a fused op reads at its fuser */
        for (int p = 0; p < m->ops[i].n_params; p++)
            for (int k = 0; k < m->ops[i].params[p].n; k++) {
                islot *sl = &m->slots[m->ops[i].params[p].slots[k]];
                if (reader > sl->last_use) sl->last_use = reader;
            }
    }
    for (int i = 0; i < m->n_outputs; i++) m->slots[m->outputs[i]].last_use = INT32_MAX;
}

sdc_status sdc_interp_decode_small(sdc_model *m, sdc_err *err) {
    irun r = {.m = m, .err = err};
    for (int s = 0; s < m->n_slots; s++) {
        islot *sl = &m->slots[s];
        if (sl->kind != SL_CONST || sl->val || sl->src.kind == CS_NONE) continue;
        size_t n;
        if (!sdc_it_numel(sl->rank, sl->shape, &n) || n > EAGER_ELEMS) continue;
        itensor *t = NULL;
        if (sl->src.kind == CS_RAW) {
            t = sdc_it_new(sl->dtype, sl->rank, sl->shape);
            if (!t) return sdc_fail(err, SDC_E_NOMEM, "out of memory");
            if (mt_is_float(sl->dtype)) {
                sdc_csrc_read_f(&sl->src, 0, n, t->f);
                if (sl->dtype == MT_FP16) sdc_round_f16(NULL, t->f, n);
            } else {
                sdc_csrc_read_i(&sl->src, 0, n, t->i);
            }
            /* a copy now: with the file cached in 2 MiB folios, each small constant read would
               keep its 2 MiB mapped (SDXL's small constants: most of its 5 GB file) */
            sdc_csrc_drop(&sl->src, NULL);
        } else {
            const iop *maker = &m->ops[sl->src.op];
            sdc_status st = maker->def->value(&r, maker, &t);
            for (int i = 0; i < r.n_temps; i++) sdc_it_free(r.temps[i]);
            r.n_temps = 0;
            if (st) {
                sdc_free(r.temps);
                return st;
            }
        }
        sl->val = t;
    }
    sdc_free(r.temps);
    return SDC_OK;
}

sdc_status sdc_interp_model_load(const char *pkg, sdc_model *m, sdc_err *err) {
    m->pkg = sdc_calloc(1, sizeof *m->pkg);
    if (!m->pkg) return sdc_fail(err, SDC_E_NOMEM, "out of memory");
    sdc_status s = sdc_package_open(pkg, m->pkg, err);
    if (s) return s;
    loader L = {.m = m, .err = err, .pkg = m->pkg, .model_path = m->pkg->model_path};
    L.names = &m->names;
    s = build(&L, m->pkg->model);
    if (!s) s = sdc_interp_decode_small(m, err);
    /* and whatever else of the weight files the load read: the run maps each op's weights in */
    for (int i = 0; !s && i < m->n_files; i++) sdc_map_drop(m->files[i].blob.map.data, m->files[i].blob.map.size);
    if (!s) {
        sdc_interp_fuse(m);
        sdc_interp_fuse_norm(m);
        sdc_interp_fuse_geglu(m);
        sdc_interp_liveness(m);
    }
    return s;
}

void sdc_interp_model_release(sdc_model *m) {
    for (int s = 0; s < m->n_slots; s++)
        if (m->slots[s].val && m->slots[s].val->dtype != MT_STRING) sdc_it_free(m->slots[s].val);
    sdc_free(m->slots);
    sdc_free(m->ops);
    for (int i = 0; i < m->n_files; i++) sdc_blob_file_close(&m->files[i].blob);
    sdc_free(m->files);
    sdc_strmap_clear(&m->names);
    if (m->pkg) sdc_package_close(m->pkg);
    sdc_free(m->pkg);
    sdc_arena_free(&m->arena);
}
