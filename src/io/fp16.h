/*
 * fp16.h — IEEE-754 binary16 and bfloat16 conversions, portable, round-to-nearest-even.
 * Reference implementation: bit manipulation only, no _Float16 (clang 14 on x86-64 lacks it).
 */
#ifndef SDC_FP16_H
#define SDC_FP16_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

uint16_t sdc_f32_to_f16(float f);  /* RNE; overflow -> ±Inf; NaN stays NaN (quiet) */
float sdc_f16_to_f32(uint16_t h);  /* exact */
float sdc_bf16_to_f32(uint16_t b); /* exact */
uint16_t sdc_f32_to_bf16(float f); /* RNE */

/* Bulk forms over unaligned little-endian byte buffers (n elements). */
void sdc_f32_to_f16_n(const uint8_t *src, uint8_t *dst, size_t n);
void sdc_f16_to_f32_n(const uint8_t *src, uint8_t *dst, size_t n);
void sdc_bf16_to_f32_n(const uint8_t *src, uint8_t *dst, size_t n);
void sdc_bf16_to_f16_n(const uint8_t *src, uint8_t *dst, size_t n);

/* Whether a binary16 pattern is NaN or ±Inf (all-ones exponent). Inline so that loops counting
   them still vectorise. */
static inline bool sdc_f16_is_nonfinite(uint16_t h) { return (h & 0x7c00) == 0x7c00; }

#endif
