/*
 * check.c — --check-output-correctness on any machine: the converted package and a float32
 * reference package of the same weights (built without the ANE rewrite: ORIGINAL attention,
 * FLOAT32 compute) both run in sdcoreml's interpreter on the same seeded inputs, and every
 * output is compared by the anchor's PSNR (reference a, candidate b):
 *     20·log10((max|b| + 1e-5) / (rmse(a, b) + 1e-10)),  failing below 35 dB.
 */
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

#include "convert/convert.h"

#define CHECK_MIN_PSNR 35.0

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

/* Seeded inputs shaped as the package declares them, given as float32 (the interpreter
   rounds them to fp16 where the package says so): token ids for input_ids, the first
   timestep of a 50-step schedule for timestep, uniform [0, 1) elsewhere, as the anchor. */
static sdc_ndarray *make_inputs(const sdc_model *m, const conv_check_hint *hint, int *n_out) {
    int n = sdc_model_n_inputs(m);
    sdc_ndarray *in = sdc_calloc((size_t)n, sizeof *in);
    if (!in) return NULL;
    uint64_t seed = 0x5DC0DE1ull;
    for (int i = 0; i < n; i++) {
        const sdc_ndarray *d = sdc_model_input(m, i);
        in[i] = *d;
        in[i].dtype = SDC_ND_F32;
        size_t count = sdc_ndarray_numel(d);
        float *v = sdc_malloc(count * sizeof *v);
        if (!v) {
            for (int k = 0; k < i; k++) sdc_free(in[k].data);
            sdc_free(in);
            return NULL;
        }
        for (size_t k = 0; k < count; k++) {
            if (!strcmp(d->name, "input_ids") && hint->vocab_size > 0)
                v[k] = (float)(next_u64(&seed) % (uint64_t)hint->vocab_size);
            else if (!strcmp(d->name, "timestep"))
                v[k] = hint->timestep;
            else
                v[k] = uniform01(&seed);
        }
        in[i].data = v;
    }
    *n_out = n;
    return in;
}

static void free_inputs(sdc_ndarray *in, int n) {
    for (int i = 0; in && i < n; i++) sdc_free(in[i].data);
    sdc_free(in);
}

static const sdc_ndarray *find_output(const sdc_ndarray *outs, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(outs[i].name, name)) return &outs[i];
    return NULL;
}

/* Runs both packages and compares each output of the candidate with the reference's. */
static sdc_status compare(const conv_ctx *c, const char *cand_path, const char *ref_path, const char *what,
                          const conv_check_hint *hint) {
    char msg[1024];
    sdc_model *cand = NULL, *ref = NULL;
    sdc_ndarray *in = NULL, *co = NULL, *ro = NULL;
    int n_in = 0, n_co = 0, n_ro = 0;
    sdc_status s = sdc_model_load(cand_path, NULL, &cand, msg, sizeof msg);
    if (!s) s = sdc_model_load(ref_path, NULL, &ref, msg, sizeof msg);
    if (s) {
        sdc_fail(c->err, s, "--check-output-correctness: %s", msg);
        goto done;
    }
    in = make_inputs(cand, hint, &n_in);
    if (!in) {
        s = sdc_fail(c->err, SDC_E_NOMEM, "out of memory");
        goto done;
    }
    conv_log(c, SDC_LOG_INFO, "checking %s: running the package and a float32 reference", what);
    if ((s = sdc_model_predict(cand, in, n_in, &co, &n_co, msg, sizeof msg)) ||
        (s = sdc_model_predict(ref, in, n_in, &ro, &n_ro, msg, sizeof msg))) {
        sdc_fail(c->err, s, "--check-output-correctness: %s: %s", what, msg);
        goto done;
    }
    for (int i = 0; i < n_co && !s; i++) {
        if (hint->only_output && strcmp(hint->only_output, co[i].name)) continue;
        const sdc_ndarray *r = find_output(ro, n_ro, co[i].name);
        size_t n = sdc_ndarray_numel(&co[i]);
        if (!r || sdc_ndarray_numel(r) != n) {
            s = sdc_fail(c->err, SDC_E_INTERNAL, "--check-output-correctness: %s: reference has no output '%s' of that shape", what, co[i].name);
            break;
        }
        float *a = sdc_ndarray_to_f32(r), *b = sdc_ndarray_to_f32(&co[i]);
        if (!a || !b) {
            s = sdc_fail(c->err, SDC_E_NOMEM, "out of memory");
        } else {
            double p = sdc_psnr(a, b, n);
            conv_log(c, SDC_LOG_NOTICE, "check %s: output %s: PSNR %.1f dB (minimum %.0f)", what, co[i].name, p,
                     CHECK_MIN_PSNR);
            if (!(p >= CHECK_MIN_PSNR))
                s = sdc_fail(c->err, SDC_E_CHECK, "--check-output-correctness: %s output '%s': PSNR %.1f dB is below %.0f dB",
                             what, co[i].name, p, CHECK_MIN_PSNR);
        }
        free(a);
        free(b);
    }
done:
    free_inputs(in, n_in);
    sdc_ndarrays_free(co, n_co);
    sdc_ndarrays_free(ro, n_ro);
    sdc_model_free(cand);
    sdc_model_free(ref);
    return s;
}

sdc_status conv_check(const conv_ctx *c, const char *package, const mil_graph *reference, const char *what,
                      const conv_check_hint *hint) {
    char ref_path[4200];
    const char *dir = c->job->output_dir ? c->job->output_dir : ".";
    if (!sdc_fmt(ref_path, sizeof ref_path, "%s/.sdcoreml-reference-%ld-%s.mlpackage", dir, (long)getpid(), what))
        return sdc_fail(c->err, SDC_E_ARG, "-o: path too long");
    sdc_remove_package_tree(ref_path);
    /* The reference is written like any package, then run and removed. */
    sdc_package_info info = {.spec_version = reference->opset + 1};
    sdc_write_hooks hooks = {c->job->progress, c->job->user, "reference"};
    sdc_status s = sdc_write_package(reference, &info, ref_path, &hooks, c->err);
    const char *slash = strrchr(package, '/');
    if (!s) {
        sdc_track_partial_output(ref_path); /* an interrupted check leaves no reference behind */
        s = compare(c, package, ref_path, slash ? slash + 1 : package, hint);
    }
    sdc_remove_package_tree(ref_path);
    sdc_track_partial_output(NULL);
    return s;
}

/* First timestep of a 50-step schedule as the pipeline's scheduler sets it (diffusers'
   timestep_spacing: "leading" (the SD default) gives (50-1)·(T/50) + steps_offset = 981). */
float conv_first_timestep(const sdc_source *src, sdc_err *err) {
    char path[4200];
    struct stat st;
    snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", src->root);
    double t = 981;
    if (stat(path, &st) != 0) return (float)t;
    json_t *cfg;
    if (sdc_json_load(path, &cfg, err)) return (float)t;
    json_t *jt = json_object_get(cfg, "num_train_timesteps"), *jo = json_object_get(cfg, "steps_offset");
    json_t *js = json_object_get(cfg, "timestep_spacing");
    json_int_t T = json_is_integer(jt) && json_integer_value(jt) > 0 ? json_integer_value(jt) : 1000;
    json_int_t off = json_is_integer(jo) ? json_integer_value(jo) : 0;
    const char *spacing = json_is_string(js) ? json_string_value(js) : "leading";
    if (!strcmp(spacing, "trailing") || !strcmp(spacing, "linspace"))
        t = (double)(T - 1);
    else
        t = (double)(49 * (T / 50) + off);
    json_decref(cfg);
    return (float)t;
}
