/*
 * testkit.c — sdcoreml-testkit: a test-only door to the pipeline's pieces (src/generate/) for
 * tests/python; built with the project, never installed. Each subcommand prints its results or
 * writes .npy files, and exits 1 with the library's one-line error on stderr.
 *
 *   randn SEED OUT.npy D1 [D2 …]     RandomState(SEED).randn(D1, D2, …) as float32 to OUT.npy;
 *                                    also prints every value as a double (%.17g), one a line
 *   png-write OUT.png W H RGB.npy    an int32 array [H, W, 3] of 0..255 written as a PNG
 *   png-read IN.png OUT.npy          the PNG read as RGB8, written as int32 [H, W, 3]
 */
#include "common.h"
#include "generate/png.h"
#include "generate/rng.h"
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

typedef struct subcommand {
    const char *name;
    int (*run)(int argc, char **argv);
} subcommand;

static const subcommand SUBCOMMANDS[] = {
    {"randn", cmd_randn},
    {"png-write", cmd_png_write},
    {"png-read", cmd_png_read},
};

int main(int argc, char **argv) {
    for (size_t i = 0; argc >= 2 && i < SDC_COUNT_OF(SUBCOMMANDS); i++)
        if (!strcmp(argv[1], SUBCOMMANDS[i].name)) return SUBCOMMANDS[i].run(argc - 2, argv + 2);
    return usage("usage: sdcoreml-testkit {randn|png-write|png-read|tokenize|schedule} …");
}
