/* blocks.c — see blocks.h. */
#include "nets/blocks.h"

#include <math.h>

static void suffixed(char *out, size_t size, const char *prefix, const char *suffix) {
    snprintf(out, size, "%s.%s", prefix, suffix);
}

mil_var *sdc_net_weight(sdc_net *n, const char *name, int rank, const int64_t *shape) {
    if (!sdc_mil_graph_ok(n->g) || n->err->code) return NULL;
    const sdc_tensor *t;
    if (sdc_weights_get(n->c->weights, name, rank, shape, &t, n->err)) return NULL;
    return sdc_mil_const_weight(n->g, t, n->t, rank, shape, 0);
}

mil_var *sdc_net_weight_1x1(sdc_net *n, const char *name, int64_t out, int64_t in) {
    if (!sdc_mil_graph_ok(n->g) || n->err->code) return NULL;
    const sdc_tensor *t = sdc_weights_find(n->c->weights, name);
    int64_t s2[2] = {out, in}, s4[4] = {out, in, 1, 1};
    bool as_conv = t && t->rank == 4;
    if (sdc_weights_get(n->c->weights, name, as_conv ? 4 : 2, as_conv ? s4 : s2, &t, n->err)) return NULL;
    return sdc_mil_const_weight(n->g, t, n->t, 4, s4, 0); /* same bytes: [out, in] is [out, in, 1, 1] */
}

mil_var *sdc_net_conv(sdc_net *n, mil_var *x, const char *prefix, int64_t cin, int64_t cout, int k, int stride,
                  const int pad[4]) {
    char w[256], b[256];
    suffixed(w, sizeof w, prefix, "weight");
    suffixed(b, sizeof b, prefix, "bias");
    int64_t ws[4] = {cout, cin, k, k}, bs[1] = {cout};
    return sdc_mil_conv(n->g, x, sdc_net_weight(n, w, 4, ws), sdc_net_weight(n, b, 1, bs), stride, pad, 1);
}

mil_var *sdc_net_conv3(sdc_net *n, mil_var *x, const char *prefix, int64_t cin, int64_t cout) {
    static const int pad1[4] = {1, 1, 1, 1};
    return sdc_net_conv(n, x, prefix, cin, cout, 3, 1, pad1);
}

mil_var *sdc_net_linear_1x1(sdc_net *n, mil_var *x, const char *prefix, int64_t cin, int64_t cout, bool bias) {
    char w[256], b[256];
    suffixed(w, sizeof w, prefix, "weight");
    suffixed(b, sizeof b, prefix, "bias");
    static const int pad0[4] = {0, 0, 0, 0};
    int64_t bs[1] = {cout};
    mil_var *bv = bias ? sdc_net_weight(n, b, 1, bs) : NULL;
    if (bias && !bv) return NULL;
    return sdc_mil_conv(n->g, x, sdc_net_weight_1x1(n, w, cout, cin), bv, 1, pad0, 1);
}

/* (1, C, 1, 1) view of a [C] affine parameter, broadcast over (B, C, H, W) */
static mil_var *channel_param(sdc_net *n, const char *name, int64_t c) {
    if (!sdc_mil_graph_ok(n->g) || n->err->code) return NULL;
    const sdc_tensor *t;
    int64_t s1[1] = {c}, s4[4] = {1, c, 1, 1};
    if (sdc_weights_get(n->c->weights, name, 1, s1, &t, n->err)) return NULL;
    return sdc_mil_const_weight(n->g, t, n->t, 4, s4, 0);
}

mil_var *sdc_net_group_norm(sdc_net *n, mil_var *x, const char *prefix, int groups, float eps) {
    if (!x || !sdc_mil_graph_ok(n->g)) return NULL;
    const mil_type *t = &x->type;
    int64_t B = t->shape[0], C = t->shape[1], HW = t->shape[2] * t->shape[3];
    if (t->rank != 4 || C % groups)
        return sdc_mil_fail(n->g, SDC_E_FORMAT, "%s: %lld channels are not divisible into %d groups", prefix,
                        (long long)C, groups);
    char w[256], b[256];
    suffixed(w, sizeof w, prefix, "weight");
    suffixed(b, sizeof b, prefix, "bias");
    int64_t grouped[4] = {B, groups, C / groups, HW};
    static const int32_t axes[2] = {2, 3};
    mil_var *h = sdc_mil_reshape(n->g, x, 4, grouped);              /* (B, G, C/G, HW) */
    h = sdc_mil_layer_norm(n->g, h, 2, axes, NULL, NULL, eps);       /* per group */
    h = sdc_mil_reshape(n->g, h, 4, t->shape);                       /* (B, C, H, W) */
    h = sdc_mil_mul(n->g, h, channel_param(n, w, C));
    return sdc_mil_add(n->g, h, channel_param(n, b, C));
}

mil_var *sdc_net_layer_norm_c(sdc_net *n, mil_var *x, const char *prefix, float eps) {
    if (!x || !sdc_mil_graph_ok(n->g)) return NULL;
    int64_t C = x->type.shape[1], s[1] = {C};
    char w[256], b[256];
    suffixed(w, sizeof w, prefix, "weight");
    suffixed(b, sizeof b, prefix, "bias");
    static const int32_t axes[1] = {-3}; /* the channel axis of (B, C, 1, S) */
    return sdc_mil_layer_norm(n->g, x, 1, axes, sdc_net_weight(n, w, 1, s), sdc_net_weight(n, b, 1, s), eps);
}

mil_var *sdc_net_resnet(sdc_net *n, mil_var *x, mil_var *temb_silu, const char *prefix, int64_t cin, int64_t cout,
                    int64_t temb_channels, int groups, float eps) {
    char p[256];
    mil_graph *g = n->g;
    snprintf(p, sizeof p, "%s.norm1", prefix);
    mil_var *h = sdc_mil_silu(g, sdc_net_group_norm(n, x, p, groups, eps));
    snprintf(p, sizeof p, "%s.conv1", prefix);
    h = sdc_net_conv3(n, h, p, cin, cout); /* (B, cout, H, W) */
    if (temb_silu) {
        snprintf(p, sizeof p, "%s.time_emb_proj", prefix);
        h = sdc_mil_add(g, h, sdc_net_linear_1x1(n, temb_silu, p, temb_channels, cout, true)); /* + (B, cout, 1, 1) */
    }
    snprintf(p, sizeof p, "%s.norm2", prefix);
    h = sdc_mil_silu(g, sdc_net_group_norm(n, h, p, groups, eps));
    snprintf(p, sizeof p, "%s.conv2", prefix);
    h = sdc_net_conv3(n, h, p, cout, cout);
    mil_var *shortcut = x;
    if (cin != cout) {
        snprintf(p, sizeof p, "%s.conv_shortcut", prefix);
        shortcut = sdc_net_linear_1x1(n, x, p, cin, cout, true);
    }
    return sdc_mil_add(g, shortcut, h);
}

mil_var *sdc_net_sinusoid(sdc_net *n, mil_var *t, int64_t dim, bool flip_sin_to_cos, double freq_shift) {
    mil_graph *g = n->g;
    if (!t || !sdc_mil_graph_ok(g)) return NULL;
    if (dim < 2 || dim % 2 || dim > 65536)
        return sdc_mil_fail(g, SDC_E_UNSUPPORTED, "timestep embedding dimension %lld must be even", (long long)dim);
    int64_t half = dim / 2, N = t->type.shape[0];
    float *freq = sdc_malloc((size_t)half * sizeof *freq);
    if (!freq) return sdc_mil_fail(g, SDC_E_NOMEM, "out of memory");
    for (int64_t j = 0; j < half; j++) freq[j] = (float)exp(-log(10000.0) * (double)j / ((double)half - freq_shift));
    int64_t fs[2] = {1, half}, col[2] = {N, 1};
    mil_var *f = sdc_mil_const_floats(g, SDC_DT_F32, 2, fs, freq);
    sdc_free(freq);
    mil_var *arg = sdc_mil_mul(g, sdc_mil_reshape(g, t, 2, col), f); /* (N, half) */
    mil_var *parts[2] = {sdc_mil_sin(g, arg), sdc_mil_cos(g, arg)};
    if (flip_sin_to_cos) {
        mil_var *s = parts[0];
        parts[0] = parts[1];
        parts[1] = s;
    }
    return sdc_mil_concat(g, 2, parts, 1); /* (N, dim) */
}

mil_var *sdc_net_to_compute(sdc_net *n, mil_var *x) {
    if (!x || x->type.dtype == n->t) return x;
    return sdc_mil_cast(n->g, x, n->t);
}

void sdc_net_output_f32(sdc_net *n, mil_var *v, const char *name) {
    if (v && v->type.dtype != SDC_DT_F32) v = sdc_mil_cast(n->g, v, SDC_DT_F32);
    sdc_mil_output(n->g, v, name);
}

sdc_status sdc_net_finish(sdc_net *n, mil_graph **out) {
    if (n->err->code) {
        sdc_mil_graph_free(n->g);
        return n->err->code;
    }
    if (!sdc_mil_graph_ok(n->g)) {
        sdc_status s = sdc_fail(n->err, n->g->err.code, "%s: %s", n->c->dir, n->g->err.msg);
        sdc_mil_graph_free(n->g);
        return s;
    }
    *out = n->g;
    return SDC_OK;
}
