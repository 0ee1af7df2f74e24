/*
 * dtype.h — the one table of element types. Internal; not installed.
 *
 * Each element type is listed once (dtype.c) with every spelling and code the project meets:
 * the MIL DataType code of the Core ML protobuf (which is also the value of sdc_dtype), the
 * MIL text name, the converter's / safetensors' name, the size in bits, how the bits encode a
 * value, the blob storage code (reference/coreml-format.md §4.3), the MultiArray
 * ArrayDataType of model descriptions (§2.4) and NumPy's names. Every dtype mapping of the
 * library (common, io, coreml, interp) is a lookup in it.
 *
 * It lives beside common.h, below io/, mil/ and coreml/, because all of them use it.
 */
#ifndef SDC_DTYPE_H
#define SDC_DTYPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sdcoreml.h"

/* Element types of tensors in weight files, in the graph, in packages and in the interpreter.
   The values are MIL's DataType codes (MIL.proto; reference/coreml-format.md §3.2), so a
   protobuf TensorType.dataType is an sdc_dtype as it stands (coreml/package.c checks the
   generated enum against these). */
typedef enum sdc_dtype {
    SDC_DT_INVALID = 0, /* UNUSED_TYPE */
    SDC_DT_BOOL = 1,
    SDC_DT_STRING = 2, /* MIL scalar strings only */
    SDC_DT_F16 = 10,
    SDC_DT_F32 = 11,
    SDC_DT_F64 = 12,
    SDC_DT_BF16 = 13,
    SDC_DT_I8 = 21,
    SDC_DT_I16 = 22,
    SDC_DT_I32 = 23,
    SDC_DT_I64 = 24,
    SDC_DT_I4 = 25,
    SDC_DT_U8 = 31,
    SDC_DT_U16 = 32,
    SDC_DT_U32 = 33,
    SDC_DT_U64 = 34,
    SDC_DT_U4 = 35,
    SDC_DT_U2 = 36,
    SDC_DT_U1 = 37,
    SDC_DT_U6 = 38,
    SDC_DT_U3 = 39,
} sdc_dtype;

/* Blob storage dtype codes (BlobDataType, reference/coreml-format.md §4.3); the table pairs
   them with the dtypes. */
enum {
    SDC_BLOB_F16 = 1,
    SDC_BLOB_F32 = 2,
    SDC_BLOB_U8 = 3,
    SDC_BLOB_I8 = 4,
    SDC_BLOB_BF16 = 5,
    SDC_BLOB_I16 = 6,
    SDC_BLOB_U16 = 7,
    SDC_BLOB_I4 = 8,
    SDC_BLOB_U1 = 9, /* sub-byte types (iOS 18): packed LSB-first, §4.4 */
    SDC_BLOB_U2 = 10,
    SDC_BLOB_U4 = 11,
    SDC_BLOB_U3 = 12,
    SDC_BLOB_U6 = 13,
    SDC_BLOB_I32 = 14,
    SDC_BLOB_U32 = 15,
};

/* How an element's bits encode its value. */
typedef enum sdc_dtype_enc {
    SDC_ENC_NONE = 0,
    SDC_ENC_IEEE,     /* IEEE-754 binary16/32/64 */
    SDC_ENC_BFLOAT,   /* bfloat16: the high half of a binary32 */
    SDC_ENC_SIGNED,   /* two's complement (int4 packed LSB-first, §4.4) */
    SDC_ENC_UNSIGNED, /* sub-byte ones packed LSB-first */
    SDC_ENC_BOOL,     /* one byte, 0 or 1 */
    SDC_ENC_STRING,
} sdc_dtype_enc;

typedef struct sdc_dtype_info {
    sdc_dtype code;          /* MIL DataType */
    const char *mil_name;    /* "fp16": MIL text, the interpreter's messages */
    const char *name;        /* "F16": the converter's name, as safetensors spells it; NULL when none */
    int bits;                /* stored element size; 0 for STRING */
    sdc_dtype_enc enc;
    uint32_t blob;           /* blob storage (BlobDataType) code; 0: cannot be stored in a blob */
    int blob_since_spec;     /* coremltools writes this dtype to blobs from this spec on; 0: never */
    int array_type;          /* ArrayFeatureType.ArrayDataType of a MultiArray feature; 0: none */
    const char *array_name;  /* "FLOAT32", as the enum spells it */
    const char *numpy;       /* "float32"; NULL when NumPy has no such dtype */
    const char *npy_descr;   /* "<f4", the .npy header's descr (little-endian) */
} sdc_dtype_info;

/* The row of a dtype; NULL when t is not an element type (SDC_DT_INVALID, unknown codes). */
const sdc_dtype_info *sdc_dtype_info_of(int t);
/* The row whose `name` / blob code / ArrayDataType / .npy descr is the one given; NULL if none. */
const sdc_dtype_info *sdc_dtype_by_name(const char *name);
const sdc_dtype_info *sdc_dtype_by_blob(uint32_t code);
const sdc_dtype_info *sdc_dtype_by_array_type(int array_type);
const sdc_dtype_info *sdc_dtype_by_npy_descr(const char *descr);

size_t sdc_dtype_size(sdc_dtype t);      /* bytes per element; 0 for STRING/INVALID/sub-byte */
const char *sdc_dtype_name(sdc_dtype t); /* "F32", "F16", ... as safetensors spells them */
int sdc_dtype_bits(int t);               /* element size in bits in stored form; 0 for STRING/unknown */
bool sdc_dtype_is_float(int t);          /* fp16, fp32, fp64, bf16 */
bool sdc_dtype_is_int(int t);            /* bool and every integer type */

/* The blob code a const of this dtype is written with when it goes to weight.bin whole (the
   dtypes coremltools writes to blobs up to spec 8: fp16, fp32, uint8, int8), or 0 when it
   cannot (sub-byte dtypes go to blobs only as palettized indices). */
uint32_t sdc_dtype_blob_code(sdc_dtype t);

/* The public sdc_nd_dtype (sdcoreml.h) of an element type, or -1; and back. */
int sdc_dtype_to_nd(sdc_dtype t);
sdc_dtype sdc_dtype_from_nd(sdc_nd_dtype t);

#endif
