/* blocks.c — see blocks.h. */
#include "nets/blocks.h"

#include <math.h>

#include "io/fp16.h"

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

mil_var *sdc_net_weight_2d(sdc_net *n, const char *name, int64_t out, int64_t in) {
    if (!sdc_mil_graph_ok(n->g) || n->err->code) return NULL;
    const sdc_tensor *t = sdc_weights_find(n->c->weights, name);
    int64_t s2[2] = {out, in}, s4[4] = {out, in, 1, 1};
    bool as_conv = t && t->rank == 4;
    if (sdc_weights_get(n->c->weights, name, as_conv ? 4 : 2, as_conv ? s4 : s2, &t, n->err)) return NULL;
    return sdc_mil_const_weight(n->g, t, n->t, 2, s2, 0); /* same bytes: [out, in, 1, 1] is [out, in] */
}

mil_var *sdc_net_linear(sdc_net *n, mil_var *x, const char *prefix, int64_t cin, int64_t cout) {
    char w[256], b[256];
    suffixed(w, sizeof w, prefix, "weight");
    suffixed(b, sizeof b, prefix, "bias");
    int64_t bs[1] = {cout};
    return sdc_mil_linear(n->g, x, sdc_net_weight_2d(n, w, cout, cin), sdc_net_weight(n, b, 1, bs));
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

/* (x - mean) / sqrt(var + eps) per group of x (B, C, *spatial), the groups viewed as
   (B, G, C/G, *spatial) straight from x and the result reshaped to out_shape: coremltools'
   lowering of torch's group_norm, each step its own op in the compute dtype, so a device
   computes the variance as the mean of squared deviations, exactly as in the anchor's packages. */
static mil_var *group_standardize(sdc_net *n, mil_var *x, const char *prefix, int groups, float eps, int spatial_rank,
                                  int out_rank, const int64_t *out_shape) {
    mil_graph *g = n->g;
    if (!x || !sdc_mil_graph_ok(g)) return NULL;
    int64_t B = x->type.shape[0], C = x->type.shape[1], S = 1;
    for (int i = 2; i < x->type.rank; i++) S *= x->type.shape[i];
    if (x->type.rank != 4 || C % groups)
        return sdc_mil_fail(g, SDC_E_FORMAT, "%s: %lld channels are not divisible into %d groups", prefix,
                        (long long)C, groups);
    int64_t grouped[5] = {B, groups, C / groups, x->type.shape[2], x->type.shape[3]};
    if (spatial_rank == 1) grouped[3] = S;
    static const int32_t axes[3] = {2, 3, 4};
    int rank = 3 + spatial_rank, n_axes = 1 + spatial_rank;
    mil_var *h = sdc_mil_reshape(g, x, rank, grouped);                          /* (B, G, C/G, *spatial) */
    mil_var *mean = sdc_mil_reduce(g, "reduce_mean", h, n_axes, axes, true);   /* (B, G, 1, 1[, 1]) */
    mil_var *dev = sdc_mil_sub(g, h, mean);                                     /* (B, G, C/G, *spatial) */
    mil_var *var = sdc_mil_reduce(g, "reduce_mean", sdc_mil_square(g, dev), n_axes, axes, true);
    mil_var *std = sdc_mil_sqrt(g, sdc_mil_add(g, var, sdc_mil_const_scalar(g, n->t, eps)));
    return sdc_mil_reshape(g, sdc_mil_real_div(g, dev, std), out_rank, out_shape);
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

/* v rounded to the compute dtype */
static float in_dtype(sdc_dtype t, float v) { return t == SDC_DT_F16 ? sdc_f16_to_f32(sdc_f32_to_f16(v)) : v; }

/* Whether GroupNorm's affine is the identity in the compute dtype (weight all 1, bias all 0, as
   freshly initialised models have): coremltools' noop_elimination then drops the anchor's mul
   and add before anything fuses them, so the graph has no affine at all. */
static bool identity_affine(sdc_net *n, const char *wname, const char *bname, int64_t C) {
    const sdc_tensor *tw = sdc_weights_find(n->c->weights, wname), *tb = sdc_weights_find(n->c->weights, bname);
    if (!tw || !tb || tw->numel != (uint64_t)C || tb->numel != (uint64_t)C) return false; /* the lookup reports it */
    for (uint64_t i = 0; i < (uint64_t)C; i++)
        if (in_dtype(n->t, sdc_tensor_get_f32(tw, i)) != 1.0f || in_dtype(n->t, sdc_tensor_get_f32(tb, i)) != 0.0f)
            return false;
    return true;
}

mil_var *sdc_net_group_norm(sdc_net *n, mil_var *x, const char *prefix, int groups, float eps) {
    if (!x || !sdc_mil_graph_ok(n->g)) return NULL;
    int64_t C = x->type.shape[1], s1[1] = {C};
    char w[256], b[256];
    suffixed(w, sizeof w, prefix, "weight");
    suffixed(b, sizeof b, prefix, "bias");
    mil_var *h = group_standardize(n, x, prefix, groups, eps, 2, 4, x->type.shape); /* (B, C, H, W) */
    if (identity_affine(n, w, b, C)) return h;
    /* coremltools fuses the affine's mul and add on a rank-4 tensor into batch_norm(mean 0,
       variance 1, epsilon 1e-5) (fuse_elementwise_to_batchnorm); its 1/sqrt(1 + 1e-5) factor is
       the anchor's too. The params stay 1-D [C], and so are never palettized, as in the anchor. */
    return sdc_mil_batch_norm(n->g, h, channel_fill(n, C, 0.0f), channel_fill(n, C, 1.0f),
                              sdc_net_weight(n, w, 1, s1), sdc_net_weight(n, b, 1, s1), 1e-5f);
}

mil_var *sdc_net_group_norm_seq(sdc_net *n, mil_var *x, const char *prefix, int groups, float eps) {
    if (!x || !sdc_mil_graph_ok(n->g)) return NULL;
    int64_t B = x->type.shape[0], C = x->type.shape[1];
    int64_t seq[3] = {B, C, x->type.shape[2] * x->type.shape[3]}, s1[1] = {C}, s3[3] = {1, C, 1};
    char w[256], b[256];
    suffixed(w, sizeof w, prefix, "weight");
    suffixed(b, sizeof b, prefix, "bias");
    mil_var *h = group_standardize(n, x, prefix, groups, eps, 1, 3, seq); /* (B, C, S) */
    if (!sdc_mil_graph_ok(n->g) || n->err->code) return NULL;
    if (identity_affine(n, w, b, C)) return h;
    /* rank 3: no batch_norm fusion, the affine stays mul and add of (1, C, 1) params */
    const sdc_tensor *tw, *tb;
    if (sdc_weights_get(n->c->weights, w, 1, s1, &tw, n->err) || sdc_weights_get(n->c->weights, b, 1, s1, &tb, n->err))
        return NULL;
    h = sdc_mil_mul(n->g, h, sdc_mil_const_weight(n->g, tw, n->t, 3, s3, 0));
    return sdc_mil_add(n->g, h, sdc_mil_const_weight(n->g, tb, n->t, 3, s3, 0));
}


/* The anchor's LayerNormANE computes (x̂ + bias') · weight with bias' = bias / weight (its
   load_state_dict hook), which coremltools folds into layer_norm's beta = bias' · weight, each
   step rounded to the compute dtype: in float16 that is not always float16(bias) (41 of 480
   elements of tiny-sd's UNet differ by one ulp), and the device adds this beta, so sdcoreml
   stores the same. Where weight rounds to 0 the anchor's chain gives NaN; sdcoreml keeps
   bias there instead. */
static mil_var *anchor_layer_norm_beta(sdc_net *n, const char *wname, const char *bname, int64_t C) {
    if (!sdc_mil_graph_ok(n->g) || n->err->code) return NULL;
    int64_t s[1] = {C};
    const sdc_tensor *tw, *tb;
    if (sdc_weights_get(n->c->weights, wname, 1, s, &tw, n->err) || sdc_weights_get(n->c->weights, bname, 1, s, &tb, n->err))
        return NULL;
    float *beta = sdc_malloc((size_t)C * sizeof *beta);
    if (!beta) return sdc_mil_fail(n->g, SDC_E_NOMEM, "out of memory");
    for (int64_t i = 0; i < C; i++) {
        float w = in_dtype(n->t, sdc_tensor_get_f32(tw, (uint64_t)i)), b = in_dtype(n->t, sdc_tensor_get_f32(tb, (uint64_t)i));
        float folded = in_dtype(n->t, in_dtype(n->t, b / w) * w);
        beta[i] = isfinite(folded) ? folded : b;
    }
    mil_var *v = sdc_mil_const_floats(n->g, n->t, 1, s, beta); /* [C] */
    sdc_free(beta);
    return v;
}

mil_var *sdc_net_layer_norm_c(sdc_net *n, mil_var *x, const char *prefix, float eps) {
    if (!x || !sdc_mil_graph_ok(n->g)) return NULL;
    int64_t C = x->type.shape[1], s[1] = {C};
    char w[256], b[256];
    suffixed(w, sizeof w, prefix, "weight");
    suffixed(b, sizeof b, prefix, "bias");
    static const int32_t axes[1] = {1}; /* the channel axis of (B, C, 1, S) */
    return sdc_mil_layer_norm(n->g, x, 1, axes, sdc_net_weight(n, w, 1, s), anchor_layer_norm_beta(n, w, b, C), eps);
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

/* diffusers' (and the anchor's) frequency table exp(-ln(10000) · j / (half - shift)), computed as
   their torch code does it, in float32 step by step: the exponent rounded to float32, then a
   correctly rounded exp. Rounded to float16 this equals the anchor's stored table bit for bit for
   every half up to 748 (checked against torch for half 1..2048; above, torch's vectorised expf is
   1 ulp off in a few entries). */
static void frequency_table(float *freq, int64_t half, double freq_shift) {
    float scale = (float)-log(10000.0), denom = (float)((double)half - freq_shift);
    for (int64_t j = 0; j < half; j++) freq[j] = (float)exp((double)((scale * (float)j) / denom));
}

mil_var *sdc_net_sinusoid(sdc_net *n, mil_var *t, int64_t dim, bool flip_sin_to_cos, double freq_shift) {
    mil_graph *g = n->g;
    if (!t || !sdc_mil_graph_ok(g)) return NULL;
    if (dim < 2 || dim % 2 || dim > 65536)
        return sdc_mil_fail(g, SDC_E_UNSUPPORTED, "timestep embedding dimension %lld must be even", (long long)dim);
    int64_t half = dim / 2;
    float *freq = sdc_malloc((size_t)half * sizeof *freq);
    if (!freq) return sdc_mil_fail(g, SDC_E_NOMEM, "out of memory");
    frequency_table(freq, half, freq_shift);
    /* The anchor's op sequence and dtypes: expand_dims, mul by the table stored in the compute
       dtype, sin, cos, concat (and for flip_sin_to_cos two slice_by_index and a concat). In a
       FLOAT16 package that is the product and sin/cos in float16, as the device runs the
       anchor's: t·freq reaches ~1000, where float16 steps are 0.5, which costs the UNet some dB
       against diffusers' float32 (tests/python/test_unet.py holds it to the anchor's own
       package there). */
    int64_t fs[2] = {1, half};
    mil_var *f = sdc_mil_const_floats(g, n->t, 2, fs, freq); /* (1, half) */
    sdc_free(freq);
    static const int32_t col[1] = {1};
    mil_var *arg = sdc_mil_mul(g, sdc_mil_expand_dims(g, sdc_net_to_compute(n, t), 1, col), f); /* (N, half) */
    mil_var *parts[2] = {sdc_mil_sin(g, arg), sdc_mil_cos(g, arg)};
    mil_var *emb = sdc_mil_concat(g, 2, parts, -1); /* (N, dim): sin, cos */
    if (flip_sin_to_cos) { /* diffusers swaps the halves by slicing the concatenation */
        mil_var *swapped[2] = {sdc_mil_slice(g, emb, 1, half, dim), sdc_mil_slice(g, emb, 1, 0, half)};
        emb = sdc_mil_concat(g, 2, swapped, -1); /* (N, dim): cos, sin */
    }
    return emb;
}

mil_var *sdc_net_column4(sdc_net *n, mil_var *x) {
    static const int32_t last[1] = {-1};
    return sdc_mil_expand_dims(n->g, sdc_mil_expand_dims(n->g, x, 1, last), 1, last); /* (N, D, 1, 1) */
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
