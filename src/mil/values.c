/* values.c — a const's value read a chunk at a time, with its weight's cast and scale (see
   graph.h) and its tensor's addend (a merged LoRA, source/lora.h). The writer streams dense
   consts through it and passes' transforms read what they transform, so both see the same
   numbers. */
#include <math.h>

#include "io/fp16.h"
#include "mil/graph.h"

/* Every weight passes through these counts, so they are written to vectorise: -O2's "very
   cheap" cost model alone leaves such loops scalar (see SDC_VEC_OPT in interp/interp.h). */
#if defined(__GNUC__) && !defined(__clang__)
#define VEC_COUNT __attribute__((optimize("vect-cost-model=dynamic", "no-trapping-math")))
#else
#define VEC_COUNT
#endif

VEC_COUNT static uint64_t count_f16_nonfinite(const uint16_t *h, size_t n) {
    uint64_t c = 0;
    for (size_t i = 0; i < n; i++) c += sdc_f16_is_nonfinite(h[i]);
    return c;
}

/* Exponent all ones: Inf or NaN, read from the bits so that it vectorises. */
VEC_COUNT static uint64_t count_f32_nonfinite(const float *x, size_t n) {
    const uint32_t *u = (const uint32_t *)(const void *)x;
    uint64_t c = 0;
    for (size_t i = 0; i < n; i++) c += (u[i] & 0x7f800000u) == 0x7f800000u;
    return c;
}

/* Converts elements [first, first + n) of a source tensor to `to`, scaled, and counts faults. */
static void convert_weight(const sdc_tensor *src, uint64_t first, size_t n, sdc_dtype to, float scale, uint8_t *out,
                           float *tmp, mil_value_faults *faults) {
    const uint8_t *p = src->data + first * sdc_dtype_size(src->dtype);
    if (src->dtype == to && scale == 1.0f && to == SDC_DT_F16 && !src->addend) {
        memcpy(out, p, n * 2);
        faults->nonfinite += count_f16_nonfinite((const uint16_t *)(const void *)out, n); /* out: 16-byte aligned */
        return;
    }
    switch (src->dtype) {
    case SDC_DT_F32: memcpy(tmp, p, n * 4); break;
    case SDC_DT_F16: sdc_f16_to_f32_n(p, (uint8_t *)tmp, n); break;
    case SDC_DT_BF16: sdc_bf16_to_f32_n(p, (uint8_t *)tmp, n); break;
    default:
        for (size_t i = 0; i < n; i++) tmp[i] = sdc_tensor_get_f32(src, first + i);
    }
    if (src->addend) src->addend->add(src->addend, first, n, tmp); /* before the scale: (W + ΔW)·scale */
    if (scale != 1.0f)
        for (size_t i = 0; i < n; i++) tmp[i] *= scale;
    faults->nonfinite += count_f32_nonfinite(tmp, n);
    if (to == SDC_DT_F32) {
        memcpy(out, tmp, n * 4);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint16_t h = sdc_f32_to_f16(tmp[i]);
        memcpy(out + 2 * i, &h, 2);
        faults->overflows += sdc_f16_is_nonfinite(h) && isfinite(tmp[i]);
    }
}

const void *sdc_mil_const_values(const mil_var *v, uint64_t first, size_t n, void *out, float *tmp,
                                 mil_value_faults *faults) {
    SDC_ASSERT(v->const_kind == MIL_CONST_WEIGHT || v->const_kind == MIL_CONST_BYTES);
    if (v->const_kind == MIL_CONST_BYTES) return (const uint8_t *)v->bytes + first * sdc_dtype_size(v->type.dtype);
    const mil_weight *w = &v->weight;
    convert_weight(w->src, w->first + first, n, v->type.dtype, w->scale, out, tmp, faults);
    return out;
}

sdc_status sdc_mil_value_faults_check(const mil_var *v, const mil_value_faults *faults, sdc_err *err) {
    if (!faults->overflows && !faults->nonfinite) return SDC_OK;
    SDC_ASSERT(v->const_kind == MIL_CONST_WEIGHT);
    const char *file = sdc_st_path(v->weight.src->file), *name = v->weight.src->name;
    if (faults->nonfinite)
        return sdc_fail(err, SDC_E_FORMAT, "%s: tensor '%s': %llu values are NaN or infinite; the weights are damaged",
                        file, name, (unsigned long long)faults->nonfinite);
    return sdc_fail(err, SDC_E_FORMAT,
                    "%s: tensor '%s': %llu values exceed the float16 range (65504); "
                    "convert with --compute-precision FLOAT32",
                    file, name, (unsigned long long)faults->overflows);
}
