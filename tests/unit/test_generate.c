/*
 * test_generate.c — the pipeline's pieces (src/generate/) under allocation failure: every
 * allocation of opening the tiny tokenizer and encoding a prompt, of a PNDM and a DPM-Solver
 * loop, and of a PNG round trip is made to fail in turn (sdc_alloc_fail_at, as test_faults.c
 * does); each must end in a clean error (SDC_E_NOMEM, one line) or — for the allocations an
 * error path makes after the failure — success with the same result as an unfailed run. Under
 * AddressSanitizer (tests/run.sh) a leak or bad access on any of these paths fails too. Also:
 * the RNG's first values for seed 0 against NumPy's (literal, from RandomState(0).randn).
 */
#include "check.h"
#include "common.h"
#include "generate/png.h"
#include "generate/rng.h"
#include "generate/scheduler.h"
#include "generate/tokenizer.h"

#include <jansson.h>
#include <math.h>
#include <unistd.h>

#ifndef SDC_SOURCE_DIR
#error "SDC_SOURCE_DIR is set by CMakeLists.txt"
#endif

static bool one_line(const sdc_err *e) { return e->msg[0] && !strchr(e->msg, '\n'); }

/* Runs `scenario` with every allocation failing in turn; it returns its status and fills
   `out` (compared with the unfailed run's). */
typedef sdc_status (*scenario_fn)(int32_t *out, sdc_err *err);

static void fail_each(const char *name, scenario_fn scenario, size_t out_len) {
    int32_t want[128] = {0}, got[128];
    sdc_err err = {0};
    sdc_alloc_fail_at(1L << 40);
    CHECK_MSG(scenario(want, &err) == SDC_OK, "%s: %s", name, err.msg);
    long total = sdc_alloc_count();
    sdc_alloc_fail_at(0);
    int clean = 0;
    for (long n = 1; n <= total; n++) {
        memset(got, 0, sizeof got);
        sdc_err e = {0};
        sdc_alloc_fail_at(n);
        sdc_status s = scenario(got, &e);
        sdc_alloc_fail_at(0);
        if (s == SDC_OK) {
            CHECK_MSG(!memcmp(got, want, sizeof(int32_t) * out_len), "%s: allocation %ld failed, result differs", name, n);
        } else {
            clean++;
            CHECK_MSG(s == SDC_E_NOMEM && one_line(&e), "%s: allocation %ld: status %d '%s'", name, n, s, e.msg);
        }
    }
    printf("%s: %ld allocations, %d refused cleanly\n", name, total, clean);
}

static sdc_status tokenize(int32_t *out, sdc_err *err) {
    sdc_tokenizer *t;
    sdc_status s = sdc_tokenizer_open(SDC_SOURCE_DIR "/examples/tiny-sd/tokenizer", &t, err);
    if (s) return s;
    int count;
    s = sdc_tokenizer_encode(t, "A photo of an ASTRONAUT riding caf\xc3\xa9 \xce\xa3\xce\xa3 \xe6\x97\xa5 it's!!", out, 77,
                             &count, err);
    sdc_tokenizer_free(t);
    return s;
}

static sdc_status schedule(const char *config_text, int32_t *out, sdc_err *err) {
    json_t *cfg = json_loads(config_text, 0, NULL);
    sdc_scheduler *s;
    sdc_status st = sdc_scheduler_open(NULL, cfg, "config", 12, &s, err);
    json_decref(cfg);
    if (st) return st;
    float x[64], eps[64];
    for (int j = 0; j < 64; j++) x[j] = (float)sin(j);
    for (int i = 0; !st && i < sdc_scheduler_steps(s); i++) {
        for (int j = 0; j < 64; j++) eps[j] = 0.5f * x[j] + (float)cos(j + i);
        st = sdc_scheduler_step(s, i, eps, x, 64, NULL, err);
    }
    sdc_scheduler_free(s);
    memcpy(out, x, sizeof x);
    return st;
}

static sdc_status schedule_pndm(int32_t *out, sdc_err *err) {
    return schedule("{\"_class_name\": \"PNDMScheduler\", \"beta_schedule\": \"scaled_linear\", \"beta_start\": 0.00085,"
                    " \"beta_end\": 0.012, \"skip_prk_steps\": false, \"steps_offset\": 1}",
                    out, err);
}

static sdc_status schedule_dpm(int32_t *out, sdc_err *err) {
    return schedule("{\"_class_name\": \"DPMSolverMultistepScheduler\", \"solver_order\": 3}", out, err);
}

static char png_path[256];

static sdc_status png_round_trip(int32_t *out, sdc_err *err) {
    uint8_t rgb[5 * 3 * 3];
    for (size_t i = 0; i < sizeof rgb; i++) rgb[i] = (uint8_t)(i * 37);
    sdc_status s = sdc_png_write(png_path, 5, 3, rgb, err);
    if (s) return s;
    int w, h;
    uint8_t *back;
    s = sdc_png_read(png_path, &w, &h, &back, err);
    if (s) return s;
    for (size_t i = 0; i < sizeof rgb; i++) out[i] = back[i];
    out[sizeof rgb] = w * 100 + h;
    sdc_free(back);
    return SDC_OK;
}

static void test_rng(void) {
    /* numpy: np.random.RandomState(0).randn(4), and RandomState(93).randn(2) */
    static const double seed0[4] = {1.764052345967664, 0.4001572083672233, 0.9787379841057392, 2.240893199201458};
    static const double seed93[2] = {1.6301980803437865, 1.1007358938830003};
    sdc_rng r;
    sdc_rng_seed(&r, 0);
    for (int i = 0; i < 4; i++) CHECK_MSG(sdc_rng_gauss(&r) == seed0[i], "seed 0 value %d", i);
    sdc_rng_seed(&r, 93);
    for (int i = 0; i < 2; i++) CHECK_MSG(sdc_rng_gauss(&r) == seed93[i], "seed 93 value %d", i);
}

int main(void) {
    test_rng();
    fail_each("tokenizer", tokenize, 77);
    fail_each("PNDM with PRK", schedule_pndm, 64);
    fail_each("DPM-Solver order 3", schedule_dpm, 64);
    snprintf(png_path, sizeof png_path, "/tmp/sdc-test-generate-%ld.png", (long)getpid());
    int32_t out[64];
    sdc_err err = {0};
    sdc_status s = png_round_trip(out, &err); /* built without libpng: the one refusal */
    CHECK_MSG(s == SDC_OK || (s == SDC_E_UNSUPPORTED && strstr(err.msg, "without PNG support")), "%s", err.msg);
    if (s == SDC_OK) fail_each("PNG", png_round_trip, 5 * 3 * 3 + 1);
    unlink(png_path);
    return CHECK_DONE("test_generate");
}
