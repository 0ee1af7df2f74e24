/*
 * single_file.h — a whole model in one file, as community models ship: the original LDM/SGM
 * layout (SD 1.x, SD 2.x, SDXL base and refiner, inpainting), a pipeline in diffusers' names
 * prefixed by component ("unet.conv_in.weight"), or one component (a VAE or UNet in the LDM or
 * the diffusers naming); .safetensors (.ckpt/.pt/.pth: the pickle reader).
 *
 * The file is opened once; each component becomes diffusers-named views of its tensors
 * (ldm_names.h; no copy except OpenCLIP's small text_projection, transposed) plus a config:
 * read from --config DIR's <component>/config.json when given, else inferred from the tensor
 * names and shapes, with what shapes cannot settle taken from the family's conventions (one
 * table in single_file.c). A file whose shapes contradict them is an error naming --config.
 *
 * The object is reference-counted: components keep it (and its mapping) alive after the
 * source that opened them is closed.
 */
#ifndef SDC_SINGLE_FILE_H
#define SDC_SINGLE_FILE_H

#include "source/source.h"

/* A name that ends in a single-file extension (.safetensors, .ckpt, .pt, .pth): a file, never a
   Hub id to download. */
bool sdc_single_file_named(const char *path);
/* ... and is a regular file. */
bool sdc_single_file_is(const char *path);

/* "dir/my-model.safetensors" → "my-model"; false when it does not fit. */
bool sdc_single_file_stem(const char *path, char *out, size_t size);

/* Opens the file, detects its layout and prepares every component's config. `config_root`
   (may be NULL) is a resolved diffusers folder whose configs replace the inferred ones. */
sdc_status sdc_single_file_open(const char *path, const char *config_root, sdc_single_file **out, sdc_err *err);
void sdc_single_file_retain(sdc_single_file *f);
void sdc_single_file_release(sdc_single_file *f); /* NULL is a no-op */

/* model_index.json as diffusers would write it for this file (borrowed). */
const json_t *sdc_single_file_model_index(const sdc_single_file *f);

/* Whether the file holds the component's weights ("unet", "vae", "text_encoder", "text_encoder_2"). */
bool sdc_single_file_has(const sdc_single_file *f, const char *component);

/* The component's config (borrowed; the --config one or the inferred one) and where it came from. */
const json_t *sdc_single_file_config(const sdc_single_file *f, const char *component, const char **origin);

/* Why the component's config could not be inferred (the error sdc_single_file_component would
   return); SDC_OK when it has one or the file does not hold the component. Lets a conversion
   refuse before it writes any package. */
sdc_status sdc_single_file_check(const sdc_single_file *f, const char *component, sdc_err *err);

/* Fills `out` as sdc_component_open does for a folder. */
sdc_status sdc_single_file_component(sdc_single_file *f, const char *component, sdc_component *out, sdc_err *err);

#endif
