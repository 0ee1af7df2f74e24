/*
 * pipeline.h — the generation loop of `sdcoreml pipeline` (sdc_generate in sdcoreml.h): the
 * pieces of it that stand on their own, for the unit tests.
 */
#ifndef SDC_GENERATE_PIPELINE_H
#define SDC_GENERATE_PIPELINE_H

#include "common.h"

/* The anchor's get_image_path: <o>/<prompt, '/' and ' ' as '_'>/randomSeed_<seed>_computeUnit_<cu>
   _modelVersion_<model version, '/' as '_'>[_customScheduler_<s>_numInferenceSteps<n>].png, the
   scheduler part only when one was asked for. `folder` gets the directory part. Fails (naming
   the prompt) when a name would be longer than a file name may be. */
sdc_status sdc_gen_image_path(const char *out_dir, const char *prompt, uint32_t seed, const char *compute_unit,
                              const char *model_version, const char *scheduler, int steps, char *folder,
                              size_t folder_size, char *path, size_t path_size, sdc_err *err);

/* Pillow's Image.resize(..., BICUBIC) of an 8-bit RGB image (what CLIPImageProcessor does
   before the safety checker): separable a = -0.5 cubic, support widened by the scale when
   shrinking, 22-bit fixed-point coefficients, the horizontal pass first with 8-bit rounding
   between passes. `out` holds ow * oh * 3 bytes. Returns false when out of memory. */
bool sdc_gen_resize_bicubic(const uint8_t *in, int iw, int ih, uint8_t *out, int ow, int oh);

#endif
