/*
 * controlnet.c — --convert-controlnet ID...: each ControlNet as
 * <-o>/ControlNet_<id, '/' → '_'>.mlpackage (anchor §3, §4.3), for SD 1.x/2.x pipelines.
 */
#include "convert/convert.h"


static const char *const CONTROLNET_DESCRIPTION =
    "ControlNet is a neural network structure to control diffusion models by adding extra conditions. Please refer "
    "to https://arxiv.org/abs/2302.05543 for details.";

static const char *const INPUT_DOCS[] = {
    "The low resolution latent feature maps being denoised through reverse diffusion",
    "A value emitted by the associated scheduler object to condition the model on a given noise schedule",
    "Output embeddings from the associated text_encoder model to condition the generated image on text",
    "An additional input image for ControlNet to condition the generated images (channels first, in [0, 1])",
};

typedef struct cn_state {
    const sdc_component *comp;
    sdc_unet_options opt;
} cn_state;

static sdc_status build_cn(const sdc_conv_ctx *c, void *state, bool reference, mil_graph **out) {
    const cn_state *st = state;
    sdc_unet_options opt = st->opt;
    if (reference) sdc_conv_unet_reference(&opt);
    return sdc_build_controlnet(st->comp, &opt, out, c->err);
}

static sdc_status convert_one(const sdc_conv_ctx *c, const char *id) {
    char name[600], path[4096], base[512];
    snprintf(name, sizeof name, "ControlNet_%s", id);
    for (char *p = name; *p; p++)
        if (*p == '/') *p = '_';
    if (strlen(name) + 10 >= sizeof name) return sdc_fail(c->err, SDC_E_ARG, "ControlNet id too long: %s", id);
    strcat(name, ".mlpackage");
    sdc_status s = sdc_conv_output_path(c, name, path, sizeof path);
    if (s) return s;
    if (sdc_conv_skip(c, path, name)) return SDC_OK;
    sdc_source src;
    if ((s = sdc_source_open(id, &src, c->err))) return s;
    sdc_pipeline_card_base_model(&src, base, sizeof base);
    if (base[0] && strcmp(base, c->job->model_version)) {
        sdc_source_close(&src);
        return sdc_fail(c->err, SDC_E_ARG, "ControlNet %s was trained for base model %s, not %s", id, base,
                        c->job->model_version);
    }
    if (!base[0])
        sdc_conv_log(c, SDC_LOG_WARNING, "ControlNet %s does not name its base model; make sure it was trained for %s", id,
                 c->job->model_version);
    sdc_component comp;
    /* diffusers ControlNet repos keep config.json at the root; a pipeline-style folder has controlnet/ */
    if ((s = sdc_component_open(&src, sdc_source_has(&src, "") ? "" : "controlnet", &comp, c->err))) {
        sdc_source_close(&src);
        return s;
    }
    int64_t hidden = 0, positions = 77;
    cn_state st = {.comp = &comp, .opt = {.compute = sdc_conv_compute_dtype(c), .opset = c->target.opset,
                                          .attention = c->job->attention, .batch = 2}};
    sdc_unet_info info;
    if (!(s = sdc_unet_describe(&comp, true, &info, c->err)) && info.text_time)
        s = sdc_fail(c->err, SDC_E_UNSUPPORTED, "%s: SDXL ControlNets are not supported (as with the anchor)", id);
    if (!s && !(s = sdc_conv_latent_size(c, c->src, 64, &st.opt.latent_h, &st.opt.latent_w)) &&
        !(s = sdc_conv_check_latent(c, c->src, info.downsamples, st.opt.latent_h, st.opt.latent_w)) &&
        !(s = sdc_pipeline_int(c->src, "text_encoder", "hidden_size", 0, &hidden, c->err)) &&
        !(s = sdc_pipeline_int(c->src, "text_encoder", "max_position_embeddings", 77, &positions, c->err))) {
        /* the anchor: encoder_hidden_states channels from the text encoder's hidden_size */
        st.opt.context_dim = c->job->text_encoder_hidden_size ? c->job->text_encoder_hidden_size : hidden;
        st.opt.context_len = c->job->text_token_sequence_length ? c->job->text_token_sequence_length : positions;
        char describe[4600];
        snprintf(describe, sizeof describe, ": %s, latent %dx%d (%s)", id, st.opt.latent_h, st.opt.latent_w,
                 sdc_weights_describe(comp.weights));
        sdc_conv_docs docs = {.inputs = INPUT_DOCS, .version = id, .license = SDC_CONV_LICENSE_SD,
                          .short_description = CONTROLNET_DESCRIPTION, .n_inputs = 4};
        sdc_conv_check_hint hint = {0};
        if (!(s = sdc_pipeline_first_timestep(c->src, &hint.timestep, c->err)))
            s = sdc_conv_emit(c, &(sdc_conv_package){.path = path, .what = name, .describe = describe, .docs = &docs,
                                                     .build = build_cn, .state = &st, .hint = &hint});
    }
    sdc_component_close(&comp);
    sdc_source_close(&src);
    return s;
}

sdc_status sdc_conv_controlnets_preflight(const sdc_conv_ctx *c) {
    if (c->job->n_controlnet == 0)
        return sdc_fail(c->err, SDC_E_ARG, "--convert-controlnet needs at least one ControlNet (a folder or Hub id)");
    return SDC_OK;
}

sdc_status sdc_conv_controlnets(const sdc_conv_ctx *c) {
    if (sdc_pipeline_is_xl(c->src) || c->job->xl_version)
        return sdc_fail(c->err, SDC_E_UNSUPPORTED, "ControlNet conversion is for SD 1.x and 2.x pipelines (as with the anchor)");
    for (int i = 0; i < c->job->n_controlnet; i++) {
        sdc_status s = convert_one(c, c->job->controlnet[i]);
        if (s) return s;
    }
    return SDC_OK;
}
