/*
 * check.c — --check-output-correctness on any machine: the converted package and a float32
 * reference graph of the same weights (built without the ANE rewrite: ORIGINAL attention,
 * FLOAT32 compute) both run in sdcoreml's interpreter on the same seeded inputs, and every
 * output is compared by the anchor's PSNR (reference a, candidate b):
 *     20·log10((max|b| + 1e-5) / (rmse(a, b) + 1e-10)),  failing below 35 dB.
 * The reference is never written: the interpreter evaluates the in-memory graph, reading its
 * weights from the mapped source files op by op (interp/from_graph.h). One model is in memory
 * at a time. chunk.c checks UNet chunks with the same inputs and the same comparison.
 */
#include <math.h>

#include "convert/convert.h"
#include "interp/from_graph.h"

double sdc_psnr(const float *ref, const float *cand, size_t n) {
    double max_b = 0, se = 0;
    for (size_t i = 0; i < n; i++) {
        double b = cand[i], d = (double)ref[i] - b;
        if (fabs(b) > max_b) max_b = fabs(b);
        se += d * d;
    }
    double rmse = n ? sqrt(se / (double)n) : 0;
    if (isnan(rmse) || isnan(max_b)) return -INFINITY;
    return 20.0 * log10((max_b + 1e-5) / (rmse + 1e-10));
}

/* xorshift64*: the same inputs on every machine, for every run with the same seed */
static uint64_t next_u64(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}
static float uniform01(uint64_t *s) { return (float)(next_u64(s) >> 40) / (float)(1 << 24); }

static float seeded_value(const char *input, const sdc_conv_check_hint *hint, uint64_t *seed) {
    if (!strcmp(input, "input_ids") && hint->vocab_size > 0)
        return (float)(next_u64(seed) % (uint64_t)hint->vocab_size);
    if (!strcmp(input, "timestep")) return hint->timestep;
    return uniform01(seed);
}

sdc_ndarray *sdc_check_seeded_inputs(const sdc_model *m, const sdc_conv_check_hint *hint) {
    int n = sdc_model_n_inputs(m);
    sdc_ndarray *in = sdc_calloc((size_t)n, sizeof *in);
    uint64_t seed = 0x5DC0DE1ull;
    for (int i = 0; in && i < n; i++) {
        const sdc_ndarray *d = sdc_model_input(m, i);
        size_t count = sdc_ndarray_numel(d);
        float *v = sdc_malloc(count * sizeof *v);
        if (!v) {
            sdc_check_inputs_free(in, i);
            return NULL;
        }
        for (size_t k = 0; k < count; k++) v[k] = seeded_value(d->name, hint, &seed);
        in[i] = *d;
        in[i].dtype = SDC_ND_F32;
        in[i].data = v;
    }
    return in;
}

void sdc_check_inputs_free(sdc_ndarray *in, int n) {
    for (int i = 0; in && i < n; i++) sdc_free(in[i].data);
    sdc_free(in);
}

/* NaN or inf in an output (a float16 overflow inside the package, typically) fails the check by
   itself, counted and named: the PSNR of such values says nothing useful. */
static sdc_status check_finite(const sdc_conv_ctx *c, const char *label, const sdc_ndarray *ref,
                               const sdc_ndarray *got, const char *versus) {
    size_t n = sdc_ndarray_numel(got), bad = sdc_ndarray_count_nonfinite(got);
    if (bad)
        return sdc_fail(c->err, SDC_E_CHECK, "--check-output-correctness: %s output '%s': %zu of %zu values are NaN/inf",
                        label, got->name, bad, n);
    if ((bad = sdc_ndarray_count_nonfinite(ref)))
        return sdc_fail(c->err, SDC_E_CHECK,
                        "--check-output-correctness: %s output '%s': %zu of %zu values of the reference (%s) are NaN/inf",
                        label, got->name, bad, n, versus ? versus : "float32");
    return SDC_OK;
}

sdc_status sdc_check_output(const sdc_conv_ctx *c, const char *label, const sdc_ndarray *ref,
                            const sdc_ndarray *got, const char *versus) {
    size_t n = sdc_ndarray_numel(got);
    sdc_status s = check_finite(c, label, ref, got, versus);
    if (s) return s;
    float *a = sdc_ndarray_to_f32(ref), *b = sdc_ndarray_to_f32(got);
    if (!a || !b) {
        s = sdc_fail(c->err, SDC_E_NOMEM, "out of memory");
    } else {
        double p = sdc_psnr(a, b, n);
        sdc_conv_log(c, SDC_LOG_NOTICE, "check %s: output %s: PSNR %.1f dB (minimum %.0f)", label, got->name, p,
                     SDC_CHECK_MIN_PSNR);
        if (versus && !memcmp(a, b, n * sizeof *a))
            sdc_conv_log(c, SDC_LOG_INFO, "check %s: output %s is bit-identical to %s's", label, got->name, versus);
        if (!(p >= SDC_CHECK_MIN_PSNR) && versus)
            s = sdc_fail(c->err, SDC_E_CHECK, "--check-output-correctness: %s output '%s': PSNR %.1f dB vs %s is "
                         "below %.0f dB", label, got->name, p, versus, SDC_CHECK_MIN_PSNR);
        else if (!(p >= SDC_CHECK_MIN_PSNR))
            s = sdc_fail(c->err, SDC_E_CHECK, "--check-output-correctness: %s output '%s': PSNR %.1f dB is below %.0f dB",
                         label, got->name, p, SDC_CHECK_MIN_PSNR);
    }
    free(a);
    free(b);
    return s;
}

const sdc_ndarray *sdc_check_find_output(const sdc_ndarray *outs, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(outs[i].name, name)) return &outs[i];
    return NULL;
}

/* The inputs' names, borrowed from the package's model, borrowed from the reference's instead
   (the package is freed before the reference runs). */
static sdc_status rebind_inputs(const sdc_conv_ctx *c, sdc_ndarray *in, int n_in, const sdc_model *ref,
                                const char *what) {
    for (int i = 0; i < n_in; i++) {
        const char *name = NULL;
        for (int k = 0; k < sdc_model_n_inputs(ref) && !name; k++)
            if (!strcmp(sdc_model_input(ref, k)->name, in[i].name)) name = sdc_model_input(ref, k)->name;
        if (!name)
            return sdc_fail(c->err, SDC_E_INTERNAL, "--check-output-correctness: %s: the float32 reference has no "
                            "input '%s'", what, in[i].name);
        in[i].name = name;
    }
    return SDC_OK;
}

/* Runs the package, then the float32 reference graph (one model in memory at a time), and
   compares each output of the package with the reference's. */
static sdc_status compare(const sdc_conv_ctx *c, const char *cand_path, const mil_graph *reference, const char *what,
                          const sdc_conv_check_hint *hint) {
    char msg[1024], label[600];
    sdc_model *cand = NULL, *ref = NULL;
    sdc_ndarray *in = NULL, *co = NULL, *ro = NULL;
    int n_in = 0, n_co = 0, n_ro = 0;
    sdc_model_options opt = {.progress = c->job->progress, .progress_user = c->job->user};
    sdc_status s = sdc_model_load(cand_path, &opt, &cand, msg, sizeof msg);
    if (s) {
        sdc_fail(c->err, s, "--check-output-correctness: %s", msg);
        goto done;
    }
    n_in = sdc_model_n_inputs(cand);
    if (!(in = sdc_check_seeded_inputs(cand, hint))) {
        n_in = 0;
        s = sdc_fail(c->err, SDC_E_NOMEM, "out of memory");
        goto done;
    }
    sdc_conv_log(c, SDC_LOG_INFO, "checking %s: running the package and a float32 reference", what);
    s = sdc_model_predict(cand, in, n_in, &co, &n_co, msg, sizeof msg);
    if (s) {
        sdc_fail(c->err, s, "--check-output-correctness: %s: %s", what, msg);
        goto done;
    }
    snprintf(label, sizeof label, "the float32 reference of %s", what);
    if ((s = sdc_model_from_graph(reference, label, &opt, &ref, c->err))) {
        sdc_err_prefix(c->err, "--check-output-correctness: ");
        goto done;
    }
    if ((s = rebind_inputs(c, in, n_in, ref, what))) goto done;
    sdc_model_free(cand);
    cand = NULL;
    if ((s = sdc_model_predict(ref, in, n_in, &ro, &n_ro, msg, sizeof msg))) {
        sdc_fail(c->err, s, "--check-output-correctness: %s", msg);
        goto done;
    }
    for (int i = 0; i < n_co && !s; i++) {
        if (hint->only_output && strcmp(hint->only_output, co[i].name)) continue;
        const sdc_ndarray *r = sdc_check_find_output(ro, n_ro, co[i].name);
        if (!r || sdc_ndarray_numel(r) != sdc_ndarray_numel(&co[i]))
            s = sdc_fail(c->err, SDC_E_INTERNAL,
                         "--check-output-correctness: %s: reference has no output '%s' of that shape", what,
                         co[i].name);
        else
            s = sdc_check_output(c, what, r, &co[i], NULL);
    }
done:
    sdc_check_inputs_free(in, n_in);
    sdc_ndarrays_free(co, n_co);
    sdc_ndarrays_free(ro, n_ro);
    sdc_model_free(cand);
    sdc_model_free(ref);
    return s;
}

sdc_status sdc_check_package(const sdc_conv_ctx *c, const char *package, const mil_graph *reference,
                             const char *what, const sdc_conv_check_hint *hint) {
    const char *slash = strrchr(package, '/');
    return compare(c, package, reference, slash ? slash + 1 : package, hint);
}
