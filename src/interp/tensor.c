/* tensor.c — dtypes, tensors, fp16 rounding and decoding of stored constants. */
#include "interp/interp.h"

#include "io/fp16.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SDC_X86 1
#endif

bool mt_valid(int t) { return mt_bits(t) > 0 || t == MT_STRING; }

bool mt_is_float(int t) { return t == MT_FP16 || t == MT_FP32 || t == MT_FP64 || t == MT_BF16; }

bool mt_is_int(int t) {
    switch (t) {
    case MT_BOOL: case MT_INT8: case MT_INT16: case MT_INT32: case MT_INT64: case MT_INT4:
    case MT_UINT8: case MT_UINT16: case MT_UINT32: case MT_UINT64: case MT_UINT4: case MT_UINT2:
    case MT_UINT1: case MT_UINT6: case MT_UINT3:
        return true;
    default:
        return false;
    }
}

int mt_bits(int t) {
    switch (t) {
    case MT_BOOL: case MT_INT8: case MT_UINT8: return 8;
    case MT_FP16: case MT_BF16: case MT_INT16: case MT_UINT16: return 16;
    case MT_FP32: case MT_INT32: case MT_UINT32: return 32;
    case MT_FP64: case MT_INT64: case MT_UINT64: return 64;
    case MT_INT4: case MT_UINT4: return 4;
    case MT_UINT1: return 1;
    case MT_UINT2: return 2;
    case MT_UINT3: return 3;
    case MT_UINT6: return 6;
    default: return 0;
    }
}

const char *mt_name(int t) {
    switch (t) {
    case MT_BOOL: return "bool";
    case MT_STRING: return "string";
    case MT_FP16: return "fp16";
    case MT_FP32: return "fp32";
    case MT_FP64: return "fp64";
    case MT_BF16: return "bf16";
    case MT_INT8: return "int8";
    case MT_INT16: return "int16";
    case MT_INT32: return "int32";
    case MT_INT64: return "int64";
    case MT_INT4: return "int4";
    case MT_UINT8: return "uint8";
    case MT_UINT16: return "uint16";
    case MT_UINT32: return "uint32";
    case MT_UINT64: return "uint64";
    case MT_UINT4: return "uint4";
    case MT_UINT2: return "uint2";
    case MT_UINT1: return "uint1";
    case MT_UINT6: return "uint6";
    case MT_UINT3: return "uint3";
    default: return "unknown";
    }
}

/* Upper bound on one tensor's elements (2^36 floats = 256 GiB): larger is malformed. */
#define MAX_ELEMS ((size_t)1 << 36)

bool it_numel(int rank, const int64_t *shape, size_t *n) {
    uint64_t k = 1;
    if (rank < 0 || rank > SDC_MAX_RANK) return false;
    for (int i = 0; i < rank; i++) {
        if (shape[i] < 0 || !sdc_mul_u64(k, (uint64_t)shape[i], &k)) return false;
    }
    if (k > MAX_ELEMS) return false;
    *n = (size_t)k;
    return true;
}

itensor *it_new(int dtype, int rank, const int64_t *shape) {
    size_t n;
    if (!it_numel(rank, shape, &n) || dtype == MT_STRING) return NULL;
    itensor *t = sdc_calloc(1, sizeof *t);
    if (!t) return NULL;
    t->dtype = dtype;
    t->rank = rank;
    for (int i = 0; i < rank; i++) t->shape[i] = shape[i];
    t->n = n;
    t->p = sdc_malloc(n * 4);
    if (!t->p) {
        sdc_free(t);
        return NULL;
    }
    return t;
}

itensor *it_view(int dtype, int rank, const int64_t *shape, void *data) {
    size_t n;
    if (!it_numel(rank, shape, &n)) return NULL;
    itensor *t = sdc_calloc(1, sizeof *t);
    if (!t) return NULL;
    t->dtype = dtype;
    t->rank = rank;
    for (int i = 0; i < rank; i++) t->shape[i] = shape[i];
    t->n = n;
    t->p = data;
    t->borrowed = true;
    return t;
}

void it_free(itensor *t) {
    if (!t) return;
    if (!t->borrowed) sdc_free(t->p);
    sdc_free(t);
}

const char *shape_str(int rank, const int64_t *shape, char *buf, size_t size) {
    size_t n = 0;
    n += (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < rank && n < size; i++)
        n += (size_t)snprintf(buf + n, size - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < size) snprintf(buf + n, size - n, "]");
    return buf;
}

/* ---------------------------------------------------------------- fp16 */

#ifdef SDC_X86
__attribute__((target("avx,f16c"))) static void round_f16_f16c(float *x, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(h));
    }
    for (; i < n; i++) x[i] = sdc_f16_to_f32(sdc_f32_to_f16(x[i]));
}

__attribute__((target("avx,f16c"))) static void f16_expand_f16c(const uint8_t *src, float *dst, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(const void *)(src + 2 * i));
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
    for (; i < n; i++) dst[i] = sdc_f16_to_f32((uint16_t)(src[2 * i] | src[2 * i + 1] << 8));
}

static int have_f16c(void) {
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
    }
    return cached;
}
#endif

static void round_f16_chunk(void *ctx, size_t b, size_t e) {
    float *x = ctx;
#ifdef SDC_X86
    if (have_f16c()) {
        round_f16_f16c(x + b, e - b);
        return;
    }
#endif
    for (size_t i = b; i < e; i++) x[i] = sdc_f16_to_f32(sdc_f32_to_f16(x[i]));
}

void round_f16(ipool *p, float *x, size_t n) {
    if (n < 65536 || !p) round_f16_chunk(x, 0, n);
    else ipool_for(p, n, 16384, round_f16_chunk, x);
}

typedef struct {
    const uint8_t *src;
    float *dst;
} expand_ctx;

static void expand_chunk(void *ctx, size_t b, size_t e) {
    expand_ctx *c = ctx;
#ifdef SDC_X86
    if (have_f16c()) {
        f16_expand_f16c(c->src + 2 * b, c->dst + b, e - b);
        return;
    }
#endif
    for (size_t i = b; i < e; i++) c->dst[i] = sdc_f16_to_f32((uint16_t)(c->src[2 * i] | c->src[2 * i + 1] << 8));
}

void f16_expand(ipool *p, const uint8_t *src, float *dst, size_t n) {
    expand_ctx c = {src, dst};
    if (n < 65536 || !p) expand_chunk(&c, 0, n);
    else ipool_for(p, n, 16384, expand_chunk, &c);
}

/* ---------------------------------------------------------------- stored constants */

static uint64_t rd_le(const uint8_t *p, int bytes) {
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* Element i of a packed sub-byte array, LSB first (reference/coreml-format.md §4.4). */
static uint32_t rd_bits(const uint8_t *p, size_t i, int bits) {
    uint64_t bit = (uint64_t)i * (uint64_t)bits;
    size_t byte = (size_t)(bit >> 3);
    unsigned shift = (unsigned)(bit & 7);
    uint32_t v = p[byte];
    if (shift + (unsigned)bits > 8) v |= (uint32_t)p[byte + 1] << 8;
    return (v >> shift) & ((1u << bits) - 1u);
}

static double raw_get(const csrc *s, size_t i) {
    const uint8_t *p = s->ptr;
    switch (s->fmt) {
    case RAW_F32: {
        float f;
        memcpy(&f, p + 4 * i, 4);
        return f;
    }
    case RAW_F64: {
        double d;
        memcpy(&d, p + 8 * i, 8);
        return d;
    }
    case RAW_F16: return sdc_f16_to_f32((uint16_t)rd_le(p + 2 * i, 2));
    case RAW_BF16: return sdc_bf16_to_f32((uint16_t)rd_le(p + 2 * i, 2));
    case RAW_I8: return (int8_t)p[i];
    case RAW_U8: return p[i];
    case RAW_I16: return (int16_t)rd_le(p + 2 * i, 2);
    case RAW_U16: return (uint16_t)rd_le(p + 2 * i, 2);
    case RAW_I32: {
        int32_t v;
        memcpy(&v, p + 4 * i, 4);
        return v;
    }
    case RAW_U32: return (uint32_t)rd_le(p + 4 * i, 4);
    case RAW_I64: return (double)(int64_t)rd_le(p + 8 * i, 8);
    case RAW_U64: return (double)rd_le(p + 8 * i, 8);
    case RAW_PBOOL: {
        int v;
        memcpy(&v, p + sizeof(int) * i, sizeof v);
        return v != 0;
    }
    case RAW_BITS: return rd_bits(p, i, s->bits);
    case RAW_SBITS: {
        uint32_t v = rd_bits(p, i, s->bits);
        if (v & (1u << (s->bits - 1))) return (double)((int32_t)v - (int32_t)(1u << s->bits));
        return v;
    }
    }
    return 0;
}

void csrc_read_f(const csrc *s, size_t first, size_t count, float *dst) {
    if (s->fmt == RAW_F32) {
        memcpy(dst, s->ptr + 4 * first, 4 * count);
        return;
    }
    if (s->fmt == RAW_F16) {
        f16_expand(NULL, s->ptr + 2 * first, dst, count);
        return;
    }
    for (size_t i = 0; i < count; i++) dst[i] = (float)raw_get(s, first + i);
}

void csrc_read_i(const csrc *s, size_t first, size_t count, int32_t *dst) {
    if (s->fmt == RAW_I32) {
        memcpy(dst, s->ptr + 4 * first, 4 * count);
        return;
    }
    for (size_t i = 0; i < count; i++) {
        double v = raw_get(s, first + i);
        /* Wider integers are clamped; load.c rejects out-of-range int64/uint32 values. */
        dst[i] = v >= 2147483647.0 ? INT32_MAX : v <= -2147483648.0 ? INT32_MIN : (int32_t)v;
    }
}
