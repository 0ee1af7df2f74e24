/*
 * palettize.h — --quantize-nbits N: per-tensor k-means weight palettization
 * (reference/anchor-ml-stable-diffusion.md §10.1, reference/coreml-format.md §6.3).
 *
 * Two halves:
 *
 *   1. A graph pass, sdc_palettize_graph(), that picks the anchor's candidates — float16/32
 *      consts of rank >= 2 with more than 2048 elements, used by some op and by no `gather`
 *      (the token embedding stays dense) — and marks them palettized (sdc_mil_palettize_const)
 *      with this file's lazy transform (mil_transform). Nothing is computed yet: a palettized
 *      const is still a lazy weight reference. Passes that run later (chunking) see and copy
 *      the marked graph, so chunks are palettized too.
 *
 *   2. The numbers, made by that transform while the package writer streams each marked
 *      const: a histogram of the tensor's values over float16 bit patterns (one pass over the
 *      tensor, fixed 1.5 MB), an exact optimal 1-D k-means over the distinct values weighted
 *      by their counts (sdc_kmeans1d), and LSB-first index packing on a second pass, a chunk
 *      at a time as the writer asks for it. Memory never holds the tensor, so peak memory does
 *      not grow with the model; output is deterministic. The writer only lays out the bytes.
 *
 * The anchor (coremltools 8) uses the exact 1-D k-means (kmeans1d) for float16 tensors with
 * >= 10 000 elements and scikit-learn's k-means++ (random_state 0) otherwise. We use the exact
 * solver everywhere: it is optimal, so it is never worse than k-means++, and it needs no seed.
 * float32 values (--compute-precision FLOAT32) are clustered by their float16-rounded bins
 * (values never split across a bin; each bin placed at the mean of its float32 values), and
 * the table holds the float32 means of the clusters.
 */
#ifndef SDC_PALETTIZE_H
#define SDC_PALETTIZE_H

#include "mil/graph.h"

/* Candidates have more than this many elements (coremltools' weight_threshold). */
#define SDC_PAL_MIN_ELEMENTS 2048

/* N in 1, 2, 4, 6, 8. */
bool sdc_palettize_nbits_valid(int nbits);

/* Marks every candidate const of `g` palettized to `nbits` bits; *count (may be NULL)
   receives how many. Fails only on an invalid nbits or out of memory. */
sdc_status sdc_palettize_graph(mil_graph *g, int nbits, size_t *count, sdc_err *err);

/* Exact weighted 1-D k-means: points x[0..n) strictly ascending with weights w > 0 are split
   into min(k, n) contiguous clusters minimising Σ w·(x − centroid)². label[i] receives the
   cluster of point i (clusters numbered in ascending order), centroid[c] the weighted mean
   of cluster c, *sse (may be NULL) the minimum. n <= 65536, 1 <= k <= 65536. Below 16
   clusters: SMAWK on each of the k layers of the dynamic programme, O(k·n); from 16 on: its
   Lagrangian form, a few rounds of O(n log n) (palettize.c) — 20 ms for 256 clusters of
   22 000 float16 values. Returns the number of clusters, or 0 when out of memory. */
size_t sdc_kmeans1d(const double *x, const double *w, size_t n, size_t k, uint32_t *label, double *centroid,
                    double *sse);

/* The same with a chosen method, for tests: LAYERED runs k rounds of SMAWK (O(k·n));
   LAGRANGIAN prices clusters (O(n log n) per round, a few rounds) and falls back to LAYERED
   when no price gives exactly k. *used (may be NULL) receives the method that answered. */
typedef enum sdc_kmeans_method { SDC_KMEANS_AUTO, SDC_KMEANS_LAYERED, SDC_KMEANS_LAGRANGIAN } sdc_kmeans_method;
size_t sdc_kmeans1d_with(const double *x, const double *w, size_t n, size_t k, uint32_t *label, double *centroid,
                         double *sse, sdc_kmeans_method method, sdc_kmeans_method *used);

/* Packs n indices of `nbits` bits LSB-first: index i occupies bits i·nbits … i·nbits+nbits−1
   of the little-endian bit stream (§4.4). Writes ceil(n·nbits/8) bytes; the unused high bits
   of the last byte are 0. */
void sdc_pack_bits(const uint8_t *idx, size_t n, int nbits, uint8_t *out);

/* ---------------------------------------------------------------- one tensor at a time */

typedef struct sdc_palettizer {
    int nbits;
    bool f32;           /* values arrive as float32 (else as float16 bit patterns) */
    uint64_t *count;    /* [65536] by float16 bin */
    double *sum, *sumsq; /* [65536] Σx, Σx² of the values in each bin */
    uint64_t nonfinite; /* NaN / Inf values seen */
    uint8_t *index_of;  /* [65536] bin -> palette index, after sdc_pal_fit */
    double lut[256];    /* 2^nbits entries (cluster means), ascending; unused slots 0 */
    uint16_t lut16[256]; /* the same rounded once to float16, as NumPy's astype does */
    size_t n_used;      /* palette entries in use: min(2^nbits, distinct values) */
    /* work space of the fit, kept between tensors */
    double *x, *w;
    uint32_t *label;
    uint16_t *bins;
} sdc_palettizer;

/* double -> float16 rounded once (to nearest, ties to even), as NumPy's astype: going through
   float could round twice. For finite values within the float16 range. */
uint16_t sdc_pal_f64_to_f16(double d);

sdc_status sdc_pal_init(sdc_palettizer *p, int nbits, sdc_err *err);
void sdc_pal_free(sdc_palettizer *p);
/* Starts a tensor whose values are float32 (f32) or float16. */
void sdc_pal_begin(sdc_palettizer *p, bool f32);
/* First pass: adds n values (float16 bit patterns / float32). */
void sdc_pal_add_f16(sdc_palettizer *p, const uint16_t *h, size_t n);
void sdc_pal_add_f32(sdc_palettizer *p, const float *x, size_t n);
/* Computes the table and the bin -> index map; fails (SDC_E_NOMEM) only when out of memory.
   The caller checks p->nonfinite first: NaN or Inf values cannot be palettized. */
sdc_status sdc_pal_fit(sdc_palettizer *p, sdc_err *err);
/* Second pass: packs the indices of n values (n a multiple of 8 except for the last call)
   into ceil(n·nbits/8) bytes at out. */
void sdc_pal_pack_f16(const sdc_palettizer *p, const uint16_t *h, size_t n, uint8_t *idx_tmp, uint8_t *out);
void sdc_pal_pack_f32(const sdc_palettizer *p, const float *x, size_t n, uint8_t *idx_tmp, uint8_t *out);

#endif
