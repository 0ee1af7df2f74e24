/*
 * unet.c — diffusers UNet2DConditionModel (SD 1.x, 2.x, SDXL base and refiner, inpainting)
 * as Apple's ANE-oriented graph (anchor §7): transformer activations in (B, C, 1, S), every
 * Linear as a 1×1 conv, LayerNorm over channels, GroupNorm lowered per group, GEGLU with
 * exact GELU, and the three attention implementations.
 *
 * Shapes in comments: B batch, C channels, H×W spatial, S = H·W tokens, D context channels,
 * K context tokens (77), h heads, d = C / h.
 */
#include "nets/nets.h"

#include <math.h>

#include "nets/blocks.h"
#include "nets/config_tables.h"

enum { MAX_BLOCKS = 8, MAX_SKIPS = 64 };

typedef enum mid_type { MID_CROSS_ATTN, MID_RESNET, MID_NONE } mid_type;

typedef struct unet_config {
    int64_t in_channels, out_channels, center_input;
    int64_t channels[MAX_BLOCKS]; /* block_out_channels */
    size_t n_blocks;
    bool down_attn[MAX_BLOCKS], up_attn[MAX_BLOCKS];
    int64_t heads[MAX_BLOCKS];  /* per down level */
    int64_t depth[MAX_BLOCKS];  /* transformer_layers_per_block per down level */
    int64_t layers_per_block;
    int64_t groups;
    double norm_eps;
    bool flip_sin_to_cos;
    double freq_shift;
    int64_t conv_in_kernel, conv_out_kernel;
    int64_t cross_attention_dim;
    bool text_time; /* addition_embed_type "text_time" (SDXL) */
    int64_t addition_time_embed_dim, projection_input_dim;
    int64_t downsample_padding; /* 1: pad 1 all round; 0: pad bottom/right by one */
    mid_type mid;
    double mid_scale;           /* mid_block_scale_factor: the mid resnets divide their output */
    bool time_post_act;         /* timestep_post_act: SiLU after time_embedding.linear_2 */
    bool time_embed_act;        /* time_embedding_act_fn: SiLU on the summed embedding */
    /* ControlNetModel only */
    bool controlnet;
    int64_t cond_channels;              /* conditioning_channels */
    int64_t cond_embed[MAX_BLOCKS];     /* conditioning_embedding_out_channels */
    size_t n_cond_embed;
} unet_config;

typedef struct unet_ctx {
    sdc_net n;
    const unet_config *cfg;
    const sdc_unet_options *opt;
    mil_var *temb_silu;  /* SiLU(emb) (B, 4·C0, 1, 1), shared by every resnet */
    mil_var *context;    /* encoder_hidden_states (B, D, 1, K) in the compute dtype */
    int64_t temb_channels;
} unet_ctx;

/* ---------------------------------------------------------------- config */

static sdc_status block_types(const sdc_component *c, const char *key, size_t n, bool *attn, sdc_err *err) {
    json_t *arr = json_object_get(c->config, key);
    if (!json_is_array(arr) || json_array_size(arr) != n)
        return sdc_fail(err, SDC_E_FORMAT, "%s: '%s' must list %zu block types", c->config_path, key, n);
    for (size_t i = 0; i < n; i++) {
        const char *t = json_string_value(json_array_get(arr, i));
        if (!t) return sdc_fail(err, SDC_E_FORMAT, "%s: '%s'[%zu] is not a string", c->config_path, key, i);
        if (!strcmp(t, "CrossAttnDownBlock2D") || !strcmp(t, "CrossAttnUpBlock2D"))
            attn[i] = true;
        else if (!strcmp(t, "DownBlock2D") || !strcmp(t, "UpBlock2D"))
            attn[i] = false;
        else
            return sdc_fail(err, SDC_E_UNSUPPORTED,
                            "%s: '%s'[%zu] = \"%s\" is not supported (CrossAttn and plain Down/Up blocks only)",
                            c->config_path, key, i, t);
    }
    return SDC_OK;
}

/* An int or a per-level list (diffusers accepts both for heads and transformer depth). */
static sdc_status per_level(const sdc_component *c, const char *key, int64_t dflt, size_t n, int64_t *out,
                            sdc_err *err) {
    json_t *v = json_object_get(c->config, key);
    if (!v || json_is_null(v)) {
        for (size_t i = 0; i < n; i++) out[i] = dflt;
        return SDC_OK;
    }
    if (json_is_integer(v)) {
        for (size_t i = 0; i < n; i++) out[i] = json_integer_value(v);
    } else if (json_is_array(v) && json_array_size(v) == n) {
        for (size_t i = 0; i < n; i++) {
            json_t *e = json_array_get(v, i);
            if (!json_is_integer(e)) return sdc_fail(err, SDC_E_FORMAT, "%s: '%s' must hold integers", c->config_path, key);
            out[i] = json_integer_value(e);
        }
    } else {
        return sdc_fail(err, SDC_E_FORMAT, "%s: '%s' must be an integer or a list of %zu", c->config_path, key, n);
    }
    for (size_t i = 0; i < n; i++)
        if (out[i] < 1 || out[i] > 4096)
            return sdc_fail(err, SDC_E_FORMAT, "%s: '%s' holds %lld", c->config_path, key, (long long)out[i]);
    return SDC_OK;
}

/* ControlNetModel's own fields: the hint encoder's channels, and no up blocks. */
static sdc_status read_controlnet_config(const sdc_component *c, unet_config *cfg, sdc_err *err) {
    sdc_status s;
    const char *order;
    bool pool;
    if ((s = sdc_config_int(c, "conditioning_channels", 3, &cfg->cond_channels, err)) ||
        (s = sdc_config_int_list(c, "conditioning_embedding_out_channels", MAX_BLOCKS, cfg->cond_embed,
                                 &cfg->n_cond_embed, err)) ||
        (s = sdc_config_string(c, "controlnet_conditioning_channel_order", "rgb", &order, err)) ||
        (s = sdc_config_bool(c, "global_pool_conditions", false, &pool, err)))
        return s;
    if (cfg->n_cond_embed == 0) {
        static const int64_t dflt[4] = {16, 32, 96, 256};
        memcpy(cfg->cond_embed, dflt, sizeof dflt);
        cfg->n_cond_embed = 4;
    }
    if (strcmp(order, "rgb"))
        return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: controlnet_conditioning_channel_order '%s' is not supported",
                        c->config_path, order);
    if (pool) return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: global_pool_conditions is not supported", c->config_path);
    if (cfg->cond_channels < 1 || cfg->cond_channels > 64)
        return sdc_fail(err, SDC_E_FORMAT, "%s: conditioning_channels %lld is out of range", c->config_path,
                        (long long)cfg->cond_channels);
    for (size_t i = 0; i < cfg->n_cond_embed; i++)
        if (cfg->cond_embed[i] < 1 || cfg->cond_embed[i] > 1 << 14)
            return sdc_fail(err, SDC_E_FORMAT, "%s: conditioning_embedding_out_channels is out of range", c->config_path);
    return SDC_OK;
}

/* A config string that is JSON null reads as NULL (no default: null is a value here). */
static const char *string_or_null(const sdc_component *c, const char *key, const char *dflt) {
    json_t *v = json_object_get(c->config, key);
    if (!v) return dflt;
    return json_string_value(v); /* the config tables have checked the type */
}

/* What UNet2DConditionModel reads and ControlNetModel does not (diffusers ignores these keys
   in a ControlNet's config, so the builder does too). */
static sdc_status read_unet_only(const sdc_component *c, unet_config *cfg, sdc_err *err) {
    sdc_status s;
    bool center;
    if ((s = block_types(c, "up_block_types", cfg->n_blocks, cfg->up_attn, err)) ||
        (s = sdc_config_int(c, "out_channels", 4, &cfg->out_channels, err)) ||
        (s = sdc_config_bool(c, "center_input_sample", false, &center, err)) ||
        (s = sdc_config_int(c, "conv_in_kernel", 3, &cfg->conv_in_kernel, err)) ||
        (s = sdc_config_int(c, "conv_out_kernel", 3, &cfg->conv_out_kernel, err)))
        return s;
    cfg->center_input = center;
    cfg->time_post_act = string_or_null(c, "timestep_post_act", NULL) != NULL;
    cfg->time_embed_act = string_or_null(c, "time_embedding_act_fn", NULL) != NULL;
    return SDC_OK;
}

static mid_type read_mid_type(const sdc_component *c) {
    const char *t = string_or_null(c, "mid_block_type", "UNetMidBlock2DCrossAttn");
    if (!t) return MID_NONE;
    return strcmp(t, "UNetMidBlock2D") ? MID_CROSS_ATTN : MID_RESNET; /* the tables accept no other */
}

static sdc_status read_config(const sdc_component *c, bool controlnet, unet_config *cfg, sdc_config_notes *notes,
                              sdc_err *err) {
    memset(cfg, 0, sizeof *cfg);
    cfg->controlnet = controlnet;
    cfg->out_channels = 4;
    cfg->conv_in_kernel = cfg->conv_out_kernel = 3;
    sdc_config_notes ignored = {.n = 0};
    sdc_status s = sdc_config_check_class(c, c->config, "", controlnet ? &sdc_controlnet_config_class : &sdc_unet_config_class,
                                          notes ? notes : &ignored, err);
    if (s) return s;
    if ((s = sdc_config_int_list(c, "block_out_channels", MAX_BLOCKS, cfg->channels, &cfg->n_blocks, err))) return s;
    if (cfg->n_blocks < 1) return sdc_fail(err, SDC_E_FORMAT, "%s: 'block_out_channels' is missing", c->config_path);
    const char *add;
    if ((s = block_types(c, "down_block_types", cfg->n_blocks, cfg->down_attn, err)) ||
        (s = controlnet ? read_controlnet_config(c, cfg, err) : read_unet_only(c, cfg, err)) ||
        (s = sdc_config_int(c, "in_channels", 4, &cfg->in_channels, err)) ||
        (s = sdc_config_int(c, "layers_per_block", 2, &cfg->layers_per_block, err)) ||
        (s = sdc_config_int(c, "norm_num_groups", 32, &cfg->groups, err)) ||
        (s = sdc_config_double(c, "norm_eps", 1e-5, &cfg->norm_eps, err)) ||
        (s = sdc_config_bool(c, "flip_sin_to_cos", true, &cfg->flip_sin_to_cos, err)) ||
        (s = sdc_config_double(c, "freq_shift", 0, &cfg->freq_shift, err)) ||
        (s = sdc_config_int(c, "cross_attention_dim", 1280, &cfg->cross_attention_dim, err)) ||
        (s = per_level(c, "transformer_layers_per_block", 1, cfg->n_blocks, cfg->depth, err)) ||
        (s = sdc_config_int(c, "downsample_padding", 1, &cfg->downsample_padding, err)) ||
        (s = sdc_config_double(c, "mid_block_scale_factor", 1.0, &cfg->mid_scale, err)) ||
        (s = sdc_config_string(c, "addition_embed_type", "", &add, err)))
        return s;
    cfg->mid = read_mid_type(c);
    if (!(cfg->mid_scale > 0) || !isfinite(cfg->mid_scale))
        return sdc_fail(err, SDC_E_FORMAT, "%s: 'mid_block_scale_factor' = %g must be positive", c->config_path,
                        cfg->mid_scale);
    /* diffusers: num_attention_heads, else attention_head_dim (which historically holds the
       head count in SD configs) */
    json_t *nah = json_object_get(c->config, "num_attention_heads");
    s = per_level(c, nah && !json_is_null(nah) ? "num_attention_heads" : "attention_head_dim", 8, cfg->n_blocks,
                  cfg->heads, err);
    if (s) return s;
    if (*add && strcmp(add, "text_time"))
        return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: addition_embed_type '%s' is not supported", c->config_path, add);
    cfg->text_time = *add != 0;
    if (cfg->text_time &&
        ((s = sdc_config_int(c, "addition_time_embed_dim", 256, &cfg->addition_time_embed_dim, err)) ||
         (s = sdc_config_int(c, "projection_class_embeddings_input_dim", 2816, &cfg->projection_input_dim, err))))
        return s;
    int64_t checks[][3] = {{cfg->in_channels, 1, 64}, {cfg->out_channels, 1, 64}, {cfg->layers_per_block, 1, 16},
                           {cfg->groups, 1, 1024}, {cfg->conv_in_kernel, 1, 7}, {cfg->conv_out_kernel, 1, 7},
                           {cfg->cross_attention_dim, 1, 1 << 16}};
    for (size_t i = 0; i < SDC_COUNT_OF(checks); i++)
        if (checks[i][0] < checks[i][1] || checks[i][0] > checks[i][2] )
            return sdc_fail(err, SDC_E_FORMAT, "%s: a size field is out of range (%lld)", c->config_path, (long long)checks[i][0]);
    /* conv_in, every down resnet, every downsampler: the skip tensors the up path consumes */
    if (1 + (int64_t)cfg->n_blocks * cfg->layers_per_block + ((int64_t)cfg->n_blocks - 1) > MAX_SKIPS)
        return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: %zu blocks of %lld layers make more than %d skip connections",
                        c->config_path, cfg->n_blocks, (long long)cfg->layers_per_block, MAX_SKIPS);
    if (cfg->conv_in_kernel % 2 == 0 || cfg->conv_out_kernel % 2 == 0)
        return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: even conv_in/conv_out kernels are not supported", c->config_path);
    for (size_t i = 0; i < cfg->n_blocks; i++) {
        if (cfg->channels[i] < 1 || cfg->channels[i] > 1 << 14 || cfg->channels[i] % cfg->groups)
            return sdc_fail(err, SDC_E_FORMAT, "%s: block_out_channels[%zu] = %lld is not a positive multiple of norm_num_groups %lld",
                            c->config_path, i, (long long)cfg->channels[i], (long long)cfg->groups);
        if (cfg->channels[i] % cfg->heads[i])
            return sdc_fail(err, SDC_E_FORMAT, "%s: block_out_channels[%zu] = %lld is not divisible by %lld heads",
                            c->config_path, i, (long long)cfg->channels[i], (long long)cfg->heads[i]);
    }
    return SDC_OK;
}

/* ---------------------------------------------------------------- attention */

/* The anchor scales the attention weights QKᵀ by d^-1/2 after the product (one mul per head and
   query chunk), not q before it; the device computes that order, so sdcoreml does too. */
static mil_var *scaled(mil_graph *g, mil_var *w, sdc_dtype t, int64_t d) {
    return sdc_mil_mul(g, w, sdc_mil_const_scalar(g, t, (float)(1.0 / sqrt((double)d))));
}

/* q (B, C, 1, Sq) · k, v (B, C, 1, Sk) → (B, C, 1, Sq) */
static mil_var *attention_original(unet_ctx *u, mil_var *q, mil_var *k, mil_var *v, int64_t heads) {
    mil_graph *g = u->n.g;
    if (!q || !k || !v) return NULL; /* the graph failed (out of memory) */
    int64_t B = q->type.shape[0], C = q->type.shape[1], d = C / heads;
    int64_t sq = q->type.shape[3], sk = k->type.shape[3];
    int64_t qs[4] = {B, heads, d, sq}, ks[4] = {B, heads, d, sk}, os[4] = {B, C, 1, sq};
    mil_var *w = sdc_mil_matmul(g, sdc_mil_reshape(g, q, 4, qs), sdc_mil_reshape(g, k, 4, ks), true, false); /* (B, h, Sq, Sk) */
    w = sdc_mil_softmax(g, scaled(g, w, u->n.t, d), -1);
    mil_var *o = sdc_mil_matmul(g, sdc_mil_reshape(g, v, 4, ks), w, false, true); /* (B, h, d, Sq) */
    return sdc_mil_reshape(g, o, 4, os);
}

enum { MAX_HEADS = 64, V2_CHUNK = 512, MAX_V2_CHUNKS = 64 };

/* One head of SPLIT_EINSUM: q_h (B, d, 1, Sq), kt_h (B, Sk, 1, d), v_h (B, d, 1, Sk) → (B, d, 1, Sq) */
static mil_var *einsum_head(unet_ctx *u, mil_var *q_h, mil_var *kt_h, mil_var *v_h) {
    mil_graph *g = u->n.g;
    mil_var *w = sdc_mil_einsum(g, "nchw,nwhu->nchu", kt_h, q_h); /* (B, Sk, 1, Sq) */
    w = sdc_mil_softmax(g, scaled(g, w, u->n.t, kt_h ? kt_h->type.shape[3] : 1), 1); /* over keys */
    return sdc_mil_einsum(g, "nchw,nwhu->nchu", v_h, w);         /* (B, d, 1, Sq) */
}

/* Heads (and V2's query chunks) are cut with one slice_by_index each, as the anchor's
   indexing q[:, h*d:(h+1)*d] lowers, rather than one split. */
static bool slices(mil_graph *g, mil_var *x, int axis, int64_t n, int64_t size, int64_t last, mil_var **out) {
    for (int64_t i = 0; i < n; i++) {
        out[i] = sdc_mil_slice(g, x, axis, i * size, i * size + (i < n - 1 ? size : last));
        if (!out[i]) return false;
    }
    return true;
}

/* SPLIT_EINSUM (and _V2 with query chunks of 512; unlike the anchor, a shorter last chunk
   covers any remainder, so 48×48 latents work) */
static mil_var *attention_split(unet_ctx *u, mil_var *q, mil_var *k, mil_var *v, int64_t heads, bool v2) {
    mil_graph *g = u->n.g;
    if (!q || !k || !v) return NULL;
    if (heads > MAX_HEADS) return sdc_mil_fail(g, SDC_E_UNSUPPORTED, "more than %d attention heads", MAX_HEADS);
    int64_t C = q->type.shape[1], d = C / heads, sq = q->type.shape[3];
    static const int32_t to_keys_first[4] = {0, 3, 2, 1};
    mil_var *qh[MAX_HEADS], *kh[MAX_HEADS], *vh[MAX_HEADS], *oh[MAX_HEADS];
    if (!slices(g, q, 1, heads, d, d, qh)) return NULL;
    mil_var *kt = sdc_mil_transpose(g, k, 4, to_keys_first); /* (B, Sk, 1, C) */
    if (!slices(g, kt, 3, heads, d, d, kh) || !slices(g, v, 1, heads, d, d, vh)) return NULL;
    int64_t n_chunks = v2 ? (sq + V2_CHUNK - 1) / V2_CHUNK : 1;
    if (sq < V2_CHUNK) n_chunks = 1; /* the anchor's fallback to SPLIT_EINSUM */
    for (int64_t h = 0; h < heads; h++) {
        if (n_chunks == 1) {
            oh[h] = einsum_head(u, qh[h], kh[h], vh[h]);
            continue;
        }
        if (n_chunks > MAX_V2_CHUNKS) /* 64 chunks of 512 = a 181x181 latent at full resolution */
            return sdc_mil_fail(g, SDC_E_UNSUPPORTED, "%lld query tokens are more than SPLIT_EINSUM_V2's %d chunks of %d; "
                            "use SPLIT_EINSUM or ORIGINAL", (long long)sq, MAX_V2_CHUNKS, V2_CHUNK);
        mil_var *qc[MAX_V2_CHUNKS], *oc[MAX_V2_CHUNKS];
        if (!slices(g, qh[h], 3, n_chunks, V2_CHUNK, sq - V2_CHUNK * (n_chunks - 1), qc)) return NULL;
        for (int64_t c = 0; c < n_chunks; c++) oc[c] = einsum_head(u, qc[c], kh[h], vh[h]);
        oh[h] = sdc_mil_concat(g, (int)n_chunks, oc, 3);
    }
    return sdc_mil_concat(g, (int)heads, oh, 1); /* (B, C, 1, Sq) */
}

/* diffusers Attention with to_q/to_k/to_v (no bias) and to_out.0 (bias), as 1×1 convs */
static mil_var *attention(unet_ctx *u, mil_var *x, mil_var *context, const char *prefix, int64_t C, int64_t heads) {
    char p[256];
    int64_t D = context ? context->type.shape[1] : C;
    mil_var *ctx = context ? context : x;
    snprintf(p, sizeof p, "%s.to_q", prefix);
    mil_var *q = sdc_net_linear_1x1(&u->n, x, p, C, C, false); /* (B, C, 1, S) */
    snprintf(p, sizeof p, "%s.to_k", prefix);
    mil_var *k = sdc_net_linear_1x1(&u->n, ctx, p, D, C, false);
    snprintf(p, sizeof p, "%s.to_v", prefix);
    mil_var *v = sdc_net_linear_1x1(&u->n, ctx, p, D, C, false);
    mil_var *o;
    switch (u->opt->attention) {
    case SDC_ATTN_ORIGINAL: o = attention_original(u, q, k, v, heads); break;
    case SDC_ATTN_SPLIT_EINSUM_V2: o = attention_split(u, q, k, v, heads, true); break;
    default: o = attention_split(u, q, k, v, heads, false);
    }
    snprintf(p, sizeof p, "%s.to_out.0", prefix);
    return sdc_net_linear_1x1(&u->n, o, p, C, C, true);
}

/* GEGLU feed-forward: (B, C, 1, S) → proj (B, 8C, 1, S) → hidden · gelu(gate) → (B, C, 1, S) */
static mil_var *feed_forward(unet_ctx *u, mil_var *x, const char *prefix, int64_t C) {
    mil_graph *g = u->n.g;
    char p[256];
    snprintf(p, sizeof p, "%s.net.0.proj", prefix);
    mil_var *h = sdc_net_linear_1x1(&u->n, x, p, C, 8 * C, true);
    mil_var *parts[2];
    int64_t sizes[2] = {4 * C, 4 * C};
    if (!sdc_mil_split(g, h, 1, 2, sizes, parts)) return NULL;
    h = sdc_mil_mul(g, parts[0], sdc_mil_gelu(g, parts[1], "EXACT"));
    snprintf(p, sizeof p, "%s.net.2", prefix);
    return sdc_net_linear_1x1(&u->n, h, p, 4 * C, C, true);
}

/* Transformer2DModel: (B, C, H, W) → GN → proj_in → (B, C, 1, HW) → blocks → proj_out → + x */
static mil_var *spatial_transformer(unet_ctx *u, mil_var *x, const char *prefix, int64_t heads, int64_t depth) {
    mil_graph *g = u->n.g;
    if (!x) return NULL;
    char p[256];
    int64_t B = x->type.shape[0], C = x->type.shape[1], H = x->type.shape[2], W = x->type.shape[3];
    snprintf(p, sizeof p, "%s.norm", prefix);
    mil_var *h = sdc_net_group_norm(&u->n, x, p, (int)u->cfg->groups, 1e-6f);
    snprintf(p, sizeof p, "%s.proj_in", prefix);
    h = sdc_net_linear_1x1(&u->n, h, p, C, C, true);
    int64_t seq[4] = {B, C, 1, H * W};
    h = sdc_mil_reshape(g, h, 4, seq); /* (B, C, 1, S) */
    for (int64_t k = 0; k < depth; k++) {
        char b[200];
        snprintf(b, sizeof b, "%s.transformer_blocks.%lld", prefix, (long long)k);
        sdc_mil_scope(g, "%s", b);
        snprintf(p, sizeof p, "%s.norm1", b);
        char a[256];
        snprintf(a, sizeof a, "%s.attn1", b);
        h = sdc_mil_add(g, h, attention(u, sdc_net_layer_norm_c(&u->n, h, p, 1e-5f), NULL, a, C, heads));
        snprintf(p, sizeof p, "%s.norm2", b);
        snprintf(a, sizeof a, "%s.attn2", b);
        h = sdc_mil_add(g, h, attention(u, sdc_net_layer_norm_c(&u->n, h, p, 1e-5f), u->context, a, C, heads));
        snprintf(p, sizeof p, "%s.norm3", b);
        snprintf(a, sizeof a, "%s.ff", b);
        h = sdc_mil_add(g, h, feed_forward(u, sdc_net_layer_norm_c(&u->n, h, p, 1e-5f), a, C));
    }
    int64_t img[4] = {B, C, H, W};
    h = sdc_mil_reshape(g, h, 4, img);
    snprintf(p, sizeof p, "%s.proj_out", prefix);
    return sdc_mil_add(g, sdc_net_linear_1x1(&u->n, h, p, C, C, true), x);
}

static mil_var *resnet(unet_ctx *u, mil_var *x, const char *prefix, int64_t cin, int64_t cout) {
    sdc_mil_scope(u->n.g, "%s", prefix);
    return sdc_net_resnet(&u->n, x, u->temb_silu, prefix, cin, cout, u->temb_channels, (int)u->cfg->groups,
                      (float)u->cfg->norm_eps);
}

/* ---------------------------------------------------------------- embeddings */

/* TimestepEmbedding as 1×1 convs: (B, in, 1, 1) → linear_1 → SiLU → linear_2 (→ SiLU with
   post_act) → (B, out, 1, 1) */
static mil_var *timestep_mlp(unet_ctx *u, mil_var *x, const char *prefix, int64_t in, int64_t out, bool post_act) {
    char p[256];
    snprintf(p, sizeof p, "%s.linear_1", prefix);
    mil_var *h = sdc_mil_silu(u->n.g, sdc_net_linear_1x1(&u->n, x, p, in, out, true));
    snprintf(p, sizeof p, "%s.linear_2", prefix);
    h = sdc_net_linear_1x1(&u->n, h, p, out, out, true);
    return post_act ? sdc_mil_silu(u->n.g, h) : h;
}

static mil_var *time_embedding(unet_ctx *u, mil_var *timestep, mil_var *time_ids, mil_var *text_embeds) {
    mil_graph *g = u->n.g;
    const unet_config *cfg = u->cfg;
    if (!timestep || (cfg->text_time && (!time_ids || !text_embeds))) return NULL; /* the graph failed */
    int64_t B = timestep->type.shape[0], C0 = cfg->channels[0];
    sdc_mil_scope(g, "time_embedding");
    mil_var *s = sdc_net_sinusoid(&u->n, timestep, C0, cfg->flip_sin_to_cos, cfg->freq_shift); /* (B, C0) */
    mil_var *emb = timestep_mlp(u, sdc_net_column4(&u->n, s), "time_embedding", C0, u->temb_channels,
                                cfg->time_post_act);
    if (cfg->text_time) { /* SDXL: add_embedding(concat(text_embeds, sinusoids of time_ids)) */
        sdc_mil_scope(g, "add_embedding");
        int64_t n_ids = time_ids->type.shape[1], A = cfg->addition_time_embed_dim;
        int64_t flat[1] = {B * n_ids}, rows[2] = {B, n_ids * A};
        mil_var *te = sdc_net_sinusoid(&u->n, sdc_mil_reshape(g, time_ids, 1, flat), A, cfg->flip_sin_to_cos,
                                       cfg->freq_shift);
        te = sdc_mil_reshape(g, te, 2, rows); /* (B, n·A) */
        mil_var *parts[2] = {sdc_net_to_compute(&u->n, text_embeds), te};
        mil_var *add = sdc_mil_concat(g, 2, parts, -1); /* (B, projection_input_dim) */
        emb = sdc_mil_add(g, emb, timestep_mlp(u, sdc_net_column4(&u->n, add), "add_embedding",
                                           cfg->projection_input_dim, u->temb_channels, false));
    }
    if (cfg->time_embed_act) emb = sdc_mil_silu(g, emb); /* time_embedding_act_fn, after the sum */
    return emb; /* (B, 4·C0, 1, 1) */
}

/* ---------------------------------------------------------------- the network */

typedef struct skip_stack {
    mil_var *v[MAX_SKIPS];
    int n;
} skip_stack;

/* diffusers Downsample2D: a stride-2 conv3 padded 1 all round, or for downsample_padding 0
   padded by one at the bottom and right only (as the VAE encoder's) */
static mil_var *downsample(unet_ctx *u, mil_var *h, const char *prefix, int64_t C) {
    static const int pad1[4] = {1, 1, 1, 1}, bottom_right[4] = {0, 1, 0, 1};
    return sdc_net_conv(&u->n, h, prefix, C, C, 3, 2, u->cfg->downsample_padding ? pad1 : bottom_right);
}

static mil_var *down_path(unet_ctx *u, mil_var *h, skip_stack *skips) {
    const unet_config *cfg = u->cfg;
    char p[256];
    int64_t cin = cfg->channels[0];
    skips->v[skips->n++] = h;
    for (size_t i = 0; i < cfg->n_blocks; i++) {
        int64_t cout = cfg->channels[i];
        for (int64_t j = 0; j < cfg->layers_per_block; j++) {
            snprintf(p, sizeof p, "down_blocks.%zu.resnets.%lld", i, (long long)j);
            h = resnet(u, h, p, j == 0 ? cin : cout, cout);
            if (cfg->down_attn[i]) {
                snprintf(p, sizeof p, "down_blocks.%zu.attentions.%lld", i, (long long)j);
                h = spatial_transformer(u, h, p, cfg->heads[i], cfg->depth[i]);
            }
            skips->v[skips->n++] = h;
        }
        if (i + 1 < cfg->n_blocks) {
            snprintf(p, sizeof p, "down_blocks.%zu.downsamplers.0.conv", i);
            sdc_mil_scope(u->n.g, "%s", p);
            h = downsample(u, h, p, cout); /* (B, C, H/2, W/2) */
            skips->v[skips->n++] = h;
        }
        cin = cout;
    }
    return h;
}

/* A mid-block resnet: its output is divided by mid_block_scale_factor. */
static mil_var *mid_resnet(unet_ctx *u, mil_var *h, const char *prefix, int64_t C) {
    h = resnet(u, h, prefix, C, C);
    if (u->cfg->mid_scale == 1.0) return h;
    return sdc_mil_mul(u->n.g, h, sdc_mil_const_scalar(u->n.g, u->n.t, (float)(1.0 / u->cfg->mid_scale)));
}

/* UNetMidBlock2DCrossAttn: resnet, transformer, resnet; UNetMidBlock2D as the UNet builds it
   (num_layers 0): one resnet; mid_block_type null: no mid block. */
static mil_var *mid_block(unet_ctx *u, mil_var *h) {
    const unet_config *cfg = u->cfg;
    size_t last = cfg->n_blocks - 1;
    int64_t C = cfg->channels[last];
    if (cfg->mid == MID_NONE) return h;
    h = mid_resnet(u, h, "mid_block.resnets.0", C);
    if (cfg->mid == MID_RESNET) return h;
    h = spatial_transformer(u, h, "mid_block.attentions.0", cfg->heads[last], cfg->depth[last]);
    return mid_resnet(u, h, "mid_block.resnets.1", C);
}

static mil_var *up_path(unet_ctx *u, mil_var *h, skip_stack *skips) {
    const unet_config *cfg = u->cfg;
    mil_graph *g = u->n.g;
    size_t nb = cfg->n_blocks;
    char p[256];
    int64_t prev = cfg->channels[nb - 1];
    for (size_t i = 0; i < nb; i++) {
        size_t level = nb - 1 - i; /* diffusers reverses the per-level lists for the up path */
        int64_t cout = cfg->channels[level], cin = cfg->channels[level > 0 ? level - 1 : 0];
        int64_t layers = cfg->layers_per_block + 1;
        for (int64_t j = 0; j < layers; j++) {
            if (skips->n == 0) return sdc_mil_fail(g, SDC_E_INTERNAL, "UNet skip stack underflow");
            mil_var *skip = skips->v[--skips->n];
            int64_t skip_c = j == layers - 1 ? cin : cout, res_in = j == 0 ? prev : cout;
            mil_var *parts[2] = {h, skip};
            sdc_mil_scope(g, "up_blocks_%zu_concat_%lld", i, (long long)j);
            h = sdc_mil_concat(g, 2, parts, 1); /* (B, res_in + skip_c, H, W) */
            snprintf(p, sizeof p, "up_blocks.%zu.resnets.%lld", i, (long long)j);
            h = resnet(u, h, p, res_in + skip_c, cout);
            if (cfg->up_attn[i]) {
                snprintf(p, sizeof p, "up_blocks.%zu.attentions.%lld", i, (long long)j);
                h = spatial_transformer(u, h, p, cfg->heads[level], cfg->depth[level]);
            }
        }
        if (i + 1 < nb) {
            snprintf(p, sizeof p, "up_blocks.%zu.upsamplers.0.conv", i);
            sdc_mil_scope(g, "%s", p);
            h = sdc_net_conv3(&u->n, sdc_mil_upsample_nearest(g, h, 2, 2), p, cout, cout);
        }
        prev = cout;
    }
    return h;
}

typedef struct io_shapes {
    int64_t B, latent_h, latent_w, D, K, n_time_ids, text_embeds_dim;
} io_shapes;

/* The inputs every UNet and ControlNet shares, the time embedding, and conv_in. The contract's
   inputs are float16 whatever the compute precision: the Python pipeline checks dtypes
   strictly and feeds float16. Returns conv_in(sample) (B, C0, h, w). */
static mil_var *stem(unet_ctx *u, const io_shapes *io) {
    mil_graph *g = u->n.g;
    const unet_config *cfg = u->cfg;
    int64_t ss[4] = {io->B, cfg->in_channels, io->latent_h, io->latent_w}, ts[1] = {io->B};
    int64_t es[4] = {io->B, io->D, 1, io->K};
    mil_var *sample = sdc_mil_input(g, "sample", SDC_DT_F16, 4, ss);
    mil_var *timestep = sdc_mil_input(g, "timestep", SDC_DT_F16, 1, ts);
    mil_var *ehs = sdc_mil_input(g, "encoder_hidden_states", SDC_DT_F16, 4, es);
    mil_var *time_ids = NULL, *text_embeds = NULL;
    if (cfg->text_time) {
        int64_t tis[2] = {io->B, io->n_time_ids}, tes[2] = {io->B, io->text_embeds_dim};
        time_ids = sdc_mil_input(g, "time_ids", SDC_DT_F16, 2, tis);
        text_embeds = sdc_mil_input(g, "text_embeds", SDC_DT_F16, 2, tes);
    }
    u->context = sdc_net_to_compute(&u->n, ehs);
    mil_var *emb = time_embedding(u, timestep, time_ids, text_embeds);
    u->temb_silu = sdc_mil_silu(g, emb);

    sdc_mil_scope(g, "conv_in");
    mil_var *x = sdc_net_to_compute(&u->n, sample);
    if (cfg->center_input)
        x = sdc_mil_sub(g, sdc_mil_mul(g, x, sdc_mil_const_scalar(g, u->n.t, 2.0f)), sdc_mil_const_scalar(g, u->n.t, 1.0f));
    int k = (int)cfg->conv_in_kernel, pk = k / 2;
    const int pad_in[4] = {pk, pk, pk, pk};
    return sdc_net_conv(&u->n, x, "conv_in", cfg->in_channels, cfg->channels[0], k, 1, pad_in);
}

/* ControlNet residuals as extra inputs (anchor §4.2): additional_residual_0..N-2 are added to
   the skip tensors after the down path, N-1 to the mid block's output. */
static mil_var *residual_input(unet_ctx *u, int index, const mil_var *like) {
    char name[64];
    snprintf(name, sizeof name, "additional_residual_%d", index);
    if (!like) return NULL;
    return sdc_net_to_compute(&u->n, sdc_mil_input(u->n.g, name, SDC_DT_F16, like->type.rank, like->type.shape));
}

static void build_unet(unet_ctx *u, const io_shapes *io) {
    mil_graph *g = u->n.g;
    const unet_config *cfg = u->cfg;
    mil_var *h = stem(u, io);
    skip_stack skips = {.n = 0};
    h = down_path(u, h, &skips);
    if (u->opt->controlnet_inputs) {
        sdc_mil_scope(g, "controlnet_residuals");
        for (int k = 0; k < skips.n; k++) skips.v[k] = sdc_mil_add(g, skips.v[k], residual_input(u, k, skips.v[k]));
    }
    h = mid_block(u, h);
    if (u->opt->controlnet_inputs) h = sdc_mil_add(g, h, residual_input(u, skips.n, h));
    h = up_path(u, h, &skips);
    sdc_mil_scope(g, "conv_out");
    h = sdc_mil_silu(g, sdc_net_group_norm(&u->n, h, "conv_norm_out", (int)cfg->groups, (float)cfg->norm_eps));
    int k = (int)cfg->conv_out_kernel, pk = k / 2;
    const int pad_out[4] = {pk, pk, pk, pk};
    h = sdc_net_conv(&u->n, h, "conv_out", cfg->channels[0], cfg->out_channels, k, 1, pad_out);
    sdc_net_output_f32(&u->n, h, "noise_pred");
}

/* ControlNetConditioningEmbedding: cond (B, 3, f·h, f·w) → conv_in + SiLU → per level: conv + SiLU,
   strided conv + SiLU → conv_out → (B, C0, h, w), f = 2^(levels - 1) */
static mil_var *conditioning_embedding(unet_ctx *u, mil_var *cond) {
    const unet_config *cfg = u->cfg;
    mil_graph *g = u->n.g;
    char p[128];
    sdc_mil_scope(g, "controlnet_cond_embedding");
    mil_var *h = sdc_mil_silu(g, sdc_net_conv3(&u->n, cond, "controlnet_cond_embedding.conv_in", cfg->cond_channels,
                                       cfg->cond_embed[0]));
    static const int pad1[4] = {1, 1, 1, 1};
    for (size_t i = 0; i + 1 < cfg->n_cond_embed; i++) {
        int64_t cin = cfg->cond_embed[i], cout = cfg->cond_embed[i + 1];
        snprintf(p, sizeof p, "controlnet_cond_embedding.blocks.%zu", 2 * i);
        h = sdc_mil_silu(g, sdc_net_conv3(&u->n, h, p, cin, cin));
        snprintf(p, sizeof p, "controlnet_cond_embedding.blocks.%zu", 2 * i + 1);
        h = sdc_mil_silu(g, sdc_net_conv(&u->n, h, p, cin, cout, 3, 2, pad1)); /* halves H and W */
    }
    return sdc_net_conv3(&u->n, h, "controlnet_cond_embedding.conv_out", cfg->cond_embed[cfg->n_cond_embed - 1],
                     cfg->channels[0]);
}

static void build_controlnet(unet_ctx *u, const io_shapes *io) {
    mil_graph *g = u->n.g;
    const unet_config *cfg = u->cfg;
    int64_t f = (int64_t)1 << (cfg->n_cond_embed - 1);
    mil_var *h = stem(u, io);
    int64_t cs[4] = {io->B, cfg->cond_channels, f * io->latent_h, f * io->latent_w};
    mil_var *cond = sdc_net_to_compute(&u->n, sdc_mil_input(g, "controlnet_cond", SDC_DT_F16, 4, cs));
    h = sdc_mil_add(g, h, conditioning_embedding(u, cond)); /* (B, C0, h, w) */
    skip_stack skips = {.n = 0};
    h = down_path(u, h, &skips);
    h = mid_block(u, h);
    char name[64], p[64];
    for (int k = 0; k <= skips.n; k++) { /* the down residuals, then the mid block's */
        mil_var *x = k < skips.n ? skips.v[k] : h;
        int64_t C = x ? x->type.shape[1] : 0;
        if (k < skips.n)
            snprintf(p, sizeof p, "controlnet_down_blocks.%d", k);
        else
            snprintf(p, sizeof p, "controlnet_mid_block");
        sdc_mil_scope(g, "%s", p);
        snprintf(name, sizeof name, "additional_residual_%d", k);
        sdc_net_output_f32(&u->n, sdc_net_linear_1x1(&u->n, x, p, C, C, true), name);
    }
}

/* ---------------------------------------------------------------- entry */

sdc_status sdc_unet_describe(const sdc_component *c, bool controlnet, sdc_unet_info *info, sdc_err *err) {
    unet_config cfg;
    memset(info, 0, sizeof *info);
    sdc_status s = read_config(c, controlnet, &cfg, &info->notes, err);
    if (s) return s;
    info->in_channels = cfg.in_channels;
    info->cross_attention_dim = cfg.cross_attention_dim;
    info->text_time = cfg.text_time;
    info->addition_time_embed_dim = cfg.addition_time_embed_dim;
    info->projection_input_dim = cfg.projection_input_dim;
    info->downsamples = (int)cfg.n_blocks - 1;
    return SDC_OK;
}

static sdc_status build(const sdc_component *c, bool controlnet, const sdc_unet_options *opt, mil_graph **out,
                        sdc_err *err) {
    unet_config cfg;
    sdc_status s = read_config(c, controlnet, &cfg, NULL, err);
    if (s) return s;
    int64_t mult = (int64_t)1 << (cfg.n_blocks - 1);
    if (opt->latent_h < 1 || opt->latent_w < 1 || opt->latent_h % mult || opt->latent_w % mult || opt->latent_h > 1024 ||
        opt->latent_w > 1024)
        return sdc_fail(err, SDC_E_ARG, "%s: latent size %dx%d must be a positive multiple of %lld (the UNet halves it %zu times)",
                        c->config_path, opt->latent_h, opt->latent_w, (long long)mult, cfg.n_blocks - 1);
    int64_t text_dim = cfg.projection_input_dim - opt->n_time_ids * cfg.addition_time_embed_dim;
    if (cfg.text_time && text_dim < 1)
        return sdc_fail(err, SDC_E_FORMAT, "%s: projection_class_embeddings_input_dim %lld leaves no room for text_embeds after %d time ids",
                        c->config_path, (long long)cfg.projection_input_dim, opt->n_time_ids);
    mil_graph *g = sdc_mil_graph_new(opt->opset);
    if (!g) return sdc_fail(err, SDC_E_NOMEM, "out of memory");
    unet_ctx u = {.n = {g, c, opt->compute, err}, .cfg = &cfg, .opt = opt, .temb_channels = 4 * cfg.channels[0]};
    /* time_embedding.linear_1 tells the embedding width (4·C0 in every SD UNet) */
    const sdc_tensor *t = sdc_weights_find(c->weights, "time_embedding.linear_1.weight");
    if (t && t->rank >= 1) u.temb_channels = t->shape[0];
    io_shapes io = {opt->batch, opt->latent_h, opt->latent_w, opt->context_dim ? opt->context_dim : cfg.cross_attention_dim,
                    opt->context_len, opt->n_time_ids, text_dim};
    if (controlnet)
        build_controlnet(&u, &io);
    else
        build_unet(&u, &io);
    return sdc_net_finish(&u.n, out);
}

sdc_status sdc_build_unet(const sdc_component *c, const sdc_unet_options *opt, mil_graph **out, sdc_err *err) {
    return build(c, false, opt, out, err);
}

sdc_status sdc_build_controlnet(const sdc_component *c, const sdc_unet_options *opt, mil_graph **out, sdc_err *err) {
    return build(c, true, opt, out, err);
}
