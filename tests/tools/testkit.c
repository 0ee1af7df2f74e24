/*
 * testkit.c — sdcoreml-testkit: a test-only door to the pipeline's pieces (src/generate/) for
 * tests/python; built with the project, never installed. Each subcommand prints its results or
 * writes .npy files, and exits 1 with the library's one-line error on stderr.
 *
 *   randn SEED OUT.npy D1 [D2 …]     RandomState(SEED).randn(D1, D2, …) as float32 to OUT.npy;
 *                                    also prints every value as a double (%.17g), one a line
 *   png-write OUT.png W H RGB.npy    an int32 array [H, W, 3] of 0..255 written as a PNG
 *   png-read IN.png OUT.npy          the PNG read as RGB8, written as int32 [H, W, 3]
 *   tokenize DIR N TEXT…             prints "max_length pad_id" then, per TEXT, "n_tokens id id …"
 *                                    with N ids (N = 0: the tokenizer's max_length)
 *   schedule KIND|- CONFIG.json STEPS [--strength S NOISE.npy] [--noise-seed N]
 *            [--run X.npy W.npy B.npy OUT.npy]
 *       prints {"name", "steps", "timesteps", "init_noise_sigma", "start"} as JSON; with --run,
 *       runs the loop from X (after add_noise of NOISE at the img2img start with --strength)
 *       with the fake model eps = W * scaled_x + B * (float)(t / 1000) (float32), and writes
 *       every sample, the first one included, as float32 [k + 1, numel(X)] to OUT.npy.
 *       Euler ancestral draws its noise from RandomState(N) (default 0).
 */
#include "common.h"
#include "generate/png.h"
#include "generate/rng.h"
#include "generate/scheduler.h"
#include "generate/tokenizer.h"
#include "io/npy.h"

#include <errno.h>

static int fail(const sdc_err *err) {
    fprintf(stderr, "sdcoreml-testkit: %s\n", err->msg);
    return 1;
}

static int usage(const char *msg) {
    fprintf(stderr, "sdcoreml-testkit: %s\n", msg);
    return 2;
}

static bool parse_long(const char *s, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

static int cmd_randn(int argc, char **argv) {
    long long seed;
    if (argc < 3 || argc - 2 > SDC_ND_MAX_RANK || !parse_long(argv[0], 0, 4294967295LL, &seed))
        return usage("usage: randn SEED OUT.npy D1 [D2 …]");
    sdc_ndarray a = {.dtype = SDC_ND_F32, .rank = argc - 2};
    for (int i = 0; i < a.rank; i++) {
        long long d;
        if (!parse_long(argv[2 + i], 0, 1 << 24, &d)) return usage("bad dimension");
        a.shape[i] = d;
    }
    size_t n = sdc_ndarray_numel(&a);
    double *v = malloc((n ? n : 1) * sizeof *v);
    float *f = malloc((n ? n : 1) * sizeof *f);
    sdc_rng r;
    sdc_rng_seed(&r, (uint32_t)seed);
    sdc_rng_randn_f64(&r, v, n);
    for (size_t i = 0; i < n; i++) {
        f[i] = (float)v[i];
        printf("%.17g\n", v[i]);
    }
    a.data = f;
    sdc_err err = {0};
    sdc_status s = sdc_npy_write_file(argv[1], &a, &err);
    free(v);
    free(f);
    return s ? fail(&err) : 0;
}

static int cmd_png_write(int argc, char **argv) {
    long long w, h;
    if (argc != 4 || !parse_long(argv[1], 0, 1 << 20, &w) || !parse_long(argv[2], 0, 1 << 20, &h))
        return usage("usage: png-write OUT.png W H RGB.npy");
    sdc_ndarray a;
    bool f64;
    sdc_err err = {0};
    if (sdc_npy_read_file(argv[3], &a, &f64, &err)) return fail(&err);
    if (a.dtype != SDC_ND_I32 || (long long)sdc_ndarray_numel(&a) != w * h * 3) {
        free(a.data);
        return usage("RGB.npy: need int32 with W*H*3 values");
    }
    size_t n = sdc_ndarray_numel(&a);
    uint8_t *rgb = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++) rgb[i] = (uint8_t)((const int32_t *)a.data)[i];
    sdc_status s = sdc_png_write(argv[0], (int)w, (int)h, rgb, &err);
    free(rgb);
    free(a.data);
    return s ? fail(&err) : 0;
}

static int cmd_png_read(int argc, char **argv) {
    if (argc != 2) return usage("usage: png-read IN.png OUT.npy");
    int w, h;
    uint8_t *rgb;
    sdc_err err = {0};
    if (sdc_png_read(argv[0], &w, &h, &rgb, &err)) return fail(&err);
    size_t n = (size_t)w * h * 3;
    int32_t *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++) v[i] = rgb[i];
    sdc_free(rgb);
    sdc_ndarray a = {.dtype = SDC_ND_I32, .rank = 3, .shape = {h, w, 3}, .data = v};
    sdc_status s = sdc_npy_write_file(argv[1], &a, &err);
    free(v);
    return s ? fail(&err) : 0;
}

typedef struct run_files {
    const char *x, *w, *b, *out, *noise;
} run_files;

/* Reads a float32 .npy into a malloc'd array; *n gets its size. */
static bool load_f32(const char *path, sdc_ndarray *a, sdc_err *err) {
    bool f64;
    if (sdc_npy_read_file(path, a, &f64, err)) return false;
    if (a->dtype != SDC_ND_F32) {
        sdc_fail(err, SDC_E_ARG, "%s: need float32", path);
        free(a->data);
        return false;
    }
    return true;
}

static int run_loop(sdc_scheduler *s, const run_files *f, double strength, uint32_t noise_seed, sdc_err *err) {
    sdc_ndarray x, w, b, noise = {0};
    if (!load_f32(f->x, &x, err)) return fail(err);
    if (!load_f32(f->w, &w, err) || !load_f32(f->b, &b, err)) return fail(err);
    size_t n = sdc_ndarray_numel(&x);
    if (sdc_ndarray_numel(&w) != n || sdc_ndarray_numel(&b) != n) return usage("X, W and B must have the same size");
    int start = 0;
    if (strength >= 0) {
        if (!load_f32(f->noise, &noise, err)) return fail(err);
        if (sdc_ndarray_numel(&noise) != n) return usage("NOISE must have the size of X");
        start = sdc_scheduler_img2img_start(s, strength);
        if (start < sdc_scheduler_steps(s)) sdc_scheduler_add_noise(s, start, noise.data, x.data, n);
    }
    int k = sdc_scheduler_steps(s) - start;
    float *trace = malloc(sizeof(float) * n * (size_t)(k + 1)), *xin = malloc(sizeof(float) * n),
          *eps = malloc(sizeof(float) * n);
    const float *W = w.data, *B = b.data;
    float *cur = x.data;
    memcpy(trace, cur, sizeof(float) * n);
    sdc_rng rng;
    sdc_rng_seed(&rng, noise_seed);
    int rc = 0;
    for (int i = start; i < sdc_scheduler_steps(s) && !rc; i++) {
        memcpy(xin, cur, sizeof(float) * n);
        sdc_scheduler_scale_model_input(s, i, xin, n);
        float tt = (float)(sdc_scheduler_timestep(s, i) / 1000.0);
        for (size_t j = 0; j < n; j++) {
            float a = W[j] * xin[j], c = B[j] * tt;
            eps[j] = a + c;
        }
        if (sdc_scheduler_step(s, i, eps, cur, n, &rng, err)) rc = fail(err);
        memcpy(trace + (size_t)(i - start + 1) * n, cur, sizeof(float) * n);
    }
    if (!rc) {
        sdc_ndarray t = {.dtype = SDC_ND_F32, .rank = 2, .shape = {k + 1, (int64_t)n}, .data = trace};
        if (sdc_npy_write_file(f->out, &t, err)) rc = fail(err);
    }
    printf(", \"start\": %d", start);
    free(trace), free(xin), free(eps), free(x.data), free(w.data), free(b.data), free(noise.data);
    return rc;
}

static int cmd_schedule(int argc, char **argv) {
    long long steps, seed = 0;
    if (argc < 3 || !parse_long(argv[2], -1000000, 1000000, &steps))
        return usage("usage: schedule KIND|- CONFIG.json STEPS [--strength S NOISE.npy] [--noise-seed N] [--run X W B OUT]");
    run_files f = {0};
    double strength = -1;
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "--strength") && i + 2 < argc) {
            strength = atof(argv[i + 1]);
            f.noise = argv[i + 2];
            i += 2;
        } else if (!strcmp(argv[i], "--noise-seed") && i + 1 < argc && parse_long(argv[i + 1], 0, 4294967295LL, &seed)) {
            i += 1;
        } else if (!strcmp(argv[i], "--run") && i + 4 < argc) {
            f.x = argv[i + 1], f.w = argv[i + 2], f.b = argv[i + 3], f.out = argv[i + 4];
            i += 4;
        } else {
            return usage("schedule: bad option");
        }
    }
    json_error_t jerr;
    json_t *config = json_load_file(argv[1], JSON_REJECT_DUPLICATES, &jerr);
    sdc_err err = {0};
    if (!config) {
        sdc_fail(&err, SDC_E_FORMAT, "%s: %s", argv[1], jerr.text);
        return fail(&err);
    }
    sdc_scheduler *s;
    sdc_status st = sdc_scheduler_open(strcmp(argv[0], "-") ? argv[0] : NULL, config, argv[1], (int)steps, &s, &err);
    json_decref(config);
    if (st) return fail(&err);
    printf("{\"name\": \"%s\", \"steps\": %d, \"init_noise_sigma\": %.17g, \"timesteps\": [", sdc_scheduler_name(s),
           sdc_scheduler_steps(s), sdc_scheduler_init_noise_sigma(s));
    for (int i = 0; i < sdc_scheduler_steps(s); i++) printf("%s%.17g", i ? ", " : "", sdc_scheduler_timestep(s, i));
    printf("]");
    int rc = f.x ? run_loop(s, &f, strength, (uint32_t)seed, &err) : 0;
    printf("}\n");
    sdc_scheduler_free(s);
    return rc;
}

static int cmd_tokenize(int argc, char **argv) {
    long long n;
    if (argc < 2 || !parse_long(argv[1], 0, 100000, &n)) return usage("usage: tokenize DIR N TEXT…");
    sdc_tokenizer *t;
    sdc_err err = {0};
    if (sdc_tokenizer_open(argv[0], &t, &err)) return fail(&err);
    int len = n ? (int)n : sdc_tokenizer_max_length(t);
    printf("%d %d\n", sdc_tokenizer_max_length(t), (int)sdc_tokenizer_pad_id(t));
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)len);
    int rc = 0;
    for (int i = 2; i < argc && !rc; i++) {
        int count;
        if (sdc_tokenizer_encode(t, argv[i], ids, len, &count, &err)) {
            rc = fail(&err);
            break;
        }
        printf("%d", count);
        for (int k = 0; k < len; k++) printf(" %d", (int)ids[k]);
        printf("\n");
    }
    free(ids);
    sdc_tokenizer_free(t);
    return rc;
}

typedef struct subcommand {
    const char *name;
    int (*run)(int argc, char **argv);
} subcommand;

static const subcommand SUBCOMMANDS[] = {
    {"randn", cmd_randn},
    {"png-write", cmd_png_write},
    {"png-read", cmd_png_read},
    {"schedule", cmd_schedule},
    {"tokenize", cmd_tokenize},
};

int main(int argc, char **argv) {
    for (size_t i = 0; argc >= 2 && i < SDC_COUNT_OF(SUBCOMMANDS); i++)
        if (!strcmp(argv[1], SUBCOMMANDS[i].name)) return SUBCOMMANDS[i].run(argc - 2, argv + 2);
    return usage("usage: sdcoreml-testkit {randn|png-write|png-read|tokenize|schedule} …");
}
