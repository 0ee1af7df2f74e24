/*
 * vae.c — diffusers AutoencoderKL (sd-architectures.md §6): the decoder with post_quant_conv
 * and the encoder with quant_conv, traced as is (the anchor does no rewrite, §8: "pure
 * ConvNet").
 *
 *   decoder: z → post_quant_conv (1×1) → conv_in → mid (resnet, attention, resnet)
 *            → up blocks (layers+1 resnets, nearest ×2 + conv3 except the last)
 *            → GN → SiLU → conv_out → image
 *   encoder: x → conv_in → down blocks (layers resnets, pad (0,1,0,1) + conv3 stride 2
 *            except the last) → mid → GN → SiLU → conv_out → quant_conv (1×1) → moments
 *
 * Every GroupNorm has eps 1e-6; resnets have no time embedding. The mid-block attention is a
 * single head over the H·W positions with Linear q/k/v/out (with bias), built as the anchor's
 * traced graph has it: GroupNorm on the (B, C, HW) view, transposed to (B, HW, C), MIL linear
 * projections, matmuls over (B, HW, C). Its weights may carry diffusers' names (to_q/to_k/to_v/to_out.0), the names of
 * VAEs saved by diffusers ≤ 0.10 (query/key/value/proj_attn), 2-D Linear shapes or LDM's
 * [C, C, 1, 1] conv shapes.
 *
 * Shapes in comments: C channels, H×W spatial, S = H·W positions, L latent channels.
 */
#include "nets/nets.h"

#include <math.h>

#include "nets/blocks.h"
#include "nets/config_tables.h"

enum { MAX_BLOCKS = 8 };

typedef struct vae_config {
    int64_t channels[MAX_BLOCKS]; /* block_out_channels */
    size_t n_blocks;
    int64_t layers_per_block, latent_channels, in_channels, out_channels, groups, sample_size;
    bool quant_conv, post_quant_conv, mid_attention;
} vae_config;

static const float VAE_EPS = 1e-6f;

/* ---------------------------------------------------------------- config */

static sdc_status block_types(const sdc_component *c, const char *key, const char *want, size_t n, sdc_err *err) {
    json_t *arr = json_object_get(c->config, key);
    if (!arr || json_is_null(arr)) return SDC_OK; /* diffusers' default: all of `want` */
    if (!json_is_array(arr) || json_array_size(arr) != n)
        return sdc_fail(err, SDC_E_FORMAT, "%s: '%s' must list %zu block types (one per block_out_channels)",
                        c->config_path, key, n);
    for (size_t i = 0; i < n; i++) {
        const char *t = json_string_value(json_array_get(arr, i));
        if (!t) return sdc_fail(err, SDC_E_FORMAT, "%s: '%s'[%zu] is not a string", c->config_path, key, i);
        if (strcmp(t, want))
            return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: '%s'[%zu] = \"%s\" is not supported (only %s)",
                            c->config_path, key, i, t, want);
    }
    return SDC_OK;
}

static sdc_status read_config(const sdc_component *c, vae_config *cfg, sdc_err *err) {
    memset(cfg, 0, sizeof *cfg);
    sdc_status s = sdc_config_check_class(c, c->config, "", &sdc_vae_config_class, NULL, err);
    if (s) return s;
    if ((s = sdc_config_int_list(c, "block_out_channels", MAX_BLOCKS, cfg->channels, &cfg->n_blocks, err))) return s;
    if (cfg->n_blocks == 0) { /* diffusers' default (64,): one block, no resampling */
        cfg->channels[0] = 64;
        cfg->n_blocks = 1;
    }
    if ((s = block_types(c, "down_block_types", "DownEncoderBlock2D", cfg->n_blocks, err)) ||
        (s = block_types(c, "up_block_types", "UpDecoderBlock2D", cfg->n_blocks, err)) ||
        (s = sdc_config_int(c, "layers_per_block", 1, &cfg->layers_per_block, err)) ||
        (s = sdc_config_int(c, "latent_channels", 4, &cfg->latent_channels, err)) ||
        (s = sdc_config_int(c, "in_channels", 3, &cfg->in_channels, err)) ||
        (s = sdc_config_int(c, "out_channels", 3, &cfg->out_channels, err)) ||
        (s = sdc_config_int(c, "norm_num_groups", 32, &cfg->groups, err)) ||
        (s = sdc_config_int(c, "sample_size", 32, &cfg->sample_size, err)) ||
        (s = sdc_config_bool(c, "use_quant_conv", true, &cfg->quant_conv, err)) ||
        (s = sdc_config_bool(c, "use_post_quant_conv", true, &cfg->post_quant_conv, err)) ||
        (s = sdc_config_bool(c, "mid_block_add_attention", true, &cfg->mid_attention, err)))
        return s; /* act_fn: the tables accept silu and its alias swish only */
    const struct {
        const char *key;
        int64_t v, max;
    } checks[] = {{"layers_per_block", cfg->layers_per_block, 16}, {"latent_channels", cfg->latent_channels, 256},
                  {"in_channels", cfg->in_channels, 64},          {"out_channels", cfg->out_channels, 64},
                  {"norm_num_groups", cfg->groups, 1024}};
    for (size_t i = 0; i < SDC_COUNT_OF(checks); i++)
        if (checks[i].v < 1 || checks[i].v > checks[i].max)
            return sdc_fail(err, SDC_E_FORMAT, "%s: '%s' is %lld, expected 1..%lld", c->config_path, checks[i].key,
                            (long long)checks[i].v, (long long)checks[i].max);
    for (size_t i = 0; i < cfg->n_blocks; i++)
        if (cfg->channels[i] < 1 || cfg->channels[i] > 1 << 14 || cfg->channels[i] % cfg->groups)
            return sdc_fail(err, SDC_E_FORMAT,
                            "%s: block_out_channels[%zu] = %lld is not a positive multiple of norm_num_groups %lld",
                            c->config_path, i, (long long)cfg->channels[i], (long long)cfg->groups);
    return SDC_OK;
}

/* Image size / latent size: each block but the last halves (encoder) or doubles (decoder). */
static int vae_scale(const vae_config *cfg) { return 1 << (cfg->n_blocks - 1); }

sdc_status sdc_vae_describe(const sdc_component *c, sdc_vae_info *info, sdc_err *err) {
    vae_config cfg;
    sdc_status s = read_config(c, &cfg, err);
    if (s) return s;
    memset(info, 0, sizeof *info);
    info->latent_channels = cfg.latent_channels;
    info->in_channels = cfg.in_channels;
    info->out_channels = cfg.out_channels;
    info->scale = vae_scale(&cfg);
    info->sample_size = cfg.sample_size;
    return SDC_OK;
}

/* ---------------------------------------------------------------- blocks */

static mil_var *resnet(sdc_net *n, const vae_config *cfg, mil_var *x, const char *prefix, int64_t cin, int64_t cout) {
    sdc_mil_scope(n->g, "%s", prefix);
    return sdc_net_resnet(n, x, NULL, prefix, cin, cout, 0, (int)cfg->groups, VAE_EPS);
}

/* Which spelling of the attention projections the checkpoint uses: diffusers' current names,
   or those of VAEs saved by diffusers <= 0.10 (renamed by diffusers at load time). */
typedef struct attn_names {
    const char *q, *k, *v, *out;
} attn_names;

static const attn_names NEW_NAMES = {"to_q", "to_k", "to_v", "to_out.0"};
static const attn_names LEGACY_NAMES = {"query", "key", "value", "proj_attn"};

/* diffusers Attention (heads 1, head dim C, residual, rescale 1) with its GroupNorm:
   (B, C, H, W) → (B, C, H, W) */
static mil_var *attention(sdc_net *n, const vae_config *cfg, mil_var *x, const char *prefix) {
    mil_graph *g = n->g;
    if (!x || !sdc_mil_graph_ok(g)) return NULL;
    sdc_mil_scope(g, "%s", prefix);
    int64_t B = x->type.shape[0], C = x->type.shape[1], H = x->type.shape[2], W = x->type.shape[3];
    char p[256];
    snprintf(p, sizeof p, "%s.to_q.weight", prefix);
    const attn_names *nm = sdc_weights_find(n->c->weights, p) ? &NEW_NAMES : &LEGACY_NAMES;
    if (nm == &LEGACY_NAMES) {
        snprintf(p, sizeof p, "%s.query.weight", prefix);
        if (!sdc_weights_find(n->c->weights, p)) {
            sdc_fail(n->err, SDC_E_NOTFOUND, "%s: no tensor %s.to_q.weight (or legacy %s.query.weight)",
                     sdc_weights_describe(n->c->weights), prefix, prefix);
            return NULL;
        }
    }
    snprintf(p, sizeof p, "%s.group_norm", prefix);
    mil_var *h = sdc_net_group_norm_seq(n, x, p, (int)cfg->groups, VAE_EPS); /* (B, C, S) */
    static const int32_t swap12[3] = {0, 2, 1}, heads_first[4] = {0, 2, 1, 3};
    h = sdc_mil_transpose(g, h, 3, swap12); /* (B, S, C) */
    const char *proj[3] = {nm->q, nm->k, nm->v};
    int64_t S = H * W, split[4] = {B, S, 1, C}, merged[3] = {B, S, C}, joined[4] = {B, 1, S, C};
    mil_var *qkv[3];
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s.%s", prefix, proj[i]);
        /* diffusers' head_to_batch_dim with one head: a no-op reshape, transpose, reshape the
           anchor's graph keeps, so sdcoreml's does too */
        qkv[i] = sdc_net_linear(n, h, p, C, C);                                 /* (B, S, C) */
        qkv[i] = sdc_mil_transpose(g, sdc_mil_reshape(g, qkv[i], 4, split), 4, heads_first); /* (B, 1, S, C) */
        qkv[i] = sdc_mil_reshape(g, qkv[i], 3, merged);                        /* (B, S, C) */
    }
    /* diffusers scales q before QKᵀ here (baddbmm's alpha, lowered to a mul of the query) */
    mil_var *q = sdc_mil_mul(g, qkv[0], sdc_mil_const_scalar(g, n->t, (float)(1.0 / sqrt((double)C))));
    mil_var *w = sdc_mil_softmax(g, sdc_mil_matmul(g, q, qkv[1], false, true), -1); /* (B, S, S) */
    mil_var *o = sdc_mil_reshape(g, sdc_mil_matmul(g, w, qkv[2], false, false), 4, joined); /* (B, 1, S, C) */
    o = sdc_mil_reshape(g, sdc_mil_transpose(g, o, 4, heads_first), 3, merged); /* (B, S, C) */
    snprintf(p, sizeof p, "%s.%s", prefix, nm->out);
    o = sdc_mil_transpose(g, sdc_net_linear(n, o, p, C, C), 3, swap12); /* (B, C, S) */
    int64_t img[4] = {B, C, H, W};
    return sdc_mil_add(g, sdc_mil_reshape(g, o, 4, img), x);
}

/* UNetMidBlock2D: resnet → attention → resnet, C channels throughout */
static mil_var *mid_block(sdc_net *n, const vae_config *cfg, mil_var *h, const char *part, int64_t C) {
    char p[256];
    snprintf(p, sizeof p, "%s.mid_block.resnets.0", part);
    h = resnet(n, cfg, h, p, C, C);
    if (cfg->mid_attention) {
        snprintf(p, sizeof p, "%s.mid_block.attentions.0", part);
        h = attention(n, cfg, h, p);
    }
    snprintf(p, sizeof p, "%s.mid_block.resnets.1", part);
    return resnet(n, cfg, h, p, C, C);
}

/* conv_norm_out → SiLU → conv_out */
static mil_var *head(sdc_net *n, const vae_config *cfg, mil_var *h, const char *part, int64_t cin, int64_t cout) {
    char p[256], q[256];
    sdc_mil_scope(n->g, "%s.conv_out", part);
    snprintf(p, sizeof p, "%s.conv_norm_out", part);
    snprintf(q, sizeof q, "%s.conv_out", part);
    h = sdc_mil_silu(n->g, sdc_net_group_norm(n, h, p, (int)cfg->groups, VAE_EPS));
    return sdc_net_conv3(n, h, q, cin, cout);
}

/* ---------------------------------------------------------------- decoder */

static void build_decoder(sdc_net *n, const vae_config *cfg, const sdc_vae_options *opt) {
    mil_graph *g = n->g;
    int64_t L = cfg->latent_channels, top = cfg->channels[cfg->n_blocks - 1];
    int64_t zs[4] = {1, L, opt->latent_h, opt->latent_w};
    mil_var *z = sdc_mil_input(g, "z", opt->input, 4, zs);
    sdc_mil_scope(g, "post_quant_conv");
    mil_var *h = sdc_net_to_compute(n, z); /* (1, L, h, w) */
    if (cfg->post_quant_conv) h = sdc_net_linear_1x1(n, h, "post_quant_conv", L, L, true);
    sdc_mil_scope(g, "decoder.conv_in");
    h = sdc_net_conv3(n, h, "decoder.conv_in", L, top); /* (1, C_top, h, w) */
    h = mid_block(n, cfg, h, "decoder", top);
    int64_t prev = top;
    char p[256];
    for (size_t i = 0; i < cfg->n_blocks; i++) {
        int64_t cout = cfg->channels[cfg->n_blocks - 1 - i]; /* reversed block_out_channels */
        for (int64_t j = 0; j < cfg->layers_per_block + 1; j++) {
            snprintf(p, sizeof p, "decoder.up_blocks.%zu.resnets.%lld", i, (long long)j);
            h = resnet(n, cfg, h, p, j == 0 ? prev : cout, cout);
        }
        if (i + 1 < cfg->n_blocks) {
            snprintf(p, sizeof p, "decoder.up_blocks.%zu.upsamplers.0.conv", i);
            sdc_mil_scope(g, "%s", p);
            h = sdc_net_conv3(n, sdc_mil_upsample_nearest(g, h, 2, 2), p, cout, cout); /* (1, C, 2H, 2W) */
        }
        prev = cout;
    }
    h = head(n, cfg, h, "decoder", cfg->channels[0], cfg->out_channels); /* (1, 3, s·h, s·w) */
    sdc_mil_scope(g, "out");
    sdc_net_output_f32(n, h, "image");
}

/* ---------------------------------------------------------------- encoder */

static void build_encoder(sdc_net *n, const vae_config *cfg, const sdc_vae_options *opt) {
    mil_graph *g = n->g;
    int64_t s = vae_scale(cfg), L2 = 2 * cfg->latent_channels;
    int64_t xs[4] = {1, cfg->in_channels, s * opt->latent_h, s * opt->latent_w};
    mil_var *x = sdc_mil_input(g, "x", opt->input, 4, xs);
    sdc_mil_scope(g, "encoder.conv_in");
    mil_var *h = sdc_net_conv3(n, sdc_net_to_compute(n, x), "encoder.conv_in", cfg->in_channels, cfg->channels[0]);
    int64_t cin = cfg->channels[0];
    char p[256];
    for (size_t i = 0; i < cfg->n_blocks; i++) {
        int64_t cout = cfg->channels[i];
        for (int64_t j = 0; j < cfg->layers_per_block; j++) {
            snprintf(p, sizeof p, "encoder.down_blocks.%zu.resnets.%lld", i, (long long)j);
            h = resnet(n, cfg, h, p, j == 0 ? cin : cout, cout);
        }
        if (i + 1 < cfg->n_blocks) {
            /* LDM's asymmetric padding: zero row below and column right, then stride 2; a pad op
               then a valid conv, as diffusers' F.pad lowers in the anchor's graph */
            static const int32_t pad_br[4] = {0, 1, 0, 1};
            static const int pad0[4] = {0, 0, 0, 0};
            snprintf(p, sizeof p, "encoder.down_blocks.%zu.downsamplers.0.conv", i);
            sdc_mil_scope(g, "%s", p);
            h = sdc_mil_pad_constant(g, h, pad_br, 0.0f);             /* (1, C, H+1, W+1) */
            h = sdc_net_conv(n, h, p, cout, cout, 3, 2, pad0); /* (1, C, H/2, W/2) */
        }
        cin = cout;
    }
    int64_t top = cfg->channels[cfg->n_blocks - 1];
    h = mid_block(n, cfg, h, "encoder", top);
    h = head(n, cfg, h, "encoder", top, L2); /* (1, 2L, h, w): mean, logvar */
    sdc_mil_scope(g, "quant_conv");
    if (cfg->quant_conv) h = sdc_net_linear_1x1(n, h, "quant_conv", L2, L2, true);
    sdc_mil_scope(g, "out");
    sdc_net_output_f32(n, h, "latent");
}

/* ---------------------------------------------------------------- entry */

static sdc_status start(const sdc_component *c, const sdc_vae_options *opt, vae_config *cfg, mil_graph **g,
                        sdc_err *err) {
    sdc_status s = read_config(c, cfg, err);
    if (s) return s;
    if (opt->latent_h < 1 || opt->latent_w < 1 || opt->latent_h > 1024 || opt->latent_w > 1024)
        return sdc_fail(err, SDC_E_ARG, "%s: latent size %dx%d must be within 1..1024", c->config_path, opt->latent_h,
                        opt->latent_w);
    if ((opt->compute != SDC_DT_F16 && opt->compute != SDC_DT_F32) ||
        (opt->input != SDC_DT_F16 && opt->input != SDC_DT_F32))
        return sdc_fail(err, SDC_E_INTERNAL, "VAE: compute and input dtypes must be F16 or F32");
    *g = sdc_mil_graph_new(opt->opset);
    if (!*g) return sdc_fail(err, SDC_E_NOMEM, "out of memory");
    return SDC_OK;
}

typedef void (*vae_half)(sdc_net *n, const vae_config *cfg, const sdc_vae_options *opt);

static sdc_status build(const sdc_component *c, const sdc_vae_options *opt, vae_half half, mil_graph **out,
                        sdc_err *err) {
    vae_config cfg;
    mil_graph *g;
    sdc_status s = start(c, opt, &cfg, &g, err);
    if (s) return s;
    sdc_net n = {g, c, opt->compute, err};
    half(&n, &cfg, opt);
    return sdc_net_finish(&n, out);
}

sdc_status sdc_build_vae_decoder(const sdc_component *c, const sdc_vae_options *opt, mil_graph **out,
                                 sdc_err *err) {
    return build(c, opt, build_decoder, out, err);
}

sdc_status sdc_build_vae_encoder(const sdc_component *c, const sdc_vae_options *opt, mil_graph **out,
                                 sdc_err *err) {
    return build(c, opt, build_encoder, out, err);
}
