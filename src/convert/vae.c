/*
 * vae.c — --convert-vae-decoder and --convert-vae-encoder (anchor §4.4, §4.5, §8),
 * with --custom-vae-version replacing the pipeline's VAE.
 *
 * Precision, as the anchor: the decoder takes `z` in float16 and computes at
 * --compute-precision, except with --xl-version (and no --custom-vae-version) where input and
 * compute are float32 (SDXL's VAE overflows in fp16); the encoder is float32 in and inside
 * whenever --xl-version.
 */
#include "convert/convert.h"

static const char *const DECODER_INPUT_DOCS[] = {
    "The denoised latent embeddings from the unet model after the last step of reverse diffusion"};
static const char *const DECODER_OUTPUT_DOCS[] = {"Generated image normalized to range [-1, 1]"};
static const char *const ENCODER_INPUT_DOCS[] = {
    "The input image to base the initial latents on normalized to range [-1, 1]"};
static const char *const ENCODER_OUTPUT_DOCS[] = {
    "The latent embeddings from the unet model from the input image: the mean channels, then the log-variance "
    "channels"};

sdc_status sdc_conv_vae_open(const sdc_conv_ctx *c, sdc_component *out) {
    memset(out, 0, sizeof *out); /* closable whatever fails */
    const char *custom = c->job->custom_vae_version;
    if (!custom) {
        if (!sdc_source_has(c->src, "vae"))
            return sdc_fail(c->err, SDC_E_NOTFOUND, "%s: the pipeline has no vae", c->src->root);
        return sdc_component_open(c->src, "vae", out, c->err);
    }
    /* A custom VAE is a pipeline-like folder with vae/, or a bare AutoencoderKL repository
       with config.json at its root (e.g. madebyollin/sdxl-vae-fp16-fix). */
    sdc_source vae;
    sdc_status s = sdc_source_open(custom, &vae, c->err);
    if (s) return s;
    if (sdc_source_has(&vae, "vae"))
        s = sdc_component_open(&vae, "vae", out, c->err);
    else if (sdc_source_has(&vae, ""))
        s = sdc_component_open(&vae, "", out, c->err);
    else
        s = sdc_fail(c->err, SDC_E_NOTFOUND, "--custom-vae-version %s: %s has neither vae/ nor config.json", custom,
                     vae.root);
    sdc_source_close(&vae);
    return s;
}

/* Latent size: --latent-h/-w, else the UNet's sample_size, else the VAE's sample_size / scale
   when the pipeline has no UNet. */
static sdc_status vae_latent_size(const sdc_conv_ctx *c, const sdc_vae_info *vae, int *h, int *w) {
    return sdc_conv_latent_size(c, c->src, vae->sample_size / vae->scale, h, w);
}

typedef struct vae_state {
    const sdc_component *comp;
    sdc_vae_options opt;
    bool decoder;
} vae_state;

/* The reference for --check-output-correctness is the same graph in float32 (the VAE has no
   ANE rewrite). */
static sdc_status build_vae(const sdc_conv_ctx *c, void *state, bool reference, mil_graph **out) {
    const vae_state *v = state;
    sdc_vae_options opt = v->opt;
    if (reference) opt.compute = SDC_DT_F32;
    return v->decoder ? sdc_build_vae_decoder(v->comp, &opt, out, c->err) : sdc_build_vae_encoder(v->comp, &opt, out, c->err);
}

static sdc_status convert(const sdc_conv_ctx *c, bool decoder) {
    const char *sub = decoder ? "vae_decoder" : "vae_encoder";
    char path[4096];
    sdc_status s = sdc_conv_package_path(c, sub, path, sizeof path);
    if (s) return s;
    if (sdc_conv_skip(c, path, sub)) return SDC_OK;
    if ((s = sdc_conv_check_xl(c, " (its VAE is converted in float32, as the anchor does, because it overflows in "
                                 "float16)", "")))
        return s;
    const sdc_job *job = c->job;
    bool fp32 = job->xl_version && (!decoder || !job->custom_vae_version);
    sdc_component comp;
    if ((s = sdc_conv_vae_open(c, &comp))) return s;
    vae_state st = {.comp = &comp,
                    .decoder = decoder,
                    .opt = {
                        .compute = fp32 ? SDC_DT_F32 : sdc_conv_compute_dtype(c),
                        .input = fp32 ? SDC_DT_F32 : SDC_DT_F16,
                        .opset = c->target.opset,
                    }};
    sdc_vae_options *opt = &st.opt;
    sdc_vae_info info;
    if (!(s = sdc_vae_describe(&comp, &info, c->err)) && !(s = vae_latent_size(c, &info, &opt->latent_h, &opt->latent_w))) {
        char describe[4600];
        snprintf(describe, sizeof describe, ": latent %dx%d, image %dx%d, %s in, %s compute%s (%s)",
                 opt->latent_h, opt->latent_w, opt->latent_h * info.scale, opt->latent_w * info.scale,
                 sdc_dtype_name(opt->input), sdc_dtype_name(opt->compute),
                 fp32 && job->precision != SDC_PRECISION_FLOAT32 ? " (SDXL VAE rule)" : "",
                 sdc_weights_describe(comp.weights));
        sdc_conv_docs docs = {.inputs = decoder ? DECODER_INPUT_DOCS : ENCODER_INPUT_DOCS,
                          .outputs = decoder ? DECODER_OUTPUT_DOCS : ENCODER_OUTPUT_DOCS};
        sdc_conv_check_hint hint = {0};
        s = sdc_conv_emit(c, &(sdc_conv_package){.path = path, .what = sub, .describe = describe, .docs = &docs,
                                                 .build = build_vae, .state = &st, .hint = &hint});
    }
    sdc_component_close(&comp);
    return s;
}

sdc_status sdc_conv_vae_decoder(const sdc_conv_ctx *c) { return convert(c, true); }
sdc_status sdc_conv_vae_encoder(const sdc_conv_ctx *c) { return convert(c, false); }
