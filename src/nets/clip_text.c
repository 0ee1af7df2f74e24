/*
 * clip_text.c — CLIP text encoder (SD 1.x CLIP-L, SD 2.x OpenCLIP-H, SDXL CLIP-L and bigG).
 *
 * Computes what transformers' CLIPTextModel computes (sd-architectures.md §5.1):
 *   x = token_embedding[ids] + position_embedding[0..S-1]
 *   each layer: x += out_proj(attn(layer_norm1(x)));  x += fc2(act(fc1(layer_norm2(x))))
 *   last_hidden_state = final_layer_norm(x); pooled = last_hidden_state[first EOS]
 * Shapes in comments: S tokens, W hidden size, H heads, D = W / H.
 */
#include "nets/nets.h"

#include <math.h>

typedef struct clip_config {
    int64_t hidden, intermediate, layers, heads, vocab, positions, projection, eos_token_id;
    double eps;
    bool quick_gelu;
    bool with_projection;
} clip_config;

typedef struct clip_ctx {
    mil_graph *g;
    const sdc_component *c;
    const clip_config *cfg;
    sdc_dtype t;
    sdc_err *err;
} clip_ctx;

static sdc_status read_positive(const sdc_component *c, const char *key, int64_t dflt, int64_t max, int64_t *out,
                                sdc_err *err) {
    sdc_status s = sdc_config_int(c, key, dflt, out, err);
    if (s) return s;
    if (*out < 1 || *out > max)
        return sdc_fail(err, SDC_E_FORMAT, "%s: '%s' is %lld, expected 1..%lld", c->config_path, key,
                        (long long)*out, (long long)max);
    return SDC_OK;
}

static sdc_status read_config(const sdc_component *c, clip_config *cfg, sdc_err *err) {
    sdc_status s;
    if ((s = read_positive(c, "hidden_size", 512, 1 << 16, &cfg->hidden, err)) ||
        (s = read_positive(c, "intermediate_size", 2048, 1 << 18, &cfg->intermediate, err)) ||
        (s = read_positive(c, "num_hidden_layers", 12, 1024, &cfg->layers, err)) ||
        (s = read_positive(c, "num_attention_heads", 8, 1024, &cfg->heads, err)) ||
        (s = read_positive(c, "vocab_size", 49408, 1 << 24, &cfg->vocab, err)) ||
        (s = read_positive(c, "max_position_embeddings", 77, 1 << 16, &cfg->positions, err)) ||
        (s = read_positive(c, "projection_dim", cfg->hidden, 1 << 16, &cfg->projection, err)) ||
        (s = sdc_config_int(c, "eos_token_id", 2, &cfg->eos_token_id, err)) ||
        (s = sdc_config_double(c, "layer_norm_eps", 1e-5, &cfg->eps, err)))
        return s;
    if (cfg->hidden % cfg->heads)
        return sdc_fail(err, SDC_E_FORMAT, "%s: hidden_size %lld is not a multiple of num_attention_heads %lld",
                        c->config_path, (long long)cfg->hidden, (long long)cfg->heads);
    if (!(cfg->eps > 0 && cfg->eps < 1))
        return sdc_fail(err, SDC_E_FORMAT, "%s: layer_norm_eps %g is out of range", c->config_path, cfg->eps);
    const char *act;
    if ((s = sdc_config_string(c, "hidden_act", "quick_gelu", &act, err))) return s;
    if (!strcmp(act, "quick_gelu"))
        cfg->quick_gelu = true;
    else if (!strcmp(act, "gelu"))
        cfg->quick_gelu = false;
    else
        return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: hidden_act '%s' is not supported (quick_gelu, gelu)",
                        c->config_path, act);
    cfg->with_projection = sdc_weights_find(c->weights, "text_projection.weight") != NULL;
    return SDC_OK;
}

/* A weight by its transformers name, checked for shape, as a const of the compute dtype. */
static mil_var *weight(clip_ctx *x, const char *name, int rank, const int64_t *shape) {
    if (!mil_graph_ok(x->g)) return NULL;
    const sdc_tensor *t;
    if (sdc_weights_get(x->c->weights, name, rank, shape, &t, x->err)) return NULL;
    return mil_const_weight(x->g, t, x->t, rank, shape, 0);
}

/* nn.Linear: x [1, S, in] → [1, S, out] */
static mil_var *linear(clip_ctx *x, mil_var *in, const char *prefix, int layer, int64_t n_in, int64_t n_out) {
    char wname[256], bname[256];
    snprintf(wname, sizeof wname, prefix, layer);
    snprintf(bname, sizeof bname, prefix, layer);
    strncat(wname, ".weight", sizeof wname - strlen(wname) - 1);
    strncat(bname, ".bias", sizeof bname - strlen(bname) - 1);
    int64_t ws[2] = {n_out, n_in}, bs[1] = {n_out};
    return mil_linear(x->g, in, weight(x, wname, 2, ws), weight(x, bname, 1, bs));
}

static mil_var *layer_norm(clip_ctx *x, mil_var *in, const char *prefix, int layer) {
    char wname[256], bname[256];
    snprintf(wname, sizeof wname, prefix, layer);
    snprintf(bname, sizeof bname, prefix, layer);
    strncat(wname, ".weight", sizeof wname - strlen(wname) - 1);
    strncat(bname, ".bias", sizeof bname - strlen(bname) - 1);
    int64_t s[1] = {x->cfg->hidden};
    const int32_t axes[1] = {-1};
    return mil_layer_norm(x->g, in, 1, axes, weight(x, wname, 1, s), weight(x, bname, 1, s), (float)x->cfg->eps);
}

/* [1, S, W] → [1, H, S, D] */
static mil_var *split_heads(clip_ctx *x, mil_var *in, int64_t seq) {
    const clip_config *cfg = x->cfg;
    int64_t shape[4] = {1, seq, cfg->heads, cfg->hidden / cfg->heads};
    static const int32_t perm[4] = {0, 2, 1, 3};
    return mil_transpose(x->g, mil_reshape(x->g, in, 4, shape), 4, perm);
}

/* causal mask [1, 1, S, S]: 0 on and below the diagonal, -1e4 above (fp16-safe, as the anchor) */
static mil_var *causal_mask(clip_ctx *x, int64_t seq) {
    float *m = sdc_malloc((size_t)(seq * seq) * sizeof *m);
    if (!m) return mil_fail(x->g, SDC_E_NOMEM, "out of memory");
    for (int64_t i = 0; i < seq; i++)
        for (int64_t j = 0; j < seq; j++) m[i * seq + j] = j > i ? -1e4f : 0.0f;
    int64_t shape[4] = {1, 1, seq, seq};
    mil_scope(x->g, "causal");
    mil_var *v = mil_const_floats(x->g, x->t, 4, shape, m);
    sdc_free(m);
    return v;
}

static mil_var *self_attention(clip_ctx *x, mil_var *h, int l, int64_t seq, mil_var *mask) {
    mil_graph *g = x->g;
    const clip_config *cfg = x->cfg;
    int64_t W = cfg->hidden, D = W / cfg->heads;
    const char *p = "text_model.encoder.layers.%d.self_attn.";
    char name[128];
    snprintf(name, sizeof name, "%sq_proj", p);
    mil_var *q = linear(x, h, name, l, W, W); /* [1, S, W] */
    snprintf(name, sizeof name, "%sk_proj", p);
    mil_var *k = linear(x, h, name, l, W, W);
    snprintf(name, sizeof name, "%sv_proj", p);
    mil_var *v = linear(x, h, name, l, W, W);
    q = mil_mul(g, q, mil_const_scalar(g, x->t, 1.0f / sqrtf((float)D))); /* scaled before QKᵀ, as CLIP */
    q = split_heads(x, q, seq);                                               /* [1, H, S, D] */
    k = split_heads(x, k, seq);
    v = split_heads(x, v, seq);
    mil_var *w = mil_matmul(g, q, k, false, true); /* [1, H, S, S] */
    w = mil_softmax(g, mil_add(g, w, mask), -1);
    mil_var *o = mil_matmul(g, w, v, false, false); /* [1, H, S, D] */
    static const int32_t perm[4] = {0, 2, 1, 3};
    int64_t merged[3] = {1, seq, W};
    o = mil_reshape(g, mil_transpose(g, o, 4, perm), 3, merged); /* [1, S, W] */
    snprintf(name, sizeof name, "%sout_proj", p);
    return linear(x, o, name, l, W, W);
}

static mil_var *mlp(clip_ctx *x, mil_var *h, int l) {
    mil_graph *g = x->g;
    const clip_config *cfg = x->cfg;
    h = linear(x, h, "text_model.encoder.layers.%d.mlp.fc1", l, cfg->hidden, cfg->intermediate); /* [1, S, 4W] */
    if (cfg->quick_gelu) /* x · sigmoid(1.702 x) */
        h = mil_mul(g, h, mil_sigmoid(g, mil_mul(g, h, mil_const_scalar(g, x->t, 1.702f))));
    else
        h = mil_gelu(g, h, "EXACT");
    return linear(x, h, "text_model.encoder.layers.%d.mlp.fc2", l, cfg->intermediate, cfg->hidden); /* [1, S, W] */
}

/* Position of the pooled token: transformers takes argmax(ids) for configs with the legacy
   eos_token_id 2, else the first position whose id equals eos_token_id. */
static mil_var *eos_position(clip_ctx *x, mil_var *ids) {
    mil_graph *g = x->g;
    mil_scope(g, "pool");
    if (x->cfg->eos_token_id == 2) return mil_reduce_argmax(g, ids, -1, false); /* [1] */
    int32_t eos = (int32_t)x->cfg->eos_token_id;
    mil_var *is_eos = mil_cast(g, mil_equal(g, ids, mil_const_ints(g, 1, &eos)), SDC_DT_I32); /* [1, S] */
    return mil_reduce_argmax(g, is_eos, -1, false);
}

/* Casts an fp16 result back to the float32 the contract declares, under its output name. */
static void output(clip_ctx *x, mil_var *v, const char *name) {
    if (v && v->type.dtype != SDC_DT_F32) v = mil_cast(x->g, v, SDC_DT_F32);
    mil_output(x->g, v, name);
}

static void build(clip_ctx *x, int64_t seq, bool xl) {
    mil_graph *g = x->g;
    const clip_config *cfg = x->cfg;
    int64_t W = cfg->hidden;
    int64_t ids_shape[2] = {1, seq};
    mil_var *ids_f = mil_input(g, "input_ids", SDC_DT_F32, 2, ids_shape);
    mil_scope(g, "embeddings");
    mil_var *ids = mil_cast(g, ids_f, SDC_DT_I32); /* [1, S] */
    int64_t tok_shape[2] = {cfg->vocab, W}, pos_shape[2] = {cfg->positions, W}, used_pos[2] = {seq, W};
    mil_var *tok = weight(x, "text_model.embeddings.token_embedding.weight", 2, tok_shape);
    const sdc_tensor *pos_t;
    mil_var *pos = NULL;
    if (mil_graph_ok(g) &&
        !sdc_weights_get(x->c->weights, "text_model.embeddings.position_embedding.weight", 2, pos_shape, &pos_t, x->err))
        pos = mil_const_weight(g, pos_t, x->t, 2, used_pos, 0); /* rows 0..S-1 */
    mil_var *h = mil_add(g, mil_gather(g, tok, ids, 0), pos); /* [1, S, W] */
    mil_var *mask = causal_mask(x, seq);
    mil_var *penultimate = NULL;
    for (int l = 0; l < cfg->layers; l++) {
        mil_scope(g, "layers_%d", l);
        h = mil_add(g, h, self_attention(x, layer_norm(x, h, "text_model.encoder.layers.%d.layer_norm1", l), l, seq, mask));
        h = mil_add(g, h, mlp(x, layer_norm(x, h, "text_model.encoder.layers.%d.layer_norm2", l), l));
        if (l == cfg->layers - 2) penultimate = h; /* hidden_states[-2] */
    }
    mil_scope(g, "final");
    mil_var *last = layer_norm(x, h, "text_model.final_layer_norm", 0); /* [1, S, W] */
    mil_var *eos = eos_position(x, ids);                                /* [1] */
    int64_t pooled_shape[2] = {1, W};
    mil_var *pooled = mil_reshape(g, mil_gather(g, last, eos, 1), 2, pooled_shape); /* [1, W] */
    if (xl && cfg->with_projection) {
        mil_scope(g, "projection");
        int64_t ps[2] = {cfg->projection, W}, zs[1] = {cfg->projection};
        float *zeros = sdc_calloc((size_t)cfg->projection, sizeof *zeros);
        mil_var *bias = zeros ? mil_const_floats(g, x->t, 1, zs, zeros) : mil_fail(g, SDC_E_NOMEM, "out of memory");
        sdc_free(zeros);
        pooled = mil_linear(g, pooled, weight(x, "text_projection.weight", 2, ps), bias); /* [1, P] */
    }
    mil_scope(g, "out");
    if (xl) {
        output(x, penultimate, "hidden_embeds");
    } else {
        output(x, last, "last_hidden_state");
    }
    output(x, pooled, "pooled_outputs");
}

sdc_status sdc_build_clip_text(const sdc_component *c, const sdc_clip_text_options *opt, mil_graph **out,
                               sdc_err *err) {
    clip_config cfg;
    sdc_status s = read_config(c, &cfg, err);
    if (s) return s;
    if (opt->xl && cfg.layers < 2)
        return sdc_fail(err, SDC_E_FORMAT, "%s: --xl-version needs the penultimate layer, but num_hidden_layers is %lld",
                        c->config_path, (long long)cfg.layers);
    if (opt->seq_len < 1 || opt->seq_len > cfg.positions)
        return sdc_fail(err, SDC_E_ARG, "%s: %d tokens requested but max_position_embeddings is %lld",
                        c->config_path, opt->seq_len, (long long)cfg.positions);
    mil_graph *g = mil_graph_new(opt->opset);
    if (!g) return sdc_fail(err, SDC_E_NOMEM, "out of memory");
    clip_ctx x = {g, c, &cfg, opt->compute, err};
    build(&x, opt->seq_len, opt->xl);
    if (err->code) { /* a weight lookup failed: its message names the file and tensor */
        mil_graph_free(g);
        return err->code;
    }
    if (!mil_graph_ok(g)) {
        s = sdc_fail(err, g->err.code, "%s: %s", c->dir, g->err.msg);
        mil_graph_free(g);
        return s;
    }
    *out = g;
    return SDC_OK;
}
