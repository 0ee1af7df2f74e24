/*
 * blocks.h — building blocks shared by the UNet, VAE, ControlNet and safety checker builders:
 * weights looked up by diffusers name and checked for shape, 1×1 convs standing in for
 * Linear layers, GroupNorm, ResnetBlock2D, timestep sinusoids.
 *
 * Layouts: images (B, C, H, W); transformer activations (B, C, 1, S) as in Apple's
 * ANE-oriented rewrite.
 */
#ifndef SDC_BLOCKS_H
#define SDC_BLOCKS_H

#include "mil/graph.h"
#include "source/source.h"

typedef struct sdc_net {
    mil_graph *g;
    const sdc_component *c;
    sdc_dtype t;  /* compute and weight dtype: F16 or F32 */
    sdc_err *err; /* a weight lookup failure lands here, naming file and tensor */
} sdc_net;

/* The weight `name`, which must have exactly `shape`, as a const of the compute dtype. */
mil_var *sdc_net_weight(sdc_net *n, const char *name, int rank, const int64_t *shape);
/* A [out, in] Linear weight, or a [out, in, 1, 1] conv weight, viewed as [out, in, 1, 1]. */
mil_var *sdc_net_weight_1x1(sdc_net *n, const char *name, int64_t out, int64_t in);

/* A [out, in] Linear weight, or a [out, in, 1, 1] conv weight, viewed as [out, in]. */
mil_var *sdc_net_weight_2d(sdc_net *n, const char *name, int64_t out, int64_t in);
/* nn.Linear as MIL linear: x (*, cin) → (*, cout), "<prefix>.weight" and "<prefix>.bias" */
mil_var *sdc_net_linear(sdc_net *n, mil_var *x, const char *prefix, int64_t cin, int64_t cout);
/* "<prefix>.weight" [cout, cin, k, k] and "<prefix>.bias" [cout]; pad {top, bottom, left, right} */
mil_var *sdc_net_conv(sdc_net *n, mil_var *x, const char *prefix, int64_t cin, int64_t cout, int k, int stride,
                  const int pad[4]);
/* 3×3, stride 1, pad 1 */
mil_var *sdc_net_conv3(sdc_net *n, mil_var *x, const char *prefix, int64_t cin, int64_t cout);
/* nn.Linear as a 1×1 conv over channels: x (B, cin, H, W) → (B, cout, H, W); bias optional */
mil_var *sdc_net_linear_1x1(sdc_net *n, mil_var *x, const char *prefix, int64_t cin, int64_t cout, bool bias);

/* GroupNorm(groups, eps) with affine "<prefix>.weight/.bias": x (B, C, H, W). Lowered as the
   anchor's: reduce_mean, sub, square, reduce_mean, add eps, sqrt, real_div over the
   (B, G, C/G, H, W) view, then batch_norm for the per-channel affine. */
mil_var *sdc_net_group_norm(sdc_net *n, mil_var *x, const char *prefix, int groups, float eps);
/* The same GroupNorm on x (B, C, H, W) viewed as (B, C, H·W), as diffusers' attention blocks
   apply it: → (B, C, H·W), the affine as mul and add of (1, C, 1) params (no batch_norm at rank 3). */
mil_var *sdc_net_group_norm_seq(sdc_net *n, mil_var *x, const char *prefix, int groups, float eps);
/* LayerNorm over the channels of (B, C, 1, S), affine "<prefix>.weight/.bias" */
mil_var *sdc_net_layer_norm_c(sdc_net *n, mil_var *x, const char *prefix, float eps);

/* diffusers ResnetBlock2D: GN → SiLU → conv3 (+ time_emb_proj(SiLU(temb))) → GN → SiLU → conv3,
   plus the input (through conv_shortcut when cin != cout). temb (B, T, 1, 1) or NULL. */
mil_var *sdc_net_resnet(sdc_net *n, mil_var *x, mil_var *temb_silu, const char *prefix, int64_t cin, int64_t cout,
                    int64_t temb_channels, int groups, float eps);

/* diffusers get_timestep_embedding in the compute dtype, op for op as the anchor: t (N,) → (N, dim) */
mil_var *sdc_net_sinusoid(sdc_net *n, mil_var *t, int64_t dim, bool flip_sin_to_cos, double freq_shift);

/* (N, D) → (N, D, 1, 1) by two expand_dims, as the anchor's unsqueeze(-1) twice */
mil_var *sdc_net_column4(sdc_net *n, mil_var *x);
/* Casts to the compute dtype when it differs. */
mil_var *sdc_net_to_compute(sdc_net *n, mil_var *x);
/* Names a float result as a float32 output (casting fp16 results). */
void sdc_net_output_f32(sdc_net *n, mil_var *v, const char *name);

/* Finishes a builder: folds a weight error or graph error into err. */
sdc_status sdc_net_finish(sdc_net *n, mil_graph **out);

#endif
