/* rng.c — MT19937 and NumPy's legacy Gaussian sampler (see rng.h). */
#include "generate/rng.h"

#include <math.h>

enum { MT_N = 624, MT_M = 397 };

void sdc_rng_seed(sdc_rng *r, uint32_t seed) {
    /* init_genrand: Knuth's multiplier 1812433253 spreads the seed over the state */
    r->mt[0] = seed;
    for (int i = 1; i < MT_N; i++) r->mt[i] = 1812433253u * (r->mt[i - 1] ^ (r->mt[i - 1] >> 30)) + (uint32_t)i;
    r->pos = MT_N;
    r->has_gauss = false;
    r->gauss = 0;
}

/* The twist: regenerates all 624 words of state at once. */
static void mt_generate(sdc_rng *r) {
    static const uint32_t mag01[2] = {0u, 0x9908b0dfu};
    for (int i = 0; i < MT_N; i++) {
        uint32_t y = (r->mt[i] & 0x80000000u) | (r->mt[(i + 1) % MT_N] & 0x7fffffffu);
        r->mt[i] = r->mt[(i + MT_M) % MT_N] ^ (y >> 1) ^ mag01[y & 1u];
    }
    r->pos = 0;
}

uint32_t sdc_rng_u32(sdc_rng *r) {
    if (r->pos >= MT_N) mt_generate(r);
    uint32_t y = r->mt[r->pos++];
    y ^= y >> 11; /* tempering */
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

double sdc_rng_double(sdc_rng *r) {
    uint32_t a = sdc_rng_u32(r) >> 5, b = sdc_rng_u32(r) >> 6; /* 27 + 26 = 53 bits */
    return (a * 67108864.0 + b) / 9007199254740992.0;
}

double sdc_rng_gauss(sdc_rng *r) {
    if (r->has_gauss) {
        r->has_gauss = false;
        return r->gauss;
    }
    double x1, x2, r2;
    do { /* a point uniform in the unit disc, origin excluded */
        x1 = 2.0 * sdc_rng_double(r) - 1.0;
        x2 = 2.0 * sdc_rng_double(r) - 1.0;
        r2 = x1 * x1 + x2 * x2;
    } while (r2 >= 1.0 || r2 == 0.0);
    double f = sqrt(-2.0 * log(r2) / r2);
    /* numpy returns the second coordinate's value first and keeps the first one's */
    r->gauss = f * x1;
    r->has_gauss = true;
    return f * x2;
}

void sdc_rng_randn(sdc_rng *r, float *out, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = (float)sdc_rng_gauss(r);
}

void sdc_rng_randn_f64(sdc_rng *r, double *out, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = sdc_rng_gauss(r);
}
