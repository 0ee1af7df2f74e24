/*
 * nets.h — network builders: diffusers/transformers configs and weights in, MIL graph out.
 * Builders see component folders (config + weights by diffusers name), never file formats.
 */
#ifndef SDC_NETS_H
#define SDC_NETS_H

#include "mil/graph.h"
#include "source/config_keys.h"
#include "source/source.h"

typedef struct sdc_clip_text_options {
    sdc_dtype compute; /* F16 or F32: weights and compute */
    int opset;         /* 6, 7 or 8 */
    int seq_len;       /* tokens per prompt (77) */
    bool xl;           /* outputs hidden_embeds (penultimate layer, no final norm) + pooled */
} sdc_clip_text_options;

/*
 * transformers CLIPTextModel / CLIPTextModelWithProjection, traced as is (no ANE rewrite),
 * with the anchor's contract: input `input_ids` float32 (1, S); outputs `last_hidden_state`
 * (1, S, W) and `pooled_outputs` (1, W), or with `xl` `hidden_embeds` (1, S, W) and
 * `pooled_outputs` (1, P) (projected when the model has text_projection). Masked positions of
 * the causal mask get -1e4 (fp16-safe), as in the anchor.
 */
sdc_status sdc_build_clip_text(const sdc_component *c, const sdc_clip_text_options *opt, mil_graph **out,
                               sdc_err *err);

typedef struct sdc_unet_options {
    sdc_dtype compute;       /* F16 or F32 */
    int opset;
    sdc_attention attention; /* ORIGINAL, SPLIT_EINSUM, SPLIT_EINSUM_V2 */
    int batch;               /* 2 (classifier-free guidance) or 1 */
    int latent_h, latent_w;
    int64_t context_dim;     /* D of encoder_hidden_states; 0: cross_attention_dim */
    int64_t context_len;     /* K tokens (77) */
    int n_time_ids;          /* SDXL: 6 (base) or 5 (refiner) */
    bool controlnet_inputs;  /* UNet only: additional_residual_i inputs (--unet-support-controlnet) */
} sdc_unet_options;

/* What the converter needs to know about a UNet config before building it. */
typedef struct sdc_unet_info {
    int64_t in_channels, cross_attention_dim;
    bool text_time; /* SDXL's addition_embed_type "text_time" */
    int64_t addition_time_embed_dim, projection_input_dim;
    int downsamples;
    sdc_config_notes notes; /* features the config asks for that the package leaves out: warn */
} sdc_unet_info;

sdc_status sdc_unet_describe(const sdc_component *c, bool controlnet, sdc_unet_info *info, sdc_err *err);

/*
 * UNet2DConditionModel with the anchor's contract: inputs `sample` (B, in, h, w),
 * `timestep` (B,), `encoder_hidden_states` (B, D, 1, K), plus `time_ids` (B, n) and
 * `text_embeds` (B, P) for SDXL, all float16; output `noise_pred` (B, out, h, w) float32.
 */
sdc_status sdc_build_unet(const sdc_component *c, const sdc_unet_options *opt, mil_graph **out, sdc_err *err);

/*
 * ControlNetModel (anchor §4.3, §8): inputs `sample`, `timestep`, `encoder_hidden_states`,
 * `controlnet_cond` (B, 3, 8h, 8w) float16; outputs `additional_residual_0..N-1` float32, the
 * down-block residuals then the mid block's, shaped as the UNet's skip tensors.
 */
sdc_status sdc_build_controlnet(const sdc_component *c, const sdc_unet_options *opt, mil_graph **out, sdc_err *err);

typedef struct sdc_vae_options {
    sdc_dtype compute; /* F16 or F32: weights and compute */
    sdc_dtype input;   /* F16 or F32: dtype of the input feature (z or x) */
    int opset;
    int latent_h, latent_w;
} sdc_vae_options;

/* What the converter needs to know about an AutoencoderKL config before building it. */
typedef struct sdc_vae_info {
    int64_t latent_channels, in_channels, out_channels;
    int scale;           /* image size / latent size: 2^(blocks - 1), 8 for every SD VAE */
    int64_t sample_size; /* the config's image size */
} sdc_vae_info;

sdc_status sdc_vae_describe(const sdc_component *c, sdc_vae_info *info, sdc_err *err);

/*
 * diffusers AutoencoderKL, with the anchor's contracts (§4.4–4.5):
 *   decoder: input `z` (1, L, h, w) → post_quant_conv → decoder → output `image`
 *            (1, out_channels, s·h, s·w) float32 (no scaling factor inside);
 *   encoder: input `x` (1, in_channels, s·h, s·w) → encoder → quant_conv → output `latent`
 *            (1, 2L, h, w) float32: L mean channels, then L logvar channels.
 * s = sdc_vae_info.scale. The mid-block attention accepts diffusers' current
 * (to_q/to_k/to_v/to_out.0) and legacy (query/key/value/proj_attn) weight names.
 */
sdc_status sdc_build_vae_decoder(const sdc_component *c, const sdc_vae_options *opt, mil_graph **out,
                                 sdc_err *err);
sdc_status sdc_build_vae_encoder(const sdc_component *c, const sdc_vae_options *opt, mil_graph **out,
                                 sdc_err *err);

typedef struct sdc_safety_checker_options {
    sdc_dtype compute; /* F16 or F32: weights and compute of the CLIP vision tower */
    int opset;
    int image_h, image_w; /* size of the `images` input (the VAE decoder's output size) */
} sdc_safety_checker_options;

/*
 * diffusers StableDiffusionSafetyChecker with the anchor's branch-free forward (§4.6):
 * inputs `clip_input` (1, 3, S, S) (S = vision_config.image_size, 224), `images`
 * (1, H, W, 3) and `adjustment` (1,), all float16; outputs `filtered_images` (1, H, W, 3),
 * `has_nsfw_concepts` (1, 1, 1, 1) (0 or 1) and `concept_scores` (1, N concepts), float32.
 */
sdc_status sdc_build_safety_checker(const sdc_component *c, const sdc_safety_checker_options *opt,
                                    mil_graph **out, sdc_err *err);

#endif
