/*
 * clip.h — the transformer shared by transformers' CLIP text and vision towers: pre-LN
 * encoder layers of self-attention and an MLP, in the (1, T, W) layout the CLIP models are
 * traced in (no ANE rewrite, as the anchor). Weights by transformers' names.
 */
#ifndef SDC_CLIP_H
#define SDC_CLIP_H

#include "nets/blocks.h"

typedef struct clip_dims {
    int64_t hidden, intermediate, layers, heads;
    double eps;
    bool quick_gelu; /* x·sigmoid(1.702x) (OpenAI CLIP); else exact GELU (OpenCLIP) */
} clip_dims;

/* Reads hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
   layer_norm_eps and hidden_act from `config` (an object of c's config file), checked; absent
   sizes take dflt's (transformers' defaults differ between CLIPTextConfig and CLIPVisionConfig). */
sdc_status sdc_clip_read_dims(const sdc_component *c, json_t *config, const char *what, const clip_dims *dflt,
                          clip_dims *d, sdc_err *err);

/* transformers' CLIPTextConfig and CLIPVisionConfig defaults */
static const clip_dims CLIP_TEXT_DEFAULTS = {512, 2048, 12, 8, 1e-5, true};
static const clip_dims CLIP_VISION_DEFAULTS = {768, 3072, 12, 12, 1e-5, true};

/* A positive integer field of `config`, at most max (errors name the file, `what` and key). */
sdc_status sdc_clip_read_positive(const sdc_component *c, json_t *config, const char *what, const char *key,
                              int64_t dflt, int64_t max, int64_t *out, sdc_err *err);

/* nn.Linear "<prefix>.weight/.bias": x [1, T, in] → [1, T, out] */
mil_var *sdc_clip_linear(sdc_net *n, mil_var *x, const char *prefix, int64_t in, int64_t out);
/* LayerNorm over the last axis, "<prefix>.weight/.bias" of width `width` */
mil_var *sdc_clip_layer_norm(sdc_net *n, mil_var *x, const char *prefix, int64_t width, double eps);
/* One encoder layer "<prefix>" (…layers.l): x += attn(ln1(x)) (+ mask); x += mlp(ln2(x)) */
mil_var *sdc_clip_encoder_layer(sdc_net *n, mil_var *x, const char *prefix, const clip_dims *d, mil_var *mask);

#endif
