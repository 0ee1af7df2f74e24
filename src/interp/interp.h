/*
 * interp.h — internals of the reference interpreter (src/interp/). Not installed.
 *
 * The interpreter runs function `main` of an ML Program package on the CPU by the MIL
 * semantics of reference/coreml-format.md §6. It reads packages, never the converter's
 * graph, so it runs packages written by any tool.
 *
 * Loading (load.c) turns the protobuf into a flat program:
 *   - a table of *slots*, one per named value (function inputs, op outputs, inline values);
 *     each carries its declared type (MIL dtype + shape; -1 = unknown dimension);
 *   - a list of *ops* in block order, each with its parameters resolved to slot indices and
 *     its kernel looked up by type (an unknown op type fails the load, naming the op).
 * Constants are not copied: a const slot keeps a *source* (a pointer into the mapped
 * weight.bin or into the protobuf, in the stored dtype) and is decoded when an op uses it,
 * into a temporary freed after that op. Small constants (axes, epsilons, biases) are
 * decoded once at load. constexpr_* ops (palettized / quantized weights) are sources too,
 * expanded per use, so memory stays near the package size.
 *
 * Values at run time: float dtypes (fp16, fp32) are held as float, integer and bool dtypes
 * as int32, strings as borrowed char*. Every op computes in fp32 and its results are rounded
 * to the declared output dtype (fp16 results become fp16-representable by RNE), as a device
 * computing in fp16 would store them. Each op's computed output shape is checked against the
 * shape declared in the package.
 *
 * Running (exec.c) walks the ops in order; after each op the constants it decoded are freed,
 * and so is every runtime value it was the last reader of. Large buffers are recycled
 * through a small bounded cache (tensor.c) instead of being faulted in afresh each time.
 * Threads: one pool per model (pool.c) shares every large loop; matrix products (gemm.c)
 * are split into blocks, one single-threaded product per pool thread, so OpenBLAS is set to
 * one thread when a model loads. Kernels never nest pool loops.
 *
 * Files, from the top down (each uses only those below it): exec.c (public API: load,
 * describe, predict), load.c (package → program, through coreml/package.h), optable.c (op
 * type → kernel or constexpr value), the kernels ops_elementwise.c, ops_nn.c, ops_tensor.c,
 * ops_dynamic.c and consts.c (constexpr values), access.c (what kernels see of a run: parameters, values,
 * outputs), and tensor.c (buffers, fp16), vmath.c (vector exp, max), pool.c, gemm.c.
 */
#ifndef SDC_INTERP_H
#define SDC_INTERP_H

#include "arena.h"
#include "strmap.h"
#include "common.h"

/* The interpreter's dtypes are sdc_dtype, whose values are MIL DataType codes (dtype.h), under
   the names MIL text gives them; every fact about them comes from the dtype table. */
enum {
    MT_BOOL = SDC_DT_BOOL,
    MT_STRING = SDC_DT_STRING,
    MT_FP16 = SDC_DT_F16,
    MT_FP32 = SDC_DT_F32,
    MT_FP64 = SDC_DT_F64,
    MT_BF16 = SDC_DT_BF16,
    MT_INT8 = SDC_DT_I8,
    MT_INT16 = SDC_DT_I16,
    MT_INT32 = SDC_DT_I32,
    MT_INT64 = SDC_DT_I64,
    MT_INT4 = SDC_DT_I4,
    MT_UINT8 = SDC_DT_U8,
    MT_UINT16 = SDC_DT_U16,
    MT_UINT32 = SDC_DT_U32,
    MT_UINT64 = SDC_DT_U64,
    MT_UINT4 = SDC_DT_U4,
    MT_UINT2 = SDC_DT_U2,
    MT_UINT1 = SDC_DT_U1,
    MT_UINT6 = SDC_DT_U6,
    MT_UINT3 = SDC_DT_U3,
};

static inline bool mt_valid(int t) { return sdc_dtype_info_of(t) != NULL; }
static inline bool mt_is_float(int t) { return sdc_dtype_is_float(t); } /* fp16, fp32, fp64, bf16: held as float */
static inline bool mt_is_int(int t) { return sdc_dtype_is_int(t); }     /* bool and every integer type: held as int32 */
static inline int mt_bits(int t) { return sdc_dtype_bits(t); } /* element size in bits in stored form; 0 for STRING/unknown */
/* "fp16", "int32", ... as MIL text spells them */
static inline const char *mt_name(int t) {
    const sdc_dtype_info *d = sdc_dtype_info_of(t);
    return d ? d->mil_name : "unknown";
}

/* ---------------------------------------------------------------- tensors */

typedef struct itensor {
    int dtype; /* MT_* */
    int rank;
    int64_t shape[SDC_MAX_RANK];
    size_t n; /* element count (1 for a scalar) */
    union {
        float *f;   /* float dtypes */
        int32_t *i; /* integer and bool dtypes */
        void *p;
    };
    const char *s;  /* STRING scalar, borrowed */
    bool borrowed;  /* data points into a mapped weight file: not freed, never written */
    size_t cap;     /* bytes allocated (sdc_ibuf_alloc) */
} itensor;

/* Scratch and tensor buffers: large ones (>= 256 KiB) are recycled through a small bounded
   cache (tensor.c); sdc_ibuf_trim() releases it. *cap receives the size to pass back. */
void *sdc_ibuf_alloc(size_t bytes, size_t *cap);
void sdc_ibuf_free(void *p, size_t cap);
void sdc_ibuf_trim(void);

/* Allocates a tensor of `dtype` (not STRING) and shape; data uninitialised. NULL on overflow
   or out of memory. */
itensor *sdc_it_new(int dtype, int rank, const int64_t *shape);
/* A tensor header over existing data (borrowed: sdc_it_free leaves the data alone). */
itensor *sdc_it_view(int dtype, int rank, const int64_t *shape, void *data);
void sdc_it_free(itensor *t);
bool sdc_it_numel(int rank, const int64_t *shape, size_t *n); /* false on overflow / negative */
/* Element i as float / as int64 whatever the storage. */
/* Element i of a packed sub-byte array, LSB first (reference/coreml-format.md §4.4). */
uint32_t sdc_it_bits_at(const uint8_t *p, size_t i, int bits);

static inline float it_getf(const itensor *t, size_t i) { return mt_is_float(t->dtype) ? t->f[i] : (float)t->i[i]; }
/* A float that no int64 holds (NaN, +-inf, |x| >= 2^63) gives INT64_MIN, which every bounds
   check refuses, rather than the undefined behaviour of the plain conversion. */
static inline int64_t it_geti(const itensor *t, size_t i) {
    if (!mt_is_float(t->dtype)) return (int64_t)t->i[i];
    float v = t->f[i];
    return v == v && v > -9.2e18f && v < 9.2e18f ? (int64_t)v : INT64_MIN;
}
/* "[1, 77, 768]" (common.h's printer, arguments in the interpreter's rank-first order) */
static inline const char *shape_str(int rank, const int64_t *shape, char *buf, size_t size) {
    return sdc_shape_str(shape, rank, buf, size);
}

/* ---------------------------------------------------------------- threads, BLAS, fp16 */

typedef struct ipool ipool;
ipool *sdc_ipool_new(int n_threads); /* n_threads <= 1: everything runs on the caller */
void sdc_ipool_free(ipool *p);
int sdc_ipool_size(const ipool *p);
/* Calls fn(ctx, begin, end) over [0, n) split in at most sdc_ipool_size() chunks of at least
   `grain` items; returns when all are done. Not reentrant (no nested calls). */
void sdc_ipool_for(ipool *p, size_t n, size_t grain, void (*fn)(void *ctx, size_t begin, size_t end), void *ctx);

/* C[M×N] = op(A)·op(B) + beta·C, row-major; op(X) = Xᵀ when tX. OpenBLAS when built with it,
   else the blocked kernel below, threaded over p. */
void sdc_igemm(ipool *p, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
           const float *B, int64_t ldb, float beta, float *C, int64_t ldc);
/* The portable cache-blocked kernel (always built, tested against a naive product). */
void sdc_igemm_fallback(ipool *p, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float *A,
                    int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);
/* C [M×N] (row stride ldc) = x [M×K] · wᵀ + bias ([N], or NULL: none), rounded to fp16 when
   `round`, for w [N×K] stored as fp32, or as fp16 when w16: a linear layer with at most
   SDC_IGEMM_FEW_MAX rows of x, packed once per thread, with w expanded tile by tile straight
   into the kernel's layout (gemm_few.c). Each output is one fp32 sum in k order, then the bias.
   Returns 1 when done; 0, having done nothing, when M or K is out of range or the processor
   lacks AVX-512 (the caller then takes sdc_igemm); -1 when memory ran short (C is then partly
   written). */
enum { SDC_IGEMM_FEW_MAX = 128 };
int sdc_igemm_few(ipool *p, int64_t M, int64_t N, int64_t K, const float *x, const void *w, bool w16, const float *bias,
                  bool round, float *C, int64_t ldc);
/* C [M×N] (row stride ldc) = A [M×K] · B [K×N], row-major, on the calling thread, with B's rows
   read in place (gemm_bcast.c: attention's products, where packing would cost as much as the
   product). Each output is one fp32 fma chain over k in order from zero, the bits of an fmaf
   loop, however M and N are cut. Returns false, having done nothing, without AVX-512. */
bool sdc_igemm_bcast(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb, float *C,
                     int64_t ldc);
/* Whether sdc_igemm_bcast runs on this processor. */
bool sdc_igemm_bcast_runs(void);
/* A 3×3 convolution with stride 1, no dilation and one group over N images [N, Cin, H, W] into
   [N, Cout, Ho, Wo], zero padding pt rows above and pl columns left (the rest follows from Ho,
   Wo), then the bias and the rounding to fp16 when `round`. */
typedef struct sdc_wino_conv {
    int64_t N, Cin, Cout, H, W, Ho, Wo, pt, pl;
    const float *x, *w, *bias; /* w [Cout, Cin, 3, 3]; bias [Cout] or NULL */
    float *o;
    bool round;
} sdc_wino_conv;
/* By Winograd's F(2×2, 3×3) (conv_wino.c): 1 when done; 0, having done nothing, for outputs of
   fewer than SDC_WINO_MIN_TILES blocks of 2×2, i.e. smaller than 64×64 (measured on the SD 1.5
   UNet, FLOAT16, 2 threads: its convolutions took 6.56 s direct, 6.26 s with this from 64×64 up,
   6.34 s from 32×32, 6.86 s from 16×16: below, the weights' transform and the smaller products
   cost more than the saved multiplications); -1 when memory ran short (o is then partly
   written). */
enum { SDC_WINO_MIN_TILES = 1024 };
int sdc_conv_winograd(ipool *p, const sdc_wino_conv *c);
const char *sdc_igemm_backend(void); /* "openblas", "accelerate" or "builtin" */

#if defined(__x86_64__) && defined(__GNUC__)
bool sdc_cpu_avx2(void); /* AVX2 + FMA (and so F16C) on this processor, asked once */
#endif

/* Rounds every value to the nearest fp16 (RNE; overflow to ±Inf), in place. */
void sdc_round_f16(ipool *p, float *x, size_t n);
/* Hot loops. The build uses -O2, whose "very cheap" vectoriser skips loops of unknown length
   and (with FP traps assumed possible) float compares and selects; SDC_VEC_OPT turns on the
   dynamic cost model and no-trapping-math (we never enable FP traps) for one function, and
   SDC_VECTORISE also compiles it twice on x86-64 (AVX2 and baseline, picked at load time). */
#if defined(__GNUC__) && !defined(__clang__)
#define SDC_VEC_OPT __attribute__((optimize("no-trapping-math", "vect-cost-model=dynamic")))
#else
#define SDC_VEC_OPT
#endif
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define SDC_VECTORISE SDC_VEC_OPT __attribute__((target_clones("avx2", "default")))
#else
#define SDC_VECTORISE SDC_VEC_OPT
#endif

/* y[i] = exp(x[i]) for n values (x == y allowed), vectorised (vmath.c): within 2 ulp of expf;
   results below FLT_MIN flushed to 0. */
void sdc_vec_exp(const float *x, float *y, size_t n);
/* The sum (of squares when `square`) of n floats in double, as 8 interleaved partial sums
   (lane j % 8) so that it vectorises; they differ from one running sum only far below
   float32's resolution. sdc_sum8_add adds n8 (a multiple of 8) values to lanes[8],
   sdc_sum8_end combines the lanes and adds the last n % 8 values one by one: a sum streamed
   through them block by block (blocks of multiples of 8) equals sdc_sum_f64 bit for bit. */
double sdc_sum_f64(const float *x, size_t n, bool square);
void sdc_sum8_add(double *lanes, const float *x, size_t n8, bool square);
double sdc_sum8_end(const double *lanes, const float *tail, size_t n_tail, bool square);
/* max of n floats, NaNs skipped; -Inf when there is none (vmath.c). */
float sdc_vec_max(const float *x, size_t n);
/* n little-endian fp16 bit patterns (unaligned) to float. */
void sdc_f16_expand(ipool *p, const uint8_t *src, float *dst, size_t n);

/* ---------------------------------------------------------------- constant sources */

typedef enum {
    RAW_F32, RAW_F64, RAW_F16, RAW_BF16, RAW_I8, RAW_U8, RAW_I16, RAW_U16, RAW_I32, RAW_U32,
    RAW_I64, RAW_U64,
    RAW_PBOOL, /* protobuf_c_boolean array (host int) */
    RAW_BITS,  /* unsigned sub-byte, LSB-first packed, `bits` wide */
    RAW_SBITS, /* signed (two's complement) sub-byte */
} raw_fmt;

typedef enum { CS_NONE = 0, CS_RAW, CS_CONSTEXPR } cs_kind;

typedef struct csrc {
    cs_kind kind;
    raw_fmt fmt;
    int bits;
    const uint8_t *ptr; /* CS_RAW: element 0 in stored form (may be unaligned) */
    size_t n;           /* CS_RAW: stored elements */
    int op;             /* CS_CONSTEXPR: index of the constexpr op */
    int depth;          /* CS_CONSTEXPR: constexpr ops in the chain ending here (bounded at load) */
    bool mapped;        /* CS_RAW: ptr lies in a private read-only file mapping (weight.bin,
                           safetensors, a checkpoint), whose pages a run drops once the op that read
                           them is done (in batches, exec.c); never memory of the heap, which a
                           drop would zero */
} csrc;

/* Decodes stored elements [first, first+count) of a CS_RAW source as float / int32. */
void sdc_csrc_read_f(const csrc *s, size_t first, size_t count, float *dst);
void sdc_csrc_read_i(const csrc *s, size_t first, size_t count, int32_t *dst);
/* The bytes a CS_RAW source's elements occupy. */
size_t sdc_csrc_bytes(const csrc *s);
/* Drops the pages of a mapped CS_RAW source (sdc_map_drop), now or, given a batch, with it;
   nothing for one not mapped. */
struct sdc_drop_batch;
void sdc_csrc_drop(const csrc *s, struct sdc_drop_batch *later);

/* ---------------------------------------------------------------- program */

typedef enum { SL_INPUT, SL_OP, SL_CONST } slot_kind;

typedef struct islot {
    const char *name;
    int dtype;
    int rank;
    int64_t shape[SDC_MAX_RANK]; /* -1: unknown */
    slot_kind kind;
    int producer;  /* op index (SL_OP, and SL_CONST made by an op), -1 otherwise */
    csrc src;      /* SL_CONST */
    itensor *val;  /* SL_CONST decoded at load (small values); NULL: decoded per use */
    int last_use;  /* index of the last op that reads it; INT32_MAX for function outputs */
} islot;

typedef struct iparam {
    const char *name;
    int n;
    int *slots;
} iparam;

typedef struct irun irun;
typedef struct iop iop;
typedef sdc_status (*iop_fn)(irun *r, const iop *op);
typedef sdc_status (*iop_value_fn)(irun *r, const iop *op, itensor **out);

typedef struct iop_def {
    const char *type;
    iop_fn fn;          /* the kernel; NULL for constexpr ops */
    int code;           /* variant for kernels shared by several op types */
    iop_value_fn value; /* constexpr ops: computes the op's value when it is read; NULL otherwise */
} iop_def;

struct iop {
    const char *type;
    const char *name;
    const iop_def *def;
    int n_params;
    iparam *params;
    int n_out;
    int *outs;
    /* fuse.c, fuse_norm.c: >= 0 when this op is computed by op fused_into (which reads its
       inputs); an op computing others names the first of them (fuse_first; the others lie
       between it and the op), attention its softmax (fuse_softmax) and scale (fuse_scale: -1
       when absent) */
    int fused_into;
    int fuse_first, fuse_scale, fuse_softmax;
    bool fuse_split;
};

const iop_def *sdc_iop_find(const char *type); /* optable.c */
/* The inputs whose values an op of `type` only copies or rearranges into its output (at most
   SDC_IOP_MOVES names, NULL-padded), or NULL when it computes new values (optable.c). */
enum { SDC_IOP_MOVES = 2 };
const char *const *sdc_iop_moves(const char *type);
/* The input an op of this type reads only in part (by index), or NULL (optable.c). */
const char *sdc_iop_reads_part(const char *type);

/* Loads the package into m (load.c); sdc_interp_model_release frees what a load made, also after
   a failed one. */
sdc_status sdc_interp_model_load(const char *pkg, struct sdc_model *m, sdc_err *err);
void sdc_interp_model_release(struct sdc_model *m);
/* What both loaders (load.c: a package; graph.c: an in-memory MIL graph) share: a new slot
   named `name` (-1: out of memory), how a stored dtype is decoded, the last reader of every
   slot, and the small constants decoded once. */
struct mil_graph;
sdc_status sdc_interp_graph_load(const struct mil_graph *g, struct sdc_model *m, sdc_err *err); /* load_graph.c */
int sdc_interp_new_slot(struct sdc_model *m, const char *name);
raw_fmt sdc_interp_raw_fmt(int dt, int *bits);
void sdc_interp_liveness(struct sdc_model *m);
/* Marks attention's product → softmax → product as one op computed block by block (fuse.c);
   after small constants are decoded, before liveness. */
void sdc_interp_fuse(struct sdc_model *m);
/* Marks GroupNorm's reduce_mean → sub → square → reduce_mean → add → sqrt → real_div as one op
   (fuse_norm.c); after sdc_interp_fuse. */
void sdc_interp_fuse_norm(struct sdc_model *m);
/* Marks GEGLU's split → gelu → mul as one op computed by the mul (fuse_geglu.c); after
   sdc_interp_fuse_norm, before liveness. */
void sdc_interp_fuse_geglu(struct sdc_model *m);
/* The op of type `type` making slot s and fused into op `fused` (-1: not fused), or -1 (fuse.c;
   the fusion passes walk their chains back with it). */
int sdc_interp_maker(const struct sdc_model *m, int s, const char *type, int fused);
/* How many times each slot is read (an output counts as many readers: it is never fused away),
   counted once per fusion pass; sdc_free it. NULL when out of memory (fuse.c). */
int *sdc_interp_count_readers(const struct sdc_model *m);
/* Decodes the small constants into values at load (load.c), dropping the mapped pages each was
   read from. */
sdc_status sdc_interp_decode_small(struct sdc_model *m, sdc_err *err);

struct sdc_model {
    char *path;
    struct sdc_package *pkg; /* the opened package; its protobuf outlives the load (strings are borrowed) */
    struct ifile *files;  /* mapped blob files */
    int n_files;
    islot *slots;
    int n_slots, cap_slots;
    iop *ops;
    int n_ops;
    int *inputs, n_inputs;   /* slot indices of the function inputs */
    int *outputs, n_outputs; /* slot indices of the block outputs */
    int *out_dtype;          /* dtype each output is returned in (from the description) */
    struct sdc_ndarray *in_desc, *out_desc;
    sdc_strmap names;        /* name -> slot */
    sdc_arena arena;         /* names, descriptions, parameters: freed with the model */
    ipool *pool;
    bool exact_fp16_off;     /* options: do not round fp16 results */
    sdc_progress_fn progress; /* options: ops done of the run, after each op */
    void *progress_user;
    sdc_op_profile *prof;    /* time, FLOPs and calls per op type (exec.c); room for n_ops rows */
    int n_prof;
};

/* ---------------------------------------------------------------- kernels' view of a run */

struct irun {
    struct sdc_model *m;
    itensor **vals; /* per slot: the live runtime value */
    itensor **temps; /* constants decoded for the current op */
    int n_temps, cap_temps;
    sdc_err *err;
    const iop *op;
    double flops; /* of the current op's matrix products (sdc_rt_flops) */
    uint64_t runtime_budget; /* bytes allowed an output sized by run-time data; 0 until needed (access.c) */
    bool rounded; /* set by a kernel that rounded its outputs to their dtype itself (in its last pass) */
    struct sdc_drop_batch *drops; /* pages of weights read, to drop (exec.c) */
};

/* ---------------------------------------------------------------- accessors (access.c) */

/* The value of slot s as op reads it: a runtime value, or a constant decoded (and kept as a
   temporary of the op) when needed. NULL on error. */
itensor *sdc_interp_slot_value(irun *r, const iop *op, int s);

/* Records an error naming the package and the op; returns its code. */
sdc_status sdc_rt_fail(irun *r, const iop *op, sdc_status code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

const iparam *sdc_rt_param(const iop *op, const char *name);
int sdc_rt_param_slot(const iop *op, const char *name); /* the slot of a one-value parameter, or -1 */
bool sdc_interp_shape_known(const islot *sl); /* every dim of the declared shape known (none left to the run) */
/* Value of parameter `name` (element k of a tuple parameter); NULL if absent (or on error:
   check r->err->code). sdc_rt_req fails when absent. */
itensor *sdc_rt_in(irun *r, const iop *op, const char *name);
itensor *sdc_rt_in_at(irun *r, const iop *op, const char *name, int k);
itensor *sdc_rt_req(irun *r, const iop *op, const char *name);
/* The constant source behind a parameter when it is a lazily decoded CS_RAW constant (so a
   kernel can decode only what it needs, e.g. gather rows); NULL otherwise. */
const csrc *sdc_rt_lazy(irun *r, const iop *op, const char *name, const islot **slot);

/* Scalars and small vectors of parameters, with defaults when absent. */
sdc_status sdc_rt_int(irun *r, const iop *op, const char *name, int64_t dflt, int64_t *out);
sdc_status sdc_rt_bool(irun *r, const iop *op, const char *name, bool dflt, bool *out);
sdc_status sdc_rt_float(irun *r, const iop *op, const char *name, float dflt, float *out);
sdc_status sdc_rt_str(irun *r, const iop *op, const char *name, const char *dflt, const char **out);
/* A 1-D (or scalar) integer parameter into out[0..*n), at most `max` values; *present false
   (and *n 0) when absent. */
sdc_status sdc_rt_ints(irun *r, const iop *op, const char *name, int64_t *out, int max, int *n, bool *present);

/* Allocates output k with the computed shape after checking it against the declared type;
   dtype is the declared one. NULL on error. */
itensor *sdc_rt_out(irun *r, const iop *op, int k, int rank, const int64_t *shape);
/* Output k as sdc_rt_out makes it, but reusing input `name`'s buffer when this op is its last
   reader and dtype and shape agree (the kernel must then be safe computing in place; the
   input's tensor becomes the output, so a pointer the kernel holds stays valid). */
itensor *sdc_rt_out_reuse(irun *r, const iop *op, int k, const char *name, int rank, const int64_t *shape);
bool sdc_rt_may_take(irun *r, const iop *op, const char *name); /* this op reads `name` last */
int sdc_rt_out_dtype(const irun *r, const iop *op, int k);
ipool *sdc_rt_pool(irun *r);
/* Counts the current op's matrix-product work for the profile: 2·M·N·K per product. */
static inline void sdc_rt_flops(irun *r, double m, double n, double k) { r->flops += 2.0 * m * n * k; }

/* Normalises axis a of a rank-`rank` tensor (negative counts from the end); false if out of range. */
static inline bool norm_axis(int64_t *a, int rank) {
    if (*a < 0) *a += rank;
    return *a >= 0 && *a < rank;
}

/* Reductions over a set of dims: element (k, j) of x is at kept[k] + red[j]; kept positions
   and reduced positions both run in row-major order of their dims. */
typedef struct red_plan {
    size_t nk, nr;
    size_t *kept, *red;
} red_plan;
sdc_status sdc_red_plan_make(irun *r, const iop *op, const itensor *x, const bool *reduced, red_plan *p);
void sdc_red_plan_free(red_plan *p);

/* Evaluates a constexpr op's value (consts.c); reached through the op table's `value`. */
sdc_status sdc_constexpr_eval(irun *r, const iop *op, itensor **out);

/* Variants (iop_def.code) of the shared kernels. */
enum {
    U_ABS, U_ACOS, U_ASIN, U_ATAN, U_ATANH, U_CEIL, U_COS, U_COSH, U_ERF, U_EXP, U_EXP2, U_FLOOR,
    U_ROUND, U_SIGN, U_SIN, U_SINH, U_SQRT, U_SQUARE, U_TAN, U_TANH, U_RELU, U_RELU6, U_SIGMOID,
    U_SILU, U_SOFTPLUS, U_SOFTSIGN, U_LOGICAL_NOT, U_INVERSE, U_LOG, U_RSQRT,
};
enum {
    B_ADD, B_SUB, B_MUL, B_REAL_DIV, B_FLOOR_DIV, B_MOD, B_POW, B_MAXIMUM, B_MINIMUM, B_EQUAL,
    B_NOT_EQUAL, B_LESS, B_LESS_EQUAL, B_GREATER, B_GREATER_EQUAL, B_AND, B_OR, B_XOR,
};
enum { A_LEAKY_RELU, A_ELU, A_THRESHOLD, A_LINEAR, A_SIGMOID_HARD, A_SCALED_TANH, A_CLAMPED_RELU, A_SOFTPLUS_PARAM, A_PRELU };
enum {
    R_SUM, R_MEAN, R_MAX, R_MIN, R_PROD, R_L1_NORM, R_L2_NORM, R_LOG_SUM, R_LOG_SUM_EXP, R_SUM_SQUARE,
};
enum { C_LUT, C_AFFINE, C_CAST, C_SPARSE, C_BLOCKWISE };

/* OpenBLAS's thread count (no-op without OpenBLAS). */
void sdc_igemm_set_threads(int n);

/* Kernel entry points, one per family (ops_*.c); `code` of the def picks the variant. */
sdc_status sdc_kernel_unary(irun *r, const iop *op);
sdc_status sdc_kernel_binary(irun *r, const iop *op);
sdc_status sdc_kernel_cast(irun *r, const iop *op);
sdc_status sdc_kernel_clip(irun *r, const iop *op);
sdc_status sdc_kernel_select(irun *r, const iop *op);
sdc_status sdc_kernel_gelu(irun *r, const iop *op);
sdc_status sdc_kernel_act_alpha(irun *r, const iop *op);
sdc_status sdc_kernel_softmax(irun *r, const iop *op);
sdc_status sdc_kernel_linear(irun *r, const iop *op);
sdc_status sdc_kernel_matmul(irun *r, const iop *op);
sdc_status sdc_kernel_einsum(irun *r, const iop *op);
sdc_status sdc_kernel_conv(irun *r, const iop *op);
sdc_status sdc_kernel_layer_norm(irun *r, const iop *op);
sdc_status sdc_kernel_instance_norm(irun *r, const iop *op);
sdc_status sdc_kernel_batch_norm(irun *r, const iop *op);
sdc_status sdc_kernel_reduce(irun *r, const iop *op);
sdc_status sdc_kernel_reduce_arg(irun *r, const iop *op);
sdc_status sdc_kernel_reshape(irun *r, const iop *op);
sdc_status sdc_kernel_transpose(irun *r, const iop *op);
sdc_status sdc_kernel_expand_dims(irun *r, const iop *op);
sdc_status sdc_kernel_squeeze(irun *r, const iop *op);
sdc_status sdc_kernel_identity(irun *r, const iop *op);
sdc_status sdc_kernel_concat(irun *r, const iop *op);
sdc_status sdc_kernel_stack(irun *r, const iop *op);
sdc_status sdc_kernel_split(irun *r, const iop *op);
sdc_status sdc_kernel_slice_by_index(irun *r, const iop *op);
sdc_status sdc_kernel_slice_by_size(irun *r, const iop *op);
sdc_status sdc_kernel_gather(irun *r, const iop *op);
sdc_status sdc_kernel_gather_nd(irun *r, const iop *op);
sdc_status sdc_kernel_tile(irun *r, const iop *op);
sdc_status sdc_kernel_pad(irun *r, const iop *op);
sdc_status sdc_kernel_band_part(irun *r, const iop *op);
sdc_status sdc_kernel_fill(irun *r, const iop *op);
sdc_status sdc_kernel_range_1d(irun *r, const iop *op);
sdc_status sdc_kernel_upsample_nn(irun *r, const iop *op);
sdc_status sdc_kernel_shape(irun *r, const iop *op);
/* Row-major position of index tuple idx[0..K) among dims shape[0..K) (a negative index counts
   from the end, as NumPy's) in *off: -1, or the first coordinate outside its dim (ops_tensor.c;
   gather_nd, scatter_nd). */
int sdc_index_tuple_offset(const int64_t *shape, const int32_t *idx, int K, size_t *off);
sdc_status sdc_kernel_non_zero(irun *r, const iop *op);   /* ops_dynamic.c */
sdc_status sdc_kernel_scatter_nd(irun *r, const iop *op); /* ops_dynamic.c */
sdc_status sdc_kernel_sdpa(irun *r, const iop *op);
sdc_status sdc_kernel_fused_attention(irun *r, const iop *op); /* fuse.c */
sdc_status sdc_kernel_fused_group_norm(irun *r, const iop *op); /* fuse_norm.c */
sdc_status sdc_kernel_fused_geglu(irun *r, const iop *op);      /* fuse_geglu.c */
/* gelu's modes (EXACT, TANH_APPROXIMATION, SIGMOID_APPROXIMATION) as codes 0-2, -1 for another
   name; o = gelu(x) over n values by that code's arithmetic (ops_elementwise.c). */
int sdc_gelu_code(const char *mode);
void sdc_gelu_block(int code, const float *x, float *o, size_t n);
/* o = silu(x) = x / (1 + exp(-x)) over n values (o may be x), the silu kernel's arithmetic. */
void sdc_silu_block(const float *x, float *o, size_t n);

#endif
