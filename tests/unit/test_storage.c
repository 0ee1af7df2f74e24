/*
 * test_storage.c — sdc_mil_const_storage, the one rule for where a const's bytes go: dense
 * values (blob from 10 elements of a blob dtype, inline otherwise), palettized consts in the
 * iOS 16 form (indices as packed bytes) and the iOS 18 form (uintN indices with declared
 * padding bits), and the weight.bin span with 64-byte records and alignment; plus the weights
 * the chunk balancer reads from it (sdc_mil_const_nbytes).
 */
#include "check.h"
#include "passes/palettize.h"

static uint16_t data[64 * 64];

static sdc_tensor tensor(void) {
    return (sdc_tensor){.name = "w", .dtype = SDC_DT_F16, .rank = 2, .shape = {64, 64}, .numel = 64 * 64,
                        .data = (const uint8_t *)data};
}

static uint64_t span(uint64_t nbytes) { return (64 + nbytes + 63) / 64 * 64; }

static void test_dense(void) {
    mil_graph *g = sdc_mil_graph_new(6);
    sdc_tensor t = tensor();
    int64_t s2[2] = {64, 64}, s1[1] = {4};
    mil_var *w = sdc_mil_const_weight(g, &t, SDC_DT_F32, 2, s2, 0);
    float four[4] = {1, 2, 3, 4};
    mil_var *small = sdc_mil_const_floats(g, SDC_DT_F16, 1, s1, four);
    int32_t ints[12] = {0};
    mil_var *iv = sdc_mil_const_ints(g, 12, ints);
    mil_var *str = sdc_mil_const_string(g, "EXACT");
    if (!CHECK_MSG(sdc_mil_graph_ok(g), "%s", g->err.msg)) return;

    mil_storage st = sdc_mil_const_storage(w);
    CHECK(st.n_parts == 1 && st.part[0].count == 4096 && st.part[0].bits == 32 && st.part[0].nbytes == 16384);
    CHECK(st.part[0].in_blob && st.part[0].padding_bits == 0);
    CHECK(st.blob_bytes == 16384 && st.blob_span == span(16384));
    CHECK(sdc_mil_const_stored_bytes(w) == 16384 && sdc_mil_const_nbytes(w) == 16384);

    st = sdc_mil_const_storage(small); /* under 10 elements: inline, but the balancer counts it */
    CHECK(st.n_parts == 1 && st.part[0].nbytes == 8 && !st.part[0].in_blob && st.blob_bytes == 0 && st.blob_span == 0);
    CHECK(sdc_mil_const_stored_bytes(small) == 0 && sdc_mil_const_nbytes(small) == 8);

    st = sdc_mil_const_storage(iv); /* int32 never goes to the blob */
    CHECK(st.n_parts == 1 && !st.part[0].in_blob && sdc_mil_const_nbytes(iv) == 48);

    st = sdc_mil_const_storage(str);
    CHECK(st.n_parts == 0 && st.blob_span == 0 && sdc_mil_const_nbytes(str) == 0);
    sdc_mil_graph_free(g);
}

/* One candidate const of `shape` used by a linear, palettized to nbits in g's opset. */
static mil_var *palettized(mil_graph *g, const sdc_tensor *t, int rank, const int64_t *shape, int nbits) {
    int64_t xs[2] = {1, shape[1]};
    mil_var *x = sdc_mil_input(g, "x", SDC_DT_F16, 2, xs);
    mil_var *w = sdc_mil_const_weight(g, t, SDC_DT_F16, rank, shape, 0);
    static const float zeros[64];
    mil_var *b = sdc_mil_const_floats(g, SDC_DT_F16, 1, shape, zeros);
    sdc_mil_output(g, sdc_mil_linear(g, x, w, b), "y");
    CHECK_MSG(sdc_mil_graph_ok(g), "%s", g->err.msg);
    sdc_err err = {0};
    size_t n = 0;
    CHECK_MSG(sdc_palettize_graph(g, nbits, &n, &err) == SDC_OK && n == 1, "%s", err.msg);
    return w;
}

static void test_ios16_form(void) {
    mil_graph *g = sdc_mil_graph_new(6);
    sdc_tensor t = tensor();
    int64_t s2[2] = {64, 64};
    mil_var *w = palettized(g, &t, 2, s2, 6);
    mil_storage st = sdc_mil_const_storage(w);
    const mil_stored_part *ip = &st.part[MIL_PART_INDICES], *tp = &st.part[MIL_PART_TABLE];
    CHECK(!w->lut_shaped && st.n_parts == 2);
    CHECK(ip->count == 4096 && ip->bits == 6 && ip->nbytes == 3072 && ip->in_blob && ip->padding_bits == 0);
    CHECK(tp->count == 64 && tp->bits == 16 && tp->nbytes == 128 && tp->in_blob);
    CHECK(st.blob_bytes == 3072 + 128 && st.blob_span == span(3072) + span(128));
    CHECK(sdc_mil_const_nbytes(w) == 3072 + 128);
    sdc_mil_graph_free(g);
}

static void test_ios18_form(void) {
    mil_graph *g = sdc_mil_graph_new(8);
    sdc_tensor t = tensor();
    int64_t s2[2] = {45, 47}; /* 2115 values: 2115 bits end 5 bits short of a byte */
    mil_var *w = palettized(g, &t, 2, s2, 1);
    mil_storage st = sdc_mil_const_storage(w);
    const mil_stored_part *ip = &st.part[MIL_PART_INDICES], *tp = &st.part[MIL_PART_TABLE];
    CHECK(w->lut_shaped && st.n_parts == 2);
    CHECK(ip->count == 2115 && ip->bits == 1 && ip->nbytes == 265 && ip->in_blob && ip->padding_bits == 5);
    CHECK(tp->count == 2 && tp->nbytes == 4 && !tp->in_blob); /* a 2-entry table is inline */
    CHECK(st.blob_bytes == 265 && st.blob_span == span(265));
    CHECK(sdc_mil_const_nbytes(w) == 265); /* the balancer counts a palettized const's weight.bin bytes */
    sdc_mil_graph_free(g);
}

int main(void) {
    test_dense();
    test_ios16_form();
    test_ios18_form();
    return CHECK_DONE("test_storage");
}
