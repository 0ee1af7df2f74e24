/* clip.c — see clip.h. Shapes: T tokens, W hidden size, H heads, D = W / H. */
#include "nets/clip.h"

#include <math.h>

sdc_status sdc_clip_read_positive(const sdc_component *c, json_t *config, const char *what, const char *key,
                              int64_t dflt, int64_t max, int64_t *out, sdc_err *err) {
    sdc_component view = *c; /* the same file, possibly one level down (vision_config) */
    view.config = config;
    sdc_status s = sdc_config_int(&view, key, dflt, out, err);
    if (s) return s;
    if (*out < 1 || *out > max)
        return sdc_fail(err, SDC_E_FORMAT, "%s: %s'%s' is %lld, expected 1..%lld", c->config_path, what, key,
                        (long long)*out, (long long)max);
    return SDC_OK;
}

sdc_status sdc_clip_read_dims(const sdc_component *c, json_t *config, const char *what, const clip_dims *dflt,
                          clip_dims *d, sdc_err *err) {
    sdc_component view = *c;
    view.config = config;
    const char *act;
    sdc_status s;
    if ((s = sdc_clip_read_positive(c, config, what, "hidden_size", dflt->hidden, 1 << 16, &d->hidden, err)) ||
        (s = sdc_clip_read_positive(c, config, what, "intermediate_size", dflt->intermediate, 1 << 18, &d->intermediate, err)) ||
        (s = sdc_clip_read_positive(c, config, what, "num_hidden_layers", dflt->layers, 1024, &d->layers, err)) ||
        (s = sdc_clip_read_positive(c, config, what, "num_attention_heads", dflt->heads, 1024, &d->heads, err)) ||
        (s = sdc_config_double(&view, "layer_norm_eps", 1e-5, &d->eps, err)) ||
        (s = sdc_config_string(&view, "hidden_act", "quick_gelu", &act, err)))
        return s;
    if (d->hidden % d->heads)
        return sdc_fail(err, SDC_E_FORMAT, "%s: %shidden_size %lld is not a multiple of num_attention_heads %lld",
                        c->config_path, what, (long long)d->hidden, (long long)d->heads);
    if (!(d->eps > 0 && d->eps < 1))
        return sdc_fail(err, SDC_E_FORMAT, "%s: %slayer_norm_eps %g is out of range", c->config_path, what, d->eps);
    if (strcmp(act, "quick_gelu") && strcmp(act, "gelu"))
        return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: %shidden_act '%s' is not supported (quick_gelu, gelu)",
                        c->config_path, what, act);
    d->quick_gelu = !strcmp(act, "quick_gelu");
    return SDC_OK;
}

mil_var *sdc_clip_linear(sdc_net *n, mil_var *x, const char *prefix, int64_t in, int64_t out) {
    char w[256], b[256];
    snprintf(w, sizeof w, "%s.weight", prefix);
    snprintf(b, sizeof b, "%s.bias", prefix);
    int64_t ws[2] = {out, in}, bs[1] = {out};
    return sdc_mil_linear(n->g, x, sdc_net_weight(n, w, 2, ws), sdc_net_weight(n, b, 1, bs));
}

mil_var *sdc_clip_layer_norm(sdc_net *n, mil_var *x, const char *prefix, int64_t width, double eps) {
    char w[256], b[256];
    snprintf(w, sizeof w, "%s.weight", prefix);
    snprintf(b, sizeof b, "%s.bias", prefix);
    int64_t s[1] = {width};
    static const int32_t axes[1] = {-1};
    return sdc_mil_layer_norm(n->g, x, 1, axes, sdc_net_weight(n, w, 1, s), sdc_net_weight(n, b, 1, s), (float)eps);
}

/* [1, T, W] → [H, T, D]: transformers' _shape then view(bsz * heads, -1, head_dim), the
   reshape, transpose, reshape the anchor's graph has */
static mil_var *split_heads(sdc_net *n, mil_var *x, const clip_dims *d) {
    if (!x) return NULL;
    int64_t T = x->type.shape[1], D = d->hidden / d->heads;
    int64_t shape[4] = {1, T, d->heads, D}, batched[3] = {d->heads, T, D};
    static const int32_t perm[4] = {0, 2, 1, 3};
    return sdc_mil_reshape(n->g, sdc_mil_transpose(n->g, sdc_mil_reshape(n->g, x, 4, shape), 4, perm), 3, batched);
}

/* transformers' CLIPAttention (eager) as traced: batched [H, T, T] weights, viewed as
   [1, H, T, T] only to add the causal mask */
static mil_var *self_attention(sdc_net *n, mil_var *h, const char *layer, const clip_dims *d, mil_var *mask) {
    mil_graph *g = n->g;
    if (!h) return NULL;
    int64_t W = d->hidden, T = h->type.shape[1], H = d->heads, D = W / H;
    char p[256];
    snprintf(p, sizeof p, "%s.self_attn.q_proj", layer);
    mil_var *q = sdc_clip_linear(n, h, p, W, W); /* [1, T, W] */
    q = sdc_mil_mul(g, q, sdc_mil_const_scalar(g, n->t, 1.0f / sqrtf((float)D))); /* scaled first, as CLIP */
    snprintf(p, sizeof p, "%s.self_attn.k_proj", layer);
    mil_var *k = sdc_clip_linear(n, h, p, W, W);
    snprintf(p, sizeof p, "%s.self_attn.v_proj", layer);
    mil_var *v = sdc_clip_linear(n, h, p, W, W);
    mil_var *w = sdc_mil_matmul(g, split_heads(n, q, d), split_heads(n, k, d), false, true); /* [H, T, T] */
    if (mask) {
        int64_t four[4] = {1, H, T, T}, three[3] = {H, T, T};
        w = sdc_mil_reshape(g, sdc_mil_add(g, sdc_mil_reshape(g, w, 4, four), mask), 3, three);
    }
    w = sdc_mil_softmax(g, w, -1);
    mil_var *o = sdc_mil_matmul(g, w, split_heads(n, v, d), false, false); /* [H, T, D] */
    static const int32_t perm[4] = {0, 2, 1, 3};
    int64_t heads4[4] = {1, H, T, D}, merged[3] = {1, T, W};
    o = sdc_mil_transpose(g, sdc_mil_reshape(g, o, 4, heads4), 4, perm); /* [1, T, H, D] */
    o = sdc_mil_reshape(g, o, 3, merged);                                /* [1, T, W] */
    snprintf(p, sizeof p, "%s.self_attn.out_proj", layer);
    return sdc_clip_linear(n, o, p, W, W);
}

static mil_var *mlp(sdc_net *n, mil_var *h, const char *layer, const clip_dims *d) {
    mil_graph *g = n->g;
    char p[256];
    snprintf(p, sizeof p, "%s.mlp.fc1", layer);
    h = sdc_clip_linear(n, h, p, d->hidden, d->intermediate); /* [1, T, I] */
    if (d->quick_gelu)
        h = sdc_mil_mul(g, h, sdc_mil_sigmoid(g, sdc_mil_mul(g, h, sdc_mil_const_scalar(g, n->t, 1.702f))));
    else
        h = sdc_mil_gelu(g, h, "EXACT");
    snprintf(p, sizeof p, "%s.mlp.fc2", layer);
    return sdc_clip_linear(n, h, p, d->intermediate, d->hidden); /* [1, T, W] */
}

mil_var *sdc_clip_encoder_layer(sdc_net *n, mil_var *x, const char *prefix, const clip_dims *d, mil_var *mask) {
    char p[256];
    snprintf(p, sizeof p, "%s.layer_norm1", prefix);
    x = sdc_mil_add(n->g, x, self_attention(n, sdc_clip_layer_norm(n, x, p, d->hidden, d->eps), prefix, d, mask));
    snprintf(p, sizeof p, "%s.layer_norm2", prefix);
    return sdc_mil_add(n->g, x, mlp(n, sdc_clip_layer_norm(n, x, p, d->hidden, d->eps), prefix, d));
}
