/* values.c — a const's value read a chunk at a time, with its weight's cast and scale (see
   graph.h). The writer streams dense consts through it and passes' transforms read what they
   transform, so both see the same numbers. */
#include "io/fp16.h"
#include "mil/graph.h"

/* Converts elements [first, first + n) of a source tensor to `to`, scaled. Counts fp16
   overflows (finite source values that became ±Inf). */
static void convert_weight(const sdc_tensor *src, uint64_t first, size_t n, sdc_dtype to, float scale, uint8_t *out,
                           float *tmp, uint64_t *overflows) {
    const uint8_t *p = src->data + first * sdc_dtype_size(src->dtype);
    if (src->dtype == to && scale == 1.0f) {
        memcpy(out, p, n * sdc_dtype_size(to));
        return;
    }
    switch (src->dtype) {
    case SDC_DT_F32: memcpy(tmp, p, n * 4); break;
    case SDC_DT_F16: sdc_f16_to_f32_n(p, (uint8_t *)tmp, n); break;
    case SDC_DT_BF16: sdc_bf16_to_f32_n(p, (uint8_t *)tmp, n); break;
    default:
        for (size_t i = 0; i < n; i++) tmp[i] = sdc_tensor_get_f32(src, first + i);
    }
    if (scale != 1.0f)
        for (size_t i = 0; i < n; i++) tmp[i] *= scale;
    if (to == SDC_DT_F32) {
        memcpy(out, tmp, n * 4);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint16_t h = sdc_f32_to_f16(tmp[i]);
        memcpy(out + 2 * i, &h, 2);
        if ((h & 0x7fff) == 0x7c00 && tmp[i] == tmp[i] && tmp[i] != tmp[i] * 2.0f) (*overflows)++;
    }
}

const void *sdc_mil_const_values(const mil_var *v, uint64_t first, size_t n, void *out, float *tmp,
                                 uint64_t *overflows) {
    SDC_ASSERT(v->const_kind == MIL_CONST_WEIGHT || v->const_kind == MIL_CONST_BYTES);
    if (v->const_kind == MIL_CONST_BYTES) return (const uint8_t *)v->bytes + first * sdc_dtype_size(v->type.dtype);
    const mil_weight *w = &v->weight;
    convert_weight(w->src, w->first + first, n, v->type.dtype, w->scale, out, tmp, overflows);
    return out;
}

sdc_status sdc_mil_overflow_error(const mil_var *v, uint64_t overflows, sdc_err *err) {
    SDC_ASSERT(v->const_kind == MIL_CONST_WEIGHT);
    return sdc_fail(err, SDC_E_FORMAT,
                    "%s: tensor '%s': %llu values exceed the float16 range (65504); "
                    "convert with --compute-precision FLOAT32",
                    sdc_st_path(v->weight.src->file), v->weight.src->name, (unsigned long long)overflows);
}
