/* unet.c — --convert-unet: the UNet, and the SDXL refiner with --refiner-version. */
#include "convert/chunk.h"

static const char *const UNET_INPUT_DOCS[] = {
    "The low resolution latent feature maps being denoised through reverse diffusion",
    "A value emitted by the associated scheduler object to condition the model on a given noise schedule",
    ("Output embeddings from the associated text_encoder model to condition the generated image on text. "
     "A maximum of 77 tokens (~40 words) are allowed. Longer text is truncated."),
    "Additional time ids (original size, crop offsets, target size or aesthetic score) for SDXL",
    "Additional pooled text embeddings from text_encoder_2 for SDXL",
};
/* The anchor's UNet (base, refiner, control-unet) says "text or other images" where its other
   components say "and/or" (emit.c's default); kept word for word. */
static const char *const UNET_DESCRIPTION =
    "Stable Diffusion generates images conditioned on text or other images as input through the diffusion "
    "process. Please refer to https://arxiv.org/abs/2112.10752 for details.";
static const char *const UNET_OUTPUT_DOCS[] = {"Same shape and dtype as the `sample` input. "
                                               "The predicted noise to facilitate the reverse diffusion (denoising) process"};

/* K of encoder_hidden_states: --text-token-sequence-length, else the text encoder's
   max_position_embeddings (77), as the anchor. */
static sdc_status context_length(const sdc_conv_ctx *c, const sdc_source *src, int64_t *k) {
    *k = c->job->text_token_sequence_length;
    if (*k) return SDC_OK;
    const char *te = sdc_source_has(src, "text_encoder") ? "text_encoder" : "text_encoder_2";
    return sdc_pipeline_int(src, te, "max_position_embeddings", 77, k, c->err);
}

/* An SDXL UNet without --xl-version would get no time_ids/text_embeds contract the Swift
   pipeline can rely on, and --xl-version on an SD 1/2 UNet is a typo: both are refused. */
static sdc_status check_xl(const sdc_conv_ctx *c, const sdc_source *src, const sdc_unet_info *info, const char *id) {
    bool xl = info->text_time || sdc_pipeline_is_xl(src);
    if (xl && !c->job->xl_version)
        return sdc_fail(c->err, SDC_E_ARG,
                        "%s is an SDXL model (its UNet takes time_ids and text_embeds); add --xl-version", id);
    if (!xl && c->job->xl_version)
        return sdc_fail(c->err, SDC_E_ARG, "--xl-version given, but %s is not an SDXL model", id);
    if (xl && !info->text_time)
        return sdc_fail(c->err, SDC_E_UNSUPPORTED, "%s: an SDXL pipeline whose UNet has no addition_embed_type "
                        "'text_time' is not supported", id);
    return SDC_OK;
}

typedef struct unet_state {
    const sdc_component *comp;
    sdc_unet_options opt;
} unet_state;

/* The reference for --check-output-correctness: float32, and ORIGINAL attention (the plain
   matmul form, no per-head split einsums). */
static sdc_status build_unet(const sdc_conv_ctx *c, void *state, bool reference, mil_graph **out) {
    const unet_state *u = state;
    sdc_unet_options opt = u->opt;
    if (reference) sdc_conv_unet_reference(&opt);
    return sdc_build_unet(u->comp, &opt, out, c->err);
}

static sdc_status convert_from(const sdc_conv_ctx *c, const sdc_source *src, const char *submodule, const char *id) {
    char path[4096];
    sdc_status s = sdc_conv_package_path(c, submodule, path, sizeof path);
    if (s) return s;
    if (!sdc_conv_chunks_missing(c, path) && sdc_conv_skip(c, path, submodule))
        return SDC_OK;
    sdc_component comp;
    if ((s = sdc_component_open(src, "unet", &comp, c->err))) return s;
    sdc_unet_info info;
    unet_state st = {.comp = &comp,
                     .opt = {
                         .compute = sdc_conv_compute_dtype(c),
                         .opset = c->target.opset,
                         .attention = c->job->attention,
                         .batch = c->job->unet_batch_one ? 1 : 2,
                         .context_dim = c->job->text_encoder_hidden_size,
                         /* the base UNet only: the anchor's refiner has no ControlNet inputs */
                         .controlnet_inputs = c->job->unet_support_controlnet && src == c->src,
                     }};
    sdc_unet_options *opt = &st.opt;
    /* the SDXL rule and the latent size were checked by sdc_conv_unet_prepare */
    if (!(s = sdc_unet_describe(&comp, false, &info, c->err)) &&
        !(s = sdc_conv_latent_size(c, src, 64, &opt->latent_h, &opt->latent_w)) &&
        !(s = context_length(c, src, &opt->context_len))) {
        opt->n_time_ids = sdc_pipeline_requires_aesthetics_score(src) ? 5 : 6;
        for (int i = 0; i < info.notes.n; i++) sdc_conv_log(c, SDC_LOG_WARNING, "%s", info.notes.line[i]);
        char describe[4600];
        snprintf(describe, sizeof describe, ": %s, latent %dx%d, batch %d (%s)", id, opt->latent_h, opt->latent_w,
                 opt->batch, sdc_weights_describe(comp.weights));
        /* sample, timestep, encoder_hidden_states (+ time_ids, text_embeds); residual inputs undocumented */
        sdc_conv_docs docs = {.inputs = UNET_INPUT_DOCS, .outputs = UNET_OUTPUT_DOCS, .version = id,
                          .short_description = UNET_DESCRIPTION,
                          .n_inputs = info.text_time ? 5 : 3, .n_outputs = 1};
        sdc_conv_check_hint hint = {0};
        sdc_conv_package package = {.path = path, .what = submodule, .describe = describe, .docs = &docs,
                                    .build = build_unet, .state = &st, .hint = &hint};
        if (!(s = sdc_pipeline_first_timestep(src, &hint.timestep, c->err))) s = sdc_conv_emit(c, &package);
        if (!s) s = sdc_conv_emit_chunks(c, &package); /* --chunk-unet */
    }
    sdc_component_close(&comp);
    return s;
}

/* What would refuse one source's UNet, from its config alone: the SDXL rule and a latent size
   its downsamplers cannot halve. */
static sdc_status check_source(const sdc_conv_ctx *c, const sdc_source *src, const char *id) {
    sdc_component comp;
    sdc_unet_info info;
    int h, w;
    sdc_status s = sdc_component_open(src, "unet", &comp, c->err);
    if (!s && !(s = sdc_unet_describe(&comp, false, &info, c->err)) && !(s = check_xl(c, src, &info, id)) &&
        !(s = sdc_conv_latent_size(c, src, 64, &h, &w)))
        s = sdc_conv_check_latent(c, src, info.downsamples, h, w);
    sdc_component_close(&comp);
    return s;
}

/* Before anything is converted: what would refuse the UNet or the refiner, so that a refusal
   (a --refiner-version that is not SDXL, a --latent-h the UNet cannot take) comes before any
   package (the VAE's, the base UNet's) is written. */
sdc_status sdc_conv_unet_prepare(const sdc_conv_ctx *c) {
    if (c->job->unet_support_controlnet && c->job->xl_version)
        return sdc_fail(c->err, SDC_E_UNSUPPORTED, "--unet-support-controlnet is for SD 1.x and 2.x (as with the anchor)");
    sdc_status s = check_source(c, c->src, c->job->model_version);
    if (s || !c->job->refiner_version) return s;
    sdc_source refiner;
    if ((s = sdc_source_open(c->job->refiner_version, &refiner, c->err))) return s;
    s = check_source(c, &refiner, c->job->refiner_version);
    sdc_source_close(&refiner);
    return s;
}

sdc_status sdc_conv_unet(const sdc_conv_ctx *c) {
    /* --unet-support-controlnet writes "control-unet" (Swift's ControlledUnet) */
    sdc_status s = convert_from(c, c->src, c->job->unet_support_controlnet ? "control-unet" : "unet",
                                c->job->model_version);
    if (s || !c->job->refiner_version) return s;
    /* The refiner is named after the base model (…_<base>_refiner.mlpackage); its metadata
       version is the refiner id, as the anchor writes them. */
    sdc_source refiner;
    if ((s = sdc_source_open(c->job->refiner_version, &refiner, c->err))) return s;
    s = convert_from(c, &refiner, "refiner", c->job->refiner_version);
    sdc_source_close(&refiner);
    return s;
}
