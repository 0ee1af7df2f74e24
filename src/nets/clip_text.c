/*
 * clip_text.c — CLIP text encoder (SD 1.x CLIP-L, SD 2.x OpenCLIP-H, SDXL CLIP-L and bigG).
 *
 * Computes what transformers' CLIPTextModel computes (sd-architectures.md §5.1):
 *   x = token_embedding[ids] + position_embedding[0..S-1]
 *   each layer (clip.c): x += out_proj(attn(layer_norm1(x)) + causal mask); x += mlp(layer_norm2(x))
 *   last_hidden_state = final_layer_norm(x); pooled = last_hidden_state[first EOS]
 * Shapes in comments: S tokens, W hidden size, P projection size.
 */
#include "nets/nets.h"

#include "nets/clip.h"
#include "nets/config_tables.h"

typedef struct clip_text_config {
    clip_dims d;
    int64_t vocab, positions, projection, eos_token_id;
    bool with_projection;
} clip_text_config;

static sdc_status read_config(const sdc_component *c, clip_text_config *cfg, sdc_err *err) {
    sdc_status s = sdc_config_check_class(c, c->config, "", &sdc_clip_text_config_class, NULL, err);
    if (s) return s;
    if ((s = sdc_clip_read_dims(c, c->config, "", &CLIP_TEXT_DEFAULTS, &cfg->d, err)) ||
        (s = sdc_clip_read_positive(c, c->config, "", "vocab_size", 49408, 1 << 24, &cfg->vocab, err)) ||
        (s = sdc_clip_read_positive(c, c->config, "", "max_position_embeddings", 77, 1 << 16, &cfg->positions, err)) ||
        (s = sdc_clip_read_positive(c, c->config, "", "projection_dim", cfg->d.hidden, 1 << 16, &cfg->projection, err)) ||
        (s = sdc_config_int(c, "eos_token_id", 2, &cfg->eos_token_id, err)))
        return s;
    cfg->with_projection = sdc_weights_find(c->weights, "text_projection.weight") != NULL;
    return SDC_OK;
}

/* causal mask [1, 1, S, S]: 0 on and below the diagonal, -1e4 above (fp16-safe, as the anchor) */
static mil_var *causal_mask(sdc_net *n, int64_t seq) {
    float *m = sdc_malloc((size_t)(seq * seq) * sizeof *m);
    if (!m) return sdc_mil_fail(n->g, SDC_E_NOMEM, "out of memory");
    for (int64_t i = 0; i < seq; i++)
        for (int64_t j = 0; j < seq; j++) m[i * seq + j] = j > i ? -1e4f : 0.0f;
    int64_t shape[4] = {1, 1, seq, seq};
    sdc_mil_scope(n->g, "causal");
    mil_var *v = sdc_mil_const_floats(n->g, n->t, 4, shape, m);
    sdc_free(m);
    return v;
}

/* Position of the pooled token: transformers takes argmax(ids) for configs with the legacy
   eos_token_id 2, else the first position whose id equals eos_token_id. */
static mil_var *eos_position(sdc_net *n, const clip_text_config *cfg, mil_var *ids) {
    mil_graph *g = n->g;
    sdc_mil_scope(g, "pool");
    if (cfg->eos_token_id == 2) return sdc_mil_reduce_argmax(g, ids, -1, false); /* [1] */
    int32_t eos = (int32_t)cfg->eos_token_id;
    mil_var *is_eos = sdc_mil_cast(g, sdc_mil_equal(g, ids, sdc_mil_const_ints(g, 1, &eos)), SDC_DT_I32); /* [1, S] */
    return sdc_mil_reduce_argmax(g, is_eos, -1, false);
}

/* last_hidden_state[arange(1), position] as torch traces it and the anchor's graph has it: the
   (batch, token) pairs stacked into indices [1, 2], then gather_nd; from iOS17 coremltools
   narrows those indices to uint16. */
static mil_var *pooled_row(sdc_net *n, const clip_text_config *cfg, mil_var *last, mil_var *ids) {
    mil_graph *g = n->g;
    int32_t batch0 = 0;
    mil_var *position = eos_position(n, cfg, ids);                            /* [1] */
    mil_var *pair[2] = {sdc_mil_const_ints(g, 1, &batch0), position};          /* [1], [1] */
    mil_var *indices = sdc_mil_stack(g, 2, pair, 1);                                     /* [1, 2] */
    if (g->opset >= 7) indices = sdc_mil_cast(g, indices, SDC_DT_U16);
    return sdc_mil_gather_nd(g, last, indices); /* [1, W] */
}

/* x [1, S] float ids → embeddings [1, S, W] */
static mil_var *embeddings(sdc_net *n, const clip_text_config *cfg, mil_var *ids, int64_t seq) {
    mil_graph *g = n->g;
    int64_t W = cfg->d.hidden;
    int64_t tok_shape[2] = {cfg->vocab, W}, pos_shape[2] = {cfg->positions, W}, used_pos[3] = {1, seq, W};
    mil_var *tok = sdc_net_weight(n, "text_model.embeddings.token_embedding.weight", 2, tok_shape);
    const sdc_tensor *pos_t;
    mil_var *pos = NULL;
    if (sdc_mil_graph_ok(g) && !n->err->code &&
        !sdc_weights_get(n->c->weights, "text_model.embeddings.position_embedding.weight", 2, pos_shape, &pos_t, n->err))
        pos = sdc_mil_const_weight(g, pos_t, n->t, 3, used_pos, 0); /* rows 0..S-1 as [1, S, W], the anchor's const */
    return sdc_mil_add(g, sdc_mil_gather(g, tok, ids, 0), pos);
}

static void build(sdc_net *n, const clip_text_config *cfg, int64_t seq, bool xl) {
    mil_graph *g = n->g;
    int64_t W = cfg->d.hidden;
    int64_t ids_shape[2] = {1, seq};
    mil_var *ids_f = sdc_mil_input(g, "input_ids", SDC_DT_F32, 2, ids_shape);
    sdc_mil_scope(g, "embeddings");
    mil_var *ids = sdc_mil_cast(g, ids_f, SDC_DT_I32); /* [1, S]: exact, where fp16 would round ids > 2048 */
    mil_var *h = embeddings(n, cfg, ids, seq);    /* [1, S, W] */
    mil_var *mask = causal_mask(n, seq);
    mil_var *penultimate = NULL;
    char prefix[128];
    for (int64_t l = 0; l < cfg->d.layers; l++) {
        sdc_mil_scope(g, "layers_%lld", (long long)l);
        snprintf(prefix, sizeof prefix, "text_model.encoder.layers.%lld", (long long)l);
        h = sdc_clip_encoder_layer(n, h, prefix, &cfg->d, mask);
        if (l == cfg->d.layers - 2) penultimate = h; /* hidden_states[-2] */
    }
    sdc_mil_scope(g, "final");
    mil_var *last = sdc_clip_layer_norm(n, h, "text_model.final_layer_norm", W, cfg->d.eps); /* [1, S, W] */
    mil_var *pooled = pooled_row(n, cfg, last, ids); /* [1, W] */
    if (xl && cfg->with_projection) {
        sdc_mil_scope(g, "projection");
        int64_t ps[2] = {cfg->projection, W}, zs[1] = {cfg->projection};
        float *zeros = sdc_calloc((size_t)cfg->projection, sizeof *zeros);
        mil_var *bias = zeros ? sdc_mil_const_floats(g, n->t, 1, zs, zeros) : sdc_mil_fail(g, SDC_E_NOMEM, "out of memory");
        sdc_free(zeros);
        pooled = sdc_mil_linear(g, pooled, sdc_net_weight(n, "text_projection.weight", 2, ps), bias); /* [1, P] */
    }
    sdc_mil_scope(g, "out");
    sdc_net_output_f32(n, xl ? penultimate : last, xl ? "hidden_embeds" : "last_hidden_state");
    sdc_net_output_f32(n, pooled, "pooled_outputs");
}

sdc_status sdc_build_clip_text(const sdc_component *c, const sdc_clip_text_options *opt, mil_graph **out,
                               sdc_err *err) {
    clip_text_config cfg;
    sdc_status s = read_config(c, &cfg, err);
    if (s) return s;
    if (opt->xl && cfg.d.layers < 2)
        return sdc_fail(err, SDC_E_FORMAT, "%s: --xl-version needs the penultimate layer, but num_hidden_layers is %lld",
                        c->config_path, (long long)cfg.d.layers);
    if (opt->seq_len < 1 || opt->seq_len > cfg.positions)
        return sdc_fail(err, SDC_E_ARG, "%s: %d tokens requested but max_position_embeddings is %lld",
                        c->config_path, opt->seq_len, (long long)cfg.positions);
    mil_graph *g = sdc_mil_graph_new(opt->opset);
    if (!g) return sdc_fail(err, SDC_E_NOMEM, "out of memory");
    sdc_net n = {g, c, opt->compute, err};
    build(&n, &cfg, opt->seq_len, opt->xl);
    return sdc_net_finish(&n, out);
}
