/*
 * single_file.c — one checkpoint file as a pipeline of components (see single_file.h).
 *
 * Steps at open: read the tensor index (the format table: safetensors, or the pickle reader);
 * detect the naming (LDM/SGM keys, a pipeline in diffusers' names prefixed by component, a lone
 * VAE or UNet in the LDM or diffusers naming); derive the
 * diffusers-named views of every component; tell the family from what is present; then each
 * component's config, from --config or inferred. An inference that contradicts the family's
 * conventions is kept as the component's error and reported when the component is opened, so
 * converting the VAE of a file whose text encoder is unusual still works.
 */
#include "source/single_file.h"

#include "io/ckpt.h"
#include "source/ldm_names.h"

#include <strings.h>
#include <sys/stat.h>

/* ---- the formats a single file may have ------------------------------------------------ */

typedef struct tensor_format {
    const char *ext;
    sdc_status (*open)(const char *path, void **out, sdc_err *err);
    size_t (*count)(const void *f);
    const sdc_tensor *(*at)(const void *f, size_t i);
    const sdc_tensor *(*find)(const void *f, const char *name);
    void (*close)(void *f);
} tensor_format;

static sdc_status st_open(const char *path, void **out, sdc_err *err) {
    return sdc_st_open(path, (sdc_st_file **)out, err);
}
static size_t st_count(const void *f) { return sdc_st_count(f); }
static const sdc_tensor *st_at(const void *f, size_t i) { return sdc_st_at(f, i); }
static const sdc_tensor *st_find(const void *f, const char *name) { return sdc_st_find(f, name); }
static void st_close(void *f) { sdc_st_close(f); }

/* PyTorch pickles, read by io/ckpt.c without running them, as the same views. */
static sdc_status ckpt_open(const char *path, void **out, sdc_err *err) {
    return sdc_ckpt_open(path, (sdc_st_file **)out, err);
}

static const tensor_format FORMATS[] = {
    {".safetensors", st_open, st_count, st_at, st_find, st_close},
    {".ckpt", ckpt_open, st_count, st_at, st_find, st_close},
    {".pt", ckpt_open, st_count, st_at, st_find, st_close},
    {".pth", ckpt_open, st_count, st_at, st_find, st_close},
};

/* Case-insensitive, as io/ckpt.c's sdc_ckpt_is_ckpt_path ("MODEL.CKPT"). */
static bool has_suffix(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcasecmp(s + n - m, suffix) == 0;
}

static const tensor_format *format_of(const char *path) {
    for (size_t i = 0; i < SDC_COUNT_OF(FORMATS); i++)
        if (has_suffix(path, FORMATS[i].ext)) return &FORMATS[i];
    return NULL;
}

bool sdc_single_file_named(const char *path) { return path && format_of(path); }

bool sdc_single_file_is(const char *path) {
    struct stat sb;
    return sdc_single_file_named(path) && stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

bool sdc_single_file_stem(const char *path, char *out, size_t size) {
    const tensor_format *fmt = format_of(path);
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t n = strlen(base) - (fmt ? strlen(fmt->ext) : 0);
    return n > 0 && sdc_fmt(out, size, "%.*s", (int)n, base);
}

/* ---- the family conventions: what shapes cannot settle ----------------------------------- */

typedef enum family { SD1, SD2, SDXL, SDXL_REFINER } family;

/* The values of each family's own configs, which diffusers' single-file loader also takes when
   it is given no config (it fetches those of runwayml/stable-diffusion-v1-5,
   stabilityai/stable-diffusion-2-1, stabilityai/stable-diffusion-xl-base-1.0 and
   -refiner-1.0: single_file_utils.py, fetch_diffusers_config). */
static const struct family_row {
    const char *name;
    const char *pipeline;       /* model_index.json's _class_name */
    int unet_heads;             /* SD 1.x: heads per transformer whatever its width (attention_head_dim 8) */
    int unet_head_channels;     /* SD 2.x and XL: heads = width / 64 */
    int text_head_channels;     /* CLIP-L and OpenCLIP: heads = hidden_size / 64 */
    const char *text_act[2];    /* text_encoder, text_encoder_2: CLIP-L quick_gelu, OpenCLIP gelu */
    int openclip_unused_blocks; /* SD 2.x runs all but the last OpenCLIP block (num_hidden_layers 23 of 24) */
    int time_id_channels;       /* XL: each time id embedded in 256 sinusoid channels (addition_time_embed_dim) */
    int n_time_ids;             /* XL base: 6 (sizes and crop); refiner: 5 (with the aesthetic score) */
    int norm_groups;            /* GroupNorm groups of the UNet and the VAE */
    int unet_sample_size;       /* latent size: 512, 768 (2.1's v-prediction model) and 1024 pixels */
    int vae_sample_size;
    double vae_scaling;
    /* the same in every family: the text encoders' LayerNorm epsilon and token ids (eos 2: the
       legacy id with which transformers pools at the highest token id, as the real configs say);
       the scheduler's first timestep of the check, 981, is pipeline.c's default and every
       family's (leading spacing, steps_offset 1) */
} FAMILIES[] = {
    [SD1] = {"SD 1.x", "StableDiffusionPipeline", 8, 0, 64, {"quick_gelu", "gelu"}, 0, 0, 0, 32, 64, 512, 0.18215},
    [SD2] = {"SD 2.x", "StableDiffusionPipeline", 0, 64, 64, {"gelu", "gelu"}, 1, 0, 0, 32, 96, 768, 0.18215},
    [SDXL] = {"SDXL", "StableDiffusionXLPipeline", 0, 64, 64, {"quick_gelu", "gelu"}, 0, 256, 6, 32, 128, 1024, 0.13025},
    [SDXL_REFINER] = {"SDXL refiner", "StableDiffusionXLImg2ImgPipeline", 0, 64, 64, {"quick_gelu", "gelu"}, 0, 256, 5,
                      32, 128, 1024, 0.13025},
};
#define TEXT_LAYER_NORM_EPS 1e-5
#define TEXT_BOS_ID 0
#define TEXT_EOS_ID 2
#define TEXT_PAD_ID 1

/* ---- the object ------------------------------------------------------------------------- */

#define N_PARTS (SDC_LDM_TEXT_ENCODER_2 + 1)

static const char *const COMPONENT_OF[N_PARTS] = {
    [SDC_LDM_UNET] = "unet",
    [SDC_LDM_VAE] = "vae",
    [SDC_LDM_TEXT_ENCODER] = "text_encoder",
    [SDC_LDM_TEXT_ENCODER_2] = "text_encoder_2",
};

typedef struct part {
    size_t n, cap;
    sdc_tensor *views; /* diffusers-named; names and transposed copies owned here */
    void *copy;        /* the one materialised tensor (text_projection), if any */
    bool openclip;
    json_t *config;
    char origin[4300];
    sdc_err error; /* why no config could be inferred (code 0: none) */
} part;

struct sdc_single_file {
    int refs;
    char path[4096];
    const tensor_format *format;
    void *file;
    sdc_ldm_layout layout;
    part parts[N_PARTS];
    family fam;
    json_t *model_index;
};

static sdc_ldm_part part_of_component(const char *component) {
    for (int p = SDC_LDM_UNET; p < N_PARTS; p++)
        if (component && !strcmp(component, COMPONENT_OF[p])) return (sdc_ldm_part)p;
    return SDC_LDM_NONE;
}

void sdc_single_file_retain(sdc_single_file *f) { f->refs++; }

void sdc_single_file_release(sdc_single_file *f) {
    if (!f || --f->refs > 0) return;
    for (int p = 0; p < N_PARTS; p++) {
        part *pt = &f->parts[p];
        for (size_t i = 0; i < pt->n; i++) sdc_free((char *)pt->views[i].name);
        sdc_free(pt->views);
        sdc_free(pt->copy);
        json_decref(pt->config);
    }
    json_decref(f->model_index);
    if (f->file) f->format->close(f->file);
    sdc_free(f);
}

/* ---- naming: which layout, and the views -------------------------------------------------- */

/* A lone component: the key prefix that makes its names LDM keys, or the part it is in the
   diffusers naming (prefix NULL). */
static const struct lone_row {
    const char *probe;
    const char *ldm_prefix;
    sdc_ldm_part part;
} LONE[] = {
    {"encoder.down.0.block.0.conv1.weight", "first_stage_model.", SDC_LDM_VAE},
    {"input_blocks.0.0.weight", "model.diffusion_model.", SDC_LDM_UNET},
    {"encoder.down_blocks.0.resnets.0.conv1.weight", NULL, SDC_LDM_VAE},
    {"conv_in.weight", NULL, SDC_LDM_UNET},
};

/* A whole pipeline already in diffusers' names, each key prefixed by its component folder. */
static const struct diffusers_row {
    const char *prefix;
    sdc_ldm_part part;
} DIFFUSERS_PARTS[] = {
    {"unet.", SDC_LDM_UNET},
    {"vae.", SDC_LDM_VAE},
    {"text_encoder.", SDC_LDM_TEXT_ENCODER},
    {"text_encoder_2.", SDC_LDM_TEXT_ENCODER_2},
};
static const char *const DIFFUSERS_PROBES[] = {"unet.conv_in.weight", "vae.encoder.conv_in.weight",
                                               "text_encoder.text_model.embeddings.token_embedding.weight"};

typedef struct naming {
    const char *ldm_prefix;  /* prepended to every key; "" for a whole checkpoint */
    sdc_ldm_part diffusers;  /* a lone component already in diffusers' names */
    bool prefixed;           /* a whole pipeline in diffusers' names (DIFFUSERS_PARTS) */
} naming;

static sdc_status detect_naming(const sdc_single_file *f, naming *out, sdc_err *err) {
    size_t n = f->format->count(f->file);
    for (size_t i = 0; i < n; i++) {
        if (sdc_ldm_part_of(f->format->at(f->file, i)->name) != SDC_LDM_NONE) {
            *out = (naming){"", SDC_LDM_NONE, false};
            return SDC_OK;
        }
    }
    for (size_t i = 0; i < SDC_COUNT_OF(DIFFUSERS_PROBES); i++) {
        if (f->format->find(f->file, DIFFUSERS_PROBES[i])) {
            *out = (naming){NULL, SDC_LDM_NONE, true};
            return SDC_OK;
        }
    }
    for (size_t i = 0; i < SDC_COUNT_OF(LONE); i++) {
        if (f->format->find(f->file, LONE[i].probe)) {
            *out = (naming){LONE[i].ldm_prefix, LONE[i].ldm_prefix ? SDC_LDM_NONE : LONE[i].part, false};
            return SDC_OK;
        }
    }
    const sdc_tensor *first = n ? f->format->at(f->file, 0) : NULL;
    return sdc_fail(err, SDC_E_UNSUPPORTED,
                    "%s: unknown layout (%zu tensors, the first '%s'): neither a Stable Diffusion checkpoint "
                    "(model.diffusion_model.*, first_stage_model.*, cond_stage_model.*, conditioner.embedders.*) nor a "
                    "lone VAE or UNet",
                    f->path, n, first ? first->name : "none");
}

static bool number_after(const char *key, const char *prefix, long *out) {
    size_t n = strlen(prefix);
    if (strncmp(key, prefix, n) || key[n] < '0' || key[n] > '9') return false;
    *out = strtol(key + n, NULL, 10);
    return *out < 100000;
}

/* What the names depend on: the VAE's levels and the UNet's resnets per block (the first
   downsampler's slot). */
static void find_layout(sdc_single_file *f, const char *prefix) {
    long vae_max = -1, unet_max = 0, first_op = -1;
    char key[600];
    for (size_t i = 0; i < f->format->count(f->file); i++) {
        long v;
        if (!sdc_fmt(key, sizeof key, "%s%s", prefix, f->format->at(f->file, i)->name)) continue;
        if (number_after(key, "first_stage_model.encoder.down.", &v) && v > vae_max) vae_max = v;
        if (number_after(key, "model.diffusion_model.input_blocks.", &v)) {
            if (v > unet_max) unet_max = v;
            const char *dot = strchr(key + strlen("model.diffusion_model.input_blocks."), '.');
            if (dot && !strncmp(dot, ".0.op.", 6) && (first_op < 0 || v < first_op)) first_op = v;
        }
    }
    f->layout.vae_levels = (int)(vae_max + 1);
    f->layout.unet_layers_per_block = (int)(first_op > 0 ? first_op - 1 : unet_max);
}

static sdc_status grow(part *p, const char *path, sdc_err *err) {
    if (p->n < p->cap) return SDC_OK;
    size_t cap = p->cap ? 2 * p->cap : 256;
    sdc_tensor *v = sdc_realloc(p->views, cap * sizeof *v);
    if (!v) return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", path);
    p->views = v;
    p->cap = cap;
    return SDC_OK;
}

/* [in, out] → [out, in], element by element of whatever size; the one copy. */
static sdc_status transpose_view(part *p, sdc_tensor *v, const char *path, sdc_err *err) {
    if (v->rank != 2 || p->copy)
        return sdc_fail(err, SDC_E_FORMAT, "%s: tensor '%s' is not one [in, out] matrix", path, v->name);
    size_t es = (size_t)(v->nbytes / (v->numel ? v->numel : 1)), rows = (size_t)v->shape[0], cols = (size_t)v->shape[1];
    uint8_t *t = sdc_malloc(v->nbytes ? v->nbytes : 1);
    if (!t) return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", path);
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++) memcpy(t + (c * rows + r) * es, v->data + (r * cols + c) * es, es);
    v->shape[0] = (int64_t)cols; /* [out, in] */
    v->shape[1] = (int64_t)rows;
    v->data = t;
    v->in_memory = true;
    p->copy = t;
    return SDC_OK;
}

/* The diffusers view of `src` that `t` names. */
static sdc_status add_view(sdc_single_file *f, const sdc_tensor *src, const sdc_ldm_target *t, sdc_err *err) {
    part *p = &f->parts[t->part];
    if (t->transform == SDC_LDM_TRANSPOSE && t->part != SDC_LDM_TEXT_ENCODER_2) return SDC_OK; /* SD 2.x's, unused */
    sdc_status st = grow(p, f->path, err);
    if (st) return st;
    sdc_tensor v = *src;
    p->openclip = p->openclip || t->openclip;
    if (t->transform == SDC_LDM_SQUEEZE_1X1 && v.rank == 4 && v.shape[2] == 1 && v.shape[3] == 1) {
        v.rank = 2; /* [o, i, 1, 1] → [o, i] */
    } else if (t->transform == SDC_LDM_ROWS_OF_3) {
        if (v.rank < 1 || v.shape[0] % 3)
            return sdc_fail(err, SDC_E_FORMAT, "%s: tensor '%s' is no fused q/k/v projection (its rows are not a multiple of 3)",
                            f->path, src->name);
        v.shape[0] /= 3; /* [3·d, ...] → rows [slice·d, (slice+1)·d) */
        v.numel /= 3;
        v.nbytes /= 3;
        v.data += (size_t)t->slice * v.nbytes;
    }
    if (!(v.name = sdc_strdup(t->name))) return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", f->path);
    p->views[p->n++] = v;
    if (t->transform == SDC_LDM_TRANSPOSE) return transpose_view(p, &p->views[p->n - 1], f->path, err);
    return SDC_OK;
}

static sdc_status make_views(sdc_single_file *f, const naming *nm, sdc_err *err) {
    char key[600];
    for (size_t i = 0; i < f->format->count(f->file); i++) {
        const sdc_tensor *src = f->format->at(f->file, i);
        sdc_ldm_target t[SDC_LDM_MAX_TARGETS];
        int n;
        if (nm->prefixed) {
            n = 0;
            for (size_t k = 0; k < SDC_COUNT_OF(DIFFUSERS_PARTS) && !n; k++) {
                size_t len = strlen(DIFFUSERS_PARTS[k].prefix);
                t[0] = (sdc_ldm_target){.part = DIFFUSERS_PARTS[k].part, .transform = SDC_LDM_AS_IS};
                n = !strncmp(src->name, DIFFUSERS_PARTS[k].prefix, len) &&
                    sdc_fmt(t[0].name, sizeof t[0].name, "%s", src->name + len);
            }
        } else if (nm->diffusers != SDC_LDM_NONE) {
            t[0] = (sdc_ldm_target){.part = nm->diffusers, .transform = SDC_LDM_AS_IS};
            n = sdc_fmt(t[0].name, sizeof t[0].name, "%s", src->name);
        } else {
            n = sdc_fmt(key, sizeof key, "%s%s", nm->ldm_prefix, src->name) ? sdc_ldm_map(key, &f->layout, t) : 0;
        }
        for (int k = 0; k < n; k++) {
            sdc_status st = add_view(f, src, &t[k], err);
            if (st) return st;
        }
    }
    return SDC_OK;
}

/* ---- inference ---------------------------------------------------------------------------- */

typedef struct probe {
    const sdc_single_file *f;
    sdc_weights *w[N_PARTS];
} probe;

/* Dimension `dim` of a tensor, or -1 when absent. */
static int64_t dim_of(const probe *pr, sdc_ldm_part p, int dim, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int64_t dim_of(const probe *pr, sdc_ldm_part p, int dim, const char *fmt, ...) {
    char name[300];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof name || !pr->w[p]) return -1;
    const sdc_tensor *t = sdc_weights_find(pr->w[p], name);
    return t && dim < t->rank ? t->shape[dim] : -1;
}

#define HAS(pr, p, ...) (dim_of(pr, p, 0, __VA_ARGS__) >= 0)
#define MAX_LEVELS 8

static sdc_status contradiction(const sdc_single_file *f, sdc_ldm_part p, sdc_err *err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static sdc_status contradiction(const sdc_single_file *f, sdc_ldm_part p, sdc_err *err, const char *fmt, ...) {
    char why[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    return sdc_fail(err, SDC_E_UNSUPPORTED,
                    "%s: %s %s, which the %s conventions do not give; pass --config DIR with the model's diffusers "
                    "configs (a folder or Hub id with %s/config.json)",
                    f->path, COMPONENT_OF[p], why, FAMILIES[f->fam].name, COMPONENT_OF[p]);
}

static json_t *int_list(const int64_t *v, size_t n) {
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++) json_array_append_new(a, json_integer(v[i]));
    return a;
}

static sdc_status infer_unet(const probe *pr, json_t **out, sdc_err *err) {
    const sdc_single_file *f = pr->f;
    const struct family_row *fam = &FAMILIES[f->fam];
    const sdc_ldm_part U = SDC_LDM_UNET;
    int64_t ch[MAX_LEVELS], depth[MAX_LEVELS], heads[MAX_LEVELS];
    size_t levels = 0;
    while (levels < MAX_LEVELS && (ch[levels] = dim_of(pr, U, 0, "down_blocks.%zu.resnets.0.conv1.weight", levels)) > 0)
        levels++;
    if (HAS(pr, U, "down_blocks.%d.resnets.0.conv1.weight", MAX_LEVELS))
        return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: the UNet has more than %d levels", f->path, MAX_LEVELS);
    if (!levels || !HAS(pr, U, "conv_in.weight") || !HAS(pr, U, "conv_out.weight"))
        return sdc_fail(err, SDC_E_FORMAT, "%s: the UNet lacks its first resnet, conv_in or conv_out (input_blocks.1, "
                        "input_blocks.0, out.2)", f->path);
    int64_t layers = 0;
    while (HAS(pr, U, "down_blocks.0.resnets.%lld.conv1.weight", (long long)layers)) layers++;
    json_t *down = json_array(), *up = json_array();
    int64_t cross = -1, proj_rank = 0;
    for (size_t b = 0; b < levels; b++) {
        bool attn = HAS(pr, U, "down_blocks.%zu.attentions.0.proj_in.weight", b);
        json_array_append_new(down, json_string(attn ? "CrossAttnDownBlock2D" : "DownBlock2D"));
        bool up_attn = HAS(pr, U, "up_blocks.%zu.attentions.0.proj_in.weight", b);
        json_array_append_new(up, json_string(up_attn ? "CrossAttnUpBlock2D" : "UpBlock2D"));
        depth[b] = 1;
        while (attn && HAS(pr, U, "down_blocks.%zu.attentions.0.transformer_blocks.%lld.attn1.to_q.weight", b,
                           (long long)depth[b]))
            depth[b]++;
        if (attn && cross < 0) {
            cross = dim_of(pr, U, 1, "down_blocks.%zu.attentions.0.transformer_blocks.0.attn2.to_k.weight", b);
            char name[128];
            snprintf(name, sizeof name, "down_blocks.%zu.attentions.0.proj_in.weight", b);
            const sdc_tensor *t = sdc_weights_find(pr->w[U], name);
            proj_rank = t ? t->rank : 0;
        }
        heads[b] = fam->unet_heads ? fam->unet_heads : ch[b] / fam->unet_head_channels;
        int64_t per_head = fam->unet_heads ? fam->unet_heads : fam->unet_head_channels;
        if (attn && ch[b] % per_head) {
            json_decref(down);
            json_decref(up);
            return contradiction(f, U, err, "level %zu has %lld channels, not a multiple of %lld %s", b, (long long)ch[b],
                                 (long long)per_head, fam->unet_heads ? "heads" : "channels per head");
        }
    }
    json_t *c = json_pack("{s:s, s:I, s:I, s:o, s:I, s:o, s:b, s:I, s:o, s:o, s:s, s:I, s:I}",     /* shapes */
                          "_class_name", "UNet2DConditionModel",                                  /* */
                          "in_channels", (json_int_t)dim_of(pr, U, 1, "conv_in.weight"),          /* 9: inpainting */
                          "out_channels", (json_int_t)dim_of(pr, U, 0, "conv_out.weight"),        /* */
                          "block_out_channels", int_list(ch, levels),                             /* */
                          "layers_per_block", (json_int_t)layers,                                 /* */
                          "transformer_layers_per_block", int_list(depth, levels),                /* */
                          "use_linear_projection", proj_rank == 2,                                /* */
                          "cross_attention_dim", (json_int_t)cross,                               /* */
                          "down_block_types", down, "up_block_types", up,                         /* */
                          "mid_block_type",
                          HAS(pr, U, "mid_block.attentions.0.proj_in.weight") ? "UNetMidBlock2DCrossAttn" : "UNetMidBlock2D",
                          "norm_num_groups", (json_int_t)fam->norm_groups,                        /* conventions */
                          "sample_size", (json_int_t)fam->unet_sample_size);
    json_object_set_new(c, "attention_head_dim", fam->unet_heads ? json_integer(fam->unet_heads) : int_list(heads, levels));
    if (cross < 0) json_object_del(c, "cross_attention_dim"); /* no transformer at all */
    int64_t add_in = dim_of(pr, U, 1, "add_embedding.linear_1.weight");
    if (add_in > 0) {
        json_object_set_new(c, "addition_embed_type", json_string("text_time"));
        json_object_set_new(c, "addition_time_embed_dim", json_integer(fam->time_id_channels));
        json_object_set_new(c, "projection_class_embeddings_input_dim", json_integer(add_in));
        int64_t pooled = dim_of(pr, SDC_LDM_TEXT_ENCODER_2, 0, "text_projection.weight");
        if (pooled < 0 || add_in - pooled != (int64_t)fam->n_time_ids * fam->time_id_channels) {
            json_decref(c);
            return contradiction(f, U, err, "embeds %lld channels of time ids and pooled text, not %d time ids of 256 plus a "
                                 "pooled text_encoder_2 output (%s)",
                                 (long long)add_in, fam->n_time_ids, pooled < 0 ? "the file has none" : "of another width");
        }
    }
    *out = c;
    return SDC_OK;
}

static sdc_status infer_vae(const probe *pr, json_t **out, sdc_err *err) {
    const sdc_single_file *f = pr->f;
    const struct family_row *fam = &FAMILIES[f->fam];
    const sdc_ldm_part V = SDC_LDM_VAE;
    int64_t ch[MAX_LEVELS];
    size_t levels = 0;
    while (levels < MAX_LEVELS &&
           (ch[levels] = dim_of(pr, V, 0, "encoder.down_blocks.%zu.resnets.0.conv1.weight", levels)) > 0)
        levels++;
    if (HAS(pr, V, "encoder.down_blocks.%d.resnets.0.conv1.weight", MAX_LEVELS))
        return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: the VAE has more than %d levels", f->path, MAX_LEVELS);
    int64_t layers = 0;
    while (HAS(pr, V, "encoder.down_blocks.0.resnets.%lld.conv1.weight", (long long)layers)) layers++;
    if (!levels || !layers || !HAS(pr, V, "encoder.conv_in.weight") || !HAS(pr, V, "decoder.conv_in.weight") ||
        !HAS(pr, V, "decoder.conv_out.weight"))
        return sdc_fail(err, SDC_E_FORMAT, "%s: the VAE lacks encoder.down.0, a conv_in or the decoder's conv_out", f->path);
    for (size_t b = 0; b < levels; b++)
        if (ch[b] % fam->norm_groups)
            return contradiction(f, V, err, "level %zu has %lld channels, not a multiple of %d GroupNorm groups", b,
                                 (long long)ch[b], fam->norm_groups);
    json_t *down = json_array(), *up = json_array();
    for (size_t b = 0; b < levels; b++) {
        json_array_append_new(down, json_string("DownEncoderBlock2D"));
        json_array_append_new(up, json_string("UpDecoderBlock2D"));
    }
    *out = json_pack("{s:s, s:I, s:I, s:I, s:o, s:I, s:o, s:o, s:b, s:b, s:b, s:I, s:I, s:f, s:b}",  /* */
                     "_class_name", "AutoencoderKL",                                                /* shapes */
                     "in_channels", (json_int_t)dim_of(pr, V, 1, "encoder.conv_in.weight"),         /* */
                     "out_channels", (json_int_t)dim_of(pr, V, 0, "decoder.conv_out.weight"),       /* */
                     "latent_channels", (json_int_t)dim_of(pr, V, 1, "decoder.conv_in.weight"),     /* */
                     "block_out_channels", int_list(ch, levels),                                    /* */
                     "layers_per_block", (json_int_t)layers,                                        /* */
                     "down_block_types", down, "up_block_types", up,                                /* */
                     "use_quant_conv", HAS(pr, V, "quant_conv.weight"),                             /* */
                     "use_post_quant_conv", HAS(pr, V, "post_quant_conv.weight"),                   /* */
                     "mid_block_add_attention", HAS(pr, V, "encoder.mid_block.attentions.0.to_q.weight"), /* */
                     "norm_num_groups", (json_int_t)fam->norm_groups,                               /* conventions */
                     "sample_size", (json_int_t)fam->vae_sample_size,                               /* */
                     "scaling_factor", fam->vae_scaling, "force_upcast", true);
    return SDC_OK;
}

static sdc_status infer_text_encoder(const probe *pr, sdc_ldm_part p, json_t **out, sdc_err *err) {
    const sdc_single_file *f = pr->f;
    const struct family_row *fam = &FAMILIES[f->fam];
    int64_t hidden = dim_of(pr, p, 1, "text_model.embeddings.token_embedding.weight");
    int64_t vocab = dim_of(pr, p, 0, "text_model.embeddings.token_embedding.weight");
    int64_t positions = dim_of(pr, p, 0, "text_model.embeddings.position_embedding.weight");
    int64_t mlp = dim_of(pr, p, 0, "text_model.encoder.layers.0.mlp.fc1.weight");
    int64_t blocks = 0;
    while (HAS(pr, p, "text_model.encoder.layers.%lld.self_attn.q_proj.weight", (long long)blocks)) blocks++;
    if (hidden <= 0 || positions <= 0 || mlp <= 0 || !blocks)
        return sdc_fail(err, SDC_E_FORMAT, "%s: the %s lacks its token or position embedding or its first layer", f->path,
                        COMPONENT_OF[p]);
    if (hidden % fam->text_head_channels)
        return contradiction(f, p, err, "has hidden size %lld, not a multiple of %d channels per head", (long long)hidden,
                             fam->text_head_channels);
    bool openclip = f->parts[p].openclip;
    int64_t layers = blocks - (openclip ? fam->openclip_unused_blocks : 0);
    int64_t projection = dim_of(pr, p, 0, "text_projection.weight");
    bool with_projection = p == SDC_LDM_TEXT_ENCODER_2;
    *out = json_pack("{s:[s], s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:s, s:f, s:i, s:i, s:i}", /* */
                     "architectures", with_projection ? "CLIPTextModelWithProjection" : "CLIPTextModel", /* */
                     "model_type", "clip_text_model",                                              /* shapes */
                     "hidden_size", (json_int_t)hidden, "vocab_size", (json_int_t)vocab,           /* */
                     "max_position_embeddings", (json_int_t)positions,                            /* */
                     "intermediate_size", (json_int_t)mlp, "num_hidden_layers", (json_int_t)layers, /* */
                     "projection_dim", (json_int_t)(projection > 0 ? projection : hidden),       /* */
                     "num_attention_heads", (json_int_t)(hidden / fam->text_head_channels),      /* conventions */
                     "hidden_act", fam->text_act[p == SDC_LDM_TEXT_ENCODER_2],                    /* */
                     "layer_norm_eps", TEXT_LAYER_NORM_EPS, "bos_token_id", TEXT_BOS_ID,         /* */
                     "eos_token_id", TEXT_EOS_ID, "pad_token_id", TEXT_PAD_ID);
    return SDC_OK;
}

/* SDXL has the time-id embedding; the refiner has no CLIP-L; SD 2.x runs OpenCLIP, and its
   UNet projects with linears (SD 1.x: 1x1 convs), which tells it apart in diffusers' names. */
static family find_family(const probe *pr) {
    if (HAS(pr, SDC_LDM_UNET, "add_embedding.linear_1.weight"))
        return pr->w[SDC_LDM_TEXT_ENCODER] || !pr->w[SDC_LDM_TEXT_ENCODER_2] ? SDXL : SDXL_REFINER;
    if (pr->w[SDC_LDM_TEXT_ENCODER] && pr->f->parts[SDC_LDM_TEXT_ENCODER].openclip) return SD2;
    const sdc_tensor *t = pr->w[SDC_LDM_UNET] ? sdc_weights_find(pr->w[SDC_LDM_UNET], "down_blocks.0.attentions.0.proj_in.weight") : NULL;
    return t && t->rank == 2 ? SD2 : SD1;
}

static sdc_status config_from_dir(sdc_single_file *f, const char *config_root, sdc_ldm_part p, sdc_err *err) {
    part *pt = &f->parts[p];
    if (!sdc_fmt(pt->origin, sizeof pt->origin, "%s/%s/config.json", config_root, COMPONENT_OF[p]))
        return sdc_fail(err, SDC_E_ARG, "--config: path too long");
    if (!sdc_path_exists(pt->origin))
        return sdc_fail(err, SDC_E_NOTFOUND, "--config %s has no %s/config.json for the %s of %s", config_root,
                        COMPONENT_OF[p], COMPONENT_OF[p], f->path);
    return sdc_json_load(pt->origin, &pt->config, err);
}

static sdc_status infer_configs(sdc_single_file *f, const char *config_root, sdc_err *err) {
    probe pr = {.f = f};
    sdc_status st = SDC_OK;
    for (int p = SDC_LDM_UNET; !st && p < N_PARTS; p++) {
        part *pt = &f->parts[p];
        if (pt->n) st = sdc_weights_from_views(f->path, pt->views, pt->n, &pr.w[p], err);
    }
    if (!st) f->fam = find_family(&pr);
    for (int p = SDC_LDM_UNET; !st && p < N_PARTS; p++) {
        part *pt = &f->parts[p];
        if (!pr.w[p]) continue;
        if (config_root) {
            st = config_from_dir(f, config_root, (sdc_ldm_part)p, err);
            continue;
        }
        snprintf(pt->origin, sizeof pt->origin, "%s (the %s config inferred from its shapes)", f->path, COMPONENT_OF[p]);
        if (p == SDC_LDM_UNET) infer_unet(&pr, &pt->config, &pt->error);
        else if (p == SDC_LDM_VAE) infer_vae(&pr, &pt->config, &pt->error);
        else infer_text_encoder(&pr, (sdc_ldm_part)p, &pt->config, &pt->error);
        if (!pt->config && !pt->error.code) st = sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", f->path);
    }
    for (int p = 0; p < N_PARTS; p++) sdc_weights_free(pr.w[p]);
    return st;
}

/* model_index.json as diffusers writes it for such a pipeline. */
static sdc_status make_model_index(sdc_single_file *f, sdc_err *err) {
    static const char *const CLASS[N_PARTS][2] = {
        [SDC_LDM_UNET] = {"diffusers", "UNet2DConditionModel"},
        [SDC_LDM_VAE] = {"diffusers", "AutoencoderKL"},
        [SDC_LDM_TEXT_ENCODER] = {"transformers", "CLIPTextModel"},
        [SDC_LDM_TEXT_ENCODER_2] = {"transformers", "CLIPTextModelWithProjection"},
    };
    f->model_index = json_pack("{s:s}", "_class_name", FAMILIES[f->fam].pipeline);
    for (int p = SDC_LDM_UNET; f->model_index && p < N_PARTS; p++)
        if (f->parts[p].n)
            json_object_set_new(f->model_index, COMPONENT_OF[p], json_pack("[s,s]", CLASS[p][0], CLASS[p][1]));
    if (f->model_index && f->fam == SDXL_REFINER)
        json_object_set_new(f->model_index, "requires_aesthetics_score", json_true());
    return f->model_index ? SDC_OK : sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", f->path);
}

sdc_status sdc_single_file_open(const char *path, const char *config_root, sdc_single_file **out, sdc_err *err) {
    *out = NULL;
    sdc_single_file *f = sdc_calloc(1, sizeof *f);
    if (!f) return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", path);
    f->refs = 1;
    f->format = format_of(path);
    SDC_ASSERT(f->format);
    sdc_status st = SDC_OK;
    naming nm = {NULL, SDC_LDM_NONE, false};
    if (!sdc_fmt(f->path, sizeof f->path, "%s", path)) st = sdc_fail(err, SDC_E_ARG, "path too long: '%.80s...'", path);
    if (!st) st = f->format->open(path, &f->file, err);
    if (!st) st = detect_naming(f, &nm, err);
    if (!st && nm.ldm_prefix) find_layout(f, nm.ldm_prefix);
    if (!st) st = make_views(f, &nm, err);
    if (!st) st = infer_configs(f, config_root, err);
    if (!st) st = make_model_index(f, err);
    if (st) {
        sdc_single_file_release(f);
        return st;
    }
    *out = f;
    return SDC_OK;
}

/* ---- what the source asks ------------------------------------------------------------------ */

const json_t *sdc_single_file_model_index(const sdc_single_file *f) { return f->model_index; }

bool sdc_single_file_has(const sdc_single_file *f, const char *component) {
    sdc_ldm_part p = part_of_component(component);
    return p != SDC_LDM_NONE && f->parts[p].n > 0;
}

const json_t *sdc_single_file_config(const sdc_single_file *f, const char *component, const char **origin) {
    sdc_ldm_part p = part_of_component(component);
    if (p == SDC_LDM_NONE || !f->parts[p].config) return NULL;
    if (origin) *origin = f->parts[p].origin;
    return f->parts[p].config;
}

sdc_status sdc_single_file_check(const sdc_single_file *f, const char *component, sdc_err *err) {
    sdc_ldm_part p = part_of_component(component);
    if (p == SDC_LDM_NONE || !f->parts[p].n || f->parts[p].config) return SDC_OK;
    return sdc_fail(err, f->parts[p].error.code, "%s", f->parts[p].error.msg);
}

static void release_single_file(void *f) { sdc_single_file_release(f); }

sdc_status sdc_single_file_component(sdc_single_file *f, const char *component, sdc_component *out, sdc_err *err) {
    memset(out, 0, sizeof *out);
    sdc_ldm_part p = part_of_component(component);
    if (p == SDC_LDM_NONE || !f->parts[p].n)
        return sdc_fail(err, SDC_E_NOTFOUND, "%s has no %s", f->path, component[0] ? component : "model at its root");
    part *pt = &f->parts[p];
    sdc_status st = sdc_single_file_check(f, component, err);
    if (st) return st;
    snprintf(out->name, sizeof out->name, "%s", component);
    snprintf(out->dir, sizeof out->dir, "%s", f->path);
    snprintf(out->config_path, sizeof out->config_path, "%s", pt->origin);
    out->config = json_incref(pt->config);
    st = sdc_weights_from_views(f->path, pt->views, pt->n, &out->weights, err);
    if (st) {
        sdc_component_close(out);
        return st;
    }
    sdc_single_file_retain(f); /* the views point into f's mapping: the weights keep it */
    sdc_weights_keep(out->weights, f, release_single_file);
    return SDC_OK;
}
