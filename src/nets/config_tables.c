/*
 * config_tables.c — every key diffusers 0.30 / transformers 4.44 define for the config classes
 * the builders read, with what this converter does with it (config_keys.h). A key missing
 * here is refused: adding support for a key means a row here and the code in the builder.
 */
#include "nets/config_tables.h"

/* Rows give `dropped` only when their status is DROP; the others leave it NULL. */
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

#define ROWS(a) (a), SDC_COUNT_OF(a)
#define IMPL SDC_KEY_IMPLEMENTED
#define NONE SDC_KEY_NO_EFFECT
#define DROP SDC_KEY_DROPPED
#define REFUSE SDC_KEY_REFUSED

static const char ONLY_SIMPLE_BLOCKS[] =
    "read only by ResnetDownsample/SimpleCrossAttn blocks and their mid block, which are refused";

/* ---------------------------------------------------------------- UNet and ControlNet */

/* Keys UNet2DConditionModel and ControlNetModel share. */
static const sdc_config_key UNET_SHARED[] = {
    {"in_channels", IMPL, "int", "channels of sample"},
    {"flip_sin_to_cos", IMPL, "bool", "order of the timestep sinusoids"},
    {"freq_shift", IMPL, "number", "offset of the timestep frequencies"},
    {"down_block_types", IMPL, "list", "CrossAttnDownBlock2D and DownBlock2D (checked by the builder)"},
    {"only_cross_attention", REFUSE, "[false]", "transformer blocks without self-attention"},
    {"block_out_channels", IMPL, "list", "channels per level"},
    {"layers_per_block", IMPL, "int", "resnets per down block (a per-block list is not implemented)"},
    {"downsample_padding", IMPL, "[0, 1]", "0: pad bottom/right by one, convolve unpadded; 1: pad 1"},
    {"mid_block_scale_factor", IMPL, "number", "the mid block's resnets divide their output by it"},
    {"act_fn", IMPL, "[\"silu\", \"swish\"]", "other activations are not implemented"},
    {"norm_num_groups", IMPL, "int", "GroupNorm groups"},
    {"norm_eps", IMPL, "number", "GroupNorm epsilon of the resnets and conv_norm_out"},
    {"cross_attention_dim", IMPL, "int", "context channels (a per-block list is not implemented)"},
    {"transformer_layers_per_block", IMPL, "int|list", "transformer depth per level"},
    {"encoder_hid_dim", REFUSE, "[null]", "a projection of encoder_hidden_states is not implemented"},
    {"encoder_hid_dim_type", REFUSE, "[null]", "a projection of encoder_hidden_states is not implemented"},
    {"attention_head_dim", IMPL, "int|list", "heads per level (diffusers' historical name)"},
    {"use_linear_projection", IMPL, "bool", "proj_in/proj_out as Linear or 1x1 conv: the same product"},
    {"class_embed_type", REFUSE, "[null]", "class embeddings need class_labels, not in the anchor's contract"},
    {"addition_embed_type", IMPL, "[null, \"text_time\"]", "only SDXL's text_time is implemented"},
    {"addition_time_embed_dim", IMPL, "int?", "SDXL time_ids sinusoid width"},
    {"num_class_embeds", REFUSE, "[null]", "class embeddings need class_labels, not in the anchor's contract"},
    {"upcast_attention", NONE, "any",
     "precision only: diffusers computes attention scores in float32 in a float16 model; the anchor "
     "ignores it, and float32 packages compute in float32 anyway"},
    {"resnet_time_scale_shift", REFUSE, "[\"default\"]", "scale_shift/spatial time conditioning is not implemented"},
    {"projection_class_embeddings_input_dim", IMPL, "int?", "SDXL add_embedding input width"},
    {"addition_embed_type_num_heads", NONE, "any", "read only for addition_embed_type 'text', which is refused"},
};

/* Keys only UNet2DConditionModel takes. */
static const sdc_config_key UNET_ONLY[] = {
    {"sample_size", IMPL, "int|list?", "the default latent size"},
    {"out_channels", IMPL, "int", "channels of noise_pred"},
    {"center_input_sample", IMPL, "bool", "sample · 2 − 1 before conv_in"},
    {"mid_block_type", IMPL, "[\"UNetMidBlock2DCrossAttn\", \"UNetMidBlock2D\", null]",
     "UNetMidBlock2DSimpleCrossAttn is not implemented"},
    {"up_block_types", IMPL, "list", "CrossAttnUpBlock2D and UpBlock2D (checked by the builder)"},
    {"dropout", NONE, "any", "inference only"},
    {"reverse_transformer_layers_per_block", REFUSE, "[null]", "a separate up-path transformer depth is not implemented"},
    {"num_attention_heads", REFUSE, "[null]", "UNet2DConditionModel itself raises for it: use attention_head_dim"},
    {"dual_cross_attention", REFUSE, "[false]", "dual transformers are not implemented"},
    {"resnet_skip_time_act", NONE, "any", ONLY_SIMPLE_BLOCKS},
    {"resnet_out_scale_factor", NONE, "any", ONLY_SIMPLE_BLOCKS},
    {"time_embedding_type", REFUSE, "[\"positional\"]", "Fourier time embeddings are not implemented"},
    {"time_embedding_dim", IMPL, "int?", "time embedding width (read from time_embedding.linear_1)"},
    {"time_embedding_act_fn", IMPL, "[null, \"silu\", \"swish\"]", "other activations are not implemented"},
    {"timestep_post_act", IMPL, "[null, \"silu\", \"swish\"]", "other activations are not implemented"},
    {"time_cond_proj_dim", DROP, "[null]",
     "the LCM guidance embedding (time_embedding.cond_proj, input timestep_cond) is not part of the "
     "package, as with the anchor: it computes noise_pred as diffusers does without timestep_cond",
     "int"},
    {"conv_in_kernel", IMPL, "int", "odd kernel sizes"},
    {"conv_out_kernel", IMPL, "int", "odd kernel sizes"},
    {"attention_type", DROP, "[\"default\"]",
     "GLIGEN's gated self-attention (fuser) needs grounding inputs the package does not take: it "
     "computes noise_pred as diffusers does without them",
     "[\"gated\", \"gated-text-image\"]"},
    {"class_embeddings_concat", REFUSE, "[false]", "class embeddings are not implemented"},
    {"mid_block_only_cross_attention", NONE, "any", ONLY_SIMPLE_BLOCKS},
    {"cross_attention_norm", NONE, "any", ONLY_SIMPLE_BLOCKS},
};

/* Keys only ControlNetModel takes. */
static const sdc_config_key CONTROLNET_ONLY[] = {
    {"conditioning_channels", IMPL, "int", "channels of controlnet_cond"},
    {"mid_block_type", IMPL, "[\"UNetMidBlock2DCrossAttn\", \"UNetMidBlock2D\"]", "ControlNetModel raises for others"},
    {"num_attention_heads", IMPL, "int|list?", "heads per level; null: attention_head_dim"},
    {"controlnet_conditioning_channel_order", REFUSE, "[\"rgb\"]", "a bgr hint is not implemented"},
    {"conditioning_embedding_out_channels", IMPL, "list", "channels of the hint encoder"},
    {"global_pool_conditions", REFUSE, "[false]", "pooled residuals are not implemented"},
};

static const sdc_config_table UNET_SHARED_T = {"UNet2DConditionModel", ROWS(UNET_SHARED), false};
static const sdc_config_table UNET_ONLY_T = {"UNet2DConditionModel", ROWS(UNET_ONLY), false};
static const sdc_config_table UNET_ONLY_IGNORED_T = {"UNet2DConditionModel", ROWS(UNET_ONLY), true};
static const sdc_config_table CONTROLNET_SHARED_T = {"ControlNetModel", ROWS(UNET_SHARED), false};
static const sdc_config_table CONTROLNET_ONLY_T = {"ControlNetModel", ROWS(CONTROLNET_ONLY), false};

static const sdc_config_table *const UNET_TABLES[] = {&UNET_ONLY_T, &UNET_SHARED_T};
/* A ControlNet config's UNet-only keys (copied from the base UNet) are ignored by diffusers. */
static const sdc_config_table *const CONTROLNET_TABLES[] = {&CONTROLNET_ONLY_T, &CONTROLNET_SHARED_T,
                                                            &UNET_ONLY_IGNORED_T};
const sdc_config_class sdc_unet_config_class = {UNET_TABLES, SDC_COUNT_OF(UNET_TABLES)};
const sdc_config_class sdc_controlnet_config_class = {CONTROLNET_TABLES, SDC_COUNT_OF(CONTROLNET_TABLES)};

/* ---------------------------------------------------------------- VAE */

static const char PIPELINE_SIDE[] = "applied by the pipeline outside the model; the anchor's packages leave it out too";

static const sdc_config_key VAE[] = {
    {"in_channels", IMPL, "int", "image channels into the encoder"},
    {"out_channels", IMPL, "int", "image channels out of the decoder"},
    {"down_block_types", IMPL, "list", "DownEncoderBlock2D (checked by the builder)"},
    {"up_block_types", IMPL, "list", "UpDecoderBlock2D (checked by the builder)"},
    {"block_out_channels", IMPL, "list", "channels per level"},
    {"layers_per_block", IMPL, "int", "resnets per block"},
    {"act_fn", IMPL, "[\"silu\", \"swish\"]", "other activations are not implemented"},
    {"latent_channels", IMPL, "int", "channels of z"},
    {"norm_num_groups", IMPL, "int", "GroupNorm groups"},
    {"sample_size", IMPL, "int|list", "the default image size"},
    {"scaling_factor", NONE, "any", PIPELINE_SIDE},
    {"shift_factor", NONE, "any", PIPELINE_SIDE},
    {"latents_mean", NONE, "any", PIPELINE_SIDE},
    {"latents_std", NONE, "any", PIPELINE_SIDE},
    {"force_upcast", NONE, "any", "precision only: tells pipelines to run a float16 VAE in float32"},
    {"use_quant_conv", IMPL, "bool", "quant_conv after the encoder"},
    {"use_post_quant_conv", IMPL, "bool", "post_quant_conv before the decoder"},
    {"mid_block_add_attention", IMPL, "bool", "the mid block's attention"},
};

static const sdc_config_table VAE_T = {"AutoencoderKL", ROWS(VAE), false};
static const sdc_config_table *const VAE_TABLES[] = {&VAE_T};
const sdc_config_class sdc_vae_config_class = {VAE_TABLES, SDC_COUNT_OF(VAE_TABLES)};

/* ---------------------------------------------------------------- transformers CLIP */

static const char GENERATION[] = "text generation and training settings: the CLIP forward never reads them";
static const char META[] = "metadata";

/* PretrainedConfig's own keys, written into every transformers config. */
static const sdc_config_key PRETRAINED[] = {
    {"architectures", NONE, "any", META},
    {"model_type", NONE, "any", META},
    {"transformers_version", NONE, "any", META},
    {"torch_dtype", NONE, "any", "the dtype of the saved weights, read from the weight files instead"},
    {"use_bfloat16", NONE, "any", META},
    {"return_dict", NONE, "any", "the Python return type"},
    {"output_hidden_states", NONE, "any", "the Python return type"},
    {"output_attentions", NONE, "any", "the Python return type"},
    {"torchscript", NONE, "any", "tracing setting; CLIP has no tied weights"},
    {"tf_legacy_loss", NONE, "any", GENERATION},
    {"pruned_heads", REFUSE, "[{}]", "pruned attention heads are not implemented"},
    {"tie_word_embeddings", NONE, "any", "CLIP has no output embedding to tie"},
    {"chunk_size_feed_forward", NONE, "any", "CLIP's MLP does not chunk"},
    {"is_encoder_decoder", NONE, "any", GENERATION},
    {"is_decoder", NONE, "any", "CLIP's encoder ignores it (its causal mask is fixed)"},
    {"cross_attention_hidden_size", NONE, "any", "CLIP has no cross-attention"},
    {"add_cross_attention", NONE, "any", "CLIP has no cross-attention"},
    {"tie_encoder_decoder", NONE, "any", GENERATION},
    {"max_length", NONE, "any", GENERATION},
    {"min_length", NONE, "any", GENERATION},
    {"do_sample", NONE, "any", GENERATION},
    {"early_stopping", NONE, "any", GENERATION},
    {"num_beams", NONE, "any", GENERATION},
    {"num_beam_groups", NONE, "any", GENERATION},
    {"diversity_penalty", NONE, "any", GENERATION},
    {"temperature", NONE, "any", GENERATION},
    {"top_k", NONE, "any", GENERATION},
    {"top_p", NONE, "any", GENERATION},
    {"typical_p", NONE, "any", GENERATION},
    {"repetition_penalty", NONE, "any", GENERATION},
    {"length_penalty", NONE, "any", GENERATION},
    {"no_repeat_ngram_size", NONE, "any", GENERATION},
    {"encoder_no_repeat_ngram_size", NONE, "any", GENERATION},
    {"bad_words_ids", NONE, "any", GENERATION},
    {"num_return_sequences", NONE, "any", GENERATION},
    {"output_scores", NONE, "any", GENERATION},
    {"return_dict_in_generate", NONE, "any", GENERATION},
    {"forced_bos_token_id", NONE, "any", GENERATION},
    {"forced_eos_token_id", NONE, "any", GENERATION},
    {"remove_invalid_values", NONE, "any", GENERATION},
    {"exponential_decay_length_penalty", NONE, "any", GENERATION},
    {"suppress_tokens", NONE, "any", GENERATION},
    {"begin_suppress_tokens", NONE, "any", GENERATION},
    {"finetuning_task", NONE, "any", GENERATION},
    {"id2label", NONE, "any", "classification heads, which CLIP does not have"},
    {"label2id", NONE, "any", "classification heads, which CLIP does not have"},
    {"num_labels", NONE, "any", "classification heads, which CLIP does not have"},
    {"problem_type", NONE, "any", "classification heads, which CLIP does not have"},
    {"tokenizer_class", NONE, "any", "the tokenizer is not part of the model"},
    {"prefix", NONE, "any", GENERATION},
    {"bos_token_id", NONE, "any", "the tokenizer's; the model does not read it"},
    {"pad_token_id", NONE, "any", "the tokenizer's; CLIP's embedding has no padding index"},
    {"sep_token_id", NONE, "any", GENERATION},
    {"eos_token_id", NONE, "any", "the tokenizer's; only the text model reads it (CLIPTextConfig's row)"},
    {"decoder_start_token_id", NONE, "any", GENERATION},
    {"task_specific_params", NONE, "any", GENERATION},
    {"gradient_checkpointing", NONE, "any", "training only (older transformers wrote it)"},
    {"initializer_range", NONE, "any", "weight initialisation for training"},
    {"initializer_factor", NONE, "any", "weight initialisation for training"},
    {"attention_dropout", NONE, "any", "inference only"},
    {"dropout", NONE, "any", "inference only"},
};

/* CLIPTextConfig: CLIPTextModel and CLIPTextModelWithProjection. */
static const sdc_config_key CLIP_TEXT[] = {
    {"vocab_size", IMPL, "int", "token embedding rows"},
    {"hidden_size", IMPL, "int", "width"},
    {"intermediate_size", IMPL, "int", "MLP width"},
    {"projection_dim", IMPL, "int", "text_projection width"},
    {"num_hidden_layers", IMPL, "int", "layers"},
    {"num_attention_heads", IMPL, "int", "heads"},
    {"max_position_embeddings", IMPL, "int", "position embedding rows"},
    {"hidden_act", IMPL, "[\"quick_gelu\", \"gelu\"]", "other activations are not implemented"},
    {"layer_norm_eps", IMPL, "number", "LayerNorm epsilon"},
    {"eos_token_id", IMPL, "int", "pooling position: argmax of the ids for 2, else the first eos_token_id"},
};

/* CLIPVisionConfig: the safety checker's vision_config. */
static const sdc_config_key CLIP_VISION[] = {
    {"hidden_size", IMPL, "int", "width"},
    {"intermediate_size", IMPL, "int", "MLP width"},
    {"projection_dim", NONE, "any", "the safety checker projects with CLIPConfig's projection_dim"},
    {"num_hidden_layers", IMPL, "int", "layers"},
    {"num_attention_heads", IMPL, "int", "heads"},
    {"num_channels", IMPL, "int", "channels of clip_input"},
    {"image_size", IMPL, "int", "size of clip_input"},
    {"patch_size", IMPL, "int", "patch size"},
    {"hidden_act", IMPL, "[\"quick_gelu\", \"gelu\"]", "other activations are not implemented"},
    {"layer_norm_eps", IMPL, "number", "LayerNorm epsilon"},
};

/* CLIPConfig: StableDiffusionSafetyChecker's file. */
static const sdc_config_key CLIP[] = {
    {"vision_config", IMPL, "object?", "the vision tower (checked key by key)"},
    {"vision_config_dict", IMPL, "object?",
     "older transformers' vision settings: when present, transformers builds the tower from it (and its "
     "defaults) instead of vision_config"},
    {"text_config", NONE, "any", "the safety checker has no text tower"},
    {"text_config_dict", NONE, "any", "the safety checker has no text tower"},
    {"projection_dim", IMPL, "int", "visual_projection width"},
    {"logit_scale_init_value", NONE, "any", "the safety checker does not use CLIP's logit scale"},
};

static const sdc_config_table PRETRAINED_T = {"PretrainedConfig", ROWS(PRETRAINED), false};
static const sdc_config_table CLIP_TEXT_T = {"CLIPTextConfig", ROWS(CLIP_TEXT), false};
static const sdc_config_table CLIP_VISION_T = {"CLIPVisionConfig", ROWS(CLIP_VISION), false};
static const sdc_config_table CLIP_T = {"CLIPConfig", ROWS(CLIP), false};

static const sdc_config_table *const CLIP_TEXT_TABLES[] = {&CLIP_TEXT_T, &PRETRAINED_T};
static const sdc_config_table *const CLIP_VISION_TABLES[] = {&CLIP_VISION_T, &PRETRAINED_T};
static const sdc_config_table *const CLIP_TABLES[] = {&CLIP_T, &PRETRAINED_T};
const sdc_config_class sdc_clip_text_config_class = {CLIP_TEXT_TABLES, SDC_COUNT_OF(CLIP_TEXT_TABLES)};
const sdc_config_class sdc_clip_vision_config_class = {CLIP_VISION_TABLES, SDC_COUNT_OF(CLIP_VISION_TABLES)};
const sdc_config_class sdc_clip_config_class = {CLIP_TABLES, SDC_COUNT_OF(CLIP_TABLES)};

sdc_status sdc_config_check_class(const sdc_component *c, const json_t *obj, const char *where,
                                  const sdc_config_class *cls, sdc_config_notes *notes, sdc_err *err) {
    return sdc_config_check(c, obj, where, cls->tables, cls->n, notes, err);
}
