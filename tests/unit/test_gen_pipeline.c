/*
 * test_gen_pipeline.c — the pieces of the generation loop that stand alone: the anchor's image
 * path (get_image_path of pipeline.py, expected names written out from its Python expression)
 * and Pillow's bicubic resize, which feeds the safety checker (expected bytes printed by
 * Pillow 13.0.0's Image.resize(..., BICUBIC, reducing_gap=None) of the 7x5 pattern below).
 */
#include "check.h"
#include "generate/pipeline.h"

static void test_image_path(void) {
    char folder[4096], path[4096];
    sdc_err err = {0};
    CHECK(!sdc_gen_image_path("out", "a cat/dog  portrait", 93, "ALL", "CompVis/stable-diffusion-v1-4", NULL, 50, folder,
                              sizeof folder, path, sizeof path, &err));
    CHECK(!strcmp(folder, "out/a_cat_dog__portrait"));
    CHECK(!strcmp(path, "out/a_cat_dog__portrait/randomSeed_93_computeUnit_ALL_modelVersion_CompVis_stable-diffusion-v1-4.png"));
    CHECK(!sdc_gen_image_path("o", "x", 4294967295u, "CPU_ONLY", "m", "DDIM", 20, folder, sizeof folder, path, sizeof path,
                              &err));
    CHECK(!strcmp(path, "o/x/randomSeed_4294967295_computeUnit_CPU_ONLY_modelVersion_m_customScheduler_DDIM_numInferenceSteps20.png"));
    CHECK(!sdc_gen_image_path("o", "", 1, "ALL", "m", NULL, 1, folder, sizeof folder, path, sizeof path, &err));
    CHECK(!strcmp(folder, "o") && !strcmp(path, "o/randomSeed_1_computeUnit_ALL_modelVersion_m.png")); /* os.path.join(o, "") */
    char long_prompt[300];
    memset(long_prompt, 'a', sizeof long_prompt - 1);
    long_prompt[sizeof long_prompt - 1] = 0;
    sdc_err e2 = {0};
    CHECK(sdc_gen_image_path("o", long_prompt, 1, "ALL", "m", NULL, 1, folder, sizeof folder, path, sizeof path, &e2) ==
          SDC_E_ARG);
    CHECK(strstr(e2.msg, "--prompt") != NULL);
}

static const uint8_t WANT_3x4[] = {64,  81,  124, 144, 164, 138, 92,  104, 91,  134, 133, 123, 133, 93,  134, 169, 125, 157,
                                   98,  140, 93,  151, 147, 136, 151, 93,  129, 160, 100, 123, 122, 151, 165, 164, 92,  124};
static const uint8_t WANT_7x3[] = {42,  73,  104, 100, 131, 162, 157, 74,  113, 109, 140, 171, 166, 197, 79,  74,
                                   113, 144, 140, 56,  87,  140, 171, 54,  71,  111, 142, 159, 127, 95,  112, 143,
                                   174, 200, 83,  123, 140, 108, 139, 156, 133, 164, 90,  121, 152, 190, 72,  103,
                                   141, 180, 97,  135, 166, 197, 86,  117, 148, 186, 103, 134, 172, 62,  93};
/* the first 3 rows of 11x9 (upscaling: no widened support) */
static const uint8_t WANT_11x9_ROWS[] = {
    0,   19,  50,  11,  41,  72,  49,  81,  112, 81,  129, 160, 121, 168, 211, 169, 200, 231, 224, 254, 79,  172,
    202, 0,   7,   37,  51,  14,  57,  103, 52,  105, 136, 21,  50,  90,  47,  82,  118, 94,  120, 151, 135, 99,
    130, 138, 110, 149, 121, 152, 183, 167, 208, 101, 152, 193, 68,  62,  97,  116, 83,  67,  108, 117, 64,  94,
    80,  111, 153, 113, 157, 194, 168, 184, 214, 225, 48,  78,  167, 14,  45,  42,  73,  104, 73,  123, 140, 122,
    170, 184, 157, 198, 228, 203, 89,  121, 232, 0,   29};

static void test_resize(void) {
    enum { W = 7, H = 5 };
    uint8_t in[H * W * 3], out[11 * 9 * 3];
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int c = 0; c < 3; c++) in[(y * W + x) * 3 + c] = (uint8_t)((x * 53 + y * 97 + c * 31 + x * y * 13) % 256);
    CHECK(sdc_gen_resize_bicubic(in, W, H, out, 3, 4) && !memcmp(out, WANT_3x4, sizeof WANT_3x4));
    CHECK(sdc_gen_resize_bicubic(in, W, H, out, 7, 3) && !memcmp(out, WANT_7x3, sizeof WANT_7x3));
    CHECK(sdc_gen_resize_bicubic(in, W, H, out, 11, 9) && !memcmp(out, WANT_11x9_ROWS, sizeof WANT_11x9_ROWS));
    CHECK(sdc_gen_resize_bicubic(in, W, H, out, W, H) && !memcmp(out, in, sizeof in)); /* same size: a copy */
}

int main(void) {
    test_image_path();
    test_resize();
    return CHECK_DONE("test_gen_pipeline");
}
