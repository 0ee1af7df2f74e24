/* dtype.c — the one table of element types (see dtype.h). */
#include "dtype.h"

#include <string.h>

/* Blob codes and spec versions: reference/coreml-format.md §4.3 (coremltools writes fp16, fp32,
   uint8, int8 blobs for every spec, int16/uint16/int32/uint32 and the sub-byte types from spec
   9 on, bf16 never). ArrayDataType values: §2.4 and §3.4. Indexed by MIL DataType code. */
#define ROW(CODE, MIL, NAME, BITS, ENC, BLOB, SINCE, ARRAY, ARRAY_NAME, NUMPY, NPY) \
    [CODE] = {CODE, MIL, NAME, BITS, ENC, BLOB, SINCE, ARRAY, ARRAY_NAME, NUMPY, NPY}

static const sdc_dtype_info TABLE[] = {
    ROW(SDC_DT_BOOL, "bool", "BOOL", 8, SDC_ENC_BOOL, 0, 0, 0, NULL, "bool", "|b1"),
    ROW(SDC_DT_STRING, "string", "STRING", 0, SDC_ENC_STRING, 0, 0, 0, NULL, NULL, NULL),
    ROW(SDC_DT_F16, "fp16", "F16", 16, SDC_ENC_IEEE, SDC_BLOB_F16, 6, 65552, "FLOAT16", "float16", "<f2"),
    ROW(SDC_DT_F32, "fp32", "F32", 32, SDC_ENC_IEEE, SDC_BLOB_F32, 6, 65568, "FLOAT32", "float32", "<f4"),
    ROW(SDC_DT_F64, "fp64", "F64", 64, SDC_ENC_IEEE, 0, 0, 65600, "DOUBLE", "float64", "<f8"),
    ROW(SDC_DT_BF16, "bf16", "BF16", 16, SDC_ENC_BFLOAT, SDC_BLOB_BF16, 0, 0, NULL, NULL, NULL),
    ROW(SDC_DT_I8, "int8", "I8", 8, SDC_ENC_SIGNED, SDC_BLOB_I8, 6, 131080, "INT8", "int8", "|i1"),
    ROW(SDC_DT_I16, "int16", "I16", 16, SDC_ENC_SIGNED, SDC_BLOB_I16, 9, 0, NULL, "int16", "<i2"),
    ROW(SDC_DT_I32, "int32", "I32", 32, SDC_ENC_SIGNED, SDC_BLOB_I32, 9, 131104, "INT32", "int32", "<i4"),
    ROW(SDC_DT_I64, "int64", "I64", 64, SDC_ENC_SIGNED, 0, 0, 0, NULL, "int64", "<i8"),
    ROW(SDC_DT_I4, "int4", NULL, 4, SDC_ENC_SIGNED, SDC_BLOB_I4, 9, 0, NULL, NULL, NULL),
    ROW(SDC_DT_U8, "uint8", "U8", 8, SDC_ENC_UNSIGNED, SDC_BLOB_U8, 6, 0, NULL, "uint8", "|u1"),
    ROW(SDC_DT_U16, "uint16", "U16", 16, SDC_ENC_UNSIGNED, SDC_BLOB_U16, 9, 0, NULL, "uint16", "<u2"),
    ROW(SDC_DT_U32, "uint32", "U32", 32, SDC_ENC_UNSIGNED, SDC_BLOB_U32, 9, 0, NULL, "uint32", "<u4"),
    ROW(SDC_DT_U64, "uint64", "U64", 64, SDC_ENC_UNSIGNED, 0, 0, 0, NULL, "uint64", "<u8"),
    ROW(SDC_DT_U4, "uint4", NULL, 4, SDC_ENC_UNSIGNED, SDC_BLOB_U4, 9, 0, NULL, NULL, NULL),
    ROW(SDC_DT_U2, "uint2", NULL, 2, SDC_ENC_UNSIGNED, SDC_BLOB_U2, 9, 0, NULL, NULL, NULL),
    ROW(SDC_DT_U1, "uint1", NULL, 1, SDC_ENC_UNSIGNED, SDC_BLOB_U1, 9, 0, NULL, NULL, NULL),
    ROW(SDC_DT_U6, "uint6", NULL, 6, SDC_ENC_UNSIGNED, SDC_BLOB_U6, 9, 0, NULL, NULL, NULL),
    ROW(SDC_DT_U3, "uint3", NULL, 3, SDC_ENC_UNSIGNED, SDC_BLOB_U3, 9, 0, NULL, NULL, NULL),
};

/* The public ndarray dtypes, in sdc_nd_dtype order. */
static const sdc_dtype ND_DTYPES[] = {
    [SDC_ND_F32] = SDC_DT_F32,
    [SDC_ND_F16] = SDC_DT_F16,
    [SDC_ND_I32] = SDC_DT_I32,
};

const sdc_dtype_info *sdc_dtype_info_of(int t) {
    if (t <= 0 || (size_t)t >= sizeof TABLE / sizeof TABLE[0] || !TABLE[t].mil_name) return NULL;
    return &TABLE[t];
}

/* The first row for which match(row, key) holds. */
static const sdc_dtype_info *find_row(bool (*match)(const sdc_dtype_info *, const void *), const void *key) {
    for (size_t i = 0; i < sizeof TABLE / sizeof TABLE[0]; i++)
        if (TABLE[i].mil_name && match(&TABLE[i], key)) return &TABLE[i];
    return NULL;
}

static bool name_is(const sdc_dtype_info *d, const void *k) { return d->name && !strcmp(d->name, k); }
static bool blob_is(const sdc_dtype_info *d, const void *k) { return d->blob && d->blob == *(const uint32_t *)k; }
static bool array_is(const sdc_dtype_info *d, const void *k) { return d->array_type && d->array_type == *(const int *)k; }
static bool npy_is(const sdc_dtype_info *d, const void *k) { return d->npy_descr && !strcmp(d->npy_descr, k); }

const sdc_dtype_info *sdc_dtype_by_name(const char *name) { return find_row(name_is, name); }
const sdc_dtype_info *sdc_dtype_by_blob(uint32_t code) { return find_row(blob_is, &code); }
const sdc_dtype_info *sdc_dtype_by_array_type(int array_type) { return find_row(array_is, &array_type); }
const sdc_dtype_info *sdc_dtype_by_npy_descr(const char *descr) { return find_row(npy_is, descr); }

size_t sdc_dtype_size(sdc_dtype t) {
    const sdc_dtype_info *d = sdc_dtype_info_of(t);
    return d ? (size_t)d->bits / 8 : 0;
}

const char *sdc_dtype_name(sdc_dtype t) {
    const sdc_dtype_info *d = sdc_dtype_info_of(t);
    return d && d->name ? d->name : "INVALID";
}

int sdc_dtype_bits(int t) {
    const sdc_dtype_info *d = sdc_dtype_info_of(t);
    return d ? d->bits : 0;
}

bool sdc_dtype_is_float(int t) {
    const sdc_dtype_info *d = sdc_dtype_info_of(t);
    return d && (d->enc == SDC_ENC_IEEE || d->enc == SDC_ENC_BFLOAT);
}

bool sdc_dtype_is_int(int t) {
    const sdc_dtype_info *d = sdc_dtype_info_of(t);
    return d && (d->enc == SDC_ENC_SIGNED || d->enc == SDC_ENC_UNSIGNED || d->enc == SDC_ENC_BOOL);
}

int sdc_dtype_to_nd(sdc_dtype t) {
    for (size_t i = 0; i < sizeof ND_DTYPES / sizeof ND_DTYPES[0]; i++)
        if (ND_DTYPES[i] == t) return (int)i;
    return -1;
}

sdc_dtype sdc_dtype_from_nd(sdc_nd_dtype t) {
    return (size_t)t < sizeof ND_DTYPES / sizeof ND_DTYPES[0] ? ND_DTYPES[t] : SDC_DT_INVALID;
}

uint32_t sdc_dtype_blob_code(sdc_dtype t) {
    const sdc_dtype_info *d = sdc_dtype_info_of(t);
    return d && d->blob_since_spec && d->blob_since_spec <= 8 ? d->blob : 0;
}
