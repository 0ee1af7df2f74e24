/*
 * test_ldm_names.c — the LDM → diffusers name tables on names of the real SD 1.5 / SDXL
 * layouts (expected names: what diffusers' single-file loader makes of them). The fixtures of
 * tests/python/test_single_file.py check the whole tables against diffusers itself.
 */
#include "check.h"

#include "source/ldm_names.h"

static const struct {
    const char *ldm, *diffusers;
} UNET[] = {
    {"model.diffusion_model.time_embed.0.weight", "time_embedding.linear_1.weight"},
    {"input_blocks.0.0.bias", "conv_in.bias"},
    {"input_blocks.1.0.in_layers.0.weight", "down_blocks.0.resnets.0.norm1.weight"},
    {"input_blocks.2.0.emb_layers.1.bias", "down_blocks.0.resnets.1.time_emb_proj.bias"},
    {"input_blocks.1.1.proj_in", "down_blocks.0.attentions.0.proj_in"},
    {"input_blocks.2.1.transformer_blocks.0.attn1.to_q.weight",
     "down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q.weight"},
    {"input_blocks.3.0.op.weight", "down_blocks.0.downsamplers.0.conv.weight"},
    {"input_blocks.4.0.skip_connection.weight", "down_blocks.1.resnets.0.conv_shortcut.weight"},
    {"input_blocks.11.0.out_layers.3.weight", "down_blocks.3.resnets.1.conv2.weight"},
    {"middle_block.1.proj_out.bias", "mid_block.attentions.0.proj_out.bias"},
    {"middle_block.2.in_layers.2.weight", "mid_block.resnets.1.conv1.weight"},
    {"output_blocks.2.1.conv.weight", "up_blocks.0.upsamplers.0.conv.weight"},
    {"output_blocks.3.1.norm.weight", "up_blocks.1.attentions.0.norm.weight"},
    {"output_blocks.5.2.conv.bias", "up_blocks.1.upsamplers.0.conv.bias"},
    {"output_blocks.11.1.transformer_blocks.0.ff.net.0.proj",
     "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj"},
    {"out.2.weight", "conv_out.weight"},
    {"label_emb.0.2.weight", "add_embedding.linear_2.weight"},
};

static void test_unet_names(void) {
    for (size_t i = 0; i < sizeof UNET / sizeof UNET[0]; i++) {
        char out[256];
        CHECK_MSG(sdc_ldm_name_to_diffusers(UNET[i].ldm, out, sizeof out) && !strcmp(out, UNET[i].diffusers),
                  "%s gave %s", UNET[i].ldm, out);
    }
    char out[256];
    CHECK(!sdc_ldm_name_to_diffusers("input_blocks.3.0.in_layers.0.weight", out, sizeof out)); /* a downsampler slot */
    CHECK(!sdc_ldm_name_to_diffusers("model_ema.input_blocks.1.0.weight", out, sizeof out));
    CHECK(!sdc_ldm_name_to_diffusers("input_blocks.1.1.proj_in.weight", out, 10)); /* does not fit */
}

/* kohya's spelling: the block structure mapped, the rest kept with its underscores; layers per
   block 2 (SD) and 3 (numbering shifts). */
static const struct {
    int layers;
    const char *kohya, *diffusers;
} KOHYA[] = {
    {2, "input_blocks_1_1_proj_in", "down_blocks_0_attentions_0_proj_in"},
    {2, "input_blocks_4_0_in_layers_2", "down_blocks_1_resnets_0_conv1"},
    {2, "input_blocks_5_0_emb_layers_1", "down_blocks_1_resnets_1_time_emb_proj"},
    {2, "input_blocks_4_0_skip_connection", "down_blocks_1_resnets_0_conv_shortcut"},
    {2, "input_blocks_6_0_op", "down_blocks_1_downsamplers_0_conv"},
    {2, "input_blocks_7_1_transformer_blocks_1_attn2_to_out_0", "down_blocks_2_attentions_0_transformer_blocks_1_attn2_to_out_0"},
    {2, "middle_block_1_transformer_blocks_0_ff_net_0_proj", "mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj"},
    {2, "middle_block_2_out_layers_3", "mid_block_resnets_1_conv2"},
    {2, "output_blocks_2_1_conv", "up_blocks_0_upsamplers_0_conv"},
    {2, "output_blocks_5_2_conv", "up_blocks_1_upsamplers_0_conv"},
    {2, "output_blocks_8_1_proj_out", "up_blocks_2_attentions_2_proj_out"},
    {2, "time_embed_0", "time_embedding_linear_1"},
    {2, "label_emb_0_0", "add_embedding_linear_1"},
    {2, "out_2", "conv_out"},
    {3, "input_blocks_4_0_op", "down_blocks_0_downsamplers_0_conv"},
    {3, "input_blocks_5_1_proj_in", "down_blocks_1_attentions_0_proj_in"},
    {3, "output_blocks_4_0_in_layers_2", "up_blocks_1_resnets_0_conv1"},
};

static void test_kohya_paths(void) {
    for (size_t i = 0; i < sizeof KOHYA / sizeof KOHYA[0]; i++) {
        char out[256];
        CHECK_MSG(sdc_ldm_kohya_to_diffusers(KOHYA[i].kohya, KOHYA[i].layers, out, sizeof out) &&
                      !strcmp(out, KOHYA[i].diffusers),
                  "%s gave %s", KOHYA[i].kohya, out);
    }
    char out[256];
    CHECK(!sdc_ldm_kohya_to_diffusers("input_blocks_3_0_in_layers_2", 2, out, sizeof out)); /* a downsampler slot */
    CHECK(!sdc_ldm_kohya_to_diffusers("down_blocks_0_attentions_0_proj_in", 2, out, sizeof out)); /* diffusers-style */
    CHECK(!sdc_ldm_kohya_to_diffusers("time_embedding_linear_1", 2, out, sizeof out));
    CHECK(!sdc_ldm_kohya_to_diffusers("input_blocks_1_1_proj_in", 0, out, sizeof out));
    CHECK(!sdc_ldm_kohya_to_diffusers("input_blocks_1_1_proj_in", 2, out, 10)); /* does not fit */
}

static void test_parts(void) {
    sdc_ldm_layout layout = {.unet_layers_per_block = 2, .vae_levels = 4};
    sdc_ldm_target t[SDC_LDM_MAX_TARGETS];
    CHECK(sdc_ldm_map("first_stage_model.decoder.up.3.block.0.nin_shortcut.weight", &layout, t) == 1 &&
          !strcmp(t[0].name, "decoder.up_blocks.0.resnets.0.conv_shortcut.weight") && t[0].part == SDC_LDM_VAE);
    CHECK(sdc_ldm_map("first_stage_model.encoder.mid.attn_1.q.weight", &layout, t) == 1 &&
          !strcmp(t[0].name, "encoder.mid_block.attentions.0.to_q.weight") && t[0].transform == SDC_LDM_SQUEEZE_1X1);
    CHECK(sdc_ldm_map("first_stage_model.decoder.mid.attn_1.proj_out.bias", &layout, t) == 1 &&
          !strcmp(t[0].name, "decoder.mid_block.attentions.0.to_out.0.bias"));
    CHECK(sdc_ldm_map("cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight", &layout, t) == 3 &&
          !strcmp(t[1].name, "text_model.encoder.layers.22.self_attn.k_proj.weight") && t[1].slice == 1 &&
          t[1].part == SDC_LDM_TEXT_ENCODER);
    CHECK(sdc_ldm_map("conditioner.embedders.1.model.text_projection", &layout, t) == 1 &&
          !strcmp(t[0].name, "text_projection.weight") && t[0].transform == SDC_LDM_TRANSPOSE &&
          t[0].part == SDC_LDM_TEXT_ENCODER_2);
    CHECK(sdc_ldm_map("conditioner.embedders.0.transformer.text_model.final_layer_norm.bias", &layout, t) == 1 &&
          !strcmp(t[0].name, "text_model.final_layer_norm.bias") && t[0].part == SDC_LDM_TEXT_ENCODER);
    CHECK(sdc_ldm_map("conditioner.embedders.0.model.positional_embedding", &layout, t) == 1 &&
          !strcmp(t[0].name, "text_model.embeddings.position_embedding.weight"));
    CHECK(sdc_ldm_map("model_ema.diffusion_modelinput_blocks00weight", &layout, t) == 0);
    CHECK(sdc_ldm_map("first_stage_model.loss.logvar", &layout, t) == 0);
    CHECK(sdc_ldm_part_of("model_ema.decay") == SDC_LDM_NONE);
}

int main(void) {
    test_unet_names();
    test_kohya_paths();
    test_parts();
    return CHECK_DONE("test_ldm_names");
}
