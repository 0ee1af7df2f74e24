/*
 * safety_checker.c — diffusers StableDiffusionSafetyChecker (sd-architectures.md §8) with the
 * branch-free forward the anchor traces (anchor §4.6):
 *
 *   pooled = CLIP vision tower(clip_input)          post_layernorm of the class token
 *   e      = visual_projection(pooled)              no bias
 *   special_scores = cos(e, special_care_embeds) − special_care_embeds_weights + adjustment
 *   special_care   = any(special_scores > 0)        as 0/1
 *   concept_scores = cos(e, concept_embeds) − concept_embeds_weights + 0.01 · special_care
 *   has_nsfw       = any(concept_scores > 0)        as 0/1, shaped (1, 1, 1, 1)
 *   filtered_images = images · (1 − has_nsfw)       unsafe images become zeros
 *
 * with cos(x, Y) = normalize(x) · normalize(Y)ᵀ (F.normalize: x / max(‖x‖, 1e-12)).
 *
 * The vision tower is transformers' CLIPVisionTransformer: patch conv (stride = patch, no
 * bias) → (1, G², W) tokens, class embedding prepended, position embeddings added,
 * pre_layrnorm (sic), pre-LN encoder layers (no mask), post_layernorm on token 0. It runs in
 * the compute dtype; the cosine/threshold tail (a few thousand flops) runs in float32 so the
 * decision near 0 is not fp16 rounding noise. Shapes in comments: T = G² + 1 tokens,
 * W hidden size, P projection size, N concepts, M special concepts.
 */
#include "nets/nets.h"

#include <math.h>

#include "nets/clip.h"
#include "nets/config_tables.h"

#define PREFIX "vision_model.vision_model."

typedef struct vision_config {
    clip_dims d;
    int64_t image_size, patch, channels, projection;
} vision_config;

typedef struct sc_ctx {
    sdc_net n;
    const vision_config *cfg;
} sc_ctx;

/* ---------------------------------------------------------------- config */

/* The vision tower's settings as transformers' CLIPConfig resolves them: vision_config (only
   the values that differ from CLIPVisionConfig's defaults are written), unless the file has
   vision_config_dict, which older transformers wrote beside it: then CLIPConfig completes that
   dict with CLIPVisionConfig's defaults and it replaces every value of vision_config. Every
   key of the file and of both objects is checked against the config tables first. Returns a
   new reference in *out. */
static sdc_status vision_settings(const sdc_component *c, json_t **out, sdc_err *err) {
    *out = NULL;
    sdc_status s = sdc_config_check_class(c, c->config, "", &sdc_clip_config_class, NULL, err);
    if (s) return s;
    json_t *vc = json_object_get(c->config, "vision_config");
    json_t *dict = json_object_get(c->config, "vision_config_dict");
    if (json_is_object(vc) && (s = sdc_config_check_class(c, vc, "vision_config", &sdc_clip_vision_config_class, NULL, err)))
        return s;
    if (json_is_object(dict) &&
        (s = sdc_config_check_class(c, dict, "vision_config_dict", &sdc_clip_vision_config_class, NULL, err)))
        return s;
    json_t *use = json_is_object(dict) ? dict : vc;
    *out = json_is_object(use) ? json_deep_copy(use) : json_object();
    if (!*out) return sdc_fail(err, SDC_E_NOMEM, "out of memory");
    return SDC_OK;
}

/* transformers CLIPConfig: the vision tower's settings (vision_settings), projection_dim at
   the top. */
static sdc_status read_config(const sdc_component *c, vision_config *cfg, sdc_err *err) {
    memset(cfg, 0, sizeof *cfg);
    json_t *vc;
    sdc_status s = vision_settings(c, &vc, err);
    if (s) return s;
    const char *what = "vision_config ";
    if (!(s = sdc_clip_read_positive(c, c->config, "", "projection_dim", 512, 1 << 16, &cfg->projection, err)) &&
        !(s = sdc_clip_read_dims(c, vc, what, &CLIP_VISION_DEFAULTS, &cfg->d, err)) &&
        !(s = sdc_clip_read_positive(c, vc, what, "image_size", 224, 4096, &cfg->image_size, err)) &&
        !(s = sdc_clip_read_positive(c, vc, what, "patch_size", 32, 4096, &cfg->patch, err)))
        s = sdc_clip_read_positive(c, vc, what, "num_channels", 3, 64, &cfg->channels, err);
    json_decref(vc);
    if (s) return s;
    if (cfg->patch > cfg->image_size)
        return sdc_fail(err, SDC_E_FORMAT, "%s: vision_config patch_size %lld exceeds image_size %lld", c->config_path,
                        (long long)cfg->patch, (long long)cfg->image_size);
    return SDC_OK;
}

/* Rows of a [rows, cols] embedding table whose width must be `cols` (concept tables). */
static sdc_status table_rows(const sdc_component *c, const char *name, int64_t cols, int64_t *rows, sdc_err *err) {
    const sdc_tensor *t = sdc_weights_find(c->weights, name);
    if (!t) return sdc_fail(err, SDC_E_NOTFOUND, "%s: no tensor '%s'", sdc_weights_describe(c->weights), name);
    if (t->rank != 2 || t->shape[1] != cols || t->shape[0] < 1 || t->shape[0] > 4096)
        return sdc_fail(err, SDC_E_FORMAT, "%s: tensor '%s' must be [rows, %lld] with 1..4096 rows",
                        sdc_weights_describe(c->weights), name, (long long)cols);
    *rows = t->shape[0];
    return SDC_OK;
}

/* ---------------------------------------------------------------- the vision tower */

/* clip_input (1, C, S, S) → pooled (1, W) */
static mil_var *vision_tower(sc_ctx *x, mil_var *pixels) {
    mil_graph *g = x->n.g;
    const vision_config *cfg = x->cfg;
    int64_t W = cfg->d.hidden, G = cfg->image_size / cfg->patch, T = G * G + 1;
    sdc_mil_scope(g, "embeddings");
    static const int pad0[4] = {0, 0, 0, 0};
    int64_t ps[4] = {W, cfg->channels, cfg->patch, cfg->patch};
    mil_var *h = sdc_mil_conv(g, sdc_net_to_compute(&x->n, pixels), sdc_net_weight(&x->n, PREFIX "embeddings.patch_embedding.weight", 4, ps),
                          NULL, (int)cfg->patch, pad0, 1); /* (1, W, G, G) */
    int64_t flat[3] = {1, W, G * G};
    static const int32_t to_tokens[3] = {0, 2, 1};
    h = sdc_mil_transpose(g, sdc_mil_reshape(g, h, 3, flat), 3, to_tokens); /* (1, G², W) */
    mil_var *cls = NULL, *pos = NULL;
    const sdc_tensor *t;
    int64_t cs[1] = {W}, cls_shape[3] = {1, 1, W}, pshape[2] = {T, W};
    if (sdc_mil_graph_ok(g) && !x->n.err->code &&
        !sdc_weights_get(x->n.c->weights, PREFIX "embeddings.class_embedding", 1, cs, &t, x->n.err))
        cls = sdc_mil_const_weight(g, t, x->n.t, 3, cls_shape, 0); /* (1, 1, W) */
    pos = sdc_net_weight(&x->n, PREFIX "embeddings.position_embedding.weight", 2, pshape);
    mil_var *parts[2] = {cls, h};
    h = sdc_mil_add(g, sdc_mil_concat(g, 2, parts, 1), pos); /* (1, T, W) */
    h = sdc_clip_layer_norm(&x->n, h, PREFIX "pre_layrnorm", W, cfg->d.eps);
    char layer[128];
    for (int64_t l = 0; l < cfg->d.layers; l++) {
        sdc_mil_scope(g, "layers_%lld", (long long)l);
        snprintf(layer, sizeof layer, PREFIX "encoder.layers.%lld", (long long)l);
        h = sdc_clip_encoder_layer(&x->n, h, layer, &cfg->d, NULL); /* no mask in the vision tower */
    }
    sdc_mil_scope(g, "pool");
    mil_var *first = sdc_clip_layer_norm(&x->n, sdc_mil_slice(g, h, 1, 0, 1), PREFIX "post_layernorm", W, cfg->d.eps); /* (1, 1, W) */
    int64_t pooled[2] = {1, W};
    return sdc_mil_reshape(g, first, 2, pooled);
}

/* ---------------------------------------------------------------- the checker */

/* A weight in the compute dtype, then float32 for the tail. */
static mil_var *weight_f32(sc_ctx *x, const char *name, int rank, const int64_t *shape) {
    mil_var *w = sdc_net_weight(&x->n, name, rank, shape);
    return w && w->type.dtype != SDC_DT_F32 ? sdc_mil_cast(x->n.g, w, SDC_DT_F32) : w;
}

/* F.normalize over the last axis, float32: x / max(‖x‖, 1e-12) */
static mil_var *normalize(mil_graph *g, mil_var *v) {
    static const int32_t last[1] = {-1};
    mil_var *norm = sdc_mil_sqrt(g, sdc_mil_reduce(g, "reduce_sum", sdc_mil_mul(g, v, v), 1, last, true));
    return sdc_mil_real_div(g, v, sdc_mil_maximum(g, norm, sdc_mil_const_scalar(g, SDC_DT_F32, 1e-12f)));
}

/* any(v > 0) over the last axis as 0.0 / 1.0, keeping the axis */
static mil_var *any_positive(mil_graph *g, mil_var *v) {
    static const int32_t last[1] = {-1};
    mil_var *pos = sdc_mil_cast(g, sdc_mil_greater(g, v, sdc_mil_const_scalar(g, SDC_DT_F32, 0.0f)), SDC_DT_F32);
    return sdc_mil_reduce(g, "reduce_max", pos, 1, last, true);
}

/* cos(e, table) − thresholds: e (1, P) float32 normalised → (1, rows) */
static mil_var *scores(sc_ctx *x, mil_var *e_n, const char *table, const char *thresholds, int64_t rows) {
    mil_graph *g = x->n.g;
    int64_t P = x->cfg->projection, ts[2] = {rows, P}, ws[1] = {rows};
    mil_var *emb = normalize(g, weight_f32(x, table, 2, ts));                    /* (rows, P) */
    mil_var *cos = sdc_mil_matmul(g, e_n, emb, false, true);                          /* (1, rows) */
    return sdc_mil_sub(g, cos, weight_f32(x, thresholds, 1, ws));
}

static void build(sc_ctx *x, const sdc_safety_checker_options *opt, int64_t n_concepts, int64_t n_special) {
    mil_graph *g = x->n.g;
    const vision_config *cfg = x->cfg;
    int64_t cs[4] = {1, cfg->channels, cfg->image_size, cfg->image_size};
    int64_t is[4] = {1, opt->image_h, opt->image_w, 3}, as[1] = {1};
    mil_var *clip_input = sdc_mil_input(g, "clip_input", SDC_DT_F16, 4, cs);
    mil_var *images = sdc_mil_input(g, "images", SDC_DT_F16, 4, is);
    mil_var *adjustment = sdc_mil_input(g, "adjustment", SDC_DT_F16, 1, as);

    mil_var *pooled = vision_tower(x, clip_input); /* (1, W) */
    sdc_mil_scope(g, "projection");
    int64_t vp[2] = {cfg->projection, cfg->d.hidden};
    mil_var *e = sdc_mil_matmul(g, pooled, sdc_net_weight(&x->n, "visual_projection.weight", 2, vp), false, true); /* (1, P) */
    if (e && e->type.dtype != SDC_DT_F32) e = sdc_mil_cast(g, e, SDC_DT_F32);
    mil_var *e_n = normalize(g, e);

    sdc_mil_scope(g, "special_care");
    mil_var *special = scores(x, e_n, "special_care_embeds", "special_care_embeds_weights", n_special); /* (1, M) */
    special = sdc_mil_add(g, special, sdc_mil_cast(g, adjustment, SDC_DT_F32));
    mil_var *special_care = any_positive(g, special); /* (1, 1) */

    sdc_mil_scope(g, "concepts");
    mil_var *concept_scores = scores(x, e_n, "concept_embeds", "concept_embeds_weights", n_concepts); /* (1, N) */
    concept_scores = sdc_mil_add(g, concept_scores, sdc_mil_mul(g, special_care, sdc_mil_const_scalar(g, SDC_DT_F32, 0.01f)));
    int64_t one4[4] = {1, 1, 1, 1};
    mil_var *has_nsfw = sdc_mil_reshape(g, any_positive(g, concept_scores), 4, one4); /* (1, 1, 1, 1) */

    sdc_mil_scope(g, "filter");
    mil_var *keep = sdc_mil_sub(g, sdc_mil_const_scalar(g, SDC_DT_F32, 1.0f), has_nsfw);
    mil_var *filtered = sdc_mil_mul(g, sdc_mil_cast(g, images, SDC_DT_F32), keep); /* (1, H, W, 3) */

    sdc_mil_scope(g, "out");
    sdc_net_output_f32(&x->n, filtered, "filtered_images");
    sdc_net_output_f32(&x->n, has_nsfw, "has_nsfw_concepts");
    sdc_net_output_f32(&x->n, concept_scores, "concept_scores");
}

sdc_status sdc_build_safety_checker(const sdc_component *c, const sdc_safety_checker_options *opt,
                                    mil_graph **out, sdc_err *err) {
    vision_config cfg;
    sdc_status s = read_config(c, &cfg, err);
    if (s) return s;
    int64_t n_concepts, n_special;
    if ((s = table_rows(c, "concept_embeds", cfg.projection, &n_concepts, err)) ||
        (s = table_rows(c, "special_care_embeds", cfg.projection, &n_special, err)))
        return s;
    if (opt->image_h < 1 || opt->image_w < 1 || opt->image_h > 16384 || opt->image_w > 16384)
        return sdc_fail(err, SDC_E_ARG, "%s: image size %dx%d must be within 1..16384", c->config_path, opt->image_h,
                        opt->image_w);
    if (opt->compute != SDC_DT_F16 && opt->compute != SDC_DT_F32)
        return sdc_fail(err, SDC_E_INTERNAL, "safety checker: compute dtype must be F16 or F32");
    mil_graph *g = sdc_mil_graph_new(opt->opset);
    if (!g) return sdc_fail(err, SDC_E_NOMEM, "out of memory");
    sc_ctx x = {.n = {g, c, opt->compute, err}, .cfg = &cfg};
    build(&x, opt, n_concepts, n_special);
    return sdc_net_finish(&x.n, out);
}
