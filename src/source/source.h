/*
 * source.h — where model weights come from.
 *
 * A model is named as the anchor names it (--model-version): a single checkpoint file
 * (single_file.h: its components are views of the file), a local diffusers folder
 * (one that holds model_index.json or a component folder), or a Hub id "org/name" resolved
 * from the local Hugging Face cache (src/hub/hub.h): $HF_HUB_CACHE, else $HF_HOME/hub, else
 * $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub; inside it
 * models--org--name/refs/main (refs/<rev> for "org/name@rev") names the snapshot
 * models--org--name/snapshots/<sha>/. When nothing is found, the error lists every place
 * tried. Downloading what is missing is the hub's job, done before (src/convert/fetch.c).
 *
 * A component (text_encoder, unet, vae, ...) is a subfolder with config.json and weights,
 * chosen as the anchor does: the fp16 variant when present, else the default file;
 * .safetensors only; a sharded "*.safetensors.index.json" (or ".index.fp16.json") maps
 * tensor names to shard files.
 */
#ifndef SDC_SOURCE_H
#define SDC_SOURCE_H

#include "common.h"
#include "io/safetensors.h"
#include "source/files.h"

#include <jansson.h>

typedef struct sdc_single_file sdc_single_file; /* single_file.h */

typedef struct sdc_source {
    char id[512];     /* as given on the command line */
    char root[4096];  /* the folder that holds model_index.json; a single file: its path */
    char config_root[4096]; /* the folder of the pipeline's other files (scheduler, tokenizer, model card):
                               root, or a single file's --config folder, or "" */
    json_t *model_index; /* parsed model_index.json, or NULL if the folder has none */
    sdc_single_file *single; /* --model-version FILE: the checkpoint its components come from */
    const struct sdc_lora_set *lora; /* set by the caller (--lora): merged into the weights of the
                                        components it names, as they are opened (lora.h); borrowed */
} sdc_source;

/* Resolves a folder path, a Hub id, or a single checkpoint file (single_file.h). */
sdc_status sdc_source_open(const char *model_version, sdc_source *out, sdc_err *err);
/* The same with --config (NULL for none): a folder or Hub id whose configs describe the single
   file's components instead of the inferred ones (as diffusers' from_single_file(config=…));
   refused for a model that is not a single file. */
sdc_status sdc_source_open_config(const char *model_version, const char *config, sdc_source *out, sdc_err *err);
void sdc_source_close(sdc_source *s);

/* The name the packages of `model_version` are called after: a single file's stem
   ("dir/my-model.safetensors" → "my-model"), else the id with '/' as '_'. */
bool sdc_source_output_name(const char *model_version, char *out, size_t size);

/* True when the pipeline has this component: model_index.json lists it with a non-null
   class, or (no model_index.json) the subfolder exists. */
bool sdc_source_has(const sdc_source *s, const char *component);

/* The weights of one component: all tensors of all its shard files, found by name. */
typedef struct sdc_weights sdc_weights;

typedef struct sdc_component {
    char name[64];        /* "text_encoder" */
    char dir[4096];       /* root/name */
    char config_path[4096];
    json_t *config;       /* parsed config.json (duplicate keys rejected) */
    sdc_weights *weights;
} sdc_component;

/* Opens config.json and the weight files of `component`. Errors name the file.
   The component "" is the model folder itself, for single-model repositories (a ControlNet
   keeps config.json and its weights at the root); sdc_source_has(s, "") tells whether the
   root holds a config.json. */
sdc_status sdc_component_open(const sdc_source *s, const char *component, sdc_component *out,
                              sdc_err *err);
void sdc_component_close(sdc_component *c);

/* The i-th weight file name a component folder is searched for, in the reader's order of
   preference ("diffusion_pytorch_model.fp16.safetensors", ...); false past the last. The
   downloader picks from a repository's listing by the same list. */
bool sdc_source_weight_name(size_t i, char *out, size_t size, bool *is_index);

/* The i-th tensor in name order, i < sdc_weights_count(w). */
const sdc_tensor *sdc_weights_at(const sdc_weights *w, size_t i);
/* Tensor lookup across shards. NULL if absent. */
const sdc_tensor *sdc_weights_find(const sdc_weights *w, const char *name);
/* Lookup that must succeed with exactly this shape; the error names the file(s) and tensor.
   Accepted dtypes: F32, F16, BF16. */
sdc_status sdc_weights_get(const sdc_weights *w, const char *name, int rank, const int64_t *shape,
                           const sdc_tensor **out, sdc_err *err);
/* A weights set over views made elsewhere (single_file.c); what they point into is kept alive
   by the caller, or handed to the set with sdc_weights_keep. */
sdc_status sdc_weights_from_views(const char *describe, const sdc_tensor *views, size_t n, sdc_weights **out,
                                  sdc_err *err);
/* The weights of a component folder, its file(s) chosen in the anchor's order (weights.c). */
sdc_status sdc_weights_open_folder(const char *dir, sdc_weights **out, sdc_err *err);
/* The set calls release(obj) when it is freed: obj is what some of its views point into (a
   checkpoint, a LoRA's merged tensors). At most 4 per set. */
void sdc_weights_keep(sdc_weights *w, void *obj, void (*release)(void *obj));
/* t takes the place of the tensor of the same name (which must exist): a LoRA's merged view. */
void sdc_weights_substitute(sdc_weights *w, const sdc_tensor *t);
void sdc_weights_free(sdc_weights *w); /* NULL is a no-op */

/* The weight file(s) as one string for messages: "dir/model.fp16.safetensors". */
const char *sdc_weights_describe(const sdc_weights *w);
size_t sdc_weights_count(const sdc_weights *w);
uint64_t sdc_weights_total_bytes(const sdc_weights *w);

/* Config helpers: typed reads with defaults (an absent key or JSON null takes the default);
   a value of the wrong JSON type is an error naming config_path and the key. */
sdc_status sdc_config_int(const sdc_component *c, const char *key, int64_t dflt, int64_t *out,
                          sdc_err *err);
sdc_status sdc_config_double(const sdc_component *c, const char *key, double dflt, double *out,
                             sdc_err *err);
sdc_status sdc_config_string(const sdc_component *c, const char *key, const char *dflt,
                             const char **out, sdc_err *err);

/* A JSON boolean; absent or null gives dflt. */
sdc_status sdc_config_bool(const sdc_component *c, const char *key, bool dflt, bool *out,
                           sdc_err *err);
/* An array of at most `max` integers (e.g. block_out_channels) into out[0..*n); absent or null
   gives *n = 0. A scalar is a type error: callers that accept both check json_is_array. */
sdc_status sdc_config_int_list(const sdc_component *c, const char *key, size_t max, int64_t *out,
                               size_t *n, sdc_err *err);

/* ---- the pipeline around the components (pipeline.c) ----------------------------------
   Questions a converter asks of the whole pipeline; an absent file gives the default. */

/* SDXL: model_index.json names an XL class, or the pipeline has a text_encoder_2. */
bool sdc_pipeline_is_xl(const sdc_source *s);
/* model_index.json's requires_aesthetics_score (the SDXL refiner's 5 time ids). */
bool sdc_pipeline_requires_aesthetics_score(const sdc_source *s);
/* An integer in [1, 2^20] of <component>/config.json; dflt when the file or key is absent. */
sdc_status sdc_pipeline_int(const sdc_source *s, const char *component, const char *key, int64_t dflt,
                            int64_t *out, sdc_err *err);
/* The UNet config's sample_size (an int or [h, w]); dflt when absent. */
sdc_status sdc_pipeline_sample_size(const sdc_source *s, int64_t dflt, int64_t *h, int64_t *w, sdc_err *err);
/* The first timestep of a 50-step schedule as the scheduler config sets it (981 by default). */
sdc_status sdc_pipeline_first_timestep(const sdc_source *s, float *out, sdc_err *err);
/* tokenizer_config.json's model_max_length in [1, 4096]; 0 when absent or "unlimited". */
sdc_status sdc_pipeline_token_count(const sdc_source *s, const char *tokenizer, int *out, sdc_err *err);
/* The path of the tokenizer's vocab.json or merges.txt (tokenizer/, else tokenizer_2/). */
bool sdc_pipeline_tokenizer_file(const sdc_source *s, const char *file, char *out, size_t size);
/* The model card's (README.md front matter) base_model, or "" when it names none. */
void sdc_pipeline_card_base_model(const sdc_source *s, char *out, size_t size);

#endif
