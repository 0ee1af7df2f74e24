/*
 * fp16.c — portable binary16 / bfloat16 conversions by bit manipulation.
 *
 * This is the reference path: it must give the same bits on every compiler and CPU, so it
 * uses no _Float16, no F16C and no floating-point arithmetic, only integer operations on the
 * IEEE-754 encodings. Rounding is to nearest, ties to even, as the hardware converters do.
 */
#include "io/fp16.h"

#include <string.h>

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Shifts m right by `shift` (1..31) bits, rounding to nearest with ties to even. */
static uint32_t shift_right_rne(uint32_t m, unsigned shift) {
    uint32_t kept = m >> shift;
    uint32_t rest = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (rest > half || (rest == half && (kept & 1u))) kept++;
    return kept;
}

uint16_t sdc_f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t a = x & 0x7fffffffu;

    if (a > 0x7f800000u) /* NaN: keep the top payload bits, force the quiet bit */
        return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x03ffu));
    if (a >= 0x477ff000u) /* >= 65520 = 65504 + half an ulp: ties go to the even Inf */
        return (uint16_t)(sign | 0x7c00u);
    if (a >= 0x38800000u) {
        /* Normal half (>= 2^-14). Rebias the exponent (127 -> 15) and round the 23-bit
           mantissa to 10 bits; a carry out of the mantissa correctly bumps the exponent. */
        return (uint16_t)(sign | shift_right_rne(a - 0x38000000u, 13));
    }
    if (a <= 0x33000000u) /* <= 2^-25: half of the smallest subnormal, ties to even zero */
        return sign;
    /* Subnormal half: value = m * 2^(e-150) with the implicit bit; the unit is 2^-24, so
       the result is m >> (126 - e), with 126 - e in 14..24. Rounding up into 0x400 yields
       the smallest normal, which is the right encoding. */
    uint32_t e = a >> 23;
    uint32_t m = (a & 0x007fffffu) | 0x00800000u;
    return (uint16_t)(sign | shift_right_rne(m, 126u - e));
}

float sdc_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu;
    uint32_t m = h & 0x03ffu;

    if (e == 0x1fu) /* Inf or NaN: the payload moves to the top of the f32 mantissa */
        return f32_from_bits(sign | 0x7f800000u | (m << 13));
    if (e != 0) return f32_from_bits(sign | ((e + 112u) << 23) | (m << 13));
    if (m == 0) return f32_from_bits(sign);
    /* Subnormal half m * 2^-24: normalise so the leading 1 becomes the implicit bit. */
    uint32_t exp32 = 113u; /* biased exponent of 2^-14, the subnormal scale */
    while (!(m & 0x0400u)) {
        m <<= 1;
        exp32--;
    }
    return f32_from_bits(sign | (exp32 << 23) | ((m & 0x03ffu) << 13));
}

float sdc_bf16_to_f32(uint16_t b) { return f32_from_bits((uint32_t)b << 16); }

uint16_t sdc_f32_to_bf16(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) /* NaN: truncate the payload, force the quiet bit */
        return (uint16_t)((x >> 16) | 0x0040u);
    /* Adding 0x7fff plus the kept lsb rounds ties to even; a carry can reach the exponent,
       and from the largest finite values it correctly lands on Inf. */
    uint32_t lsb = (x >> 16) & 1u;
    return (uint16_t)((x + 0x7fffu + lsb) >> 16);
}

/* ---- bulk forms over unaligned little-endian buffers -------------------------------- */

static uint16_t load_u16le(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static void store_u16le(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static float load_f32le(const uint8_t *p) {
    uint32_t u = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
                 ((uint32_t)p[3] << 24);
    return f32_from_bits(u);
}

static void store_f32le(uint8_t *p, float f) {
    uint32_t u = f32_bits(f);
    p[0] = (uint8_t)u;
    p[1] = (uint8_t)(u >> 8);
    p[2] = (uint8_t)(u >> 16);
    p[3] = (uint8_t)(u >> 24);
}

void sdc_f32_to_f16_n(const uint8_t *src, uint8_t *dst, size_t n) {
    for (size_t i = 0; i < n; i++)
        store_u16le(dst + 2 * i, sdc_f32_to_f16(load_f32le(src + 4 * i)));
}

void sdc_f16_to_f32_n(const uint8_t *src, uint8_t *dst, size_t n) {
    for (size_t i = 0; i < n; i++)
        store_f32le(dst + 4 * i, sdc_f16_to_f32(load_u16le(src + 2 * i)));
}

void sdc_bf16_to_f32_n(const uint8_t *src, uint8_t *dst, size_t n) {
    for (size_t i = 0; i < n; i++)
        store_f32le(dst + 4 * i, sdc_bf16_to_f32(load_u16le(src + 2 * i)));
}

/* bf16 -> f32 is exact, so going through f32 rounds only once. */
void sdc_bf16_to_f16_n(const uint8_t *src, uint8_t *dst, size_t n) {
    for (size_t i = 0; i < n; i++)
        store_u16le(dst + 2 * i, sdc_f32_to_f16(sdc_bf16_to_f32(load_u16le(src + 2 * i))));
}
