/*
 * controlnet.c — --convert-controlnet ID...: each ControlNet as
 * <-o>/ControlNet_<id, '/' → '_'>.mlpackage (anchor §3, §4.3), for SD 1.x/2.x pipelines.
 */
#include "convert/convert.h"


static const char *const CONTROLNET_DESCRIPTION =
    "ControlNet is a neural network structure to control diffusion models by adding extra conditions. Please refer "
    "to https://arxiv.org/abs/2302.05543 for details.";
static const char *const LICENSE_SD = "OpenRAIL (https://huggingface.co/spaces/CompVis/stable-diffusion-license)";

static const char *const INPUT_DOCS[] = {
    "The low resolution latent feature maps being denoised through reverse diffusion",
    "A value emitted by the associated scheduler object to condition the model on a given noise schedule",
    "Output embeddings from the associated text_encoder model to condition the generated image on text",
    "An additional input image for ControlNet to condition the generated images (channels first, in [0, 1])",
};

/* The Hub card's base_model, when the folder has a README.md with YAML front matter. The anchor
   refuses a ControlNet trained for another base model. */
static void card_base_model(const sdc_source *cn, char *out, size_t size) {
    char path[4200];
    out[0] = 0;
    snprintf(path, sizeof path, "%s/README.md", cn->root);
    FILE *f = fopen(path, "r");
    if (!f) return;
    char line[1024];
    bool front = false;
    for (int n = 0; fgets(line, sizeof line, f) && n < 400; n++) {
        if (!strncmp(line, "---", 3)) {
            if (front) break;
            front = true;
            continue;
        }
        if (front && !strncmp(line, "base_model:", 11)) {
            char *v = line + 11;
            while (*v == ' ' || *v == '\t' || *v == '"' || *v == '\'') v++;
            size_t len = strcspn(v, "\"'\r\n \t");
            if (len < size) {
                memcpy(out, v, len);
                out[len] = 0;
            }
            break;
        }
    }
    fclose(f);
}

typedef struct cn_state {
    const sdc_component *comp;
    sdc_unet_options opt;
} cn_state;

static sdc_status build_cn(const conv_ctx *c, void *state, bool reference, mil_graph **out) {
    const cn_state *st = state;
    sdc_unet_options opt = st->opt;
    if (reference) {
        opt.compute = SDC_DT_F32;
        opt.attention = SDC_ATTN_ORIGINAL;
    }
    return sdc_build_controlnet(st->comp, &opt, out, c->err);
}

static sdc_status convert_one(const conv_ctx *c, const char *id) {
    char name[600], path[4096], base[512];
    snprintf(name, sizeof name, "ControlNet_%s", id);
    for (char *p = name; *p; p++)
        if (*p == '/') *p = '_';
    if (strlen(name) + 10 >= sizeof name) return sdc_fail(c->err, SDC_E_ARG, "ControlNet id too long: %s", id);
    strcat(name, ".mlpackage");
    sdc_status s = conv_output_path(c, name, path, sizeof path);
    if (s) return s;
    if (!c->job->check_output_correctness && conv_exists_skip(c, path, name)) return SDC_OK;
    sdc_source src;
    if ((s = sdc_source_open(id, &src, c->err))) return s;
    card_base_model(&src, base, sizeof base);
    if (base[0] && strcmp(base, c->job->model_version)) {
        sdc_source_close(&src);
        return sdc_fail(c->err, SDC_E_ARG, "ControlNet %s was trained for base model %s, not %s", id, base,
                        c->job->model_version);
    }
    if (!base[0])
        conv_log(c, SDC_LOG_WARNING, "ControlNet %s does not name its base model; make sure it was trained for %s", id,
                 c->job->model_version);
    sdc_component comp;
    /* diffusers ControlNet repos keep config.json at the root; a pipeline-style folder has controlnet/ */
    if ((s = sdc_component_open(&src, sdc_source_has(&src, "") ? "" : "controlnet", &comp, c->err))) {
        sdc_source_close(&src);
        return s;
    }
    int64_t hidden = 0, positions = 77;
    cn_state st = {.comp = &comp, .opt = {.compute = conv_compute_dtype(c), .opset = c->target.opset,
                                          .attention = c->job->attention, .batch = 2}};
    sdc_unet_info info;
    if (!(s = sdc_unet_describe(&comp, true, &info, c->err)) && info.text_time)
        s = sdc_fail(c->err, SDC_E_UNSUPPORTED, "%s: SDXL ControlNets are not supported (as with the anchor)", id);
    if (!s && !(s = conv_latent_size(c, c->src, 64, &st.opt.latent_h, &st.opt.latent_w)) &&
        !(s = conv_pipeline_int(c, c->src, "text_encoder", "hidden_size", 0, &hidden)) &&
        !(s = conv_pipeline_int(c, c->src, "text_encoder", "max_position_embeddings", 77, &positions))) {
        /* the anchor: encoder_hidden_states channels from the text encoder's hidden_size */
        st.opt.context_dim = c->job->text_encoder_hidden_size ? c->job->text_encoder_hidden_size : hidden;
        st.opt.context_len = c->job->text_token_sequence_length ? c->job->text_token_sequence_length : positions;
        conv_log(c, SDC_LOG_INFO, "converting ControlNet %s: latent %dx%d (%s)", id, st.opt.latent_h, st.opt.latent_w,
                 sdc_weights_describe(comp.weights));
        conv_docs docs = {.inputs = INPUT_DOCS, .version = id, .license = LICENSE_SD,
                          .short_description = CONTROLNET_DESCRIPTION, .n_inputs = 4};
        conv_check_hint hint = {.timestep = conv_first_timestep(c->src, c->err)};
        s = c->err->code ? c->err->code : conv_emit(c, path, name, &docs, build_cn, &st, &hint);
    }
    sdc_component_close(&comp);
    sdc_source_close(&src);
    return s;
}

sdc_status conv_controlnets(const conv_ctx *c) {
    if (conv_looks_xl(c->src) || c->job->xl_version)
        return sdc_fail(c->err, SDC_E_UNSUPPORTED, "ControlNet conversion is for SD 1.x and 2.x pipelines (as with the anchor)");
    for (int i = 0; i < c->job->n_controlnet; i++) {
        sdc_status s = convert_one(c, c->job->controlnet[i]);
        if (s) return s;
    }
    return SDC_OK;
}
