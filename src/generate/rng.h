/*
 * rng.h — NumPy's legacy RandomState: the anchor's pipeline makes its initial latents with
 * np.random.seed(seed); np.random.randn(*shape), so a seed gives the anchor's latents only
 * through this exact generator.
 *
 * RandomState(seed) with an integer seed in [0, 2**32 - 1] seeds MT19937 by Matsumoto and
 * Nishimura's init_genrand(seed) (numpy refuses other integers; the caller checks the range).
 * randn draws legacy_gauss: the polar Box–Muller method on pairs of 53-bit doubles in [0, 1)
 * (random_double: (a >> 5) * 2^26 + (b >> 6), / 2^53), which yields two values and caches the
 * second for the next call. Values are doubles; the caller casts (the anchor casts to float16
 * before scaling by the scheduler's init_noise_sigma).
 */
#ifndef SDC_GENERATE_RNG_H
#define SDC_GENERATE_RNG_H

#include "common.h"

typedef struct sdc_rng {
    uint32_t mt[624];
    int pos;
    bool has_gauss;
    double gauss;
} sdc_rng;

/* As np.random.RandomState(seed) (seed < 2**32). */
void sdc_rng_seed(sdc_rng *r, uint32_t seed);
/* The next 32-bit output of MT19937. */
uint32_t sdc_rng_u32(sdc_rng *r);
/* As RandomState.random_sample(): a double in [0, 1) from two outputs. */
double sdc_rng_double(sdc_rng *r);
/* As RandomState.standard_normal() for one value (legacy_gauss). */
double sdc_rng_gauss(sdc_rng *r);
/* n values of randn, in C order, cast to float32. */
void sdc_rng_randn(sdc_rng *r, float *out, size_t n);
/* n values of randn as doubles. */
void sdc_rng_randn_f64(sdc_rng *r, double *out, size_t n);

#endif
