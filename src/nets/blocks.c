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

/* A [C] const of one value, the compute dtype (batch_norm's mean and variance) */
static mil_var *channel_fill(sdc_net *n, int64_t c, float value) {
    float *vals = sdc_malloc((size_t)c * sizeof *vals);
    if (!vals) return sdc_mil_fail(n->g, SDC_E_NOMEM, "out of memory");
    for (int64_t i = 0; i < c; i++) vals[i] = value;
    int64_t s[1] = {c};
    mil_var *v = sdc_mil_const_floats(n->g, n->t, 1, s, vals);
    sdc_free(vals);
    return v;
}

/* The anchor's GroupNorm as coremltools lowers torch's group_norm and then fuses the affine's
   mul/add into batch_norm (fuse_elementwise_to_batchnorm): each step is its own op, so a device
   computes the variance as the mean of squared deviations over (C/G, H, W), in the compute
   dtype, exactly as in the packages Apple's tool writes. The affine stays 1-D [C] (and so is
   never palettized, as in the anchor). */
mil_var *sdc_net_group_norm(sdc_net *n, mil_var *x, const char *prefix, int groups, float eps) {
    if (!x || !sdc_mil_graph_ok(n->g)) return NULL;
    mil_graph *g = n->g;
    const mil_type *t = &x->type;
    int64_t B = t->shape[0], C = t->shape[1];
    if (t->rank != 4 || C % groups)
        return sdc_mil_fail(g, SDC_E_FORMAT, "%s: %lld channels are not divisible into %d groups", prefix,
                        (long long)C, groups);
    char w[256], b[256];
    suffixed(w, sizeof w, prefix, "weight");
    suffixed(b, sizeof b, prefix, "bias");
    int64_t grouped[5] = {B, groups, C / groups, t->shape[2], t->shape[3]}, s1[1] = {C};
    static const int32_t axes[3] = {2, 3, 4};
    mil_var *h = sdc_mil_reshape(g, x, 5, grouped);                          /* (B, G, C/G, H, W) */
    mil_var *mean = sdc_mil_reduce(g, "reduce_mean", h, 3, axes, true);     /* (B, G, 1, 1, 1) */
    mil_var *dev = sdc_mil_sub(g, h, mean);                                  /* (B, G, C/G, H, W) */
    mil_var *var = sdc_mil_reduce(g, "reduce_mean", sdc_mil_square(g, dev), 3, axes, true); /* (B, G, 1, 1, 1) */
    mil_var *std = sdc_mil_sqrt(g, sdc_mil_add(g, var, sdc_mil_const_scalar(g, n->t, eps)));
    h = sdc_mil_reshape(g, sdc_mil_real_div(g, dev, std), 4, t->shape);      /* (B, C, H, W) */
    /* batch_norm(mean 0, variance 1, epsilon 1e-5) is the fused form of x·gamma + beta; its
       1/sqrt(1 + 1e-5) factor is the anchor's too */
    return sdc_mil_batch_norm(g, h, channel_fill(n, C, 0.0f), channel_fill(n, C, 1.0f),
                              sdc_net_weight(n, w, 1, s1), sdc_net_weight(n, b, 1, s1), 1e-5f);
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
