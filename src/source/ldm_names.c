/*
 * ldm_names.c — the pattern tables from the original single-file names to diffusers' (the
 * facts of diffusers' single_file_utils.py; see ldm_names.h).
 *
 * A key is matched in two steps: a component prefix (PARTS), then the first row of the
 * component's table whose pattern starts the rest of the name. In a pattern '#' captures a
 * decimal number; in a replacement '$0'/'$1' are the row's computed numbers and '@' the
 * q/k/v letter of a fused projection. What follows the matched pattern may start with one of
 * the component's inner renames (resnet layers, the VAE attention's projections), and the rest
 * is kept as it is. Names are matched with a '.' appended, so "x.weight" and the module path
 * "x" map alike.
 */
#include "source/ldm_names.h"

#include "common.h"

/* How a row turns its captured numbers into the replacement's. */
typedef enum index_rule {
    KEEP,        /* $k = capture k */
    DOWN_RESNET, /* input_blocks.i (i ≥ 1) of block b = (i-1)/(L+1), layer l = (i-1)%(L+1) < L */
    DOWN_SAMPLE, /* ... the block's last slot, l = L: its downsampler */
    UP,          /* output_blocks.i of block i/(L+1), layer i%(L+1) */
    VAE_UP,      /* decoder.up.i is up_blocks.(levels-1-i) */
} index_rule;

typedef struct name_row {
    const char *ldm;
    const char *diffusers;
    index_rule rule;
    sdc_ldm_transform transform;
} name_row;

typedef struct name_rename {
    const char *from, *to;
} name_rename;

static const name_row UNET_ROWS[] = {
    {"time_embed.0.", "time_embedding.linear_1.", KEEP, SDC_LDM_AS_IS},
    {"time_embed.2.", "time_embedding.linear_2.", KEEP, SDC_LDM_AS_IS},
    {"label_emb.0.0.", "add_embedding.linear_1.", KEEP, SDC_LDM_AS_IS}, /* SDXL's time ids + pooled */
    {"label_emb.0.2.", "add_embedding.linear_2.", KEEP, SDC_LDM_AS_IS},
    {"input_blocks.0.0.", "conv_in.", KEEP, SDC_LDM_AS_IS},
    {"input_blocks.#.0.op.", "down_blocks.$0.downsamplers.0.conv.", DOWN_SAMPLE, SDC_LDM_AS_IS},
    {"input_blocks.#.0.", "down_blocks.$0.resnets.$1.", DOWN_RESNET, SDC_LDM_AS_IS},
    {"input_blocks.#.1.", "down_blocks.$0.attentions.$1.", DOWN_RESNET, SDC_LDM_AS_IS},
    {"middle_block.0.", "mid_block.resnets.0.", KEEP, SDC_LDM_AS_IS},
    {"middle_block.1.", "mid_block.attentions.0.", KEEP, SDC_LDM_AS_IS},
    {"middle_block.2.", "mid_block.resnets.1.", KEEP, SDC_LDM_AS_IS},
    {"output_blocks.#.0.", "up_blocks.$0.resnets.$1.", UP, SDC_LDM_AS_IS},
    /* an upsampler sits after the resnet, or after the resnet and the attention */
    {"output_blocks.#.1.conv.", "up_blocks.$0.upsamplers.0.conv.", UP, SDC_LDM_AS_IS},
    {"output_blocks.#.2.conv.", "up_blocks.$0.upsamplers.0.conv.", UP, SDC_LDM_AS_IS},
    {"output_blocks.#.1.", "up_blocks.$0.attentions.$1.", UP, SDC_LDM_AS_IS},
    {"out.0.", "conv_norm_out.", KEEP, SDC_LDM_AS_IS},
    {"out.2.", "conv_out.", KEEP, SDC_LDM_AS_IS},
};

/* Inside a resnet; a transformer's names are the same in both layouts. */
static const name_rename UNET_INNER[] = {
    {"in_layers.0.", "norm1."},  {"in_layers.2.", "conv1."},         {"emb_layers.1.", "time_emb_proj."},
    {"out_layers.0.", "norm2."}, {"out_layers.3.", "conv2."},        {"skip_connection.", "conv_shortcut."},
};

static const name_row VAE_ROWS[] = {
    {"encoder.down.#.block.#.", "encoder.down_blocks.$0.resnets.$1.", KEEP, SDC_LDM_AS_IS},
    {"encoder.down.#.downsample.conv.", "encoder.down_blocks.$0.downsamplers.0.conv.", KEEP, SDC_LDM_AS_IS},
    {"decoder.up.#.block.#.", "decoder.up_blocks.$0.resnets.$1.", VAE_UP, SDC_LDM_AS_IS},
    {"decoder.up.#.upsample.conv.", "decoder.up_blocks.$0.upsamplers.0.conv.", VAE_UP, SDC_LDM_AS_IS},
    {"encoder.mid.block_1.", "encoder.mid_block.resnets.0.", KEEP, SDC_LDM_AS_IS},
    {"encoder.mid.block_2.", "encoder.mid_block.resnets.1.", KEEP, SDC_LDM_AS_IS},
    {"decoder.mid.block_1.", "decoder.mid_block.resnets.0.", KEEP, SDC_LDM_AS_IS},
    {"decoder.mid.block_2.", "decoder.mid_block.resnets.1.", KEEP, SDC_LDM_AS_IS},
    /* the mid attention's 1×1 convs are diffusers' linears */
    {"encoder.mid.attn_1.norm.", "encoder.mid_block.attentions.0.group_norm.", KEEP, SDC_LDM_AS_IS},
    {"decoder.mid.attn_1.norm.", "decoder.mid_block.attentions.0.group_norm.", KEEP, SDC_LDM_AS_IS},
    {"encoder.mid.attn_1.", "encoder.mid_block.attentions.0.", KEEP, SDC_LDM_SQUEEZE_1X1},
    {"decoder.mid.attn_1.", "decoder.mid_block.attentions.0.", KEEP, SDC_LDM_SQUEEZE_1X1},
    {"encoder.norm_out.", "encoder.conv_norm_out.", KEEP, SDC_LDM_AS_IS},
    {"decoder.norm_out.", "decoder.conv_norm_out.", KEEP, SDC_LDM_AS_IS},
    {"encoder.conv_in.", "encoder.conv_in.", KEEP, SDC_LDM_AS_IS},
    {"encoder.conv_out.", "encoder.conv_out.", KEEP, SDC_LDM_AS_IS},
    {"decoder.conv_in.", "decoder.conv_in.", KEEP, SDC_LDM_AS_IS},
    {"decoder.conv_out.", "decoder.conv_out.", KEEP, SDC_LDM_AS_IS},
    {"quant_conv.", "quant_conv.", KEEP, SDC_LDM_AS_IS},
    {"post_quant_conv.", "post_quant_conv.", KEEP, SDC_LDM_AS_IS},
};

static const name_rename VAE_INNER[] = {
    {"nin_shortcut.", "conv_shortcut."}, {"q.", "to_q."}, {"k.", "to_k."}, {"v.", "to_v."}, {"proj_out.", "to_out.0."},
};

/* transformers' CLIPTextModel, saved whole by the LDM wrapper */
static const name_row CLIP_ROWS[] = {
    {"text_model.", "text_model.", KEEP, SDC_LDM_AS_IS},
};

static const name_row OPENCLIP_ROWS[] = {
    {"token_embedding.", "text_model.embeddings.token_embedding.", KEEP, SDC_LDM_AS_IS},
    {"positional_embedding.", "text_model.embeddings.position_embedding.weight.", KEEP, SDC_LDM_AS_IS},
    {"ln_final.", "text_model.final_layer_norm.", KEEP, SDC_LDM_AS_IS},
    {"text_projection.", "text_projection.weight.", KEEP, SDC_LDM_TRANSPOSE},
    {"transformer.resblocks.#.ln_1.", "text_model.encoder.layers.$0.layer_norm1.", KEEP, SDC_LDM_AS_IS},
    {"transformer.resblocks.#.ln_2.", "text_model.encoder.layers.$0.layer_norm2.", KEEP, SDC_LDM_AS_IS},
    {"transformer.resblocks.#.attn.in_proj_weight.", "text_model.encoder.layers.$0.self_attn.@_proj.weight.", KEEP,
     SDC_LDM_ROWS_OF_3},
    {"transformer.resblocks.#.attn.in_proj_bias.", "text_model.encoder.layers.$0.self_attn.@_proj.bias.", KEEP,
     SDC_LDM_ROWS_OF_3},
    {"transformer.resblocks.#.attn.out_proj.", "text_model.encoder.layers.$0.self_attn.out_proj.", KEEP, SDC_LDM_AS_IS},
    {"transformer.resblocks.#.mlp.c_fc.", "text_model.encoder.layers.$0.mlp.fc1.", KEEP, SDC_LDM_AS_IS},
    {"transformer.resblocks.#.mlp.c_proj.", "text_model.encoder.layers.$0.mlp.fc2.", KEEP, SDC_LDM_AS_IS},
};

typedef struct part_row {
    const char *prefix;
    sdc_ldm_part part;
    const name_row *rows;
    size_t n_rows;
    const name_rename *inner;
    size_t n_inner;
} part_row;

#define TABLE(t) t, SDC_COUNT_OF(t)

static const part_row PARTS[] = {
    {"model.diffusion_model.", SDC_LDM_UNET, TABLE(UNET_ROWS), TABLE(UNET_INNER)},
    {"first_stage_model.", SDC_LDM_VAE, TABLE(VAE_ROWS), TABLE(VAE_INNER)},
    {"cond_stage_model.transformer.", SDC_LDM_TEXT_ENCODER, TABLE(CLIP_ROWS), NULL, 0},
    {"cond_stage_model.model.", SDC_LDM_TEXT_ENCODER, TABLE(OPENCLIP_ROWS), NULL, 0},
    {"conditioner.embedders.0.transformer.", SDC_LDM_TEXT_ENCODER, TABLE(CLIP_ROWS), NULL, 0},
    {"conditioner.embedders.0.model.", SDC_LDM_TEXT_ENCODER_2, TABLE(OPENCLIP_ROWS), NULL, 0}, /* the refiner's */
    {"conditioner.embedders.1.model.", SDC_LDM_TEXT_ENCODER_2, TABLE(OPENCLIP_ROWS), NULL, 0},
};

/* ---- matching ----------------------------------------------------------------------- */

#define MAX_CAPTURES 2

/* Length of `name`'s prefix matched by `pattern`, or 0; '#' captures a number and a '.' of the
   pattern matches `sep` (kohya writes the dots of a module path as '_'). */
static size_t match_prefix(const char *pattern, const char *name, char sep, long caps[MAX_CAPTURES], int *n_caps) {
    const char *p = pattern, *s = name;
    *n_caps = 0;
    while (*p) {
        if (*p == '#') {
            if (*s < '0' || *s > '9' || *n_caps == MAX_CAPTURES) return 0;
            long v = 0;
            for (; *s >= '0' && *s <= '9'; s++) {
                if (v > 100000) return 0; /* no model has that many blocks */
                v = v * 10 + (*s - '0');
            }
            caps[(*n_caps)++] = v;
            p++;
        } else if (*p == '.' ? *s != sep : *p != *s) {
            return 0;
        } else {
            p++, s++;
        }
    }
    return (size_t)(s - name);
}

/* The row's numbers from its captures; false when the slot is not what the row names. */
static bool apply_rule(index_rule rule, const long *caps, const sdc_ldm_layout *layout, long vals[MAX_CAPTURES]) {
    long slots = layout->unet_layers_per_block + 1;
    vals[0] = caps[0];
    vals[1] = caps[1];
    switch (rule) {
    case KEEP: return true;
    case DOWN_RESNET:
    case DOWN_SAMPLE:
        if (caps[0] < 1) return false;
        vals[0] = (caps[0] - 1) / slots;
        vals[1] = (caps[0] - 1) % slots;
        return rule == DOWN_RESNET ? vals[1] < slots - 1 : vals[1] == slots - 1;
    case UP:
        vals[0] = caps[0] / slots;
        vals[1] = caps[0] % slots;
        return true;
    case VAE_UP:
        vals[0] = layout->vae_levels - 1 - caps[0];
        return vals[0] >= 0;
    }
    return false;
}

/* Writes the replacement with its numbers and q/k/v letter, then the inner name_rename and the
   rest of the name, dropping the separator that matching appended; with sep '_' every '.' of
   what is written becomes '_' (the rest is kept as the name spells it). */
static bool format_target(const char *repl, const long *vals, char letter, const char *rest, const name_rename *inner,
                          size_t n_inner, char sep, char *out, size_t size) {
    size_t n = 0;
    for (const char *p = repl; *p; p++) {
        char num[24];
        const char *piece = num;
        if (p[0] == '$' && (p[1] == '0' || p[1] == '1')) {
            snprintf(num, sizeof num, "%ld", vals[p[1] - '0']);
            p++;
        } else {
            num[0] = *p == '@' ? letter : *p;
            num[1] = 0;
        }
        size_t len = strlen(piece);
        if (n + len >= size) return false;
        memcpy(out + n, piece, len);
        n += len;
    }
    for (size_t i = 0; i < n_inner; i++) {
        long unused[MAX_CAPTURES];
        int n_unused;
        size_t len = match_prefix(inner[i].from, rest, sep, unused, &n_unused);
        if (len) {
            if (!sdc_fmt(out + n, size - n, "%s", inner[i].to)) return false;
            n += strlen(inner[i].to);
            rest += len;
            break;
        }
    }
    if (!sdc_fmt(out + n, size - n, "%s", rest)) return false;
    n += strlen(rest);
    for (size_t i = 0; sep != '.' && i < n; i++)
        if (out[i] == '.') out[i] = sep;
    if (n && out[n - 1] == sep) out[--n] = 0;
    return n > 0;
}

/* Maps `name` (the key without its component prefix, its dots written `sep`) by one part's table. */
static int map_in_part(const part_row *part, const char *name, char sep, const sdc_ldm_layout *layout,
                       sdc_ldm_target out[SDC_LDM_MAX_TARGETS]) {
    char dotted[512];
    if (!sdc_fmt(dotted, sizeof dotted, "%s%c", name, sep)) return 0;
    for (size_t r = 0; r < part->n_rows; r++) {
        const name_row *row = &part->rows[r];
        long caps[MAX_CAPTURES] = {0}, vals[MAX_CAPTURES];
        int n_caps;
        size_t len = match_prefix(row->ldm, dotted, sep, caps, &n_caps);
        if (!len || !apply_rule(row->rule, caps, layout, vals)) continue;
        int n = row->transform == SDC_LDM_ROWS_OF_3 ? 3 : 1;
        for (int k = 0; k < n; k++) {
            out[k] = (sdc_ldm_target){.part = part->part, .transform = row->transform, .slice = k,
                                      .openclip = part->rows == OPENCLIP_ROWS};
            if (!format_target(row->diffusers, vals, "qkv"[k], dotted + len, part->inner, part->n_inner, sep, out[k].name,
                               sizeof out[k].name))
                return 0;
        }
        return n;
    }
    return 0;
}

static const part_row *part_row_of(const char *key) {
    for (size_t i = 0; i < SDC_COUNT_OF(PARTS); i++)
        if (!strncmp(key, PARTS[i].prefix, strlen(PARTS[i].prefix))) return &PARTS[i];
    return NULL;
}

sdc_ldm_part sdc_ldm_part_of(const char *key) {
    const part_row *p = part_row_of(key);
    return p ? p->part : SDC_LDM_NONE;
}

int sdc_ldm_map(const char *key, const sdc_ldm_layout *layout, sdc_ldm_target out[SDC_LDM_MAX_TARGETS]) {
    const part_row *p = part_row_of(key);
    return p ? map_in_part(p, key + strlen(p->prefix), '.', layout, out) : 0;
}

bool sdc_ldm_name_to_diffusers(const char *ldm, char *out, size_t size) {
    static const sdc_ldm_layout SD = {.unet_layers_per_block = 2, .vae_levels = 4};
    const part_row *unet = &PARTS[0];
    if (!strncmp(ldm, unet->prefix, strlen(unet->prefix))) ldm += strlen(unet->prefix);
    sdc_ldm_target t[SDC_LDM_MAX_TARGETS];
    if (map_in_part(unet, ldm, '.', &SD, t) != 1 || !sdc_fmt(out, size, "%s", t[0].name)) return false;
    return true;
}

bool sdc_ldm_kohya_to_diffusers(const char *module, int layers_per_block, char *out, size_t size) {
    const sdc_ldm_layout layout = {.unet_layers_per_block = layers_per_block};
    sdc_ldm_target t[SDC_LDM_MAX_TARGETS];
    if (layers_per_block < 1 || map_in_part(&PARTS[0], module, '_', &layout, t) != 1) return false;
    return sdc_fmt(out, size, "%s", t[0].name);
}
