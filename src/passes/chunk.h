/*
 * chunk.h — splits a graph in two, as coremltools' bisect_model does for the anchor's
 * --chunk-unet (reference/anchor-ml-stable-diffusion.md §9):
 *
 *   cut       walking the ops in order and summing the bytes of their constants, the first op
 *             that is not a constant, at a cumulative size >= half of the total, with exactly
 *             one output that has exactly one consumer;
 *   boundary  every non-constant output of a non-constant op at or before the cut that an op
 *             after the cut uses (the UNet's skip tensors, time embedding, the current
 *             activation ...), in op order;
 *   chunk 1   the original inputs (all of them); the ops the boundary needs; outputs = the
 *             boundary vars, each float16 one cast to float32 by a `cast` that takes the
 *             var's name (the var itself gets a fresh one);
 *   chunk 2   the original inputs that ops after the cut still use, then one float32 input per
 *             boundary var (same name, same shape; float16 vars are cast back to float16 right
 *             away); the ops after the cut and the constants they use; the original outputs.
 *
 * So chunk 1's output names are chunk 2's input names minus the original inputs, and running
 * chunk 1 then chunk 2 on chunk 1's outputs merged with the original inputs (what the Swift
 * pipeline does) computes exactly the ops of the full graph: the float16 → float32 → float16
 * round trip at the boundary is exact.
 *
 * Nothing is copied that the writer streams: a constant in a chunk is a copy of the var struct,
 * so it refers to the same mapped weight (and whatever a later const kind carries). The chunks
 * borrow names and constant bytes from the source graph, which must outlive them.
 */
#ifndef SDC_PASSES_CHUNK_H
#define SDC_PASSES_CHUNK_H

#include "mil/graph.h"

typedef struct mil_chunks {
    mil_graph *chunk1, *chunk2;
    size_t cut;             /* index of the cut op in the source graph's ops */
    const char *cut_name;   /* its name (borrowed from the source graph) */
    int n_boundary;         /* tensors passed from chunk 1 to chunk 2 */
    uint64_t const_bytes;   /* the source's constant bytes as the cut counts them */
    uint64_t bytes1, bytes2; /* constant bytes each chunk stores (a constant both use counts twice) */
} mil_chunks;

/* Splits `g` (left unchanged) into out->chunk1 and out->chunk2. On failure nothing is left to
   free and err names the reason (a graph without a possible cut, a boundary tensor whose dtype
   cannot be a model feature). */
sdc_status sdc_chunk_graph(const mil_graph *g, mil_chunks *out, sdc_err *err);
void sdc_chunks_free(mil_chunks *c);

#endif
