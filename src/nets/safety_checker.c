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
 *   filtered_images = images, zeroed if has_nsfw     (torch's images[mask] = 0.0)
 *
 * with cos(x, Y) = normalize(x) · normalize(Y)ᵀ (F.normalize: x / max(‖x‖, 1e-12)).
 *
 * The vision tower is transformers' CLIPVisionTransformer: patch conv (stride = patch, no
 * bias) → (1, G², W) tokens, class embedding prepended, position embeddings added,
 * pre_layrnorm (sic), pre-LN encoder layers (no mask), post_layernorm on token 0. Everything,
 * the tail included, runs in the compute dtype with the anchor's ops op for op (issue 10: the
 * graph devices are known to run), down to the zeroing, whose non_zero/scatter_nd form has a
 * dimension only the run knows. Shapes in comments: T = G² + 1 tokens, W hidden size,
 * P projection size, N concepts, M special concepts.
 */
#include "nets/nets.h"

#include <math.h>

#include "io/fp16.h"
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
    return sdc_clip_layer_norm(&x->n, sdc_mil_slice_squeeze(g, h, 1, 0), PREFIX "post_layernorm", W, cfg->d.eps); /* (1, W) */
}

/* ---------------------------------------------------------------- the checker */

/* F.normalize's epsilon: max(‖v‖, NORMALIZE_EPS), in the graph and in the folded tables. */
#define NORMALIZE_EPS 1e-12f

/* The epsilon as a graph constant. In float16 coremltools keeps a non-zero constant that would
   round to 0 as the smallest subnormal (2^-24), and the anchor's graph has exactly that. */
static mil_var *norm_eps(sc_ctx *x) {
    return sdc_mil_const_scalar(x->n.g, x->n.t, x->n.t == SDC_DT_F16 ? 0x1p-24f : NORMALIZE_EPS);
}

/* The values of tensor `name` (numel n, shape checked by the caller's table_rows) as float32,
   in the graph's arena; NULL (error set) if one is not finite. */
static float *table_values(sc_ctx *x, const char *name, int rank, const int64_t *shape, uint64_t n) {
    const sdc_tensor *t;
    if (!sdc_mil_graph_ok(x->n.g) || x->n.err->code || sdc_weights_get(x->n.c->weights, name, rank, shape, &t, x->n.err))
        return NULL;
    float *v = sdc_arena_alloc(&x->n.g->arena, n * sizeof *v);
    if (!v) return sdc_mil_fail(x->n.g, SDC_E_NOMEM, "out of memory");
    for (uint64_t i = 0; i < n; i++)
        if (!isfinite(v[i] = sdc_tensor_get_f32(t, i))) {
            sdc_fail(x->n.err, SDC_E_FORMAT, "%s: tensor '%s' has a non-finite value", sdc_weights_describe(x->n.c->weights), name);
            return NULL;
        }
    return v;
}

/* cos(e, table) − thresholds as the anchor's graph has it: the trace's
   normalize(e) · normalize(table)ᵀ − thresholds, folded by coremltools at conversion into one
   linear op whose weight is the table with each row divided by max(‖row‖, NORMALIZE_EPS) (float32,
   then the compute dtype) and whose bias is −thresholds. In float16 the table is first
   rounded to float16: the anchor loads the pipeline in float16 and traces it cast back to
   float32, so its folded weights are these bytes exactly. e_n (1, P) → (1, rows). */
static mil_var *scores(sc_ctx *x, mil_var *e_n, const char *table, const char *thresholds, int64_t rows) {
    int64_t P = x->cfg->projection, ts[2] = {rows, P}, ws[1] = {rows};
    float *w = table_values(x, table, 2, ts, (uint64_t)(rows * P)), *b = table_values(x, thresholds, 1, ws, (uint64_t)rows);
    if (!w || !b) return NULL;
    for (int64_t i = 0; x->n.t == SDC_DT_F16 && i < rows * P; i++)
        if (!isfinite(w[i] = sdc_f16_to_f32(sdc_f32_to_f16(w[i])))) {
            sdc_fail(x->n.err, SDC_E_FORMAT, "%s: tensor '%s' has a value that overflows float16",
                     sdc_weights_describe(x->n.c->weights), table);
            return NULL;
        }
    for (int64_t r = 0; r < rows; r++) {
        float *row = w + r * P;
        double ss = 0;
        for (int64_t k = 0; k < P; k++) ss += (double)row[k] * row[k];
        float norm = (float)sqrt(ss);
        if (norm < NORMALIZE_EPS) norm = NORMALIZE_EPS;
        for (int64_t k = 0; k < P; k++) row[k] /= norm;
        b[r] = -b[r];
    }
    mil_graph *g = x->n.g;
    return sdc_mil_linear(g, e_n, sdc_mil_const_floats(g, x->n.t, 2, ts, w), sdc_mil_const_floats(g, x->n.t, 1, ws, b)); /* (1, rows) */
}

/* any(v > 0) over axis 1 of (1, K): greater → cast to the compute dtype → reduce_sum →
   greater, a BOOL [1] */
static mil_var *any_positive(sc_ctx *x, mil_var *v) {
    mil_graph *g = x->n.g;
    static const int32_t axis1[1] = {1};
    mil_var *pos = sdc_mil_cast(g, sdc_mil_greater(g, v, sdc_mil_const_scalar(g, x->n.t, 0.0f)), x->n.t); /* (1, K) */
    mil_var *count = sdc_mil_reduce(g, "reduce_sum", pos, 1, axis1, false);                                /* [1] */
    return sdc_mil_greater(g, count, sdc_mil_const_scalar(g, x->n.t, 0.0f));
}

/* images with every element zeroed when has_nsfw (BOOL (1, 1, 1, 1)), in the form torch's
   `images[mask] = 0.0` takes in the anchor's graph: the mask broadcast to the image, the
   coordinates of its set elements (non_zero, [?, 4]), and as many zeros written there
   (scatter_nd). The count is known only at run time: 0 for a safe image. */
static mil_var *zero_flagged(sc_ctx *x, mil_var *images, mil_var *has_nsfw) {
    mil_graph *g = x->n.g;
    const int64_t *is = images ? images->type.shape : NULL;
    if (!is) return NULL;
    int64_t to_image[4] = {1, is[1], is[2], is[3]};
    mil_var *mask = sdc_mil_cast(g, sdc_mil_tile(g, has_nsfw, to_image), SDC_DT_I32); /* (1, H, W, 3) */
    mil_var *where = sdc_mil_non_zero(g, mask);                                          /* [?, 4] */
    mil_var *count = sdc_mil_slice_squeeze(g, sdc_mil_shape(g, where), 0, 0);             /* rank 0 */
    mil_var *reps = sdc_mil_concat(g, 1, &count, 0);                                     /* [1] */
    /* torch's expand(-1) form: a count of -1 would mean "keep", i.e. 1 */
    static const int32_t one[1] = {1};
    reps = sdc_mil_select(g, sdc_mil_equal(g, reps, sdc_mil_const_int(g, -1)), sdc_mil_const_ints(g, 1, one), reps);
    int64_t s1[1] = {1};
    static const float zero[1] = {0.0f};
    mil_var *zeros = sdc_mil_tile_by(g, sdc_mil_const_floats(g, x->n.t, 1, s1, zero), reps); /* [?] */
    return sdc_mil_scatter_nd(g, images, where, zeros, "update");                            /* (1, H, W, 3) */
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
    int64_t P = cfg->projection, vp[2] = {P, cfg->d.hidden}, ps[1] = {P};
    /* visual_projection has no bias; torch's linear is traced with a zero one */
    float *zeros = sdc_arena_alloc(&g->arena, (size_t)P * sizeof *zeros);
    if (zeros) memset(zeros, 0, (size_t)P * sizeof *zeros);
    else sdc_mil_fail(g, SDC_E_NOMEM, "out of memory");
    mil_var *e = sdc_mil_linear(g, pooled, sdc_net_weight(&x->n, "visual_projection.weight", 2, vp),
                                zeros ? sdc_mil_const_floats(g, x->n.t, 1, ps, zeros) : NULL); /* (1, P) */
    /* F.normalize(e): e / max(‖e‖, eps), the norm tiled to e's shape */
    static const int32_t axis1[1] = {1};
    mil_var *norm = sdc_mil_maximum(g, sdc_mil_reduce(g, "reduce_l2_norm", e, 1, axis1, true), norm_eps(x)); /* (1, 1) */
    int64_t across[2] = {1, P};
    mil_var *e_n = sdc_mil_real_div(g, e, sdc_mil_tile(g, norm, across)); /* (1, P) */

    sdc_mil_scope(g, "special_care");
    mil_var *special = scores(x, e_n, "special_care_embeds", "special_care_embeds_weights", n_special); /* (1, M) */
    sdc_mil_scope(g, "concepts");
    mil_var *concepts = scores(x, e_n, "concept_embeds", "concept_embeds_weights", n_concepts); /* (1, N) */
    sdc_mil_scope(g, "special_care");
    special = sdc_mil_add(g, special, sdc_net_to_compute(&x->n, adjustment));
    mil_var *special_care = sdc_mil_cast(g, any_positive(x, special), x->n.t); /* [1] */
    mil_var *lift = sdc_mil_mul(g, special_care, sdc_mil_const_scalar(g, x->n.t, 0.01f));
    int64_t to_concepts[2] = {1, n_concepts};
    lift = sdc_mil_tile(g, sdc_mil_expand_dims(g, lift, 1, axis1), to_concepts); /* (1, N) */

    sdc_mil_scope(g, "concepts");
    mil_var *concept_scores = sdc_mil_add(g, concepts, lift); /* (1, N) */
    mil_var *has_nsfw = any_positive(x, concept_scores);    /* BOOL [1] */
    static const int32_t d1[1] = {1}, d2[1] = {2}, d3[1] = {3};
    has_nsfw = sdc_mil_expand_dims(g, sdc_mil_expand_dims(g, sdc_mil_expand_dims(g, has_nsfw, 1, d1), 1, d2), 1, d3); /* (1, 1, 1, 1) */

    sdc_mil_scope(g, "filter");
    mil_var *filtered = zero_flagged(x, sdc_net_to_compute(&x->n, images), has_nsfw); /* (1, H, W, 3) */

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
