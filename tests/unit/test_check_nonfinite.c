/*
 * test_check_nonfinite.c — what a float16 overflow leaves in an output: sdc_ndarray_count_nonfinite
 * on the boundary bit patterns of float16 and float32, and sdc_check_output failing on NaN/inf
 * in the package's output or in its reference, naming the output and counting the values,
 * before any PSNR (which would be NaN and say nothing).
 */
#include <math.h>

#include "check.h"
#include "convert/convert.h"

static void test_count_f16(void) {
    /* 65504 (largest finite), -65504, smallest subnormal, -0, +inf, -inf, quiet NaN, NaN with payload */
    uint16_t h[] = {0x7bff, 0xfbff, 0x0001, 0x8000, 0x7c00, 0xfc00, 0x7e00, 0x7c01};
    sdc_ndarray a = {.name = "h", .dtype = SDC_ND_F16, .rank = 2, .shape = {2, 4}, .data = h};
    CHECK(sdc_ndarray_count_nonfinite(&a) == 4);
}

static void test_count_f32_and_i32(void) {
    float f[] = {0.0f, 3.4e38f, -3.4e38f, INFINITY, -INFINITY, NAN, 1e-45f};
    sdc_ndarray a = {.name = "f", .dtype = SDC_ND_F32, .rank = 1, .shape = {7}, .data = f};
    CHECK(sdc_ndarray_count_nonfinite(&a) == 3);
    int32_t i[] = {0x7f800000, -1, 0x7fc00000}; /* float inf/NaN bit patterns, as integers: finite */
    sdc_ndarray b = {.name = "i", .dtype = SDC_ND_I32, .rank = 1, .shape = {3}, .data = i};
    CHECK(sdc_ndarray_count_nonfinite(&b) == 0);
}

typedef struct log_lines {
    int n;
    char last[1024];
} log_lines;

static void on_log(void *user, sdc_log_level level, const char *line) {
    log_lines *l = user;
    (void)level;
    l->n++;
    snprintf(l->last, sizeof l->last, "%s", line);
}

static void test_check_output(void) {
    sdc_job job;
    sdc_job_init(&job);
    log_lines log = {0};
    job.log = on_log;
    job.user = &log;
    sdc_err err = {0};
    sdc_conv_ctx c = {.job = &job, .err = &err};

    float ref[6] = {1, 2, 3, 4, 5, 6}, got[6] = {1, 2, 3, 4, 5, 6};
    sdc_ndarray r = {.name = "noise_pred", .dtype = SDC_ND_F32, .rank = 2, .shape = {2, 3}, .data = ref};
    sdc_ndarray g = r;
    g.data = got;
    CHECK(sdc_check_output(&c, "unet.mlpackage", &r, &g, NULL) == SDC_OK);
    CHECK(log.n == 1 && strstr(log.last, "PSNR"));

    got[1] = INFINITY;
    got[4] = NAN;
    log.n = 0;
    CHECK(sdc_check_output(&c, "unet.mlpackage", &r, &g, NULL) == SDC_E_CHECK);
    CHECK_MSG(!strcmp(err.msg, "--check-output-correctness: unet.mlpackage output 'noise_pred': 2 of 6 values are NaN/inf"),
              "%s", err.msg);
    CHECK(log.n == 0); /* no PSNR line for values it cannot measure */

    /* the reference's own overflow (a chunk pair checked against the fp16 UNet) is named as such */
    got[1] = 2;
    got[4] = 5;
    ref[5] = -INFINITY;
    err = (sdc_err){0};
    CHECK(sdc_check_output(&c, "unet_chunk1.mlpackage", &r, &g, "unet.mlpackage") == SDC_E_CHECK);
    CHECK_MSG(!strcmp(err.msg, "--check-output-correctness: unet_chunk1.mlpackage output 'noise_pred': 1 of 6 values "
                               "of the reference (unet.mlpackage) are NaN/inf"),
              "%s", err.msg);
}

int main(void) {
    test_count_f16();
    test_count_f32_and_i32();
    test_check_output();
    return CHECK_DONE("test_check_nonfinite");
}
