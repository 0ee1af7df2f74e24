/*
 * chunk.h — --chunk-unet: <stem>_chunk1.mlpackage and <stem>_chunk2.mlpackage next to
 * a UNet package (unet, refiner, control-unet), cut by passes/chunk.c from the same graph.
 */
#ifndef SDC_CONVERT_CHUNK_H
#define SDC_CONVERT_CHUNK_H

#include "convert/convert.h"

/* With --chunk-unet: whether a chunk package of the package at `path` is missing (so the graph
   must be built even when the package itself exists). False without --chunk-unet. */
bool conv_chunks_missing(const conv_ctx *c, const char *path);

/*
 * With --chunk-unet (else a no-op): writes the chunk packages that do not exist yet from the
 * graph `build` makes (the same graph as the package at `path`, after the same passes), and
 * with --check-output-correctness runs chunk 1 then chunk 2 (on chunk 1's outputs merged with
 * the original inputs, as the Swift pipeline does) and the package at `path` on the same seeded
 * inputs, and compares chunk 2's first output with the package's: below 35 dB PSNR it fails
 * (the anchor only warns). docs are the package's; `what` its submodule ("unet").
 */
sdc_status conv_emit_chunks(const conv_ctx *c, const char *path, const char *what, const conv_docs *docs,
                            conv_build_fn build, void *state, const conv_check_hint *hint);

#endif
