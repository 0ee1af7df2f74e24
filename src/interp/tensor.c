/* tensor.c — tensors, fp16 rounding and decoding of stored constants (dtypes: src/dtype.c). */
#include <math.h>

#include <pthread.h>

#include "interp/interp.h"

#include "io/fp16.h"
#include "io/mapfile.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SDC_X86 1
#endif

/* Upper bound on one tensor's elements (2^36 floats = 256 GiB): larger is malformed. */
#define MAX_ELEMS ((size_t)1 << 36)

bool sdc_it_numel(int rank, const int64_t *shape, size_t *n) {
    uint64_t k = 1;
    if (rank < 0 || rank > SDC_MAX_RANK) return false;
    for (int i = 0; i < rank; i++) {
        if (shape[i] < 0 || !sdc_mul_u64(k, (uint64_t)shape[i], &k)) return false;
    }
    if (k > MAX_ELEMS) return false;
    *n = (size_t)k;
    return true;
}

/* ---------------------------------------------------------------- large buffers

   Activations of a UNet are hundreds of MB each and come back in the same sizes op after
   op. Fresh large mallocs are fresh mmaps whose every page the kernel faults in and zeroes
   (a third of a UNet's run time when measured), so freed large buffers are kept in a small
   cache, bounded in count and bytes, reused for requests that fit within 2x, and released
   by sdc_ibuf_trim() at the end of each prediction. From 64 kB: a text encoder's [77, 768]
   float32 activations (236 kB) went to malloc, which gave them fresh pages op after op (the
   heap trimmed what they freed), and the products writing them took 7-8% longer. */

#define IBUF_MIN ((size_t)64 << 10)
#define IBUF_SLOTS 32
#define IBUF_MAX_BYTES ((size_t)256 << 20)

static struct {
    void *p;
    size_t cap;
} ibuf_cache[IBUF_SLOTS]; /* oldest first */
static int ibuf_n;
static size_t ibuf_bytes;
static pthread_mutex_t ibuf_mu = PTHREAD_MUTEX_INITIALIZER;

/* Removes entry i keeping the order; under ibuf_mu. */
static void ibuf_remove(int i) {
    ibuf_bytes -= ibuf_cache[i].cap;
    memmove(&ibuf_cache[i], &ibuf_cache[i + 1], sizeof ibuf_cache[0] * (size_t)(ibuf_n - i - 1));
    ibuf_n--;
}

void *sdc_ibuf_alloc(size_t bytes, size_t *cap) {
    if (bytes >= IBUF_MIN) {
        pthread_mutex_lock(&ibuf_mu);
        int best = -1;
        for (int i = 0; i < ibuf_n; i++)
            if (ibuf_cache[i].cap >= bytes && ibuf_cache[i].cap / 2 <= bytes &&
                (best < 0 || ibuf_cache[i].cap < ibuf_cache[best].cap))
                best = i;
        if (best >= 0) {
            void *p = ibuf_cache[best].p;
            *cap = ibuf_cache[best].cap;
            ibuf_remove(best);
            pthread_mutex_unlock(&ibuf_mu);
            return p;
        }
        pthread_mutex_unlock(&ibuf_mu);
    }
    *cap = bytes;
    return sdc_malloc(bytes);
}

/* A freed buffer goes into the cache, making room by releasing the oldest ones: what was freed
   last is what the next ops ask for again (the VAE's 128-256 MB activations at 512x512 came
   back to fresh pages when the cache, full of older sizes, turned them away). */
void sdc_ibuf_free(void *p, size_t cap) {
    if (!p) return;
    void *evicted[IBUF_SLOTS];
    int n_evicted = 0;
    if (cap >= IBUF_MIN && cap <= IBUF_MAX_BYTES) {
        pthread_mutex_lock(&ibuf_mu);
        while (ibuf_n == IBUF_SLOTS || ibuf_bytes + cap > IBUF_MAX_BYTES) {
            evicted[n_evicted++] = ibuf_cache[0].p;
            ibuf_remove(0);
        }
        ibuf_cache[ibuf_n].p = p;
        ibuf_cache[ibuf_n].cap = cap;
        ibuf_n++;
        ibuf_bytes += cap;
        p = NULL;
        pthread_mutex_unlock(&ibuf_mu);
    }
    for (int i = 0; i < n_evicted; i++) sdc_free(evicted[i]);
    sdc_free(p);
}

void sdc_ibuf_trim(void) {
    pthread_mutex_lock(&ibuf_mu);
    for (int i = 0; i < ibuf_n; i++) sdc_free(ibuf_cache[i].p);
    ibuf_n = 0;
    ibuf_bytes = 0;
    pthread_mutex_unlock(&ibuf_mu);
}

/* A tensor header of this type, without data; NULL for a bad shape or out of memory. */
static itensor *it_header(int dtype, int rank, const int64_t *shape) {
    size_t n;
    if (!sdc_it_numel(rank, shape, &n)) return NULL;
    itensor *t = sdc_calloc(1, sizeof *t);
    if (!t) return NULL;
    t->dtype = dtype;
    t->rank = rank;
    for (int i = 0; i < rank; i++) t->shape[i] = shape[i];
    t->n = n;
    return t;
}

itensor *sdc_it_new(int dtype, int rank, const int64_t *shape) {
    itensor *t = dtype == MT_STRING ? NULL : it_header(dtype, rank, shape);
    if (!t) return NULL;
    t->p = sdc_ibuf_alloc(t->n ? t->n * 4 : 4, &t->cap);
    if (!t->p) {
        sdc_free(t);
        return NULL;
    }
    return t;
}

itensor *sdc_it_view(int dtype, int rank, const int64_t *shape, void *data) {
    itensor *t = it_header(dtype, rank, shape);
    if (!t) return NULL;
    t->p = data;
    t->borrowed = true;
    return t;
}

void sdc_it_free(itensor *t) {
    if (!t) return;
    if (!t->borrowed) sdc_ibuf_free(t->p, t->cap);
    sdc_free(t);
}

/* ---------------------------------------------------------------- fp16 */

#ifdef SDC_X86
/* Values already fp16 (the copies of shape ops, say) are left unwritten: equal as floats
   means equal bits here (rounding keeps a zero's sign), and a NaN compares unequal, so it is
   written as before; memory that is only read need not be written back. */
__attribute__((target("avx,f16c"))) static void round_f16_f16c(float *x, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256 w = _mm256_cvtph_ps(h);
        if (_mm256_movemask_ps(_mm256_cmp_ps(v, w, _CMP_NEQ_UQ))) _mm256_storeu_ps(x + i, w);
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

/* AVX2 and FMA, asked once. Every x86-64 processor with AVX2 also has F16C (Intel from Haswell,
   AMD from Excavator), which clang cannot ask __builtin_cpu_supports about: the F16C paths
   below take AVX2 as their test. */
bool sdc_cpu_avx2(void) {
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return cached;
}
#endif

SDC_VECTORISE static void round_f16_chunk(void *ctx, size_t b, size_t e) {
    float *x = ctx;
#ifdef SDC_X86
    if (sdc_cpu_avx2()) {
        round_f16_f16c(x + b, e - b);
        return;
    }
#endif
    for (size_t i = b; i < e; i++) x[i] = sdc_f16_to_f32(sdc_f32_to_f16(x[i]));
}

void sdc_round_f16(ipool *p, float *x, size_t n) {
    if (n < 65536 || !p) round_f16_chunk(x, 0, n);
    else sdc_ipool_for(p, n, 16384, round_f16_chunk, x);
}

typedef struct {
    const uint8_t *src;
    float *dst;
} expand_ctx;

static void expand_chunk(void *ctx, size_t b, size_t e) {
    expand_ctx *c = ctx;
#ifdef SDC_X86
    if (sdc_cpu_avx2()) {
        f16_expand_f16c(c->src + 2 * b, c->dst + b, e - b);
        return;
    }
#endif
    for (size_t i = b; i < e; i++) c->dst[i] = sdc_f16_to_f32((uint16_t)(c->src[2 * i] | c->src[2 * i + 1] << 8));
}

void sdc_f16_expand(ipool *p, const uint8_t *src, float *dst, size_t n) {
    expand_ctx c = {src, dst};
    if (n < 65536 || !p) expand_chunk(&c, 0, n);
    else sdc_ipool_for(p, n, 16384, expand_chunk, &c);
}

/* ---------------------------------------------------------------- stored constants */

static uint64_t rd_le(const uint8_t *p, int bytes) {
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* Element i of a packed sub-byte array, LSB first (reference/coreml-format.md §4.4). */
uint32_t sdc_it_bits_at(const uint8_t *p, size_t i, int bits) {
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
    case RAW_BITS: return sdc_it_bits_at(p, i, s->bits);
    case RAW_SBITS: {
        uint32_t v = sdc_it_bits_at(p, i, s->bits);
        if (v & (1u << (s->bits - 1))) return (double)((int32_t)v - (int32_t)(1u << s->bits));
        return v;
    }
    }
    return 0;
}

size_t sdc_csrc_bytes(const csrc *s) {
    return s->bits >= 8 ? s->n * (size_t)(s->bits / 8) : (s->n * (size_t)s->bits + 7) / 8;
}

void sdc_csrc_drop(const csrc *s, struct sdc_drop_batch *later) {
    if (s->kind != CS_RAW || !s->mapped) return;
    if (later) sdc_drop_batch_add(later, s->ptr, sdc_csrc_bytes(s));
    else sdc_map_drop(s->ptr, sdc_csrc_bytes(s));
}

void sdc_csrc_read_f(const csrc *s, size_t first, size_t count, float *dst) {
    if (s->fmt == RAW_F32) {
        memcpy(dst, s->ptr + 4 * first, 4 * count);
        return;
    }
    if (s->fmt == RAW_F16) {
        sdc_f16_expand(NULL, s->ptr + 2 * first, dst, count);
        return;
    }
    for (size_t i = 0; i < count; i++) dst[i] = (float)raw_get(s, first + i);
}

void sdc_csrc_read_i(const csrc *s, size_t first, size_t count, int32_t *dst) {
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

/* ---------------------------------------------------------------- sums in double */

SDC_VECTORISE void sdc_sum8_add(double *lanes, const float *x, size_t n8, bool square) {
    if (square)
        for (size_t j = 0; j + 8 <= n8; j += 8)
            for (int l = 0; l < 8; l++) lanes[l] += (double)x[j + l] * (double)x[j + l];
    else
        for (size_t j = 0; j + 8 <= n8; j += 8)
            for (int l = 0; l < 8; l++) lanes[l] += (double)x[j + l];
}

double sdc_sum8_end(const double *lanes, const float *tail, size_t n_tail, bool square) {
    double t = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    for (size_t j = 0; j < n_tail; j++) t += square ? (double)tail[j] * (double)tail[j] : (double)tail[j];
    return t;
}

double sdc_sum_f64(const float *x, size_t n, bool square) {
    double lanes[8] = {0};
    size_t n8 = n - n % 8;
    sdc_sum8_add(lanes, x, n8, square);
    return sdc_sum8_end(lanes, x + n8, n - n8, square);
}
