/* writer.c — MIL graph → .mlpackage (see writer.h). */
#include "coreml/writer.h"
#include "io/outdir.h"

#include <errno.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "coreml.pb-c.h"
#include "coreml/blob.h"
#include "coreml/package_names.h"
#include "io/fp16.h"

/* ---------------------------------------------------------------- protobuf in the arena */

typedef struct pb_ctx {
    sdc_arena arena;
    bool oom;
} pb_ctx;

static void *pb_dup(pb_ctx *c, const void *init, size_t size) {
    void *p = sdc_arena_alloc(&c->arena, size);
    if (!p) {
        c->oom = true;
        return NULL;
    }
    memcpy(p, init, size);
    return p;
}
#define PB_NEW(c, T, INIT) ((T *)pb_dup((c), &(T)INIT, sizeof(T)))

static void *pb_array(pb_ctx *c, size_t n, size_t size) {
    void *p = sdc_arena_alloc(&c->arena, (n ? n : 1) * size);
    if (!p) c->oom = true;
    return p;
}

/* sdc_dtype values are MIL DataType codes (dtype.h): only an element type is refused. */
static int mil_data_type(sdc_dtype t) {
    SDC_ASSERT(sdc_dtype_info_of(t) && "dtype without a MIL DataType");
    return (int)t;
}

static bool pb_constant_dim(pb_ctx *c, Sdc__Coreml__Dimension *d, int64_t size) {
    Sdc__Coreml__Dimension__ConstantDimension *cd = PB_NEW(
        c, Sdc__Coreml__Dimension__ConstantDimension, SDC__COREML__DIMENSION__CONSTANT_DIMENSION__INIT);
    if (!cd) return false;
    cd->size = (uint64_t)size;
    d->dimension_case = SDC__COREML__DIMENSION__DIMENSION_CONSTANT;
    d->constant = cd;
    return true;
}

/* A size known only at run time (MIL_DIM_UNKNOWN, as non_zero's count): an empty
   UnknownDimension (not variadic), as coremltools writes it. */
static bool pb_unknown_dim(pb_ctx *c, Sdc__Coreml__Dimension *d) {
    Sdc__Coreml__Dimension__UnknownDimension *ud = PB_NEW(
        c, Sdc__Coreml__Dimension__UnknownDimension, SDC__COREML__DIMENSION__UNKNOWN_DIMENSION__INIT);
    if (!ud) return false;
    d->dimension_case = SDC__COREML__DIMENSION__DIMENSION_UNKNOWN;
    d->unknown = ud;
    return true;
}

/* A tensor type by MIL DataType code, for types sdc_dtype has no name for (uint1…uint6). */
static Sdc__Coreml__ValueType *pb_tensor_type_dt(pb_ctx *c, int datatype, int rank, const int64_t *shape) {
    Sdc__Coreml__TensorType *tt = PB_NEW(c, Sdc__Coreml__TensorType, SDC__COREML__TENSOR_TYPE__INIT);
    Sdc__Coreml__ValueType *vt = PB_NEW(c, Sdc__Coreml__ValueType, SDC__COREML__VALUE_TYPE__INIT);
    Sdc__Coreml__Dimension **dims = pb_array(c, (size_t)rank, sizeof *dims);
    if (!tt || !vt || !dims) return NULL;
    tt->datatype = datatype;
    tt->rank = rank;
    for (int i = 0; i < rank; i++) {
        Sdc__Coreml__Dimension *d = PB_NEW(c, Sdc__Coreml__Dimension, SDC__COREML__DIMENSION__INIT);
        if (!d || !(shape[i] < 0 ? pb_unknown_dim(c, d) : pb_constant_dim(c, d, shape[i]))) return NULL;
        dims[i] = d;
    }
    tt->n_dimensions = (size_t)rank;
    tt->dimensions = dims;
    vt->type_case = SDC__COREML__VALUE_TYPE__TYPE_TENSOR_TYPE;
    vt->tensortype = tt;
    return vt;
}

static Sdc__Coreml__ValueType *pb_tensor_type(pb_ctx *c, const mil_type *t) {
    return pb_tensor_type_dt(c, mil_data_type(t->dtype), t->rank, t->shape);
}

static Sdc__Coreml__NamedValueType *pb_named(pb_ctx *c, const mil_var *v) {
    Sdc__Coreml__NamedValueType *n = PB_NEW(c, Sdc__Coreml__NamedValueType, SDC__COREML__NAMED_VALUE_TYPE__INIT);
    if (!n) return NULL;
    n->name = (char *)v->name;
    n->type = pb_tensor_type(c, &v->type);
    return n;
}

/* An immediate tensor value: floats for fp32, ints for int32, bools, strings, and raw bytes
   for fp16/int8/uint8 (as coremltools writes them). */
static Sdc__Coreml__Value *pb_immediate(pb_ctx *c, const mil_type *t, const void *bytes, const char *str) {
    Sdc__Coreml__Value *v = PB_NEW(c, Sdc__Coreml__Value, SDC__COREML__VALUE__INIT);
    Sdc__Coreml__Value__ImmediateValue *iv =
        PB_NEW(c, Sdc__Coreml__Value__ImmediateValue, SDC__COREML__VALUE__IMMEDIATE_VALUE__INIT);
    Sdc__Coreml__TensorValue *tv = PB_NEW(c, Sdc__Coreml__TensorValue, SDC__COREML__TENSOR_VALUE__INIT);
    if (!v || !iv || !tv) return NULL;
    size_t n = (size_t)sdc_mil_numel(t);
    switch (t->dtype) {
    case SDC_DT_F32: {
        Sdc__Coreml__TensorValue__RepeatedFloats *r = PB_NEW(
            c, Sdc__Coreml__TensorValue__RepeatedFloats, SDC__COREML__TENSOR_VALUE__REPEATED_FLOATS__INIT);
        if (!r) return NULL;
        r->n_values = n;
        r->values = (float *)bytes;
        tv->value_case = SDC__COREML__TENSOR_VALUE__VALUE_FLOATS;
        tv->floats = r;
        break;
    }
    case SDC_DT_I32: {
        Sdc__Coreml__TensorValue__RepeatedInts *r = PB_NEW(
            c, Sdc__Coreml__TensorValue__RepeatedInts, SDC__COREML__TENSOR_VALUE__REPEATED_INTS__INIT);
        if (!r) return NULL;
        r->n_values = n;
        r->values = (int32_t *)bytes;
        tv->value_case = SDC__COREML__TENSOR_VALUE__VALUE_INTS;
        tv->ints = r;
        break;
    }
    case SDC_DT_BOOL: {
        Sdc__Coreml__TensorValue__RepeatedBools *r = PB_NEW(
            c, Sdc__Coreml__TensorValue__RepeatedBools, SDC__COREML__TENSOR_VALUE__REPEATED_BOOLS__INIT);
        protobuf_c_boolean *vals = pb_array(c, n, sizeof *vals);
        if (!r || !vals) return NULL;
        for (size_t i = 0; i < n; i++) vals[i] = ((const uint8_t *)bytes)[i] != 0;
        r->n_values = n;
        r->values = vals;
        tv->value_case = SDC__COREML__TENSOR_VALUE__VALUE_BOOLS;
        tv->bools = r;
        break;
    }
    case SDC_DT_STRING: {
        Sdc__Coreml__TensorValue__RepeatedStrings *r = PB_NEW(
            c, Sdc__Coreml__TensorValue__RepeatedStrings, SDC__COREML__TENSOR_VALUE__REPEATED_STRINGS__INIT);
        char **vals = pb_array(c, 1, sizeof *vals);
        if (!r || !vals) return NULL;
        vals[0] = (char *)str;
        r->n_values = 1;
        r->values = vals;
        tv->value_case = SDC__COREML__TENSOR_VALUE__VALUE_STRINGS;
        tv->strings = r;
        break;
    }
    case SDC_DT_F16:
    case SDC_DT_I8:
    case SDC_DT_U8:
    case SDC_DT_U32: {
        Sdc__Coreml__TensorValue__RepeatedBytes *r = PB_NEW(
            c, Sdc__Coreml__TensorValue__RepeatedBytes, SDC__COREML__TENSOR_VALUE__REPEATED_BYTES__INIT);
        if (!r) return NULL;
        r->values.len = n * sdc_dtype_size(t->dtype);
        r->values.data = (uint8_t *)bytes;
        tv->value_case = SDC__COREML__TENSOR_VALUE__VALUE_BYTES;
        tv->bytes = r;
        break;
    }
    default: SDC_ASSERT(!"immediate of unsupported dtype");
    }
    iv->value_case = SDC__COREML__VALUE__IMMEDIATE_VALUE__VALUE_TENSOR;
    iv->tensor = tv;
    v->type = pb_tensor_type(c, t);
    v->value_case = SDC__COREML__VALUE__VALUE_IMMEDIATE_VALUE;
    v->immediatevalue = iv;
    return v;
}

static Sdc__Coreml__Value *pb_blob_ref_dt(pb_ctx *c, int datatype, int rank, const int64_t *shape, uint64_t record) {
    Sdc__Coreml__Value *v = PB_NEW(c, Sdc__Coreml__Value, SDC__COREML__VALUE__INIT);
    Sdc__Coreml__Value__BlobFileValue *b =
        PB_NEW(c, Sdc__Coreml__Value__BlobFileValue, SDC__COREML__VALUE__BLOB_FILE_VALUE__INIT);
    if (!v || !b) return NULL;
    b->filename = (char *)SDC_WEIGHT_FILE_REF;
    b->offset = record;
    v->type = pb_tensor_type_dt(c, datatype, rank, shape);
    v->value_case = SDC__COREML__VALUE__VALUE_BLOB_FILE_VALUE;
    v->blobfilevalue = b;
    return v;
}

static Sdc__Coreml__Value *pb_blob_ref(pb_ctx *c, const mil_type *t, uint64_t record) {
    return pb_blob_ref_dt(c, mil_data_type(t->dtype), t->rank, t->shape, record);
}

/* An immediate value held as raw (packed) bytes, by DataType code: sub-byte indices. */
static Sdc__Coreml__Value *pb_immediate_bytes(pb_ctx *c, int datatype, int rank, const int64_t *shape,
                                              const void *bytes, size_t nbytes) {
    Sdc__Coreml__Value *v = PB_NEW(c, Sdc__Coreml__Value, SDC__COREML__VALUE__INIT);
    Sdc__Coreml__Value__ImmediateValue *iv =
        PB_NEW(c, Sdc__Coreml__Value__ImmediateValue, SDC__COREML__VALUE__IMMEDIATE_VALUE__INIT);
    Sdc__Coreml__TensorValue *tv = PB_NEW(c, Sdc__Coreml__TensorValue, SDC__COREML__TENSOR_VALUE__INIT);
    Sdc__Coreml__TensorValue__RepeatedBytes *r =
        PB_NEW(c, Sdc__Coreml__TensorValue__RepeatedBytes, SDC__COREML__TENSOR_VALUE__REPEATED_BYTES__INIT);
    if (!v || !iv || !tv || !r) return NULL;
    r->values.len = nbytes;
    r->values.data = (uint8_t *)bytes;
    tv->value_case = SDC__COREML__TENSOR_VALUE__VALUE_BYTES;
    tv->bytes = r;
    iv->value_case = SDC__COREML__VALUE__IMMEDIATE_VALUE__VALUE_TENSOR;
    iv->tensor = tv;
    v->type = pb_tensor_type_dt(c, datatype, rank, shape);
    v->value_case = SDC__COREML__VALUE__VALUE_IMMEDIATE_VALUE;
    v->immediatevalue = iv;
    return v;
}

static Sdc__Coreml__Operation__AttributesEntry *pb_attr(pb_ctx *c, const char *key, Sdc__Coreml__Value *v) {
    Sdc__Coreml__Operation__AttributesEntry *e =
        PB_NEW(c, Sdc__Coreml__Operation__AttributesEntry, SDC__COREML__OPERATION__ATTRIBUTES_ENTRY__INIT);
    if (!e) return NULL;
    e->key = (char *)key;
    e->value = v;
    return e;
}

static const mil_type string_scalar = {SDC_DT_STRING, 0, {0}};

/* ---------------------------------------------------------------- weight streaming */

/* Where each const's value goes: a blob record offset, or immediate bytes. */
typedef struct const_slot {
    bool in_blob;
    uint64_t record;
    const void *bytes; /* immediate value (arena) */
    /* palettized consts: the above hold the indices; the table goes here */
    bool lut_in_blob;
    uint64_t lut_record;
    const void *lut_bytes;
} const_slot;

/* Where each const's bytes go is sdc_mil_const_storage's rule; mil states the blob layout it
   counts with, which must be ours. */
_Static_assert((int)MIL_BLOB_RECORD == (int)SDC_BLOB_HEADER && (int)MIL_BLOB_ALIGN == (int)SDC_BLOB_ALIGN,
               "blob layout");

enum { CONVERT_CHUNK = 1 << 16 };

typedef struct stream_state {
    sdc_blob_writer blob;
    uint8_t *out;
    float *tmp;
    uint64_t done, total;
    const sdc_write_hooks *hooks;
} stream_state;

static void progress(stream_state *st) {
    if (st->hooks && st->hooks->progress) st->hooks->progress(st->hooks->user, st->hooks->what, st->done, st->total);
}

static sdc_status stream_weight(stream_state *st, const mil_var *v, sdc_err *err) {
    const mil_weight *w = &v->weight;
    uint64_t n = sdc_mil_numel(&v->type);
    mil_value_faults faults = {0};
    size_t esize = sdc_dtype_size(v->type.dtype);
    for (uint64_t i = 0; i < n; i += CONVERT_CHUNK) {
        size_t k = (size_t)(n - i < CONVERT_CHUNK ? n - i : CONVERT_CHUNK);
        const void *vals = sdc_mil_const_values(v, i, k, st->out, st->tmp, &faults);
        sdc_status s = sdc_blob_write(&st->blob, vals, k * esize, err);
        if (s) return s;
        st->done += k * esize;
        if (st->hooks && st->hooks->progress)
            st->hooks->progress(st->hooks->user, st->hooks->what, st->done, st->total);
    }
    sdc_tensor_release(w->src);
    return sdc_mil_value_faults_check(v, &faults, err);
}

/* ---- palettized consts (--quantize-nbits): constexpr_lut_to_dense. The indices and the
   table are computed by the const's transform (the palettize pass's), read a chunk at a time. */

/* Blob dtype code and MIL DataType of the indices: iOS 16 packs them into a uint8 vector, the
   iOS 18 op takes a uintN tensor of the weight's shape. */
static uint32_t index_blob_code(int nbits, bool ios18) {
    if (!ios18) return SDC_BLOB_U8;
    switch (nbits) {
    case 1: return SDC_BLOB_U1;
    case 2: return SDC_BLOB_U2;
    case 4: return SDC_BLOB_U4;
    case 6: return SDC_BLOB_U6;
    default: return SDC_BLOB_U8;
    }
}

static int index_data_type(int nbits, bool ios18) {
    if (!ios18) return SDC__COREML__DATA_TYPE__UINT8;
    switch (nbits) {
    case 1: return SDC__COREML__DATA_TYPE__UINT1;
    case 2: return SDC__COREML__DATA_TYPE__UINT2;
    case 4: return SDC__COREML__DATA_TYPE__UINT4;
    case 6: return SDC__COREML__DATA_TYPE__UINT6;
    default: return SDC__COREML__DATA_TYPE__UINT8;
    }
}

/* The constexpr_lut_to_dense form: iOS 18's for CoreML8 programs, else iOS 16's. */
static bool ios18_form(const mil_graph *g) { return g->opset >= 8; }

/* One stored part of a transformed const, read CONVERT_CHUNK items at a time (whole bytes at
   any width, at most 4 bytes each: st->out holds them): into the blob as it comes, or into an
   immediate value (*imm) when it is written inline. */
static sdc_status stream_part(stream_state *st, pb_ctx *c, const mil_var *v, void *ts, int part,
                              const mil_stored_part *p, uint32_t code, bool *in_blob, uint64_t *record,
                              const void **imm, sdc_err *err) {
    SDC_ASSERT(p->bits <= 32);
    uint8_t *inline_bytes = NULL;
    sdc_status s;
    if (p->in_blob) {
        *in_blob = true;
        if ((s = sdc_blob_begin_bits(&st->blob, code, p->nbytes, p->padding_bits, record, err))) return s;
    } else if (!(inline_bytes = pb_array(c, (size_t)p->nbytes, 1))) {
        return sdc_fail(err, SDC_E_NOMEM, "out of memory");
    }
    for (uint64_t i = 0; i < p->count; i += CONVERT_CHUNK) {
        size_t k = (size_t)(p->count - i < CONVERT_CHUNK ? p->count - i : CONVERT_CHUNK);
        size_t kb = (k * (size_t)p->bits + 7) / 8;
        uint8_t *dst = inline_bytes ? inline_bytes + i * (uint64_t)p->bits / 8 : st->out;
        if ((s = v->transform->read(ts, part, i, k, dst, err))) return s;
        if (!inline_bytes) {
            if ((s = sdc_blob_write(&st->blob, dst, kb, err))) return s;
            st->done += kb;
            progress(st);
        }
    }
    *imm = inline_bytes;
    return SDC_OK;
}

/* The indices, then the table (2^N entries in the weight's dtype). */
static sdc_status stream_palettized(stream_state *st, pb_ctx *c, bool ios18, const mil_var *v,
                                    const mil_storage *ms, const_slot *slot, sdc_err *err) {
    SDC_ASSERT(v->transform && v->lut_shaped == ios18 && ms->n_parts == 2);
    void *ts = NULL;
    sdc_status s = v->transform->open(v, &ts, err);
    if (!s)
        s = stream_part(st, c, v, ts, MIL_PART_INDICES, &ms->part[MIL_PART_INDICES],
                        index_blob_code(v->lut_bits, ios18), &slot->in_blob, &slot->record, &slot->bytes, err);
    if (!s && v->const_kind == MIL_CONST_WEIGHT) sdc_tensor_release(v->weight.src);
    if (!s)
        s = stream_part(st, c, v, ts, MIL_PART_TABLE, &ms->part[MIL_PART_TABLE], sdc_dtype_blob_code(v->type.dtype),
                        &slot->lut_in_blob, &slot->lut_record, &slot->lut_bytes, err);
    if (ts) v->transform->close(ts);
    return s;
}

/* Small weights (< 10 elements) are written inline, so they are materialised here. */
static const void *materialise_small_weight(pb_ctx *c, const mil_var *v) {
    size_t n = (size_t)sdc_mil_numel(&v->type);
    uint8_t *out = pb_array(c, n, sdc_dtype_size(v->type.dtype));
    float tmp[16];
    mil_value_faults faults = {0}; /* small weights are biases and norms: checked by builders' tests */
    if (out) sdc_mil_const_values(v, 0, n, out, tmp, &faults);
    return out;
}

/* Where the next record starts when the file is at `pos`. */
static uint64_t blob_aligned(uint64_t pos) { return (pos + SDC_BLOB_ALIGN - 1) / SDC_BLOB_ALIGN * SDC_BLOB_ALIGN; }

static sdc_status write_blobs(const mil_graph *g, const char *bin_path, const_slot *slots, pb_ctx *c,
                              const sdc_write_hooks *hooks, sdc_err *err) {
    stream_state st = {.hooks = hooks};
    for (size_t i = 0; i < g->n_ops; i++) st.total += sdc_mil_const_storage(g->ops[i]->outputs[0]).blob_bytes;
    st.out = sdc_malloc(CONVERT_CHUNK * 4);
    st.tmp = sdc_malloc(CONVERT_CHUNK * sizeof(float));
    sdc_status s = (!st.out || !st.tmp) ? sdc_fail(err, SDC_E_NOMEM, "out of memory") : sdc_blob_open(&st.blob, bin_path, err);
    for (size_t i = 0; s == SDC_OK && i < g->n_ops; i++) {
        const mil_var *v = g->ops[i]->outputs[0];
        if (v->const_kind == MIL_NOT_CONST) continue;
        mil_storage ms = sdc_mil_const_storage(v);
        uint64_t first_record = blob_aligned(st.blob.pos);
        if (v->lut_bits) {
            s = stream_palettized(&st, c, ios18_form(g), v, &ms, &slots[i], err);
            SDC_ASSERT(s || blob_aligned(st.blob.pos) - first_record == ms.blob_span);
            continue;
        }
        if (!ms.part[0].in_blob) {
            slots[i].bytes = v->const_kind == MIL_CONST_WEIGHT ? materialise_small_weight(c, v) : v->bytes;
            if (c->oom) s = sdc_fail(err, SDC_E_NOMEM, "out of memory");
            continue;
        }
        uint64_t nbytes = ms.part[0].nbytes;
        slots[i].in_blob = true;
        s = sdc_blob_begin(&st.blob, sdc_dtype_blob_code(v->type.dtype), nbytes, &slots[i].record, err);
        if (s) break;
        if (v->const_kind == MIL_CONST_WEIGHT) {
            s = stream_weight(&st, v, err);
        } else {
            s = sdc_blob_write(&st.blob, v->bytes, nbytes, err);
            st.done += nbytes;
        }
        SDC_ASSERT(s || blob_aligned(st.blob.pos) - first_record == ms.blob_span);
    }
    if (s == SDC_OK)
        s = sdc_blob_close(&st.blob, err);
    else
        sdc_blob_abort(&st.blob);
    sdc_free(st.out);
    sdc_free(st.tmp);
    return s;
}

/* ---------------------------------------------------------------- the program */

/* constexpr_lut_to_dense for a palettized const (coreml-format.md §5, §6.3). iOS 16 form:
   attributes indices (uint8 [ceil(n·N/8)]), lut (T [2^N]), shape (uint32 [rank]), no inputs.
   iOS 18 form: inputs indices (uintN, the weight's shape) and lut (T [1, …, 1, 2^N, 1]), each
   one inline value binding. Large values are blob references, small ones immediate. */
static bool pb_palettized(pb_ctx *c, Sdc__Coreml__Operation *o, const mil_var *v, const const_slot *slot, bool ios18,
                          Sdc__Coreml__Operation__AttributesEntry **attrs) {
    int nb = v->lut_bits, rank = v->type.rank;
    mil_storage ms = sdc_mil_const_storage(v);
    uint64_t nbytes = ms.part[MIL_PART_INDICES].nbytes;
    int64_t entries = (int64_t)ms.part[MIL_PART_TABLE].count, ishape[1] = {(int64_t)nbytes};
    /* indices */
    int idt = index_data_type(nb, ios18), irank = ios18 ? rank : 1;
    const int64_t *ish = ios18 ? v->type.shape : ishape;
    Sdc__Coreml__Value *indices = slot->in_blob ? pb_blob_ref_dt(c, idt, irank, ish, slot->record)
                                                : pb_immediate_bytes(c, idt, irank, ish, slot->bytes, (size_t)nbytes);
    /* lut */
    mil_type lt = {v->type.dtype, ios18 ? rank + 2 : 1, {0}};
    for (int i = 0; i < lt.rank; i++) lt.shape[i] = 1;
    lt.shape[ios18 ? rank : 0] = entries;
    Sdc__Coreml__Value *lut = slot->lut_in_blob ? pb_blob_ref(c, &lt, slot->lut_record)
                                                : pb_immediate(c, &lt, slot->lut_bytes, NULL);
    if (!indices || !lut) return false;
    if (!ios18) {
        uint32_t *shape = pb_array(c, (size_t)rank, sizeof *shape);
        if (!shape) return false;
        for (int i = 0; i < rank; i++) shape[i] = (uint32_t)v->type.shape[i];
        mil_type st = {SDC_DT_U32, 1, {rank}};
        attrs[o->n_attributes++] = pb_attr(c, "indices", indices);
        attrs[o->n_attributes++] = pb_attr(c, "lut", lut);
        attrs[o->n_attributes++] = pb_attr(c, "shape", pb_immediate(c, &st, shape, NULL));
        return !c->oom;
    }
    Sdc__Coreml__Operation__InputsEntry **ins = pb_array(c, 2, sizeof *ins);
    if (!ins) return false;
    const char *names[2] = {"indices", "lut"};
    Sdc__Coreml__Value *vals[2] = {indices, lut};
    for (int k = 0; k < 2; k++) {
        Sdc__Coreml__Operation__InputsEntry *e =
            PB_NEW(c, Sdc__Coreml__Operation__InputsEntry, SDC__COREML__OPERATION__INPUTS_ENTRY__INIT);
        Sdc__Coreml__Argument *arg = PB_NEW(c, Sdc__Coreml__Argument, SDC__COREML__ARGUMENT__INIT);
        Sdc__Coreml__Argument__Binding **b = pb_array(c, 1, sizeof *b);
        if (!e || !arg || !b) return false;
        b[0] = PB_NEW(c, Sdc__Coreml__Argument__Binding, SDC__COREML__ARGUMENT__BINDING__INIT);
        if (!b[0]) return false;
        b[0]->binding_case = SDC__COREML__ARGUMENT__BINDING__BINDING_VALUE;
        b[0]->value = vals[k];
        arg->n_arguments = 1;
        arg->arguments = b;
        e->key = (char *)names[k];
        e->value = arg;
        ins[k] = e;
    }
    o->n_inputs = 2;
    o->inputs = ins;
    return true;
}

static Sdc__Coreml__Operation *pb_op(pb_ctx *c, const mil_op *op, const const_slot *slot, bool ios18) {
    Sdc__Coreml__Operation *o = PB_NEW(c, Sdc__Coreml__Operation, SDC__COREML__OPERATION__INIT);
    Sdc__Coreml__NamedValueType **outs = pb_array(c, (size_t)op->n_outputs, sizeof *outs);
    Sdc__Coreml__Operation__AttributesEntry **attrs = pb_array(c, 4, sizeof *attrs);
    if (!o || !outs || !attrs) return NULL;
    o->type = (char *)op->type;
    for (int i = 0; i < op->n_outputs; i++) outs[i] = pb_named(c, op->outputs[i]);
    o->n_outputs = (size_t)op->n_outputs;
    o->outputs = outs;
    attrs[o->n_attributes++] = pb_attr(c, "name", pb_immediate(c, &string_scalar, NULL, op->name));
    const mil_var *v = op->outputs[0];
    if (v->lut_bits) {
        o->attributes = attrs;
        return pb_palettized(c, o, v, slot, ios18, attrs) ? o : NULL;
    }
    if (v->const_kind != MIL_NOT_CONST) {
        Sdc__Coreml__Value *val = slot->in_blob ? pb_blob_ref(c, &v->type, slot->record)
                                                : pb_immediate(c, &v->type, slot->bytes, v->str);
        attrs[o->n_attributes++] = pb_attr(c, "val", val);
    }
    o->attributes = attrs;
    Sdc__Coreml__Operation__InputsEntry **ins = pb_array(c, (size_t)op->n_params, sizeof *ins);
    if (!ins) return NULL;
    for (int p = 0; p < op->n_params; p++) {
        const mil_param *mp = &op->params[p];
        Sdc__Coreml__Operation__InputsEntry *e =
            PB_NEW(c, Sdc__Coreml__Operation__InputsEntry, SDC__COREML__OPERATION__INPUTS_ENTRY__INIT);
        Sdc__Coreml__Argument *arg = PB_NEW(c, Sdc__Coreml__Argument, SDC__COREML__ARGUMENT__INIT);
        Sdc__Coreml__Argument__Binding **b = pb_array(c, (size_t)mp->n, sizeof *b);
        if (!e || !arg || !b) return NULL;
        for (int k = 0; k < mp->n; k++) {
            b[k] = PB_NEW(c, Sdc__Coreml__Argument__Binding, SDC__COREML__ARGUMENT__BINDING__INIT);
            if (!b[k]) return NULL;
            b[k]->binding_case = SDC__COREML__ARGUMENT__BINDING__BINDING_NAME;
            b[k]->name = (char *)mp->vars[k]->name;
        }
        arg->n_arguments = (size_t)mp->n;
        arg->arguments = b;
        e->key = (char *)mp->name;
        e->value = arg;
        ins[p] = e;
    }
    o->n_inputs = (size_t)op->n_params;
    o->inputs = ins;
    return o;
}

static Sdc__Coreml__Program *pb_program(pb_ctx *c, const mil_graph *g, const const_slot *slots, const char *opset) {
    Sdc__Coreml__Block *block = PB_NEW(c, Sdc__Coreml__Block, SDC__COREML__BLOCK__INIT);
    Sdc__Coreml__Operation **ops = pb_array(c, g->n_ops, sizeof *ops);
    char **outs = pb_array(c, (size_t)g->n_outputs, sizeof *outs);
    if (!block || !ops || !outs) return NULL;
    for (size_t i = 0; i < g->n_ops; i++) ops[i] = pb_op(c, g->ops[i], &slots[i], ios18_form(g));
    for (int i = 0; i < g->n_outputs; i++) outs[i] = (char *)g->outputs[i]->name;
    block->n_operations = g->n_ops;
    block->operations = ops;
    block->n_outputs = (size_t)g->n_outputs;
    block->outputs = outs;

    Sdc__Coreml__Function *fn = PB_NEW(c, Sdc__Coreml__Function, SDC__COREML__FUNCTION__INIT);
    Sdc__Coreml__Function__BlockSpecializationsEntry *spec = PB_NEW(
        c, Sdc__Coreml__Function__BlockSpecializationsEntry, SDC__COREML__FUNCTION__BLOCK_SPECIALIZATIONS_ENTRY__INIT);
    Sdc__Coreml__Function__BlockSpecializationsEntry **specs = pb_array(c, 1, sizeof *specs);
    Sdc__Coreml__NamedValueType **ins = pb_array(c, (size_t)g->n_inputs, sizeof *ins);
    if (!fn || !spec || !specs || !ins) return NULL;
    for (int i = 0; i < g->n_inputs; i++) ins[i] = pb_named(c, g->inputs[i]);
    fn->n_inputs = (size_t)g->n_inputs;
    fn->inputs = ins;
    fn->opset = (char *)opset;
    spec->key = (char *)opset;
    spec->value = block;
    specs[0] = spec;
    fn->n_block_specializations = 1;
    fn->block_specializations = specs;

    Sdc__Coreml__Program *prog = PB_NEW(c, Sdc__Coreml__Program, SDC__COREML__PROGRAM__INIT);
    Sdc__Coreml__Program__FunctionsEntry *fe =
        PB_NEW(c, Sdc__Coreml__Program__FunctionsEntry, SDC__COREML__PROGRAM__FUNCTIONS_ENTRY__INIT);
    Sdc__Coreml__Program__FunctionsEntry **fes = pb_array(c, 1, sizeof *fes);
    if (!prog || !fe || !fes) return NULL;
    fe->key = "main";
    fe->value = fn;
    fes[0] = fe;
    prog->version = 1;
    prog->n_functions = 1;
    prog->functions = fes;
    return prog;
}

static int array_data_type(sdc_dtype t) {
    const sdc_dtype_info *d = sdc_dtype_info_of(t);
    return d ? d->array_type : 0;
}

static Sdc__Coreml__FeatureDescription *pb_feature(pb_ctx *c, const mil_var *v, const char *doc) {
    Sdc__Coreml__FeatureDescription *f =
        PB_NEW(c, Sdc__Coreml__FeatureDescription, SDC__COREML__FEATURE_DESCRIPTION__INIT);
    Sdc__Coreml__FeatureType *ft = PB_NEW(c, Sdc__Coreml__FeatureType, SDC__COREML__FEATURE_TYPE__INIT);
    Sdc__Coreml__ArrayFeatureType *at =
        PB_NEW(c, Sdc__Coreml__ArrayFeatureType, SDC__COREML__ARRAY_FEATURE_TYPE__INIT);
    int64_t *shape = pb_array(c, (size_t)v->type.rank, sizeof *shape);
    if (!f || !ft || !at || !shape) return NULL;
    memcpy(shape, v->type.shape, (size_t)v->type.rank * sizeof *shape);
    at->n_shape = (size_t)v->type.rank;
    at->shape = shape;
    at->datatype = array_data_type(v->type.dtype);
    ft->type_case = SDC__COREML__FEATURE_TYPE__TYPE_MULTI_ARRAY_TYPE;
    ft->multiarraytype = at;
    f->name = (char *)v->name;
    f->shortdescription = (char *)(doc ? doc : "");
    f->type = ft;
    return f;
}

static Sdc__Coreml__Model *pb_model(pb_ctx *c, const mil_graph *g, const sdc_package_info *info,
                                   const const_slot *slots, const char *opset) {
    Sdc__Coreml__ModelDescription *d = PB_NEW(c, Sdc__Coreml__ModelDescription, SDC__COREML__MODEL_DESCRIPTION__INIT);
    Sdc__Coreml__Metadata *md = PB_NEW(c, Sdc__Coreml__Metadata, SDC__COREML__METADATA__INIT);
    Sdc__Coreml__FeatureDescription **ins = pb_array(c, (size_t)g->n_inputs, sizeof *ins);
    Sdc__Coreml__FeatureDescription **outs = pb_array(c, (size_t)g->n_outputs, sizeof *outs);
    Sdc__Coreml__Metadata__UserDefinedEntry **ud = pb_array(c, info->n_user, sizeof *ud);
    if (!d || !md || !ins || !outs || !ud) return NULL;
    int n_in_docs = info->input_docs ? (info->n_input_docs ? info->n_input_docs : g->n_inputs) : 0;
    int n_out_docs = info->output_docs ? (info->n_output_docs ? info->n_output_docs : g->n_outputs) : 0;
    for (int i = 0; i < g->n_inputs; i++) ins[i] = pb_feature(c, g->inputs[i], i < n_in_docs ? info->input_docs[i] : NULL);
    for (int i = 0; i < g->n_outputs; i++)
        outs[i] = pb_feature(c, g->outputs[i], i < n_out_docs ? info->output_docs[i] : NULL);
    for (size_t i = 0; i < info->n_user; i++) {
        ud[i] = PB_NEW(c, Sdc__Coreml__Metadata__UserDefinedEntry, SDC__COREML__METADATA__USER_DEFINED_ENTRY__INIT);
        if (!ud[i]) return NULL;
        ud[i]->key = (char *)info->user_keys[i];
        ud[i]->value = (char *)info->user_values[i];
    }
    md->shortdescription = (char *)(info->short_description ? info->short_description : "");
    md->versionstring = (char *)(info->version ? info->version : "");
    md->author = (char *)(info->author ? info->author : "");
    md->license = (char *)(info->license ? info->license : "");
    md->n_userdefined = info->n_user;
    md->userdefined = ud;
    d->n_input = (size_t)g->n_inputs;
    d->input = ins;
    d->n_output = (size_t)g->n_outputs;
    d->output = outs;
    d->metadata = md;

    Sdc__Coreml__Model *m = PB_NEW(c, Sdc__Coreml__Model, SDC__COREML__MODEL__INIT);
    if (!m) return NULL;
    m->specificationversion = info->spec_version;
    m->description = d;
    m->type_case = SDC__COREML__MODEL__TYPE_ML_PROGRAM;
    m->mlprogram = pb_program(c, g, slots, opset);
    return c->oom ? NULL : m;
}

/* ---------------------------------------------------------------- files */

static sdc_status write_file(const char *path, const void *data, size_t n, sdc_err *err) {
    FILE *f = fopen(path, "wb");
    if (!f) return sdc_fail(err, SDC_E_IO, "%s: cannot create: %s", path, strerror(errno));
    bool ok = fwrite(data, 1, n, f) == n;
    ok = (fclose(f) == 0) && ok;
    return ok ? SDC_OK : sdc_fail(err, SDC_E_IO, "%s: write failed: %s", path, strerror(errno));
}

/* 128 bits from two differently-seeded FNV-1a passes, finished with splitmix64: identifiers
   that depend only on the content, so equal inputs give byte-identical packages. */
static uint64_t mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static void content_uuid(const void *data, size_t n, uint64_t salt, char out[37]) {
    const uint8_t *p = data;
    uint64_t a = 1469598103934665603ull ^ salt, b = 0x9e3779b97f4a7c15ull ^ salt;
    for (size_t i = 0; i < n; i++) {
        a = (a ^ p[i]) * 1099511628211ull;
        b = (b ^ p[i]) * 0x100000001b3ull + 0x7f4a7c15;
    }
    uint8_t u[16];
    uint64_t hi = mix64(a), lo = mix64(b ^ hi);
    for (int i = 0; i < 8; i++) {
        u[i] = (uint8_t)(hi >> (56 - 8 * i));
        u[8 + i] = (uint8_t)(lo >> (56 - 8 * i));
    }
    u[6] = (uint8_t)((u[6] & 0x0f) | 0x80); /* RFC 9562 version 8: custom */
    u[8] = (uint8_t)((u[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02X%02X%02X%02X-%02X%02X-%02X%02X-%02X%02X-%02X%02X%02X%02X%02X%02X", u[0], u[1], u[2],
             u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
}

static sdc_status write_manifest(const char *path, const void *model, size_t model_size, sdc_err *err) {
    char model_id[37], weights_id[37];
    content_uuid(model, model_size, 1, model_id);
    content_uuid(model, model_size, 2, weights_id);
    json_t *root = json_pack("{s:s, s:{s:{s:s, s:s, s:s, s:s}, s:{s:s, s:s, s:s, s:s}}, s:s}", "fileFormatVersion",
                             "1.0.0", "itemInfoEntries", model_id, "author", SDC_PACKAGE_AUTHOR, "description",
                             "CoreML Model Specification", "name", "model.mlmodel", "path",
                             SDC_PACKAGE_AUTHOR "/model.mlmodel", weights_id, "author", SDC_PACKAGE_AUTHOR,
                             "description", "CoreML Model Weights", "name", "weights", "path",
                             SDC_PACKAGE_AUTHOR "/weights", "rootModelIdentifier", model_id);
    if (!root) return sdc_fail(err, SDC_E_NOMEM, "out of memory");
    char *text = json_dumps(root, JSON_INDENT(4) | JSON_SORT_KEYS);
    json_decref(root);
    if (!text) return sdc_fail(err, SDC_E_NOMEM, "out of memory");
    size_t n = strlen(text);
    char *with_newline = sdc_malloc(n + 2);
    sdc_status s = SDC_E_NOMEM;
    if (with_newline) {
        memcpy(with_newline, text, n);
        with_newline[n] = '\n';
        s = write_file(path, with_newline, n + 1, err);
    } else {
        sdc_fail(err, s, "out of memory");
    }
    sdc_free(with_newline);
    free(text);
    return s;
}

static const char *const package_files[] = {
    "/" SDC_WEIGHTS_DIR "/weight.bin", "/" SDC_WEIGHTS_DIR, "/" SDC_MODEL_FILE, "/Data/" SDC_PACKAGE_AUTHOR, "/Data",
    "/Manifest.json",
};

static sdc_status make_dirs(const char *tmp, sdc_err *err) {
    const char *dirs[] = {"", "/Data", "/Data/" SDC_PACKAGE_AUTHOR, "/" SDC_WEIGHTS_DIR};
    char p[4096];
    for (size_t i = 0; i < SDC_COUNT_OF(dirs); i++) {
        snprintf(p, sizeof p, "%s%s", tmp, dirs[i]);
        if (mkdir(p, 0755) != 0) return sdc_fail(err, SDC_E_IO, "%s: cannot create directory: %s", p, strerror(errno));
    }
    return SDC_OK;
}

/* "<dir>/.<base>.partial-<pid>": hidden, beside the target, so the final rename is atomic. */
/* The temporary package being written, for sdc_remove_partial_output() from a signal handler:
   a fixed buffer and only async-signal-safe calls (unlink, rmdir). */
static char inflight[4096];
static volatile sig_atomic_t inflight_set;

void sdc_track_partial_output(const char *tmp) {
    inflight_set = 0;
    if (tmp) {
        snprintf(inflight, sizeof inflight, "%s", tmp);
        inflight_set = 1;
    }
}

static void append(char *dst, size_t size, const char *a, const char *b) {
    size_t n = 0;
    for (; *a && n + 1 < size; a++) dst[n++] = *a;
    for (; *b && n + 1 < size; b++) dst[n++] = *b;
    dst[n] = 0;
}

/* Removes the files and directories a package of ours holds (a directory holding anything
   else stays). Only unlink and rmdir, so a signal handler may call it. */
void sdc_remove_package_tree(const char *path) {
    char p[4200];
    for (size_t i = 0; i < SDC_COUNT_OF(package_files); i++) {
        append(p, sizeof p, path, package_files[i]);
        if (unlink(p) != 0) rmdir(p);
    }
    rmdir(path);
}

void sdc_remove_partial_output(void) {
    if (!inflight_set) return;
    sdc_remove_package_tree(inflight);
    inflight_set = 0;
}

static bool temp_path_for(const char *path, char *out, size_t size) {
    const char *slash = strrchr(path, '/');
    if (slash)
        return sdc_fmt(out, size, "%.*s/.%s.partial-%ld", (int)(slash - path), path, slash + 1, (long)getpid());
    return sdc_fmt(out, size, ".%s.partial-%ld", path, (long)getpid());
}

static const char *opset_name(int opset) {
    switch (opset) {
    case 6: return "CoreML6";
    case 7: return "CoreML7";
    case 8: return "CoreML8";
    default: return NULL;
    }
}

/* A model's inputs and outputs are its contract with the Swift pipeline, which allocates them
   from the stated shape: a dim the graph leaves to the run (MIL_DIM_UNKNOWN) cannot be
   stated, so such a graph is refused, naming the feature, before anything is written. */
static sdc_status check_feature_shapes(const char *kind, mil_var *const *vs, int n, const char *path, sdc_err *err) {
    for (int i = 0; i < n; i++)
        for (int d = 0; d < vs[i]->type.rank; d++)
            if (vs[i]->type.shape[d] < 0)
                return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: %s '%s' has a dim (%d) known only at run time", path, kind,
                                vs[i]->name, d);
    return SDC_OK;
}

sdc_status sdc_write_package(const mil_graph *g, const sdc_package_info *info, const char *path,
                             const sdc_write_hooks *hooks, sdc_err *err) {
    const char *opset = opset_name(g->opset);
    SDC_ASSERT(opset && info->spec_version == g->opset + 1 && sdc_mil_graph_ok(g));
    if (check_feature_shapes("input", g->inputs, g->n_inputs, path, err) ||
        check_feature_shapes("output", g->outputs, g->n_outputs, path, err))
        return err->code;
    char tmp[4096], p[4096];
    if (!temp_path_for(path, tmp, sizeof tmp) || strlen(tmp) + 64 > sizeof tmp)
        return sdc_fail(err, SDC_E_ARG, "%s: path too long", path);
    struct stat st;
    if (stat(path, &st) == 0) return SDC_OK; /* another run has just written it: see lost_race below */
    sdc_remove_package_tree(tmp); /* a leftover from a crashed run with our pid */
    sdc_track_partial_output(tmp);
    sdc_status s = make_dirs(tmp, err);
    if (s) {
        sdc_track_partial_output(NULL);
        sdc_remove_package_tree(tmp);
        return s;
    }

    pb_ctx c = {0};
    sdc_arena_init(&c.arena);
    const_slot *slots = sdc_calloc(g->n_ops, sizeof *slots);
    uint8_t *buf = NULL;
    if (!slots) s = sdc_fail(err, SDC_E_NOMEM, "out of memory");
    if (!s) {
        snprintf(p, sizeof p, "%s/%s/weight.bin", tmp, SDC_WEIGHTS_DIR);
        s = write_blobs(g, p, slots, &c, hooks, err);
    }
    Sdc__Coreml__Model *model = s ? NULL : pb_model(&c, g, info, slots, opset);
    if (!s && !model) s = sdc_fail(err, SDC_E_NOMEM, "out of memory while serialising the model");
    size_t size = 0;
    if (!s) {
        size = sdc__coreml__model__get_packed_size(model);
        buf = sdc_malloc(size);
        if (!buf) s = sdc_fail(err, SDC_E_NOMEM, "out of memory");
    }
    if (!s) {
        sdc__coreml__model__pack(model, buf);
        snprintf(p, sizeof p, "%s/%s", tmp, SDC_MODEL_FILE);
        s = write_file(p, buf, size, err);
    }
    if (!s) {
        snprintf(p, sizeof p, "%s/Manifest.json", tmp);
        s = write_manifest(p, buf, size, err);
    }
    /* Durably (fsync, rename, fsync of -o). Another run that committed the same package first
       wrote the same bytes (output is deterministic): ours is dropped. */
    bool lost_race = false;
    if (!s) s = sdc_outdir_commit(tmp, path, &lost_race, err);
    if (s || lost_race) sdc_remove_package_tree(tmp);
    sdc_track_partial_output(NULL);
    sdc_free(buf);
    sdc_free(slots);
    sdc_arena_free(&c.arena);
    return s;
}
