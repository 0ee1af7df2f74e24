/*
 * ldm_names.h — tensor names of the original single-file layouts (CompVis LDM for SD 1.x/2.x,
 * Stability's SGM for SDXL) and the diffusers names the builders read.
 *
 * The mapping is data (pattern tables in ldm_names.c); the facts come from diffusers'
 * single-file loader (src/diffusers/loaders/single_file_utils.py) and were checked by
 * loading our fixtures with diffusers' own from_single_file.
 *
 * A key is split by its component prefix:
 *   model.diffusion_model.*               UNet
 *   first_stage_model.*                   VAE
 *   cond_stage_model.transformer.*        CLIP text encoder (SD 1.x)
 *   cond_stage_model.model.*              OpenCLIP text encoder (SD 2.x)
 *   conditioner.embedders.0.transformer.* CLIP text encoder (SDXL base)
 *   conditioner.embedders.0.model.*       OpenCLIP text_encoder_2 (SDXL refiner)
 *   conditioner.embedders.1.model.*       OpenCLIP text_encoder_2 (SDXL base)
 * Everything else (model_ema.*, optimizer and training state, the VAE's loss.*) maps to nothing.
 */
#ifndef SDC_LDM_NAMES_H
#define SDC_LDM_NAMES_H

#include <stdbool.h>
#include <stddef.h>

typedef enum sdc_ldm_part {
    SDC_LDM_NONE,
    SDC_LDM_UNET,
    SDC_LDM_VAE,
    SDC_LDM_TEXT_ENCODER,
    SDC_LDM_TEXT_ENCODER_2,
} sdc_ldm_part;

/* How the diffusers tensor is made from the single file's one; never a copy except TRANSPOSE. */
typedef enum sdc_ldm_transform {
    SDC_LDM_AS_IS,       /* same bytes, same shape */
    SDC_LDM_SQUEEZE_1X1, /* [o, i, 1, 1] conv → [o, i] linear (the VAE's mid attention) */
    SDC_LDM_ROWS_OF_3,   /* rows [k·n/3, (k+1)·n/3) of a fused q/k/v in_proj (k = slice) */
    SDC_LDM_TRANSPOSE,   /* [in, out] → [out, in] (OpenCLIP's text_projection; copied) */
} sdc_ldm_transform;

/* What shapes settle that the names depend on. */
typedef struct sdc_ldm_layout {
    int unet_layers_per_block; /* resnets per UNet down block: 2 in every SD family */
    int vae_levels;            /* VAE resolution levels: the decoder's up.N run backwards */
} sdc_ldm_layout;

typedef struct sdc_ldm_target {
    sdc_ldm_part part;
    sdc_ldm_transform transform;
    int slice;      /* SDC_LDM_ROWS_OF_3: 0 q, 1 k, 2 v */
    bool openclip;  /* an OpenCLIP text encoder's (gelu; SD 2.x runs all but its last block) */
    char name[256]; /* the diffusers name inside the component */
} sdc_ldm_target;

#define SDC_LDM_MAX_TARGETS 3

/* The component a single-file key belongs to (SDC_LDM_NONE for model_ema.* and the rest). */
sdc_ldm_part sdc_ldm_part_of(const char *key);

/* Maps one single-file key; returns how many diffusers tensors it makes (3 for a fused
   in_proj, 0 for a key of no converted component or a name no table knows). */
int sdc_ldm_map(const char *key, const sdc_ldm_layout *layout, sdc_ldm_target out[SDC_LDM_MAX_TARGETS]);

/* An LDM UNet name, a tensor ("input_blocks.1.1.proj_in.weight") or a module path
   ("output_blocks.2.0.skip_connection"), with or without the "model.diffusion_model." prefix,
   to its diffusers name ("down_blocks.0.attentions.0.proj_in.weight",
   "up_blocks.0.resnets.2.conv_shortcut"). Assumes 2 resnets per block, as in SD 1.x, 2.x and
   SDXL. False when the name is no UNet name or does not fit in `size`. */
bool sdc_ldm_name_to_diffusers(const char *ldm, char *out, size_t size);

/* The same map for a kohya LoRA's LDM-style UNet module path, its dots written '_'
   ("input_blocks_4_0_in_layers_2" → "down_blocks_1_resnets_0_conv1"), for a UNet of
   `layers_per_block` resnets per down block: the table's patterns match with '_' for '.', so
   only the block structure is read (never a guess at which '_' was a '.'), and what follows it
   is kept as spelled, to be resolved against the model's own weight names spelled alike.
   False when the path is no LDM UNet path or does not fit in `size`. */
bool sdc_ldm_kohya_to_diffusers(const char *module, int layers_per_block, char *out, size_t size);

#endif
