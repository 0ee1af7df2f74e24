/*
 * test_fp16.c — the bit-level converters against hand-picked cases and against a slow
 * reference that works in double arithmetic (decode with ldexp, pick the nearer neighbour),
 * so that it shares no code or method with src/io/fp16.c.
 */
#include "check.h"
#include "io/fp16.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

static uint32_t bits_of(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float float_of(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static int f16_is_nan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x03ff) != 0; }
static int bf16_is_nan(uint16_t b) { return (b & 0x7f80) == 0x7f80 && (b & 0x007f) != 0; }

/* ---- reference ------------------------------------------------------------------------ */

/* Magnitude of a positive half pattern 0..0x7c00, with 0x7c00 standing for 2^16: rounding
   treats Inf as the next step above 65504, as IEEE 754's unbounded-exponent rule does. */
static double ref_f16_magnitude(uint16_t h) {
    int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0) return ldexp(m, -24);
    return ldexp(1024 + m, e - 25);
}

static double ref_f16_value(uint16_t h) {
    double sign = (h & 0x8000) ? -1.0 : 1.0;
    if ((h & 0x7fff) == 0x7c00) return sign * INFINITY;
    return sign * ref_f16_magnitude(h & 0x7fff);
}

/* Nearest half by search: the largest pattern whose value is <= |f|, then the nearer of it
   and the next one, ties to the even pattern. Differences are exact in double. */
static uint16_t ref_f32_to_f16(float f) {
    if (isnan(f)) return 0x7e00;
    uint16_t sign = signbit(f) ? 0x8000 : 0;
    double a = fabs((double)f);
    if (a >= 65536.0) return sign | 0x7c00;
    unsigned lo = 0, hi = 0x7c00; /* invariant: value(lo) <= a < value(hi) */
    while (hi - lo > 1) {
        unsigned mid = (lo + hi) / 2;
        if (ref_f16_magnitude((uint16_t)mid) <= a) lo = mid;
        else hi = mid;
    }
    double below = a - ref_f16_magnitude((uint16_t)lo), above = ref_f16_magnitude((uint16_t)hi) - a;
    unsigned pick = below < above ? lo : above < below ? hi : (lo % 2 == 0 ? lo : hi);
    return (uint16_t)(sign | pick);
}

/* bf16 by truncation and comparison with the next pattern up, in double. */
static uint16_t ref_f32_to_bf16(float f) {
    if (isnan(f)) return 0x7fc0;
    uint32_t u = bits_of(f);
    uint32_t sign = u & 0x80000000u, mag = u & 0x7fffffffu;
    uint32_t lo = mag & 0xffff0000u, hi = lo + 0x10000u;
    if (lo == mag) return (uint16_t)((sign | lo) >> 16);
    double a = fabs((double)f);
    double vlo = (double)float_of(lo);
    double vhi = hi == 0x7f800000u ? ldexp(1.0, 128) : (double)float_of(hi);
    double below = a - vlo, above = vhi - a;
    uint32_t pick = below < above ? lo : above < below ? hi : ((lo >> 16) % 2 == 0 ? lo : hi);
    return (uint16_t)((sign | pick) >> 16);
}

static double ref_bf16_value(uint16_t b) {
    int e = (b >> 7) & 0xff, m = b & 0x7f;
    double sign = (b & 0x8000) ? -1.0 : 1.0;
    if (e == 0xff) return m ? NAN : sign * INFINITY;
    if (e == 0) return sign * ldexp(m, -133);
    return sign * ldexp(128 + m, e - 134);
}

/* ---- tests ---------------------------------------------------------------------------- */

static void test_all_halves(void) {
    int bad_roundtrip = 0, bad_value = 0, bad_nan = 0;
    for (uint32_t i = 0; i < 65536; i++) {
        uint16_t h = (uint16_t)i;
        float f = sdc_f16_to_f32(h);
        uint16_t back = sdc_f32_to_f16(f);
        if (f16_is_nan(h)) {
            if (!isnan(f) || !f16_is_nan(back)) bad_nan++;
            continue;
        }
        if (back != h) bad_roundtrip++;
        double want = ref_f16_value(h);
        if ((double)f != want || !signbit(f) != !signbit(want)) bad_value++;
    }
    CHECK(bad_roundtrip == 0);
    CHECK(bad_value == 0);
    CHECK(bad_nan == 0);
}

static void test_half_cases(void) {
    CHECK(sdc_f32_to_f16(1.0f) == 0x3c00);
    CHECK(sdc_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00);        /* tie, rounds to even 1.0 */
    CHECK(sdc_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02);    /* tie, rounds up to 1+2^-9 */
    CHECK(sdc_f32_to_f16(1.0f + 0x1p-11f + 0x1p-23f) == 0x3c01); /* above the tie */
    CHECK(sdc_f32_to_f16(65504.0f) == 0x7bff);
    CHECK(sdc_f32_to_f16(65519.0f) == 0x7bff);
    CHECK(sdc_f32_to_f16(65519.996f) == 0x7bff);
    CHECK(sdc_f32_to_f16(65520.0f) == 0x7c00); /* tie between 65504 and "65536": Inf */
    CHECK(sdc_f32_to_f16(-65520.0f) == 0xfc00);
    CHECK(sdc_f32_to_f16(1e10f) == 0x7c00);
    CHECK(sdc_f32_to_f16(INFINITY) == 0x7c00);
    CHECK(sdc_f32_to_f16(-INFINITY) == 0xfc00);
    CHECK(f16_is_nan(sdc_f32_to_f16(NAN)));
    CHECK(f16_is_nan(sdc_f32_to_f16(float_of(0x7f800001u)))); /* signalling payload survives */
    CHECK(f16_is_nan(sdc_f32_to_f16(float_of(0xff800001u))));
    CHECK((sdc_f32_to_f16(NAN) & 0x0200) != 0); /* quiet */
    CHECK(sdc_f32_to_f16(0.0f) == 0x0000);
    CHECK(sdc_f32_to_f16(-0.0f) == 0x8000);
    CHECK(signbit(sdc_f16_to_f32(0x8000)) && sdc_f16_to_f32(0x8000) == 0.0f);
    /* subnormals: unit 2^-24 */
    CHECK(sdc_f32_to_f16(0x1p-24f) == 0x0001);
    CHECK(sdc_f16_to_f32(0x0001) == 0x1p-24f);
    CHECK(sdc_f32_to_f16(0x1p-25f) == 0x0000); /* tie, rounds to even zero */
    CHECK(sdc_f32_to_f16(-0x1p-25f) == 0x8000);
    CHECK(sdc_f32_to_f16(0x1.000002p-25f) == 0x0001); /* just above the tie */
    CHECK(sdc_f32_to_f16(0x1.8p-24f) == 0x0002);      /* 1.5 units: tie, to even 2 */
    CHECK(sdc_f32_to_f16(0x1.4p-23f) == 0x0002);      /* 2.5 units: tie, to even 2 */
    CHECK(sdc_f32_to_f16(0x1.cp-23f) == 0x0004);      /* 3.5 units: tie, to even 4 */
    CHECK(sdc_f32_to_f16(0x1p-14f - 0x1p-25f) == 0x0400); /* tie at the top: to normal */
    CHECK(sdc_f32_to_f16(0x1p-14f - 0x1p-24f) == 0x03ff); /* largest subnormal */
    CHECK(sdc_f16_to_f32(0x03ff) == 0x1p-14f - 0x1p-24f);
    CHECK(sdc_f32_to_f16(0x1p-14f) == 0x0400);
    CHECK(sdc_f32_to_f16(1e-30f) == 0x0000);
    CHECK(sdc_f32_to_f16(float_of(1)) == 0x0000); /* smallest f32 subnormal */
    CHECK(sdc_f16_to_f32(0x7bff) == 65504.0f);
    CHECK(isinf(sdc_f16_to_f32(0x7c00)));
    CHECK(sdc_f32_to_f16(0.1f) == 0x2e66);
    CHECK(sdc_f32_to_f16(-2.0f) == 0xc000);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rng(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545f4914f6cdd1dull) >> 32);
}

/* Random floats: half of them any bit pattern, half with exponents near the half range
   (including its subnormals and overflow edge), where the rounding logic lives. */
static float random_float(uint32_t i) {
    uint32_t r = rng();
    if (i % 2 == 0) return float_of(r);
    uint32_t exp = 100 + rng() % 46; /* 2^-27 .. 2^18 */
    return float_of((r & 0x807fffffu) | (exp << 23));
}

static void test_random_against_reference(void) {
    int bad_f16 = 0, bad_bf16 = 0;
    const uint32_t n = 4u * 1000u * 1000u;
    for (uint32_t i = 0; i < n; i++) {
        float f = random_float(i);
        uint16_t got = sdc_f32_to_f16(f), want = ref_f32_to_f16(f);
        if (isnan(f) ? !f16_is_nan(got) : got != want) {
            if (bad_f16++ < 5)
                fprintf(stderr, "    f16(%a = 0x%08x): got 0x%04x want 0x%04x\n", f, bits_of(f),
                        got, want);
        }
        uint16_t gb = sdc_f32_to_bf16(f), wb = ref_f32_to_bf16(f);
        if (isnan(f) ? !bf16_is_nan(gb) : gb != wb) {
            if (bad_bf16++ < 5)
                fprintf(stderr, "    bf16(%a): got 0x%04x want 0x%04x\n", f, gb, wb);
        }
    }
    CHECK(bad_f16 == 0);
    CHECK(bad_bf16 == 0);
}

static void test_bf16(void) {
    int bad_value = 0, bad_roundtrip = 0;
    for (uint32_t i = 0; i < 65536; i++) {
        uint16_t b = (uint16_t)i;
        float f = sdc_bf16_to_f32(b);
        if (bf16_is_nan(b)) {
            if (!isnan(f) || !bf16_is_nan(sdc_f32_to_bf16(f))) bad_roundtrip++;
            continue;
        }
        double want = ref_bf16_value(b);
        if ((double)f != want || !signbit(f) != !signbit(want)) bad_value++;
        if (sdc_f32_to_bf16(f) != b) bad_roundtrip++;
    }
    CHECK(bad_value == 0);
    CHECK(bad_roundtrip == 0);
    CHECK(sdc_f32_to_bf16(1.0f) == 0x3f80);
    CHECK(sdc_f32_to_bf16(float_of(0x3f808000u)) == 0x3f80); /* tie, to even */
    CHECK(sdc_f32_to_bf16(float_of(0x3f818000u)) == 0x3f82); /* tie, up to even */
    CHECK(sdc_f32_to_bf16(float_of(0x3f808001u)) == 0x3f81);
    CHECK(sdc_f32_to_bf16(float_of(0x7f7fffffu)) == 0x7f80); /* FLT_MAX rounds to Inf */
    CHECK(sdc_f32_to_bf16(-0.0f) == 0x8000);
    CHECK(bf16_is_nan(sdc_f32_to_bf16(float_of(0x7f800001u)))); /* payload below bf16 bits */
}

static void test_bulk_unaligned(void) {
    const float values[] = {0.0f, -1.5f, 65504.0f, 70000.0f, 0x1p-24f, 3.14159f, -0.0f, 1e-3f};
    enum { N = sizeof values / sizeof values[0] };
    uint8_t src[1 + 4 * N], half[1 + 2 * N], back[1 + 4 * N];
    for (int i = 0; i < N; i++) { /* little-endian, starting at an odd address */
        uint32_t u = bits_of(values[i]);
        for (int k = 0; k < 4; k++) src[1 + 4 * i + k] = (uint8_t)(u >> (8 * k));
    }
    sdc_f32_to_f16_n(src + 1, half + 1, N);
    sdc_f16_to_f32_n(half + 1, back + 1, N);
    int bad = 0;
    for (int i = 0; i < N; i++) {
        uint16_t h = (uint16_t)(half[1 + 2 * i] | (half[2 + 2 * i] << 8));
        uint32_t u = 0;
        for (int k = 3; k >= 0; k--) u = (u << 8) | back[1 + 4 * i + k];
        if (h != sdc_f32_to_f16(values[i])) bad++;
        if (u != bits_of(sdc_f16_to_f32(h))) bad++;
    }
    CHECK(bad == 0);

    /* bf16 -> f32 and bf16 -> f16 (one rounding; 65536 in bf16 overflows half) */
    const uint16_t bf[] = {0x3f80, 0xc040, 0x4780, 0x477f, 0x0001, 0x7fc0};
    enum { M = sizeof bf / sizeof bf[0] };
    uint8_t bsrc[1 + 2 * M], f32[1 + 4 * M], f16[1 + 2 * M];
    for (int i = 0; i < M; i++) {
        bsrc[1 + 2 * i] = (uint8_t)bf[i];
        bsrc[2 + 2 * i] = (uint8_t)(bf[i] >> 8);
    }
    sdc_bf16_to_f32_n(bsrc + 1, f32 + 1, M);
    sdc_bf16_to_f16_n(bsrc + 1, f16 + 1, M);
    bad = 0;
    for (int i = 0; i < M; i++) {
        uint32_t u = 0;
        for (int k = 3; k >= 0; k--) u = (u << 8) | f32[1 + 4 * i + k];
        uint16_t h = (uint16_t)(f16[1 + 2 * i] | (f16[2 + 2 * i] << 8));
        if (u != (uint32_t)bf[i] << 16) bad++;
        if (i != M - 1 && h != sdc_f32_to_f16(float_of((uint32_t)bf[i] << 16))) bad++;
    }
    CHECK(bad == 0);
    CHECK((f16[1 + 2 * 2] | (f16[2 + 2 * 2] << 8)) == 0x7c00); /* 65536 -> Inf */
    CHECK((f16[1 + 2 * 3] | (f16[2 + 2 * 3] << 8)) == 0x7bf8); /* 65280 is exact */
    CHECK((f16[1 + 2 * 4] | (f16[2 + 2 * 4] << 8)) == 0x0000); /* tiny -> 0 */
    CHECK(f16_is_nan((uint16_t)(f16[1 + 2 * 5] | (f16[2 + 2 * 5] << 8))));
}

/* NaN or ±Inf, by the reference's own NaN test and the two infinities: every pattern. */
static void test_nonfinite(void) {
    int bad = 0;
    for (uint32_t h = 0; h <= 0xffff; h++)
        bad += sdc_f16_is_nonfinite((uint16_t)h) != (f16_is_nan((uint16_t)h) || h == 0x7c00 || h == 0xfc00);
    CHECK(bad == 0);
}

int main(void) {
    test_all_halves();
    test_nonfinite();
    test_half_cases();
    test_bf16();
    test_bulk_unaligned();
    test_random_against_reference();
    return CHECK_DONE("test_fp16");
}
