/*
 * test_palettize.c — the numbers behind --quantize-nbits:
 *   - sdc_kmeans1d is optimal: equal to brute force over every contiguous partition on small
 *     cases, and to a plain O(k·n²) dynamic programme on larger ones (ties, duplicates,
 *     skewed weights included); its labels and centroids agree with its reported cost;
 *   - sdc_pack_bits packs LSB-first (coreml-format.md §4.4), checked bit by bit;
 *   - the palettizer: lossless when a tensor has at most 2^N distinct values, −0 shares +0's
 *     entry, the table is ascending with unused slots 0, and packing in chunks equals packing
 *     at once;
 *   - the graph pass picks the anchor's candidates (rank >= 2, > 2048 elements, float, used,
 *     not by a gather) and renames them <name>_palettized.
 */
#include "check.h"
#include "io/fp16.h"
#include "passes/palettize.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state = 0x1234567;
static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static double urand(void) { return (double)(rnd() >> 11) / 9007199254740992.0; }

static double sse_of(const double *x, const double *w, size_t a, size_t b) { /* [a, b) */
    double sw = 0, sx = 0, s = 0;
    for (size_t i = a; i < b; i++) sw += w[i], sx += w[i] * x[i];
    double m = sx / sw;
    for (size_t i = a; i < b; i++) s += w[i] * (x[i] - m) * (x[i] - m);
    return s;
}

/* every way to cut n points into k contiguous clusters */
static double brute(const double *x, const double *w, size_t n, size_t k, size_t start, double acc) {
    if (k == 1) return acc + sse_of(x, w, start, n);
    double best = HUGE_VAL;
    for (size_t end = start + 1; end + (k - 1) <= n; end++) {
        double v = brute(x, w, n, k - 1, end, acc + sse_of(x, w, start, end));
        if (v < best) best = v;
    }
    return best;
}

/* plain O(k·n²) dynamic programme over a table of every cluster's cost (two-pass, no prefix
   sums) */
static double plain_dp(const double *x, const double *w, size_t n, size_t k) {
    double *prev = malloc((n + 1) * sizeof *prev), *cur = malloc((n + 1) * sizeof *cur);
    double *cost = malloc(n * (n + 1) * sizeof *cost); /* cost[m·(n+1) + i]: points [m, i) */
    for (size_t m = 0; m < n; m++)
        for (size_t i = m + 1; i <= n; i++) cost[m * (n + 1) + i] = sse_of(x, w, m, i);
    for (size_t i = 1; i <= n; i++) prev[i] = cost[i];
    prev[0] = 0;
    for (size_t j = 2; j <= k; j++) {
        for (size_t i = 0; i <= n; i++) cur[i] = HUGE_VAL;
        for (size_t i = j; i <= n; i++)
            for (size_t m = j - 1; m < i; m++) {
                double v = prev[m] + cost[m * (n + 1) + i];
                if (v < cur[i]) cur[i] = v;
            }
        double *t = prev;
        prev = cur;
        cur = t;
    }
    double r = prev[n];
    free(prev);
    free(cur);
    free(cost);
    return r;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* n sorted distinct points of one of several shapes */
static void make_points(double *x, double *w, size_t n, int shape) {
    for (size_t i = 0; i < n; i++) {
        switch (shape) {
        case 0: x[i] = urand(); break;
        case 1: x[i] = (double)i; break;                                   /* equally spaced: many ties */
        case 2: x[i] = (i % 7) * 10.0 + urand() * 0.01; break;             /* tight groups */
        default: x[i] = exp(6 * urand()) * (rnd() & 1 ? 1 : -1); break;    /* heavy tails */
        }
    }
    qsort(x, n, sizeof *x, cmp_double);
    for (size_t i = 1; i < n; i++)
        if (x[i] <= x[i - 1]) x[i] = x[i - 1] + 1e-3;
    for (size_t i = 0; i < n; i++) w[i] = shape == 1 ? 1.0 : (double)(1 + rnd() % (rnd() % 3 ? 5 : 1000));
}

static int lagrangian_used, lagrangian_tried; /* cases the Lagrangian form answered / was asked */

static void check_solution(const double *x, const double *w, size_t n, size_t k, const uint32_t *label,
                           const double *centroid, double sse) {
    size_t kk = k < n ? k : n;
    bool ok = label[0] == 0 && label[n - 1] == kk - 1;
    for (size_t i = 1; i < n; i++) ok = ok && (label[i] == label[i - 1] || label[i] == label[i - 1] + 1);
    CHECK(ok);
    double s = 0;
    for (size_t i = 0; i < n; i++) s += w[i] * (x[i] - centroid[label[i]]) * (x[i] - centroid[label[i]]);
    CHECK_MSG(fabs(s - sse) <= 1e-9 * (1 + fabs(s)), "labels give %.17g, reported %.17g", s, sse);
    for (size_t c = 1; c < kk; c++) CHECK(centroid[c] > centroid[c - 1]);
}

static void test_kmeans_small(void) {
    double x[14], w[14], centroid[14];
    uint32_t label[14];
    for (int shape = 0; shape < 4; shape++)
        for (size_t n = 1; n <= 12; n++)
            for (size_t k = 1; k <= n + 1; k++) {
                make_points(x, w, n, shape);
                double best = brute(x, w, n, k < n ? k : n, 0, 0);
                for (int method = SDC_KMEANS_LAYERED; method <= SDC_KMEANS_LAGRANGIAN; method++) {
                    double sse;
                    sdc_kmeans_method used;
                    size_t got = sdc_kmeans1d_with(x, w, n, k, label, centroid, &sse, method, &used);
                    CHECK(got == (k < n ? k : n));
                    if (used == SDC_KMEANS_LAGRANGIAN) lagrangian_used++;
                    if (method == SDC_KMEANS_LAGRANGIAN && k > 1 && k < n) lagrangian_tried++;
                    CHECK_MSG(fabs(sse - best) <= 1e-9 * (1 + best), "method %d shape %d n %zu k %zu: %.17g vs brute %.17g",
                              method, shape, n, k, sse, best);
                    check_solution(x, w, n, k, label, centroid, sse);
                }
            }
}

static void test_kmeans_larger(void) {
    enum { N = 400 };
    static double x[N], w[N], centroid[N];
    static uint32_t label[N];
    const size_t ns[] = {17, 64, 255, 400};
    const size_t ks[] = {2, 3, 16, 64, 200};
    for (int shape = 0; shape < 4; shape++)
        for (size_t a = 0; a < SDC_COUNT_OF(ns); a++)
            for (size_t b = 0; b < SDC_COUNT_OF(ks); b++) {
                size_t n = ns[a], k = ks[b];
                if (k > n) continue;
                make_points(x, w, n, shape);
                double best = plain_dp(x, w, n, k);
                for (int method = SDC_KMEANS_LAYERED; method <= SDC_KMEANS_LAGRANGIAN; method++) {
                    double sse;
                    sdc_kmeans_method used;
                    sdc_kmeans1d_with(x, w, n, k, label, centroid, &sse, method, &used);
                    if (used == SDC_KMEANS_LAGRANGIAN) lagrangian_used++;
                    if (method == SDC_KMEANS_LAGRANGIAN && k < n) lagrangian_tried++;
                    CHECK_MSG(fabs(sse - best) <= 1e-9 * (1 + best), "method %d shape %d n %zu k %zu: %.17g vs dp %.17g",
                              method, shape, n, k, sse, best);
                    check_solution(x, w, n, k, label, centroid, sse);
                }
            }
}

static void test_pack_bits(void) {
    const int bits[] = {1, 2, 4, 6, 8};
    uint8_t idx[1000], out[1000];
    for (size_t b = 0; b < SDC_COUNT_OF(bits); b++) {
        int nb = bits[b];
        for (size_t n = 1; n < 40; n += 3) {
            for (size_t i = 0; i < n; i++) idx[i] = (uint8_t)(rnd() & ((1u << nb) - 1));
            memset(out, 0xAA, sizeof out);
            sdc_pack_bits(idx, n, nb, out);
            size_t bytes = (n * (size_t)nb + 7) / 8;
            bool ok = true;
            for (size_t i = 0; i < n; i++)
                for (int k = 0; k < nb; k++) {
                    size_t bit = i * (size_t)nb + (size_t)k; /* element i, bit k: stream bit i·nb + k */
                    ok = ok && (((out[bit / 8] >> (bit % 8)) & 1) == ((idx[i] >> k) & 1));
                }
            for (size_t bit = n * (size_t)nb; bit < bytes * 8; bit++) ok = ok && !((out[bit / 8] >> (bit % 8)) & 1);
            ok = ok && out[bytes] == 0xAA;
            CHECK_MSG(ok, "%d bits, n %zu", nb, n);
        }
    }
    /* a worked example: 4-bit indices 1, 2, 3 -> 0x21 0x03; 6-bit 1, 2 -> 0x81 0x00 */
    uint8_t a[3] = {1, 2, 3};
    sdc_pack_bits(a, 3, 4, out);
    CHECK(out[0] == 0x21 && out[1] == 0x03);
    sdc_pack_bits(a, 2, 6, out);
    CHECK(out[0] == 0x81 && out[1] == 0x00);
}

static void test_palettizer(void) {
    sdc_err err = {0};
    sdc_palettizer p;
    CHECK(sdc_pal_init(&p, 4, &err) == SDC_OK);
    /* 10 distinct values (and −0 next to +0): lossless, ascending, unused slots 0 */
    enum { N = 4096 };
    static uint16_t h[N];
    static uint8_t tmp[N], packed[N], packed2[N];
    const float vals[10] = {-3.5f, -1.0f, -0.25f, 0.0f, 0.125f, 0.5f, 1.0f, 2.0f, 7.0f, 100.0f};
    for (size_t i = 0; i < N; i++) h[i] = sdc_f32_to_f16(vals[rnd() % 10]);
    h[5] = 0x8000; /* −0 */
    sdc_pal_begin(&p, false);
    sdc_pal_add_f16(&p, h, N / 2);
    sdc_pal_add_f16(&p, h + N / 2, N - N / 2);
    CHECK(sdc_pal_fit(&p, &err) == SDC_OK);
    CHECK(p.n_used == 10);
    for (size_t c = 0; c < 10; c++) CHECK(p.lut[c] == vals[c] && p.lut16[c] == sdc_f32_to_f16(vals[c]));
    for (size_t c = 10; c < 16; c++) CHECK(p.lut[c] == 0.0 && p.lut16[c] == 0);
    bool exact = true;
    for (size_t i = 0; i < N; i++) exact = exact && p.lut[p.index_of[h[i] == 0x8000 ? 0 : h[i]]] == sdc_f16_to_f32(h[i]);
    CHECK(exact);
    /* chunked packing (chunks of a multiple of 8) equals packing at once */
    sdc_pal_pack_f16(&p, h, N, tmp, packed);
    sdc_pal_pack_f16(&p, h, 1024, tmp, packed2);
    sdc_pal_pack_f16(&p, h + 1024, N - 1024, tmp, packed2 + 1024 * 4 / 8);
    CHECK(!memcmp(packed, packed2, N * 4 / 8));
    CHECK((packed[0] & 15) == p.index_of[h[0]]);

    /* many values: 16 clusters of a normal-ish sample, every value mapped to its cluster */
    for (size_t i = 0; i < N; i++) h[i] = sdc_f32_to_f16((float)((urand() + urand() + urand() - 1.5) * 0.05));
    sdc_pal_begin(&p, false);
    sdc_pal_add_f16(&p, h, N);
    CHECK(sdc_pal_fit(&p, &err) == SDC_OK);
    CHECK(p.n_used == 16);
    bool asc = true;
    for (size_t c = 1; c < 16; c++) asc = asc && p.lut[c] > p.lut[c - 1];
    CHECK(asc);
    /* each value's entry is one of the two nearest table entries (cluster boundaries sit
       between centroids) and the error is far below the spread */
    double se = 0, var = 0;
    for (size_t i = 0; i < N; i++) {
        double v = sdc_f16_to_f32(h[i]), q = p.lut[p.index_of[h[i] == 0x8000 ? 0 : h[i]]];
        se += (v - q) * (v - q);
        var += v * v;
    }
    CHECK_MSG(se < var / 100, "4-bit error %.3g vs energy %.3g", se, var);

    /* float32: values clustered through their float16 bins; table in float32 */
    static float f[N];
    for (size_t i = 0; i < N; i++) f[i] = (float)(i % 3) + 0.0001f * (float)(i % 5);
    sdc_pal_begin(&p, true);
    sdc_pal_add_f32(&p, f, N);
    CHECK(p.nonfinite == 0);
    CHECK(sdc_pal_fit(&p, &err) == SDC_OK);
    CHECK(p.n_used <= 16 && p.lut[0] >= 0.0f && p.lut[0] < 0.001f);
    float bad[3] = {1.0f, NAN, INFINITY};
    sdc_pal_begin(&p, true);
    sdc_pal_add_f32(&p, bad, 3);
    CHECK(p.nonfinite == 2);
    sdc_pal_free(&p);
}

/* the float16 nearest to d, ties to even, by search */
static uint16_t nearest_f16(double d) {
    uint16_t best = 0;
    double best_err = HUGE_VAL;
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00) continue;
        double e = fabs((double)sdc_f16_to_f32((uint16_t)h) - d);
        if (e < best_err || (e == best_err && !(h & 1) && (best & 1))) best = (uint16_t)h, best_err = e;
    }
    return best;
}

static void test_f64_to_f16(void) {
    /* just above the tie between 1 and 1 + 2^-10: via float it would round to 1 (even) */
    double d = 1.0 + ldexp(1, -11) + ldexp(1, -40);
    CHECK(sdc_f32_to_f16((float)d) == 0x3c00);
    CHECK(sdc_pal_f64_to_f16(d) == 0x3c01);
    CHECK(sdc_pal_f64_to_f16(-d) == 0xbc01);
    CHECK(sdc_pal_f64_to_f16(1.0 + ldexp(1, -11)) == 0x3c00); /* an exact tie: even */
    CHECK(sdc_pal_f64_to_f16(0.0) == 0 && sdc_pal_f64_to_f16(65504.0) == 0x7bff);
    bool ok = true;
    for (int i = 0; i < 300; i++) {
        double v = (urand() - 0.5) * ldexp(1, (int)(rnd() % 30) - 20);
        ok = ok && sdc_pal_f64_to_f16(v) == nearest_f16(v);
    }
    CHECK(ok);
}

static void test_graph_pass(void) {
    mil_graph *g = sdc_mil_graph_new(6);
    static uint16_t data[64 * 64];
    sdc_tensor t = {.name = "w", .dtype = SDC_DT_F16, .rank = 2, .shape = {64, 64}, .numel = 64 * 64,
                    .data = (const uint8_t *)data};
    int64_t s2[2] = {64, 64}, s1[1] = {4096}, small[2] = {32, 64}, xs[2] = {1, 64}, ids_s[1] = {3};
    mil_var *x = sdc_mil_input(g, "x", SDC_DT_F16, 2, xs);
    mil_var *ids = sdc_mil_input(g, "ids", SDC_DT_I32, 1, ids_s);
    sdc_mil_scope(g, "layer");
    mil_var *w = sdc_mil_const_weight(g, &t, SDC_DT_F16, 2, s2, 0);      /* candidate */
    mil_var *table = sdc_mil_const_weight(g, &t, SDC_DT_F16, 2, s2, 0);  /* gathered: stays */
    mil_var *flat = sdc_mil_const_weight(g, &t, SDC_DT_F16, 1, s1, 0);   /* rank 1: stays */
    mil_var *few = sdc_mil_const_weight(g, &t, SDC_DT_F16, 2, small, 0); /* 2048 elements: stays */
    mil_var *unused = sdc_mil_const_weight(g, &t, SDC_DT_F16, 2, s2, 0); /* no consumer: stays */
    float zeros[64] = {0};
    mil_var *y = sdc_mil_linear(g, x, w, sdc_mil_const_floats(g, SDC_DT_F16, 1, (int64_t[]){64}, zeros));
    mil_var *z = sdc_mil_gather(g, table, ids, 0);
    mil_var *u = sdc_mil_add(g, sdc_mil_reshape(g, y, 1, (int64_t[]){64}), sdc_mil_slice(g, flat, 0, 0, 64));
    mil_var *v = sdc_mil_matmul(g, sdc_mil_reshape(g, z, 2, (int64_t[]){3, 64}), few, false, true);
    CHECK_MSG(sdc_mil_output(g, u, "u") && sdc_mil_output(g, v, "v"), "%s", g->err.msg);
    (void)unused;
    CHECK_MSG(sdc_mil_graph_ok(g), "%s", g->err.msg);
    sdc_err err = {0};
    size_t n = 99;
    CHECK(sdc_palettize_graph(g, 3, &n, &err) == SDC_E_ARG && n == 0);
    CHECK(sdc_palettize_graph(g, 6, &n, &err) == SDC_OK);
    CHECK(n == 1);
    CHECK(w->lut_bits == 6 && !strcmp(w->producer->type, "constexpr_lut_to_dense"));
    CHECK_MSG(!strcmp(w->name, "layer_w_palettized") && !strcmp(w->producer->name, w->name), "%s", w->name);
    CHECK(!table->lut_bits && !flat->lut_bits && !few->lut_bits && !unused->lut_bits);
    CHECK(!strcmp(table->producer->type, "const"));
    CHECK(sdc_mil_const_stored_bytes(w) == 64 * 64 * 6 / 8 + 64 * 2);
    CHECK(sdc_mil_const_stored_bytes(table) == 64 * 64 * 2);
    /* a second run leaves marked consts alone */
    CHECK(sdc_palettize_graph(g, 8, &n, &err) == SDC_OK && n == 0 && w->lut_bits == 6);
    sdc_mil_graph_free(g);
}

int main(void) {
    test_kmeans_small();
    test_kmeans_larger();
    printf("test_palettize: the Lagrangian form answered %d of %d cases (the rest fell back to the layers)\n",
           lagrangian_used, lagrangian_tried);
    CHECK(lagrangian_used > 0);
    test_pack_bits();
    test_f64_to_f16();
    test_palettizer();
    test_graph_pass();
    return CHECK_DONE("test_palettize");
}
