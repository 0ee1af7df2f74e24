/*
 * test_interp_ops.c — the interpreter's building blocks against hand-computed or naive
 * expectations: the blocked GEMM (odd shapes, transposes, beta, strides), sdc_igemm with
 * threads, the few-row product bit for bit against an fmaf loop, Winograd's 3×3 convolution
 * against the direct sum, fp16 rounding and expansion against the reference conversions, the thread pool,
 * .npy reading and writing (and its errors), and small packages written by our own writer
 * and run through the public API (broadcasting, linear, softmax, fp16 rounding of results,
 * input checks). Op semantics on packages written by coremltools are covered by
 * tests/python/test_interp_ops.py.
 */
#include <float.h>
#include <math.h>
#include <unistd.h>

#include "check.h"
#include "coreml/writer.h"
#include "interp/from_graph.h"
#include "interp/interp.h"
#include "io/fp16.h"
#include "io/npy.h"
#include "mil/graph.h"

static uint64_t rng_state = 88172645463325252ull;
static float frand(void) { /* xorshift, uniform in [-1, 1) */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

static void naive_gemm(bool ta, bool tb, int M, int N, int K, const float *A, int lda, const float *B, int ldb, float beta,
                       float *C, int ldc) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int k = 0; k < K; k++) s += (double)(ta ? A[k * lda + i] : A[i * lda + k]) * (tb ? B[j * ldb + k] : B[k * ldb + j]);
            C[i * ldc + j] = (float)(s + (beta == 0.0f ? 0.0 : (double)beta * C[i * ldc + j]));
        }
}

static void test_gemm(void) {
    static const int shapes[][3] = {{1, 1, 1}, {3, 5, 7}, {17, 33, 65}, {64, 256, 256}, {70, 300, 5}, {5, 17, 300}, {77, 96, 130}};
    ipool *pool = sdc_ipool_new(3);
    for (size_t s = 0; s < SDC_COUNT_OF(shapes); s++) {
        for (int variant = 0; variant < 8; variant++) {
            bool ta = variant & 1, tb = variant & 2, strided = variant & 4;
            int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
            int lda = (ta ? M : K) + (strided ? 3 : 0), ldb = (tb ? K : N) + (strided ? 5 : 0), ldc = N + (strided ? 2 : 0);
            size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb, nc = (size_t)M * ldc;
            float *A = malloc(na * 4), *B = malloc(nb * 4), *C0 = malloc(nc * 4), *C1 = malloc(nc * 4), *C2 = malloc(nc * 4);
            for (size_t i = 0; i < na; i++) A[i] = frand();
            for (size_t i = 0; i < nb; i++) B[i] = frand();
            for (size_t i = 0; i < nc; i++) C0[i] = C1[i] = C2[i] = frand();
            float beta = strided ? 0.5f : (variant & 1 ? 1.0f : 0.0f);
            naive_gemm(ta, tb, M, N, K, A, lda, B, ldb, beta, C0, ldc);
            sdc_igemm_fallback(pool, ta, tb, M, N, K, A, lda, B, ldb, beta, C1, ldc);
            sdc_igemm(pool, ta, tb, M, N, K, A, lda, B, ldb, beta, C2, ldc);
            double worst1 = 0, worst2 = 0;
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) {
                    double tol = 1e-5 * (K + 1);
                    double d1 = fabs(C1[i * ldc + j] - C0[i * ldc + j]), d2 = fabs(C2[i * ldc + j] - C0[i * ldc + j]);
                    worst1 = d1 / tol > worst1 ? d1 / tol : worst1;
                    worst2 = d2 / tol > worst2 ? d2 / tol : worst2;
                }
            CHECK_MSG(worst1 <= 1.0, "fallback %dx%dx%d ta=%d tb=%d strided=%d: error %.2f x tolerance", M, N, K, ta, tb, strided, worst1);
            CHECK_MSG(worst2 <= 1.0, "sdc_igemm (%s) %dx%dx%d ta=%d tb=%d strided=%d: error %.2f x tolerance", sdc_igemm_backend(), M, N, K, ta,
                      tb, strided, worst2);
            /* the padding columns of C are never touched */
            bool pad_ok = true;
            for (int i = 0; i < M && strided; i++)
                for (int j = N; j < ldc; j++) pad_ok = pad_ok && C1[i * ldc + j] == C0[i * ldc + j] && C2[i * ldc + j] == C0[i * ldc + j];
            CHECK(pad_ok);
            free(A), free(B), free(C0), free(C1), free(C2);
        }
    }
    sdc_ipool_free(pool);
}

/* The few-row product (a linear layer with at most SDC_IGEMM_FEW_MAX rows): each output must be
   one fp32 sum in k order plus the bias, rounded to fp16 when asked, so a scalar fmaf loop, an
   add and the reference rounding give it bit for bit; shapes cross every edge of the kernel
   (panels of 32 and 16 rows, tiles of 12 weight rows, chunks of 16 k), with fp16 and fp32
   weights, a bias or none, rounding or none, a row stride past N (left untouched), 1 and 3
   threads. */
static void test_gemm_few(void) {
    static const int Ms[] = {1, 5, 16, 17, 31, 32, 33, 48, 49, 77, 128};
    static const int Ns[] = {1, 11, 12, 13, 25, 100};
    static const int Ks[] = {1, 15, 16, 17, 64, 100}; /* 16 and 64: whole pieces only (the packing's plain path) */
    ipool *pools[2] = {NULL, sdc_ipool_new(3)};
    int ran = 0, exact = 0, total = 0;
    for (size_t mi = 0; mi < SDC_COUNT_OF(Ms); mi++)
        for (size_t ni = 0; ni < SDC_COUNT_OF(Ns); ni++)
            for (size_t ki = 0; ki < SDC_COUNT_OF(Ks); ki++)
                for (int variant = 0; variant < 8; variant++) {
                    int M = Ms[mi], N = Ns[ni], K = Ks[ki], ldc = N + 3;
                    bool w16 = variant & 1, with_bias = variant & 2, round = variant & 4;
                    float *x = malloc(sizeof(float) * (size_t)(M * K)), *wf = malloc(sizeof(float) * (size_t)(N * K));
                    uint8_t *wh = malloc(2 * (size_t)(N * K));
                    float *bias = malloc(sizeof(float) * (size_t)N);
                    float *C = malloc(sizeof(float) * (size_t)(M * ldc)), *want = malloc(sizeof(float) * (size_t)(M * ldc));
                    for (int i = 0; i < M * K; i++) x[i] = frand() * 300.0f; /* some sums beyond fp16's range */
                    for (int i = 0; i < N * K; i++) { /* fp16 weights: the values an fp16 holds */
                        uint16_t h = sdc_f32_to_f16(frand());
                        wh[2 * i] = (uint8_t)(h & 0xff), wh[2 * i + 1] = (uint8_t)(h >> 8);
                        wf[i] = w16 ? sdc_f16_to_f32(h) : frand();
                    }
                    for (int j = 0; j < N; j++) bias[j] = frand();
                    for (int i = 0; i < M * ldc; i++) C[i] = want[i] = frand();
                    for (int i = 0; i < M; i++)
                        for (int j = 0; j < N; j++) {
                            float acc = 0.0f;
                            for (int k = 0; k < K; k++) acc = fmaf(x[i * K + k], wf[j * K + k], acc);
                            if (with_bias) acc += bias[j];
                            want[i * ldc + j] = round ? sdc_f16_to_f32(sdc_f32_to_f16(acc)) : acc;
                        }
                    int rc = sdc_igemm_few(pools[variant & 1], M, N, K, x, w16 ? (const void *)wh : (const void *)wf, w16,
                                           with_bias ? bias : NULL, round, C, ldc);
                    total++;
                    if (rc == 1) {
                        ran++;
                        exact += !memcmp(C, want, sizeof(float) * (size_t)(M * ldc)); /* the stride's padding too */
                    }
                    CHECK_MSG(rc == 0 || rc == 1, "sdc_igemm_few %dx%dx%d returned %d", M, N, K, rc);
                    free(x), free(wf), free(wh), free(bias), free(C), free(want);
                }
    CHECK_MSG(exact == ran, "sdc_igemm_few: %d of %d products differ from the fmaf loop", ran - exact, ran);
    if (ran == 0) printf("test_gemm_few: no AVX-512 here, the few-row product was not taken (%d shapes)\n", total);
    else CHECK(ran == total); /* taken for every M <= SDC_IGEMM_FEW_MAX */
    float x1 = 1.0f, w1 = 1.0f, c1 = 0.0f;
    CHECK(sdc_igemm_few(NULL, SDC_IGEMM_FEW_MAX + 1, 1, 1, &x1, &w1, false, NULL, false, &c1, 1) == 0); /* too many rows */
    CHECK(sdc_igemm_few(NULL, 0, 1, 1, &x1, &w1, false, NULL, false, &c1, 1) == 0 && c1 == 0.0f);
    CHECK(sdc_igemm_few(NULL, 1, 1, (int64_t)INT32_MAX / 16 + 1, &x1, &w1, false, NULL, false, &c1, 1) == 0 && c1 == 0.0f);
    sdc_ipool_free(pools[1]);
}

/* sdc_igemm_bcast against the fmaf loop, bit for bit (its contract): row counts around its block
   of 6, column counts around its vectors of 16 and blocks of 64, k around its passes of 256
   (sums carried from one pass to the next) and none at all; every operand with a row stride
   wider than its rows, whose gaps must be neither read into a sum nor written. */
static void test_gemm_bcast(void) {
    static const int Ms[] = {1, 5, 6, 7, 13, 40};
    static const int Ns[] = {1, 15, 16, 17, 64, 65, 130};
    static const int Ks[] = {0, 1, 40, 255, 256, 257, 600};
    int ran = 0, exact = 0;
    for (size_t mi = 0; mi < SDC_COUNT_OF(Ms); mi++)
        for (size_t ni = 0; ni < SDC_COUNT_OF(Ns); ni++)
            for (size_t ki = 0; ki < SDC_COUNT_OF(Ks); ki++) {
                int M = Ms[mi], N = Ns[ni], K = Ks[ki], lda = K + 3, ldb = N + 5, ldc = N + 2;
                float *A = malloc(sizeof(float) * (size_t)(M * lda + 1)), *B = malloc(sizeof(float) * (size_t)(K * ldb + 1));
                float *C = malloc(sizeof(float) * (size_t)(M * ldc)), *want = malloc(sizeof(float) * (size_t)(M * ldc));
                for (int i = 0; i < M * lda; i++) A[i] = (i % lda) >= K ? NAN : frand() * 30.0f; /* gaps: NaN */
                for (int i = 0; i < K * ldb; i++) B[i] = (i % ldb) >= N ? NAN : frand();
                for (int i = 0; i < M * ldc; i++) C[i] = want[i] = frand();
                for (int i = 0; i < M; i++)
                    for (int j = 0; j < N; j++) {
                        float acc = 0.0f;
                        for (int k = 0; k < K; k++) acc = fmaf(A[i * lda + k], B[k * ldb + j], acc);
                        want[i * ldc + j] = acc;
                    }
                if (sdc_igemm_bcast(M, N, K, A, lda, B, ldb, C, ldc)) {
                    ran++;
                    exact += !memcmp(C, want, sizeof(float) * (size_t)(M * ldc)); /* C's gaps too */
                }
                free(A), free(B), free(C), free(want);
            }
    CHECK_MSG(exact == ran, "sdc_igemm_bcast: %d of %d products differ from the fmaf loop", ran - exact, ran);
    if (ran == 0) printf("test_gemm_bcast: no AVX-512 here, the kernel was not taken\n");
    else CHECK(ran == (int)(SDC_COUNT_OF(Ms) * SDC_COUNT_OF(Ns) * SDC_COUNT_OF(Ks)));
}

/* Winograd's 3×3 convolution against the direct sum in double: odd and even output sizes (a
   2×2 block's second row and column cut off), symmetric, one-sided and wide zero padding, two
   images, bias or none, fp16 rounding of the result or none, 1 and 3 threads. The tolerance is
   relative to the sum of |x·w| of each output (fp32 sums in another order); an index slip is off
   by the size of a term. */
static void test_conv_winograd(void) {
    static const struct {
        int N, Cin, Cout, H, W, pt, pb, pl, pr;
    } cases[] = {{1, 3, 5, 64, 64, 1, 1, 1, 1}, {2, 4, 3, 65, 67, 1, 1, 1, 1}, {1, 2, 7, 68, 66, 0, 0, 0, 0},
                 {1, 5, 2, 64, 65, 1, 0, 0, 1}, {1, 1, 1, 63, 63, 2, 2, 2, 2}, {1, 6, 4, 70, 66, 0, 1, 1, 0}};
    ipool *pools[2] = {NULL, sdc_ipool_new(3)};
    for (size_t ci = 0; ci < SDC_COUNT_OF(cases); ci++)
        for (int variant = 0; variant < 4; variant++) {
            int N = cases[ci].N, Cin = cases[ci].Cin, Cout = cases[ci].Cout, H = cases[ci].H, W = cases[ci].W;
            int Ho = H + cases[ci].pt + cases[ci].pb - 2, Wo = W + cases[ci].pl + cases[ci].pr - 2;
            bool with_bias = variant & 1, round = variant & 2;
            float *x = malloc(sizeof(float) * (size_t)(N * Cin * H * W)), *w = malloc(sizeof(float) * (size_t)(Cout * Cin * 9));
            float *bias = malloc(sizeof(float) * (size_t)Cout), *o = malloc(sizeof(float) * (size_t)(N * Cout * Ho * Wo));
            for (int i = 0; i < N * Cin * H * W; i++) x[i] = frand();
            for (int i = 0; i < Cout * Cin * 9; i++) w[i] = frand();
            for (int i = 0; i < Cout; i++) bias[i] = frand();
            sdc_wino_conv c = {N, Cin, Cout, H, W, Ho, Wo, cases[ci].pt, cases[ci].pl, x, w, with_bias ? bias : NULL, o, round};
            int rc = sdc_conv_winograd(pools[variant & 1], &c);
            CHECK_MSG(rc == 1, "case %zu: sdc_conv_winograd returned %d", ci, rc);
            double worst = 0;
            int bad16 = 0;
            for (int n = 0; n < N && rc == 1; n++)
                for (int co = 0; co < Cout; co++)
                    for (int y = 0; y < Ho; y++)
                        for (int xo = 0; xo < Wo; xo++) {
                            double sum = with_bias ? bias[co] : 0.0, mag = fabs(sum);
                            for (int cin = 0; cin < Cin; cin++)
                                for (int ky = 0; ky < 3; ky++)
                                    for (int kx = 0; kx < 3; kx++) {
                                        int iy = y - cases[ci].pt + ky, ix = xo - cases[ci].pl + kx;
                                        if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                                        double t = (double)x[((n * Cin + cin) * H + iy) * W + ix] * w[((co * Cin + cin) * 3 + ky) * 3 + kx];
                                        sum += t, mag += fabs(t);
                                    }
                            float got = o[((n * Cout + co) * Ho + y) * Wo + xo];
                            if (round) { /* the fp16 of a value within fp32 noise of sum: that of sum, or a neighbour */
                                float lo = sdc_f16_to_f32(sdc_f32_to_f16((float)(sum - 3e-5 * mag)));
                                float hi = sdc_f16_to_f32(sdc_f32_to_f16((float)(sum + 3e-5 * mag)));
                                bad16 += !(got >= lo && got <= hi) || got != sdc_f16_to_f32(sdc_f32_to_f16(got));
                            } else {
                                double err = fabs(got - sum) / (3e-5 * mag + 1e-30);
                                worst = err > worst ? err : worst;
                            }
                        }
            CHECK_MSG(worst <= 1.0, "case %zu variant %d: error %.2f x tolerance", ci, variant, worst);
            CHECK_MSG(bad16 == 0, "case %zu variant %d: %d outputs not the fp16 of the sum", ci, variant, bad16);
            free(x), free(w), free(bias), free(o);
        }
    /* below SDC_WINO_MIN_TILES blocks: not taken, nothing written */
    float x1[4 * 4] = {0}, w1[9] = {0}, o1[2 * 2] = {7, 7, 7, 7};
    sdc_wino_conv small = {1, 1, 1, 4, 4, 2, 2, 0, 0, x1, w1, NULL, o1, false};
    CHECK(sdc_conv_winograd(NULL, &small) == 0 && o1[0] == 7);
    sdc_ipool_free(pools[1]);
}

static void test_fp16(void) {
    /* expansion: every bit pattern */
    uint8_t *h = malloc(65536 * 2);
    float *f = malloc(65536 * 4);
    for (int i = 0; i < 65536; i++) h[2 * i] = (uint8_t)i, h[2 * i + 1] = (uint8_t)(i >> 8);
    sdc_f16_expand(NULL, h, f, 65536);
    int bad = 0;
    for (int i = 0; i < 65536; i++) {
        float want = sdc_f16_to_f32((uint16_t)i);
        if (!(isnan(want) ? isnan(f[i]) : memcmp(&want, &f[i], 4) == 0)) bad++;
    }
    CHECK_MSG(bad == 0, "sdc_f16_expand differs from sdc_f16_to_f32 on %d patterns", bad);
    /* rounding: values around ties, subnormals, overflow; must equal the reference RNE */
    enum { N = 200003 };
    float *x = malloc(N * 4), *y = malloc(N * 4);
    for (int i = 0; i < N; i++) {
        float v;
        switch (i % 5) {
        case 0: v = frand() * 70000.0f; break;
        case 1: v = frand() * 1e-6f; break; /* fp16 subnormals */
        case 2: { /* exact ties between two fp16 values */
            uint16_t b = (uint16_t)(i * 7919 % 0x7bff);
            float lo = sdc_f16_to_f32(b), hi = sdc_f16_to_f32((uint16_t)(b + 1));
            v = lo + (hi - lo) * 0.5f;
            break;
        }
        case 3: v = frand() * 8.0f; break;
        default: v = 65504.0f + frand() * 40.0f; break; /* around the overflow threshold */
        }
        x[i] = y[i] = v;
    }
    ipool *pool = sdc_ipool_new(2);
    sdc_round_f16(pool, x, N);
    bad = 0;
    for (int i = 0; i < N; i++) {
        float want = sdc_f16_to_f32(sdc_f32_to_f16(y[i]));
        if (memcmp(&want, &x[i], 4)) bad++;
    }
    CHECK_MSG(bad == 0, "sdc_round_f16 differs from the reference RNE on %d of %d values", bad, N);
    float one = 1.0f + 1.0f / 4096.0f; /* a tie: rounds to even, 1.0 */
    sdc_round_f16(NULL, &one, 1);
    CHECK(one == 1.0f);
    sdc_ipool_free(pool);
    free(h), free(f), free(x), free(y);
}

/* Distance in float steps between two finite floats of the same sign. */
static int64_t ulps_apart(float a, float b) {
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    return ia > ib ? (int64_t)ia - ib : (int64_t)ib - ia;
}

/* Against libm's expf over every 128th float of [-110, 90] (the underflow and overflow regions
   included, about 17 million values), with an odd length so the vector tail is used too:
   within 2 ulp where expf's result is normal; where it is subnormal (below FLT_MIN) the
   result is 0 or within FLT_MIN of it; +Inf past the top. */
static float float_of_bits(uint32_t b) {
    float f;
    memcpy(&f, &b, 4);
    return f;
}

static void test_vec_exp(void) {
    size_t cap = 1 << 25, n = 0;
    float *x = malloc(cap * 4), *y = malloc(cap * 4);
    uint32_t lo_mag, hi_mag;
    float lo = 110.0f, hi = 90.0f;
    memcpy(&lo_mag, &lo, 4);
    memcpy(&hi_mag, &hi, 4);
    for (uint32_t m = lo_mag; m >= 128 && n < cap; m -= 128) x[n++] = -float_of_bits(m);
    for (uint32_t m = 0; m <= hi_mag && n < cap; m += 128) x[n++] = float_of_bits(m);
    if (n % 8 == 0) n--;
    sdc_vec_exp(x, y, n);
    int64_t worst = 0;
    int bad_sub = 0, bad_inf = 0;
    for (size_t i = 0; i < n; i++) {
        float want = expf(x[i]);
        if (isinf(want)) bad_inf += !(isinf(y[i]) && y[i] > 0);
        else if (want < FLT_MIN) bad_sub += !(y[i] >= 0.0f && fabsf(y[i] - want) <= FLT_MIN);
        else if (y[i] >= FLT_MIN || y[i] == 0.0f) {
            int64_t u = y[i] == 0.0f ? INT64_MAX : ulps_apart(y[i], want);
            worst = u > worst ? u : worst;
        }
    }
    CHECK_MSG(worst <= 2, "sdc_vec_exp: %lld ulp from expf", (long long)worst);
    CHECK_MSG(bad_sub == 0 && bad_inf == 0, "sdc_vec_exp: %d underflow, %d overflow results wrong", bad_sub, bad_inf);
    float sp[7] = {-INFINITY, INFINITY, NAN, -100.0f, 0.0f, 1.0f, 89.0f}, so[7];
    sdc_vec_exp(sp, so, 7);
    CHECK(so[0] == 0.0f && so[1] == INFINITY && isnan(so[2]) && so[3] == 0.0f && so[4] == 1.0f && fabsf(so[5] - 2.7182817f) < 3e-7f &&
          so[6] == INFINITY);
    free(x), free(y);
}

/* sdc_vec_max against the scalar loop it replaces, on every length 0..40 (vector body and
   tails), with the maximum at every position, NaNs skipped, and all-NaN / empty giving -Inf. */
static void test_vec_max(void) {
    float x[40];
    for (int n = 0; n <= 40; n++) {
        for (int at = 0; at < n; at++) {
            for (int i = 0; i < n; i++) x[i] = (float)((i * 37) % 11) - 20.0f;
            x[at] = 7.5f;
            if (n > 2) x[(at + 1) % n] = NAN;
            CHECK_MSG(sdc_vec_max(x, (size_t)n) == 7.5f, "sdc_vec_max n=%d at=%d", n, at);
        }
        for (int i = 0; i < n; i++) x[i] = NAN;
        CHECK_MSG(sdc_vec_max(x, (size_t)n) == -INFINITY, "sdc_vec_max of %d NaNs", n);
    }
    float inf[9] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, INFINITY};
    CHECK(sdc_vec_max(inf, 8) == -INFINITY && sdc_vec_max(inf, 9) == INFINITY);
}

static void count_range(void *ctx, size_t b, size_t e) {
    int *hits = ctx;
    for (size_t i = b; i < e; i++) __atomic_add_fetch(&hits[i], 1, __ATOMIC_RELAXED);
}

static void test_pool(void) {
    ipool *pool = sdc_ipool_new(4);
    CHECK(sdc_ipool_size(pool) == 4);
    int *hits = calloc(10007, sizeof *hits);
    bool ok = true;
    for (int round = 0; round < 300; round++) {
        size_t n = (size_t)(round * 37 % 10007) + 1;
        memset(hits, 0, sizeof *hits * n);
        sdc_ipool_for(pool, n, (size_t)(round % 7) + 1, count_range, hits);
        for (size_t i = 0; i < n; i++) ok = ok && hits[i] == 1;
    }
    CHECK_MSG(ok, "sdc_ipool_for visited an index other than exactly once");
    free(hits);
    sdc_ipool_free(pool);
}

/* ---------------------------------------------------------------- npy */

static void write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    fwrite(data, 1, n, f);
    fclose(f);
}

static void test_npy(const char *dir) {
    char path[512], err[1024];
    float fv[6] = {1, -2, 3.5f, 0, 1e-3f, -7};
    sdc_ndarray a = {.dtype = SDC_ND_F32, .rank = 2, .shape = {2, 3}, .data = fv};
    snprintf(path, sizeof path, "%s/a.npy", dir);
    CHECK(sdc_npy_write(path, &a, err, sizeof err) == SDC_OK);
    sdc_ndarray b;
    CHECK(sdc_npy_read(path, &b, err, sizeof err) == SDC_OK);
    CHECK(b.dtype == SDC_ND_F32 && b.rank == 2 && b.shape[0] == 2 && b.shape[1] == 3 && !memcmp(b.data, fv, sizeof fv));
    free(b.data);
    /* the header is padded so the data starts at 64 */
    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    CHECK((ftell(f) - 24) % 64 == 0);
    fclose(f);

    int32_t iv[1] = {42};
    sdc_ndarray s = {.dtype = SDC_ND_I32, .rank = 0, .data = iv};
    snprintf(path, sizeof path, "%s/s.npy", dir);
    CHECK(sdc_npy_write(path, &s, err, sizeof err) == SDC_OK);
    CHECK(sdc_npy_read(path, &b, err, sizeof err) == SDC_OK);
    CHECK(b.dtype == SDC_ND_I32 && b.rank == 0 && ((int32_t *)b.data)[0] == 42);
    free(b.data);

    uint16_t hv[3] = {0x3c00, 0xc000, 0x7c00};
    sdc_ndarray hh = {.dtype = SDC_ND_F16, .rank = 1, .shape = {3}, .data = hv};
    snprintf(path, sizeof path, "%s/h.npy", dir);
    CHECK(sdc_npy_write(path, &hh, err, sizeof err) == SDC_OK);
    CHECK(sdc_npy_read(path, &b, err, sizeof err) == SDC_OK);
    CHECK(b.dtype == SDC_ND_F16 && b.shape[0] == 3 && !memcmp(b.data, hv, sizeof hv));
    free(b.data);

    /* errors name the file */
    static const struct {
        const char *name, *header, *want;
    } bad[] = {
        {"fortran.npy", "{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", "Fortran"},
        {"i64.npy", "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }", "'<i8'"},
        {"big.npy", "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", "'>f4'"},
        {"short.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", "data size"},
        {"noshape.npy", "{'descr': '<f4', 'fortran_order': False, }", "shape"},
        {"garbage.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (2,) }x", "trailing"},
    };
    for (size_t i = 0; i < SDC_COUNT_OF(bad); i++) {
        uint8_t buf[256] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
        size_t hl = strlen(bad[i].header);
        memcpy(buf + 10, bad[i].header, hl);
        size_t total = (10 + hl + 1 + 63) / 64 * 64;
        memset(buf + 10 + hl, ' ', total - 10 - hl - 1);
        buf[total - 1] = '\n';
        buf[8] = (uint8_t)(total - 10);
        memset(buf + total, 0, 8); /* two float32 values */
        snprintf(path, sizeof path, "%s/%s", dir, bad[i].name);
        write_file(path, buf, total + 8);
        sdc_status st = sdc_npy_read(path, &b, err, sizeof err);
        CHECK_MSG(st != SDC_OK && strstr(err, bad[i].name) && strstr(err, bad[i].want), "%s: status %d, '%s'", bad[i].name, st, err);
    }
    /* float64, NumPy's default, is read as float32 (rounded to nearest) with a note */
    {
        const char *header = "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }";
        uint8_t buf[256] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
        size_t hl = strlen(header), total = (10 + hl + 1 + 63) / 64 * 64;
        memcpy(buf + 10, header, hl);
        memset(buf + 10 + hl, ' ', total - 10 - hl - 1);
        buf[total - 1] = '\n';
        buf[8] = (uint8_t)(total - 10);
        const double d[3] = {1.0 / 3.0, -2.5, 1e300};
        memcpy(buf + total, d, sizeof d);
        snprintf(path, sizeof path, "%s/f64.npy", dir);
        write_file(path, buf, total + sizeof d);
        CHECK(sdc_npy_read(path, &b, err, sizeof err) == SDC_OK);
        const float *narrowed = b.data;
        CHECK(b.dtype == SDC_ND_F32 && b.rank == 1 && b.shape[0] == 3);
        CHECK(narrowed[0] == (float)(1.0 / 3.0) && narrowed[1] == -2.5f && isinf(narrowed[2]));
        CHECK(strstr(err, "float64 values read as float32") != NULL);
        free(b.data);
    }
    snprintf(path, sizeof path, "%s/magic.npy", dir);
    write_file(path, "not numpy at all", 16);
    CHECK(sdc_npy_read(path, &b, err, sizeof err) == SDC_E_FORMAT && strstr(err, "magic.npy"));
}

/* ---------------------------------------------------------------- packages */

static bool write_pkg(mil_graph *g, const char *path) {
    sdc_package_info info = {.spec_version = 7, .short_description = "", .author = "", .license = "", .version = ""};
    sdc_err err = {0};
    if (!sdc_mil_graph_ok(g)) {
        fprintf(stderr, "graph: %s\n", g->err.msg);
        return false;
    }
    sdc_status s = sdc_write_package(g, &info, path, NULL, &err);
    if (s) fprintf(stderr, "write: %s\n", err.msg);
    return s == SDC_OK;
}

static void test_package_fp32(const char *dir) {
    char path[512], err[1024];
    snprintf(path, sizeof path, "%s/p32.mlpackage", dir);
    mil_graph *g = sdc_mil_graph_new(6);
    int64_t xs[3] = {2, 1, 3}, ys[2] = {4, 1};
    mil_var *x = sdc_mil_input(g, "x", SDC_DT_F32, 3, xs);
    mil_var *y = sdc_mil_input(g, "y", SDC_DT_F32, 2, ys);
    mil_var *s = sdc_mil_add(g, x, y); /* [2, 4, 3] by broadcasting */
    float w[6] = {1, 0, -1, 0.5f, 2, 0}, bias[2] = {0.25f, -1};
    int64_t wshape[2] = {2, 3}, bshape[1] = {2};
    mil_var *lin = sdc_mil_linear(g, s, sdc_mil_const_floats(g, SDC_DT_F32, 2, wshape, w), sdc_mil_const_floats(g, SDC_DT_F32, 1, bshape, bias));
    mil_var *sm = sdc_mil_softmax(g, lin, -1);
    sdc_mil_output(g, s, "sum");
    sdc_mil_output(g, sm, "probs");
    bool ok = write_pkg(g, path);
    sdc_mil_graph_free(g);
    if (!CHECK(ok)) return;

    sdc_model *m;
    if (!CHECK_MSG(sdc_model_load(path, NULL, &m, err, sizeof err) == SDC_OK, "%s", err)) return;
    CHECK(sdc_model_n_inputs(m) == 2 && sdc_model_n_outputs(m) == 2);
    CHECK(!strcmp(sdc_model_input(m, 0)->name, "x") && sdc_model_input(m, 0)->rank == 3 && sdc_model_input(m, 0)->shape[2] == 3);
    CHECK(!strcmp(sdc_model_output(m, 1)->name, "probs") && sdc_model_output(m, 1)->dtype == SDC_ND_F32);
    float xv[6] = {1, 2, 3, -1, -2, -3}, yv[4] = {0, 10, 20, 30};
    sdc_ndarray in[2] = {{.name = "y", .dtype = SDC_ND_F32, .rank = 2, .shape = {4, 1}, .data = yv},
                         {.name = "x", .dtype = SDC_ND_F32, .rank = 3, .shape = {2, 1, 3}, .data = xv}};
    sdc_ndarray *out;
    int n_out;
    if (CHECK_MSG(sdc_model_predict(m, in, 2, &out, &n_out, err, sizeof err) == SDC_OK, "%s", err)) {
        CHECK(n_out == 2 && out[0].rank == 3 && out[0].shape[0] == 2 && out[0].shape[1] == 4 && out[0].shape[2] == 3);
        const float *sv = out[0].data;
        bool sum_ok = true, prob_ok = true;
        for (int a = 0; a < 2; a++)
            for (int b = 0; b < 4; b++)
                for (int c = 0; c < 3; c++) sum_ok = sum_ok && sv[(a * 4 + b) * 3 + c] == xv[a * 3 + c] + yv[b];
        CHECK(sum_ok);
        const float *pv = out[1].data;
        for (int r = 0; r < 8; r++) {
            const float *t = sv + r * 3;
            double l0 = t[0] * 1 + t[1] * 0 + t[2] * -1 + 0.25, l1 = t[0] * 0.5 + t[1] * 2 + t[2] * 0 - 1;
            double p0 = 1 / (1 + exp(l1 - l0));
            prob_ok = prob_ok && fabs(pv[2 * r] - p0) < 1e-6 && fabs(pv[2 * r + 1] - (1 - p0)) < 1e-6;
        }
        CHECK(prob_ok);
        sdc_ndarrays_free(out, n_out);
    }
    /* input checks name the input and the expected shape */
    in[1].shape[2] = 4;
    CHECK(sdc_model_predict(m, in, 2, &out, &n_out, err, sizeof err) == SDC_E_ARG && strstr(err, "'x'") && strstr(err, "[2, 1, 3]"));
    in[1].shape[2] = 3;
    CHECK(sdc_model_predict(m, in, 1, &out, &n_out, err, sizeof err) == SDC_E_ARG && strstr(err, "missing") && strstr(err, "'x'"));
    in[1].name = "z";
    CHECK(sdc_model_predict(m, in, 2, &out, &n_out, err, sizeof err) == SDC_E_ARG && strstr(err, "'z' is not an input"));
    sdc_model_free(m);
}

/* kB of this process's resident memory, now or at its peak (VmRSS, VmHWM); -1 when unknown */
static long status_kb(const char *field) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    size_t n = strlen(field);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, field, n) && line[n] == ':') kb = atol(line + n + 1);
    if (f) fclose(f);
    return kb;
}

/* A gather from a large mapped table (a token embedding) maps in only the rows it reads: the
   run's peak resident memory grows by far less than the 32 MiB table (it grew by the whole table
   when every constant input was mapped in before its op). */
static void test_gather_reads_part(const char *dir) {
    char path[512], err[1024];
    snprintf(path, sizeof path, "%s/gather.mlpackage", dir);
    enum { ROWS = 8192, COLS = 2048 };
    float *table = malloc(sizeof(float) * ROWS * COLS);
    if (!CHECK(table)) return;
    for (size_t i = 0; i < (size_t)ROWS * COLS; i++) table[i] = (float)(i % 1000) / 8.0f; /* exact in fp16 */
    mil_graph *g = sdc_mil_graph_new(6);
    int64_t is[1] = {2}, ts[2] = {ROWS, COLS};
    mil_var *idx = sdc_mil_input(g, "ids", SDC_DT_I32, 1, is);
    mil_var *t = sdc_mil_const_floats(g, SDC_DT_F16, 2, ts, table);
    sdc_mil_output(g, sdc_mil_cast(g, sdc_mil_gather(g, t, idx, 0), SDC_DT_F32), "rows");
    bool ok = write_pkg(g, path);
    sdc_mil_graph_free(g);
    free(table);
    if (!CHECK(ok)) return;
    sdc_model *m;
    sdc_model_options opt = {.n_threads = 1};
    if (!CHECK_MSG(sdc_model_load(path, &opt, &m, err, sizeof err) == SDC_OK, "%s", err)) return;
    int32_t ids[2] = {5, 8000};
    sdc_ndarray in = {.name = "ids", .dtype = SDC_ND_I32, .rank = 1, .shape = {2}, .data = ids};
    FILE *clear = fopen("/proc/self/clear_refs", "w"); /* "5": the peak resident size starts again */
    bool reset = clear && fputs("5", clear) >= 0;
    if (clear) reset = fclose(clear) == 0 && reset;
    long before = status_kb("VmRSS");
    sdc_ndarray *out;
    int n_out;
    if (CHECK_MSG(sdc_model_predict(m, &in, 1, &out, &n_out, err, sizeof err) == SDC_OK, "%s", err)) {
        const float *y = out[0].data;
        CHECK(y[0] == (float)((5 * COLS) % 1000) / 8.0f && y[COLS + 7] == (float)((8000 * COLS + 7) % 1000) / 8.0f);
        sdc_ndarrays_free(out, n_out);
        long peak = status_kb("VmHWM");
        if (reset && before > 0 && peak > 0)
            CHECK_MSG(peak - before < 8 * 1024, "peak resident memory grew by %ld kB in a 2-row gather of a 32 MiB table", peak - before);
        else
            printf("test_gather_reads_part: no /proc peak-RSS reset here, memory not checked\n");
    }
    sdc_model_free(m);
}

/* Resident kB of this process's mapping of `path` (/proc/self/smaps), -1 when none is found. */
static long mapping_rss_kb(const char *path) {
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[4096];
    long kb = -1;
    bool in = false;
    size_t np = strlen(path);
    while (f && fgets(line, sizeof line, f)) {
        size_t n = strlen(line);
        if (n && line[n - 1] == '\n') line[--n] = 0;
        const char *sp = strchr(line, ' ');
        if (sp && !memchr(line, ':', (size_t)(sp - line))) { /* a mapping's line: "start-end perms ... path" */
            in = n > np && !strcmp(line + n - np, path);
            if (in && kb < 0) kb = 0;
        } else if (in && !strncmp(line, "Rss:", 4)) {
            kb += atol(line + 4);
        }
    }
    if (f) fclose(f);
    return kb;
}

/* A load leaves none of the weight file mapped: small constants are decoded into values and the
   pages they were read from dropped, and so are the pages of every blob's record that the load
   checked (where the page cache holds the file in 2 MiB folios, each such read maps 2 MiB, and
   the large weights' stayed mapped until their op ran). 400 constants of 4 kB, 40 of 40 kB. */
static void test_load_leaves_weights_unmapped(const char *dir) {
    char path[512], wpath[700], err[1024];
    snprintf(path, sizeof path, "%s/small.mlpackage", dir);
    snprintf(wpath, sizeof wpath, "%s/Data/com.apple.CoreML/weights/weight.bin", path);
    enum { N = 1000, CONSTS = 400, NL = 10000, LARGE = 40 };
    mil_graph *g = sdc_mil_graph_new(6);
    int64_t shape[1] = {N}, lshape[1] = {NL};
    mil_var *acc = sdc_mil_input(g, "x", SDC_DT_F32, 1, shape), *lacc = sdc_mil_input(g, "z", SDC_DT_F32, 1, lshape);
    float *vals = malloc(sizeof(float) * NL), *want = calloc(N, sizeof(float)), *lwant = calloc(NL, sizeof(float));
    if (!CHECK(vals && want && lwant)) return;
    for (int c = 0; c < CONSTS; c++) {
        for (int i = 0; i < N; i++) want[i] += vals[i] = (float)((c * 7 + i) % 17); /* sums exact in float */
        acc = sdc_mil_add(g, acc, sdc_mil_const_floats(g, SDC_DT_F32, 1, shape, vals));
    }
    for (int c = 0; c < LARGE; c++) {
        for (int i = 0; i < NL; i++) lwant[i] += vals[i] = (float)((c * 5 + i) % 13);
        lacc = sdc_mil_add(g, lacc, sdc_mil_const_floats(g, SDC_DT_F32, 1, lshape, vals));
    }
    sdc_mil_output(g, acc, "y");
    sdc_mil_output(g, lacc, "w");
    bool ok = write_pkg(g, path);
    sdc_mil_graph_free(g);
    free(vals);
    sdc_model *m;
    sdc_model_options opt = {.n_threads = 1};
    if (CHECK(ok) && CHECK_MSG(sdc_model_load(path, &opt, &m, err, sizeof err) == SDC_OK, "%s", err)) {
        long rss = mapping_rss_kb(wpath);
        if (rss >= 0) CHECK_MSG(rss <= 64, "%ld kB of the 3.2 MB weight file stay resident after load", rss);
        else printf("test_load_leaves_weights_unmapped: no /proc/self/smaps entry here, memory not checked\n");
        static float x[N], z[NL];
        sdc_ndarray in[2] = {{.name = "x", .dtype = SDC_ND_F32, .rank = 1, .shape = {N}, .data = x},
                             {.name = "z", .dtype = SDC_ND_F32, .rank = 1, .shape = {NL}, .data = z}};
        sdc_ndarray *out;
        int n_out;
        if (CHECK_MSG(sdc_model_predict(m, in, 2, &out, &n_out, err, sizeof err) == SDC_OK, "%s", err)) {
            int iy = !strcmp(out[0].name, "y") ? 0 : 1;
            CHECK(!memcmp(out[iy].data, want, sizeof(float) * N) && !memcmp(out[1 - iy].data, lwant, sizeof(float) * NL));
            sdc_ndarrays_free(out, n_out);
        }
        sdc_model_free(m);
    }
    free(want);
    free(lwant);
}

/* The weight file's resident kB after each op of a run, the largest seen (a progress callback). */
typedef struct {
    const char *path;
    long max_kb;
} rss_watch;

static void watch_mapping(void *user, const char *what, uint64_t done, uint64_t total) {
    (void)what, (void)done, (void)total;
    rss_watch *w = user;
    long kb = mapping_rss_kb(w->path);
    if (kb > w->max_kb) w->max_kb = kb;
}

/* A run drops the weights' pages it read in batches: after no op does it keep more than the
   batch's 64 MiB plus one op's weights mapped, and after the run nothing. 20 weights of 4 MiB, each
   read by one op: without drops the run would end with all 80 MiB mapped. */
static void test_run_drops_weights(const char *dir) {
    char path[512], wpath[700], err[1024];
    snprintf(path, sizeof path, "%s/drops.mlpackage", dir);
    snprintf(wpath, sizeof wpath, "%s/Data/com.apple.CoreML/weights/weight.bin", path);
    enum { N = 1 << 20, WEIGHTS = 20 };
    mil_graph *g = sdc_mil_graph_new(6);
    int64_t shape[1] = {N};
    mil_var *acc = sdc_mil_input(g, "x", SDC_DT_F32, 1, shape);
    float *vals = malloc(sizeof(float) * N), want[3] = {0}; /* y[i] depends on i % 3 */
    if (!CHECK(vals)) return;
    for (int c = 0; c < WEIGHTS; c++) {
        for (int i = 0; i < N; i++) vals[i] = (float)((c + i) % 3);
        for (int i = 0; i < 3; i++) want[i] += vals[i];
        acc = sdc_mil_add(g, acc, sdc_mil_const_floats(g, SDC_DT_F32, 1, shape, vals));
    }
    sdc_mil_output(g, acc, "y");
    bool ok = write_pkg(g, path);
    sdc_mil_graph_free(g);
    rss_watch watch = {.path = wpath, .max_kb = -1};
    sdc_model_options opt = {.n_threads = 1, .progress = watch_mapping, .progress_user = &watch};
    sdc_model *m;
    if (CHECK(ok) && CHECK_MSG(sdc_model_load(path, &opt, &m, err, sizeof err) == SDC_OK, "%s", err)) {
        memset(vals, 0, sizeof(float) * N);
        sdc_ndarray in = {.name = "x", .dtype = SDC_ND_F32, .rank = 1, .shape = {N}, .data = vals};
        sdc_ndarray *out;
        int n_out;
        if (CHECK_MSG(sdc_model_predict(m, &in, 1, &out, &n_out, err, sizeof err) == SDC_OK, "%s", err)) {
            const float *y = out[0].data;
            int wrong = 0;
            for (int i = 0; i < N; i++) wrong += y[i] != want[i % 3];
            CHECK_MSG(!wrong, "%d of %d sums wrong", wrong, N);
            sdc_ndarrays_free(out, n_out);
            /* the drops have a profile row: batches during the run and the last one after it, far
               fewer than one per weight */
            const sdc_op_profile *rows;
            long long drops = 0;
            for (int k = sdc_model_profile(m, &rows) - 1; k >= 0; k--)
                if (!strcmp(rows[k].op_type, SDC_PROFILE_DROPS)) drops = rows[k].calls;
            CHECK_MSG(drops >= 2 && drops <= WEIGHTS / 4, "%lld drops for %d weights of 4 MiB", drops, WEIGHTS);
            long after = mapping_rss_kb(wpath);
            if (after >= 0 && watch.max_kb >= 0) {
                CHECK_MSG(watch.max_kb <= (64 + 4) * 1024, "%ld kB of the 80 MiB weight file mapped during the run", watch.max_kb);
                CHECK_MSG(after <= 64, "%ld kB of the weight file stay mapped after the run", after);
            } else {
                printf("test_run_drops_weights: no /proc/self/smaps entry here, memory not checked\n");
            }
        }
        sdc_model_free(m);
    }
    free(vals);
}

/* A weight whose values are a copy in memory (a single file's transposed matrix), not the file's
   mapping, keeps them: the run drops the pages of mapped weights after their op, which on heap
   memory would zero them (and the heap's own bookkeeping beside them). Two runs, equal outputs. */
static void test_heap_weight_kept(void) {
    enum { N = 100000 };
    float *w = malloc(sizeof(float) * N);
    if (!CHECK(w)) return;
    for (int i = 0; i < N; i++) w[i] = (float)(i % 7);
    sdc_tensor t = {.name = "copied", .dtype = SDC_DT_F32, .rank = 1, .shape = {N}, .numel = N, .data = (const uint8_t *)w,
                    .nbytes = sizeof(float) * N, .in_memory = true};
    mil_graph *g = sdc_mil_graph_new(6);
    int64_t shape[1] = {N};
    mil_var *in = sdc_mil_input(g, "x", SDC_DT_F32, 1, shape);
    sdc_mil_output(g, sdc_mil_add(g, in, sdc_mil_const_weight(g, &t, SDC_DT_F32, 1, shape, 0)), "y");
    sdc_model *m = NULL;
    sdc_err e = {0};
    float *xs = calloc(N, sizeof(float));
    if (CHECK(xs) && CHECK_MSG(sdc_model_from_graph(g, "heap", NULL, &m, &e) == SDC_OK, "%s", e.msg)) {
        for (int run = 0; run < 2; run++) {
            sdc_ndarray a = {.name = "x", .dtype = SDC_ND_F32, .rank = 1, .shape = {N}, .data = xs};
            sdc_ndarray *out;
            int n_out;
            char err[512];
            if (CHECK_MSG(sdc_model_predict(m, &a, 1, &out, &n_out, err, sizeof err) == SDC_OK, "%s", err)) {
                const float *y = out[0].data;
                int wrong = 0;
                for (int i = 0; i < N; i++) wrong += y[i] != (float)(i % 7);
                CHECK_MSG(!wrong, "run %d: %d of %d outputs lost the in-memory weight", run, wrong, N);
                sdc_ndarrays_free(out, n_out);
            }
        }
        sdc_model_free(m);
    }
    free(xs);
    sdc_mil_graph_free(g);
    free(w);
}

static void test_package_fp16(const char *dir) {
    char path[512], err[1024];
    snprintf(path, sizeof path, "%s/p16.mlpackage", dir);
    mil_graph *g = sdc_mil_graph_new(6);
    int64_t xs[1] = {4};
    mil_var *x = sdc_mil_input(g, "x", SDC_DT_F16, 1, xs);
    mil_var *eps = sdc_mil_const_scalar(g, SDC_DT_F16, 1.0f / 4096.0f);
    mil_var *a = sdc_mil_add(g, sdc_mil_add(g, x, eps), eps); /* each add rounds to fp16 */
    sdc_mil_output(g, sdc_mil_cast(g, a, SDC_DT_F32), "y");
    bool ok = write_pkg(g, path);
    sdc_mil_graph_free(g);
    if (!CHECK(ok)) return;
    for (int exact = 0; exact < 2; exact++) {
        sdc_model *m;
        sdc_model_options opt = {.n_threads = 1, .no_fp16_rounding = exact};
        if (!CHECK_MSG(sdc_model_load(path, &opt, &m, err, sizeof err) == SDC_OK, "%s", err)) return;
        CHECK(sdc_model_input(m, 0)->dtype == SDC_ND_F16);
        float xv[4] = {1.0f, 2.0f, 0.5f, 1.0009765625f}; /* given as float32: converted to fp16 */
        sdc_ndarray in = {.name = "x", .dtype = SDC_ND_F32, .rank = 1, .shape = {4}, .data = xv};
        sdc_ndarray *out;
        int n_out;
        if (CHECK_MSG(sdc_model_predict(m, &in, 1, &out, &n_out, err, sizeof err) == SDC_OK, "%s", err)) {
            const float *y = out[0].data;
            if (!exact) {
                /* 1 + 2^-12 is a tie between 1 and 1 + 2^-10: to even, 1, at both adds; 0.5 + 2^-12 is
                   a tie to even 0.5; (1 + 2^-10) + 2^-12 is nearer 1 + 2^-10 */
                CHECK(y[0] == 1.0f && y[1] == 2.0f && y[2] == 0.5f && y[3] == 1.0009765625f);
            } else {
                CHECK(y[0] == 1.0f + 1.0f / 2048.0f && y[1] == 2.0f + 1.0f / 2048.0f);
            }
            sdc_ndarrays_free(out, n_out);
        }
        sdc_model_free(m);
    }
}

static void test_bad_packages(const char *dir) {
    char path[600], err[1024];
    sdc_model *m;
    snprintf(path, sizeof path, "%s/none.mlpackage", dir);
    CHECK(sdc_model_load(path, NULL, &m, err, sizeof err) != SDC_OK && strstr(err, "Manifest.json"));
    /* a weight file whose record is damaged: the error names weight.bin */
    snprintf(path, sizeof path, "%s/w.mlpackage", dir);
    mil_graph *g = sdc_mil_graph_new(6);
    int64_t xs[2] = {1, 8}, ws[2] = {16, 8};
    float w[128];
    for (int i = 0; i < 128; i++) w[i] = frand();
    mil_var *x = sdc_mil_input(g, "x", SDC_DT_F32, 2, xs);
    int64_t bs[1] = {16};
    float b[16] = {0};
    sdc_mil_output(g, sdc_mil_linear(g, x, sdc_mil_const_floats(g, SDC_DT_F32, 2, ws, w), sdc_mil_const_floats(g, SDC_DT_F32, 1, bs, b)), "y");
    bool ok = write_pkg(g, path);
    sdc_mil_graph_free(g);
    if (!CHECK(ok)) return;
    CHECK_MSG(sdc_model_load(path, NULL, &m, err, sizeof err) == SDC_OK, "%s", err);
    sdc_model_free(m);
    char wpath[700];
    snprintf(wpath, sizeof wpath, "%s/Data/com.apple.CoreML/weights/weight.bin", path);
    FILE *f = fopen(wpath, "r+b");
    if (!CHECK(f)) return;
    fseek(f, 64 + 4, SEEK_SET); /* the first record's dtype code */
    uint8_t code = 9;
    fwrite(&code, 1, 1, f);
    fclose(f);
    CHECK(sdc_model_load(path, NULL, &m, err, sizeof err) == SDC_E_FORMAT && strstr(err, "dtype code 9"));
    if (truncate(wpath, 100) == 0)
        CHECK(sdc_model_load(path, NULL, &m, err, sizeof err) == SDC_E_FORMAT && strstr(err, "weight.bin"));
}

/* ---- attention run block by block (interp/fuse.c) against the same three ops run one by one
   (the softmax made an output too, so nothing is fused) and a float64 reference; both the
   in-memory graph (sdc_model_from_graph) and the package written from it. */

enum { AB = 2, ASK = 260, ASQ = 260, AD = 32, ADV = 40 }; /* 4.3 and 5.4 MFLOP per product: fused */

static mil_graph *attention_graph(bool split, sdc_dtype dt, bool expose_softmax) {
    mil_graph *g = sdc_mil_graph_new(6);
    mil_var *q, *k, *v, *p, *o;
    if (split) {
        int64_t ks[4] = {AB, ASK, 1, AD}, qs[4] = {AB, AD, 1, ASQ}, vs[4] = {AB, ADV, 1, ASK};
        k = sdc_mil_input(g, "k", dt, 4, ks);
        q = sdc_mil_input(g, "q", dt, 4, qs);
        v = sdc_mil_input(g, "v", dt, 4, vs);
        p = sdc_mil_softmax(g, sdc_mil_einsum(g, "nchw,nwhu->nchu", k, q), 1); /* (B, Sk, 1, Sq) */
        o = sdc_mil_einsum(g, "nchw,nwhu->nchu", v, p);                        /* (B, dv, 1, Sq) */
    } else {
        int64_t ks[4] = {1, AB, AD, ASK}, qs[4] = {1, AB, AD, ASQ}, vs[4] = {1, AB, ADV, ASK};
        k = sdc_mil_input(g, "k", dt, 4, ks);
        q = sdc_mil_input(g, "q", dt, 4, qs);
        v = sdc_mil_input(g, "v", dt, 4, vs);
        p = sdc_mil_softmax(g, sdc_mil_matmul(g, q, k, true, false), -1); /* (1, B, Sq, Sk) */
        o = sdc_mil_matmul(g, v, p, false, true);                          /* (1, B, dv, Sq) */
    }
    sdc_mil_output(g, o, "o");
    if (expose_softmax) sdc_mil_output(g, p, "p");
    return g;
}

static float *attention_run(sdc_model *m, float *const *in, char *err, size_t size) {
    sdc_ndarray a[3];
    for (int i = 0; i < 3; i++) {
        const sdc_ndarray *d = sdc_model_input(m, i);
        a[i] = *d;
        a[i].dtype = SDC_ND_F32;
        a[i].data = in[d->name[0] == 'k' ? 0 : d->name[0] == 'q' ? 1 : 2];
    }
    sdc_ndarray *out;
    int n_out;
    if (sdc_model_predict(m, a, 3, &out, &n_out, err, size)) return NULL;
    float *o = sdc_ndarray_to_f32(&out[0]);
    sdc_ndarrays_free(out, n_out);
    return o;
}

/* float64 attention of one batch item: o[c][u] = sum_s v[c][s] softmax_s(sum_d k[s][d] q[d][u]) */
static double attention_ref(bool split, float *const *in, int b, int c, int u) {
    double w[ASK], mx = -INFINITY, sum = 0, o = 0;
    for (int s = 0; s < ASK; s++) {
        w[s] = 0;
        for (int d = 0; d < AD; d++)
            w[s] += split ? (double)in[0][(b * ASK + s) * AD + d] * in[1][(b * AD + d) * ASQ + u]
                          : (double)in[0][(b * AD + d) * ASK + s] * in[1][(b * AD + d) * ASQ + u];
        mx = w[s] > mx ? w[s] : mx;
    }
    for (int s = 0; s < ASK; s++) sum += w[s] = exp(w[s] - mx);
    for (int s = 0; s < ASK; s++) o += in[2][(b * ADV + c) * ASK + s] * w[s] / sum;
    return o;
}

static void test_fused_attention(const char *dir) {
    float *in[3];
    size_t n[3] = {AB * ASK * AD, AB * AD * ASQ, AB * ADV * ASK}, no = AB * ADV * ASQ;
    for (int i = 0; i < 3; i++) {
        in[i] = malloc(n[i] * sizeof(float));
        for (size_t e = 0; e < n[i]; e++) in[i][e] = frand();
    }
    for (int form = 0; form < 2; form++)
        for (int fp16 = 0; fp16 < 2; fp16++) {
            bool split = form == 0;
            sdc_dtype dt = fp16 ? SDC_DT_F16 : SDC_DT_F32;
            char err[1024], path[512];
            sdc_err e = {0};
            mil_graph *fused = attention_graph(split, dt, false), *plain = attention_graph(split, dt, true);
            sdc_model *mf = NULL, *mp = NULL, *mk = NULL;
            snprintf(path, sizeof path, "%s/attention-%d-%d.mlpackage", dir, form, fp16);
            CHECK_MSG(sdc_model_from_graph(fused, "fused", NULL, &mf, &e) == SDC_OK, "%s", e.msg);
            CHECK_MSG(sdc_model_from_graph(plain, "plain", NULL, &mp, &e) == SDC_OK, "%s", e.msg);
            if (CHECK(write_pkg(fused, path))) CHECK_MSG(sdc_model_load(path, NULL, &mk, err, sizeof err) == SDC_OK, "%s", err);
            float *of = mf ? attention_run(mf, in, err, sizeof err) : NULL, *op = mp ? attention_run(mp, in, err, sizeof err) : NULL;
            float *ok = mk ? attention_run(mk, in, err, sizeof err) : NULL;
            if (CHECK_MSG(of && op && ok, "form %d fp16 %d: %s", form, fp16, err)) {
                /* SPLIT_EINSUM's products are cut the same way fused or not: bit-identical; ORIGINAL's
                   first product is cut by query rows, which BLAS may round differently: float32 rounding */
                double diff = 0, top = 0;
                for (size_t i = 0; i < no; i++) {
                    diff = fmax(diff, fabs((double)of[i] - op[i]));
                    top = fmax(top, fabs((double)op[i]));
                }
                if (split) CHECK_MSG(diff == 0, "form %d fp16 %d: fused differs from unfused by %g", form, fp16, diff);
                else CHECK_MSG(diff <= 1e-6 * top, "form %d fp16 %d: fused differs from unfused by %g", form, fp16, diff);
                CHECK_MSG(!memcmp(of, ok, no * sizeof(float)), "form %d fp16 %d: package differs from graph", form, fp16);
                double worst = 0;
                for (int b = 0; b < AB; b++)
                    for (int c = 0; c < ADV; c++)
                        for (int u = 0; u < ASQ; u++) {
                            double d = fabs(of[(b * ADV + c) * ASQ + u] - attention_ref(split, in, b, c, u));
                            worst = d > worst ? d : worst;
                        }
                CHECK_MSG(worst < (fp16 ? 2e-2 : 1e-5), "form %d fp16 %d: off by %g", form, fp16, worst);
            }
            free(of);
            free(op);
            free(ok);
            sdc_model_free(mf);
            sdc_model_free(mp);
            sdc_model_free(mk);
            sdc_mil_graph_free(fused);
            sdc_mil_graph_free(plain);
        }
    for (int i = 0; i < 3; i++) free(in[i]);
}

/* Threads of this process, from /proc (Linux); -1 elsewhere. */
static int count_threads(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    int n = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "Threads: %d", &n) == 1) break;
    fclose(f);
    return n;
}

/* One BLAS thread per caller: OpenBLAS's own workers, started at load and busy-waiting for a
   first job, are stopped (they would take a core from the pool), and products still work. */
static void test_blas_threads(void) {
    sdc_igemm_set_threads(1);
    int n = count_threads();
    if (n >= 0 && !strcmp(sdc_igemm_backend(), "openblas")) CHECK_MSG(n == 1, "%d threads after sdc_igemm_set_threads(1)", n);
    float a[4] = {1, 2, 3, 4}, b[4] = {5, 6, 7, 8}, c[4];
    sdc_igemm(NULL, false, false, 2, 2, 2, a, 2, b, 2, 0.0f, c, 2);
    CHECK(c[0] == 19 && c[1] == 22 && c[2] == 43 && c[3] == 50);
}

int main(void) {
    char dir[] = "/tmp/sdc-test-interp-XXXXXX";
    if (!mkdtemp(dir)) return 1;
    test_blas_threads(); /* first: before any pool of this test starts threads */
    test_gemm();
    test_gemm_few();
    test_gemm_bcast();
    test_conv_winograd();
    test_fp16();
    test_vec_exp();
    test_vec_max();
    test_pool();
    test_npy(dir);
    test_package_fp32(dir);
    test_package_fp16(dir);
    test_gather_reads_part(dir);
    test_load_leaves_weights_unmapped(dir);
    test_heap_weight_kept();
    test_run_drops_weights(dir);
    test_bad_packages(dir);
    test_fused_attention(dir);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return CHECK_DONE("test_interp_ops");
}
