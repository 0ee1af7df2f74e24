/*
 * chunk.h — --chunk-unet: <stem>_chunk1.mlpackage and <stem>_chunk2.mlpackage next to
 * a UNet package (unet, refiner, control-unet), cut by passes/chunk.c from the same graph.
 */
#ifndef SDC_CONVERT_CHUNK_H
#define SDC_CONVERT_CHUNK_H

#include "convert/convert.h"

/* With --chunk-unet: whether a chunk package of the package at `path` is missing (so the graph
   must be built even when the package itself exists). False without --chunk-unet. */
bool sdc_conv_chunks_missing(const sdc_conv_ctx *c, const char *path);

/*
 * With --chunk-unet (else a no-op): writes the chunk packages of `p` that do not exist yet from
 * the graph p->build makes (the same graph as the package, after the same passes), and with
 * --check-output-correctness runs chunk 1 then chunk 2 (on chunk 1's outputs merged with the
 * original inputs, as the Swift pipeline does) and the package on the same seeded inputs, and
 * compares chunk 2's first output with the package's: below 35 dB PSNR it fails (the anchor
 * only warns).
 */
sdc_status sdc_conv_emit_chunks(const sdc_conv_ctx *c, const sdc_conv_package *p);

#endif
