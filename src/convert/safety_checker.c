/*
 * safety_checker.c — --convert-safety-checker (anchor §4.6, §8).
 *
 * A pipeline without a safety checker (SD 2.x: [null, null] in model_index.json; SDXL: no
 * entry) gets a warning and no package, as the anchor does for SD 2.x.
 *
 * The `images` input is what the VAE decoder outputs: (1, s·h, s·w, 3) with s the VAE's
 * scale (8 for every SD VAE) and h, w the latent size, i.e. 512×512 for SD 1.x at its default
 * 64×64 latent — the fixed (1, 512, 512, 3) the Swift pipeline feeds. (The anchor takes
 * vae.config.sample_size, which is the same for every published SD 1.x/2.x pipeline.)
 */
#include "convert/convert.h"

static const char *const INPUT_DOCS[] = {
    "The normalized image input tensor resized to (224x224) in channels-first (BCHW) format",
    "Output of the vae_decoder in channels-last (BHWC) format",
    ("Bias added to the concept scores to trade off increased recall for reduce precision in the safety checker "
     "classifier"),
};
static const char *const OUTPUT_DOCS[] = {
    "Identical to the input `images`. If safety checker detected any sensitive content, the corresponding image is "
    "replaced with a blank image (zeros)",
    "Indicates whether the safety checker model found any sensitive content in the given image",
    "Concept scores are the scores before thresholding at zero yields the `has_nsfw_concepts` output. These scores "
    "can be used to tune the `adjustment` input",
};

/* The decoder's output size for the job's latent size. */
static sdc_status image_size(const sdc_conv_ctx *c, int *h, int *w) {
    sdc_vae_info info = {.latent_channels = 4, .scale = 8, .sample_size = 512};
    bool have_vae = c->job->custom_vae_version || sdc_source_has(c->src, "vae");
    if (have_vae) {
        sdc_component vae;
        sdc_status s = sdc_conv_vae_open(c, &vae);
        if (!s) s = sdc_vae_describe(&vae, &info, c->err);
        sdc_component_close(&vae);
        if (s) return s;
    }
    int lh, lw;
    sdc_status s = sdc_conv_latent_size(c, c->src, info.sample_size / info.scale, &lh, &lw);
    if (s) return s;
    *h = lh * info.scale;
    *w = lw * info.scale;
    return SDC_OK;
}

typedef struct safety_state {
    const sdc_component *comp;
    sdc_safety_checker_options opt;
} safety_state;

/* The reference for --check-output-correctness is the same graph in float32. */
static sdc_status build_safety(const sdc_conv_ctx *c, void *state, bool reference, mil_graph **out) {
    const safety_state *st = state;
    sdc_safety_checker_options opt = st->opt;
    if (reference) opt.compute = SDC_DT_F32;
    return sdc_build_safety_checker(st->comp, &opt, out, c->err);
}

sdc_status sdc_conv_safety_checker(const sdc_conv_ctx *c) {
    if (!sdc_source_has(c->src, "safety_checker")) {
        sdc_conv_log(c, SDC_LOG_WARNING,
                 "%s has no safety_checker (model_index.json lists none); --convert-safety-checker is ignored",
                 c->job->model_version);
        return SDC_OK;
    }
    const char *sub = "safety_checker";
    char path[4096];
    sdc_status s = sdc_conv_package_path(c, sub, path, sizeof path);
    if (s) return s;
    if (sdc_conv_skip(c, path, sub)) return SDC_OK;
    safety_state st = {.opt = {.compute = sdc_conv_compute_dtype(c), .opset = c->target.opset}};
    if ((s = image_size(c, &st.opt.image_h, &st.opt.image_w))) return s;
    sdc_component comp;
    if ((s = sdc_component_open(c->src, sub, &comp, c->err))) return s;
    st.comp = &comp;
    char describe[4600];
    snprintf(describe, sizeof describe, ": images %dx%d (%s)", st.opt.image_h, st.opt.image_w,
             sdc_weights_describe(comp.weights));
    sdc_conv_docs docs = {.inputs = INPUT_DOCS, .outputs = OUTPUT_DOCS, .license = SDC_CONV_LICENSE_SD}; /* always OpenRAIL, as the anchor */
    /* as the anchor, which compares concept_scores only: the thresholded outputs could flip
       between fp16 and fp32 for a score within rounding of 0 */
    sdc_conv_check_hint hint = {.only_output = "concept_scores"};
    s = sdc_conv_emit(c, &(sdc_conv_package){.path = path, .what = sub, .describe = describe, .docs = &docs,
                                             .build = build_safety, .state = &st, .hint = &hint});
    sdc_component_close(&comp);
    return s;
}
