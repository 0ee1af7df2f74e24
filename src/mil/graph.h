/*
 * graph.h — the MIL graph IR that network builders emit and the package writer serialises.
 *
 * A graph is one MIL function ("main"): typed inputs, a list of ops in the order they were
 * built (which is a topological order, since an op can only take vars that already exist),
 * and named outputs. Everything lives in the graph's arena.
 *
 * Constants are vars produced by `const` ops. Their value is one of:
 *   - bytes: a small value built by a builder (axes, epsilon, a causal mask), in the arena;
 *   - weight: a lazy reference into a mapped weight file plus a transform (element range,
 *     dtype conversion to the var's dtype, scale) applied only while the writer streams it
 *     to weight.bin, so the model's weights are never held in memory; a pass may add its own
 *     transform on top (palettization: mil_transform), computed while streaming too;
 *   - string: a MIL string scalar (e.g. gelu's mode).
 *
 * Op constructors (sdc_mil_add, sdc_mil_linear, ...) check their operands and infer the static output
 * shape. On a mismatch they record the first error in the graph, naming the op, and return
 * NULL; every constructor given a NULL operand returns NULL, so a builder checks the graph's
 * error once at the end (as ggml does with its context).
 */
#ifndef SDC_MIL_GRAPH_H
#define SDC_MIL_GRAPH_H

#include "common.h"
#include "io/safetensors.h"
#include "arena.h"
#include "strmap.h"

typedef struct mil_type {
    sdc_dtype dtype;
    int rank;
    int64_t shape[SDC_MAX_RANK]; /* a dim may be MIL_DIM_UNKNOWN (below) */
} mil_type;

/* A dimension whose size only the run knows (non_zero's count and what follows from it):
   written as an UnknownDimension, -1 in the interpreter's slots as well. Only the few ops
   that make or take such values (tile_by, non_zero, scatter_nd) accept it. */
#define MIL_DIM_UNKNOWN (-1)

typedef enum mil_const_kind {
    MIL_NOT_CONST = 0,
    MIL_CONST_BYTES,
    MIL_CONST_WEIGHT,
    MIL_CONST_STRING,
} mil_const_kind;

/* A weight materialised while writing: numel(var) elements of `src` starting at element
   `first`, converted to the var's dtype and multiplied by `scale`. */
typedef struct mil_weight {
    const sdc_tensor *src;
    uint64_t first;
    float scale;
} mil_weight;

typedef struct mil_op mil_op;

typedef struct mil_var {
    const char *name;
    mil_type type;
    mil_op *producer; /* NULL for function inputs */
    mil_const_kind const_kind;
    const void *bytes; /* MIL_CONST_BYTES: row-major, little-endian, in type.dtype */
    mil_weight weight; /* MIL_CONST_WEIGHT */
    const char *str;   /* MIL_CONST_STRING */
    int lut_bits;      /* > 0: a float const palettized to 2^lut_bits values (passes/palettize.h),
                          written as constexpr_lut_to_dense; its producer's type says so too */
    bool lut_shaped;   /* palettized in the iOS 18 form (opset >= 8): indices are a uintN tensor of
                          the const's shape; else iOS 16's uint8 vector of the packed bytes */
    const struct mil_transform *transform; /* set: a pass computes the stored parts (below) */
} mil_var;

/* One named parameter of an op; n > 1 only for tuple parameters such as concat's values. */
typedef struct mil_param {
    const char *name;
    int n;
    mil_var **vars;
} mil_param;

#define MIL_MAX_PARAMS 16

struct mil_op {
    const char *type; /* "linear" */
    const char *name; /* unique op name, written as the op's `name` attribute */
    int n_params;
    mil_param params[MIL_MAX_PARAMS];
    int n_outputs;
    mil_var **outputs;
};

typedef struct mil_graph {
    sdc_arena arena;
    mil_op **ops;
    size_t n_ops, cap_ops;
    mil_var **inputs;
    int n_inputs, cap_inputs;
    mil_var **outputs;
    int n_outputs, cap_outputs;
    int opset;        /* 6 = CoreML6 (iOS16), 7 = CoreML7 (iOS17), 8 = CoreML8 (iOS18) */
    char scope[256];  /* prefix of op and var names, set by builders */
    sdc_strmap names; /* the names in use (MIL wants them unique) */
    sdc_err err;      /* first error while building */
} mil_graph;

mil_graph *sdc_mil_graph_new(int opset);
void sdc_mil_graph_free(mil_graph *g);
bool sdc_mil_graph_ok(const mil_graph *g);

/* Names of the ops built next start with this scope (printf-style), sanitised to the MIL
   identifier rule [A-Za-z_][A-Za-z0-9_]*. */
void sdc_mil_scope(mil_graph *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Function inputs and outputs. The output var is renamed to `name` (which must be free). */
mil_var *sdc_mil_input(mil_graph *g, const char *name, sdc_dtype dtype, int rank, const int64_t *shape);
bool sdc_mil_output(mil_graph *g, mil_var *v, const char *name);

/* Records an error (first one wins) and returns NULL, for builders' own checks. */
void *sdc_mil_fail(mil_graph *g, sdc_status code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

uint64_t sdc_mil_numel(const mil_type *t);
bool sdc_mil_shape_eq(const mil_type *a, const mil_type *b);
/* "[1, 77, 768]" into buf */
const char *sdc_mil_shape_str(const mil_type *t, char *buf, size_t size);

/* ---------------------------------------------------------------- constants */

/* A weight tensor viewed with `shape` (same element count as the source unless `first` and
   the shape select a contiguous range), stored as `dtype` (F16 or F32). */
mil_var *sdc_mil_const_weight(mil_graph *g, const sdc_tensor *src, sdc_dtype dtype, int rank,
                          const int64_t *shape, uint64_t first);
/* Float values given as float, stored as `dtype` (F16 or F32). */
mil_var *sdc_mil_const_floats(mil_graph *g, sdc_dtype dtype, int rank, const int64_t *shape,
                          const float *values);
mil_var *sdc_mil_const_scalar(mil_graph *g, sdc_dtype dtype, float value);
mil_var *sdc_mil_const_ints(mil_graph *g, int n, const int32_t *values); /* int32 vector [n] */
mil_var *sdc_mil_const_int(mil_graph *g, int32_t value);                /* int32 scalar */
mil_var *sdc_mil_const_bool(mil_graph *g, bool value);
mil_var *sdc_mil_const_bools(mil_graph *g, int n, const int32_t *values); /* bool vector [n] */
mil_var *sdc_mil_const_string(mil_graph *g, const char *value);

/* What reading a weight's values found wrong, counted over all its chunks. */
typedef struct mil_value_faults {
    uint64_t overflows; /* finite source values that became ±Inf in float16 */
    uint64_t nonfinite; /* NaN or ±Inf already in the source (after its scale) */
} mil_value_faults;

/* Elements [first, first + n) of a weight or bytes const's value, in its dtype: borrowed from
   the const's own bytes, or the weight's elements converted (cast, scale) into `out`, which
   holds n elements, with `tmp` holding n floats. Faults of a weight are added to *faults. */
const void *sdc_mil_const_values(const mil_var *v, uint64_t first, size_t n, void *out, float *tmp,
                                 mil_value_faults *faults);
/* SDC_OK without faults; else fails naming the file and tensor of the weight and the count
   (a package never holds an Inf or NaN weight: fail closed). */
sdc_status sdc_mil_value_faults_check(const mil_var *v, const mil_value_faults *faults, sdc_err *err);

/* ---------------------------------------------------------------- lazy transforms
   A const whose stored parts (sdc_mil_const_storage) a pass computes from its value while the
   writer streams it, as palettization makes a table and packed indices: the pass owns the
   numbers, the writer only lays out bytes, and memory holds one tensor's work at a time. The
   writer opens a const, reads its parts in order, and closes it before it opens the next. */
typedef struct mil_transform {
    /* Starts v; *state receives the transform's state (NULL on failure). Does what needs the
       whole value before its first stored byte (palettization: a histogram and the k-means),
       failing with a message that names the tensor. */
    sdc_status (*open)(const mil_var *v, void **state, sdc_err *err);
    /* Items [first, first + n) of stored part `part`, packed as the part is, into out
       (ceil(n · bits / 8) bytes); `first` is a multiple of 8. */
    sdc_status (*read)(void *state, int part, uint64_t first, size_t n, void *out, sdc_err *err);
    void (*close)(void *state);
} mil_transform;

/* Marks a float (F16/F32) weight or bytes const palettized to `nbits` bits: its op becomes
   constexpr_lut_to_dense, renamed (op and var) "<name>_palettized" as coremltools names it,
   in the form of g's opset. The value stays lazy: `t` (the palettize pass's) computes the
   indices and the table while the writer streams them. */
bool sdc_mil_palettize_const(mil_graph *g, mil_var *v, int nbits, const mil_transform *t);

/* ---------------------------------------------------------------- how a const is stored
   The one rule for where a const's bytes go and how many there are, for the writer (which
   lays them out) and for passes that weigh graphs (chunking). */

/* The blob storage v2 layout that weight.bin follows (coreml-format.md §4): each blob is a
   64-byte record followed by its data, and every record starts at a multiple of 64. */
enum { MIL_BLOB_RECORD = 64, MIL_BLOB_ALIGN = 64 };

/* One stored value of a const: `count` items of `bits` bits, packed LSB-first when bits < 8. */
typedef struct mil_stored_part {
    uint64_t count;
    int bits;
    uint64_t nbytes;       /* ceil(count · bits / 8) */
    uint32_t padding_bits; /* unused high bits of the last byte, declared in its blob record */
    bool in_blob;          /* in weight.bin; else an immediate value in model.mlmodel */
} mil_stored_part;

/* The parts of a palettized const, in the order they are written. */
enum { MIL_PART_INDICES = 0, MIL_PART_TABLE = 1 };

typedef struct mil_storage {
    int n_parts;          /* 0: nothing stored (not a const, or a string); 1: the value itself;
                             2: a palettized const's indices and table (MIL_PART_*) */
    mil_stored_part part[2];
    uint64_t blob_bytes;  /* data bytes in weight.bin: the parts in the blob */
    uint64_t blob_span;   /* bytes of weight.bin the const takes: per part in the blob, its
                             record and data, rounded up to where the next record starts */
} mil_storage;

/* How v is stored. coremltools' rule, applied to each stored value: a float16, float32, uint8,
   int8 or sub-byte value with at least 10 elements goes to weight.bin, anything else is
   written inline. The elements of palettized indices are indices in the iOS 18 form and
   packed bytes in the iOS 16 form. */
mil_storage sdc_mil_const_storage(const mil_var *v);
/* Data bytes a const takes in weight.bin (sdc_mil_const_storage's blob_bytes); 0 for values
   written inline. */
uint64_t sdc_mil_const_stored_bytes(const mil_var *v);

/* ---------------------------------------------------------------- ops (shape comments use
   NumPy broadcasting; T = the op's float dtype) */

mil_var *sdc_mil_cast(mil_graph *g, mil_var *x, sdc_dtype to);
mil_var *sdc_mil_add(mil_graph *g, mil_var *x, mil_var *y);
mil_var *sdc_mil_sub(mil_graph *g, mil_var *x, mil_var *y);
mil_var *sdc_mil_mul(mil_graph *g, mil_var *x, mil_var *y);
mil_var *sdc_mil_real_div(mil_graph *g, mil_var *x, mil_var *y);
mil_var *sdc_mil_sigmoid(mil_graph *g, mil_var *x);
mil_var *sdc_mil_silu(mil_graph *g, mil_var *x);
mil_var *sdc_mil_gelu(mil_graph *g, mil_var *x, const char *mode); /* "EXACT", "TANH_APPROXIMATION" */
mil_var *sdc_mil_softmax(mil_graph *g, mil_var *x, int axis);
/* x [*, D_in] · weightᵀ [D_out, D_in] + bias [D_out] */
mil_var *sdc_mil_linear(mil_graph *g, mil_var *x, mil_var *weight, mil_var *bias);
mil_var *sdc_mil_matmul(mil_graph *g, mil_var *x, mil_var *y, bool transpose_x, bool transpose_y);
/* normalises over `axes` (negative allowed); gamma/beta shaped like x.shape[axes] or NULL */
mil_var *sdc_mil_layer_norm(mil_graph *g, mil_var *x, int n_axes, const int32_t *axes, mil_var *gamma,
                        mil_var *beta, float epsilon);
/* (x - mean) / sqrt(variance + epsilon) · gamma + beta over axis 1; the four params [C] */
mil_var *sdc_mil_batch_norm(mil_graph *g, mil_var *x, mil_var *mean, mil_var *variance, mil_var *gamma,
                         mil_var *beta, float epsilon);
mil_var *sdc_mil_reshape(mil_graph *g, mil_var *x, int rank, const int64_t *shape);
mil_var *sdc_mil_transpose(mil_graph *g, mil_var *x, int rank, const int32_t *perm);
mil_var *sdc_mil_gather(mil_graph *g, mil_var *x, mil_var *indices, int axis);
/* x[indices[..., 0], ..., indices[..., K-1]]: int32 or (iOS17+) uint16 indices [..., K] */
mil_var *sdc_mil_gather_nd(mil_graph *g, mil_var *x, mil_var *indices);
mil_var *sdc_mil_reduce_argmax(mil_graph *g, mil_var *x, int axis, bool keep_dims);
/* joined along axis; rank-0 values (axis 0) make a vector [n], as coremltools writes torch's
   list of scalars */
mil_var *sdc_mil_concat(mil_graph *g, int n, mil_var **values, int axis);
/* n same-shaped values joined along a new axis */
mil_var *sdc_mil_stack(mil_graph *g, int n, mil_var **values, int axis);
/* elementwise comparisons -> BOOL (broadcasting) */
mil_var *sdc_mil_equal(mil_graph *g, mil_var *x, mil_var *y);
mil_var *sdc_mil_greater(mil_graph *g, mil_var *x, mil_var *y);
mil_var *sdc_mil_maximum(mil_graph *g, mil_var *x, mil_var *y);
mil_var *sdc_mil_pow(mil_graph *g, mil_var *x, mil_var *y);
mil_var *sdc_mil_sqrt(mil_graph *g, mil_var *x);
mil_var *sdc_mil_square(mil_graph *g, mil_var *x);
mil_var *sdc_mil_exp(mil_graph *g, mil_var *x);
mil_var *sdc_mil_sin(mil_graph *g, mil_var *x);
mil_var *sdc_mil_cos(mil_graph *g, mil_var *x);
mil_var *sdc_mil_rsqrt(mil_graph *g, mil_var *x, float epsilon);
mil_var *sdc_mil_clip(mil_graph *g, mil_var *x, float lo, float hi);

/* conv: x [N, Cin, H, W], weight [Cout, Cin/groups, kH, kW], bias [Cout] or NULL;
   pad = {top, bottom, left, right} (pad_type "custom") */
mil_var *sdc_mil_conv(mil_graph *g, mil_var *x, mil_var *weight, mil_var *bias, int stride, const int pad[4],
                  int groups);
/* reduce over `axes`; op is "reduce_mean", "reduce_sum", "reduce_max", ... */
mil_var *sdc_mil_reduce(mil_graph *g, const char *op, mil_var *x, int n_axes, const int32_t *axes, bool keep_dims);
/* nearest-neighbour upsampling of the last two dims by integer factors */
mil_var *sdc_mil_upsample_nearest(mil_graph *g, mil_var *x, int scale_h, int scale_w);
/* einsum with the two equations MIL supports: "nchw,nwhu->nchu" and "chw,whr->chr" */
mil_var *sdc_mil_einsum(mil_graph *g, const char *equation, mil_var *a, mil_var *b);
/* splits x along axis into n pieces of the given sizes; outputs in out[] */
bool sdc_mil_split(mil_graph *g, mil_var *x, int axis, int n, const int64_t *sizes, mil_var **out);
/* x[..., begin:end, ...] along one axis (stride 1) */
mil_var *sdc_mil_slice(mil_graph *g, mil_var *x, int axis, int64_t begin, int64_t end);
/* constant padding of H and W of x (N, C, H, W): pad {top, bottom, left, right} */
mil_var *sdc_mil_pad_constant(mil_graph *g, mil_var *x, const int32_t pad[4], float value);
/* x[..., index, ...]: one element along `axis`, the axis dropped (slice_by_index's squeeze_mask;
   a rank-1 x gives a rank-0 value) */
mil_var *sdc_mil_slice_squeeze(mil_graph *g, mil_var *x, int axis, int64_t index);
mil_var *sdc_mil_expand_dims(mil_graph *g, mil_var *x, int n_axes, const int32_t *axes);
/* x repeated reps[d] times along each dim d (rank(x) values) */
mil_var *sdc_mil_tile(mil_graph *g, mil_var *x, const int64_t *reps);
/* tile with reps computed at run time (int32 [rank(x)]): every output dim MIL_DIM_UNKNOWN */
mil_var *sdc_mil_tile_by(mil_graph *g, mil_var *x, mil_var *reps);
/* cond ? a : b elementwise with broadcasting: cond BOOL, a and b one dtype */
mil_var *sdc_mil_select(mil_graph *g, mil_var *cond, mil_var *a, mil_var *b);
/* x's shape at run time: int32 [rank(x)] */
mil_var *sdc_mil_shape(mil_graph *g, mil_var *x);
/* the coordinates of x's non-zero elements in row-major order: int32 [MIL_DIM_UNKNOWN, rank(x)] */
mil_var *sdc_mil_non_zero(mil_graph *g, mil_var *x);
/* a copy of data whose elements at indices (int32 [..., K], K <= rank(data)) are combined with
   updates (indices.shape[:-1] + data.shape[K:]) by `mode` ("update" writes them) */
mil_var *sdc_mil_scatter_nd(mil_graph *g, mil_var *data, mil_var *indices, mil_var *updates, const char *mode);
mil_var *sdc_mil_squeeze(mil_graph *g, mil_var *x, int n_axes, const int32_t *axes);

/* ---------------------------------------------------------------- for passes that build new
   graphs from an existing one (chunking). A copied op borrows everything it does not own from
   the source graph (names, small constant bytes, weight references, param names), so the
   source graph must outlive the copies. */

/* An op that only makes a constant: `const`, a `constexpr_*` op, or one whose output is a
   constant var (whatever its kind). */
bool sdc_mil_op_is_const(const mil_op *op);
/* Bytes a constant var stores, as the chunk balancer weighs it (sdc_mil_const_storage): a
   dense value's bytes wherever it is written (bisect_model counts every array constant, inline
   ones too); a palettized const's bytes in weight.bin; 0 for strings and non-constants. */
uint64_t sdc_mil_const_nbytes(const mil_var *v);
/* Whether `name` is in use in g; reserving it makes it so (false: taken, or out of memory). */
bool sdc_mil_name_taken(const mil_graph *g, const char *name);
bool sdc_mil_reserve_name(mil_graph *g, const char *name);
/* A fresh name "<scope>_<hint>[_n]" reserved in g, as builders' ops get (NULL: out of memory). */
const char *sdc_mil_unique_name(mil_graph *g, const char *hint);
/* Appends a copy of `src` (an op of another graph) to g: the struct and its output vars are
   copied (producer set to the copy, names unchanged and NOT reserved: the caller reserves or
   renames them), each param var is replaced by map(user, var); NULL from map fails the copy.
   Returns NULL with g's error set on failure. */
mil_op *sdc_mil_clone_op(mil_graph *g, const mil_op *src, mil_var *(*map)(void *user, const mil_var *v), void *user);

#endif
