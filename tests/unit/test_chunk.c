/*
 * test_chunk.c — passes/chunk.c on small hand-built graphs: where the cut falls (bisect_model's
 * rule), which tensors cross it and in what order, float16 boundaries cast to float32 under the
 * var's name, the original inputs chunk 2 keeps, dead-code elimination, a constant both chunks
 * use, the failure when no op can be cut, and chunk 1 → chunk 2 run through the interpreter
 * giving bit for bit what the whole graph gives; and the writer's refusal of a feature shape
 * known only at run time.
 */
#include <unistd.h>

#include "check.h"
#include "coreml/writer.h"
#include "mil/graph.h"
#include "passes/chunk.h"

static const mil_var *find_input(const mil_graph *g, const char *name) {
    for (int i = 0; i < g->n_inputs; i++)
        if (!strcmp(g->inputs[i]->name, name)) return g->inputs[i];
    return NULL;
}

static int count_ops(const mil_graph *g, const char *type) {
    int n = 0;
    for (size_t i = 0; i < g->n_ops; i++) n += !strcmp(g->ops[i]->type, type);
    return n;
}

/* Every name (op and var) once; every param made by an earlier op or an input. */
static bool well_formed(const mil_graph *g) {
    mil_graph *seen = sdc_mil_graph_new(g->opset);
    bool ok = true;
    for (int i = 0; i < g->n_inputs; i++) ok = ok && sdc_mil_reserve_name(seen, g->inputs[i]->name);
    for (size_t i = 0; i < g->n_ops && ok; i++) {
        const mil_op *op = g->ops[i];
        for (int p = 0; p < op->n_params; p++)
            for (int k = 0; k < op->params[p].n; k++) ok = ok && sdc_mil_name_taken(seen, op->params[p].vars[k]->name);
        ok = ok && sdc_mil_reserve_name(seen, op->name);
        for (int k = 0; k < op->n_outputs; k++)
            if (strcmp(op->outputs[k]->name, op->name)) ok = ok && sdc_mil_reserve_name(seen, op->outputs[k]->name);
        for (int k = 0; k < op->n_outputs; k++) ok = ok && op->outputs[k]->producer == op;
    }
    for (int i = 0; i < g->n_outputs; i++) ok = ok && sdc_mil_name_taken(seen, g->outputs[i]->name);
    sdc_mil_graph_free(seen);
    return ok;
}

/*
 *   x ─ linear(W1) ─ a ─ silu ─ s ─ linear(W2) ─ b ─┐
 *                    └──────────────────────────── add ─ t ─ linear(W3) ─ c ─ add(y) ─ d ─ linear(W1) ─ out
 *   + a dead op after the cut (relu of t, unused)
 * Three 4×4 weights (W1 twice) and four biases, 64 values: the cut is linear(W2), the first op
 * at >= 32 (40); a and b cross it; chunk 2 keeps y (not x) and stores W1 again.
 */
static mil_graph *toy(sdc_dtype t, float *w_out) {
    mil_graph *g = sdc_mil_graph_new(6);
    int64_t xs[2] = {2, 4}, ws[2] = {4, 4}, bs[1] = {4};
    mil_var *x = sdc_mil_input(g, "x", t, 2, xs);
    mil_var *y = sdc_mil_input(g, "y", t, 2, xs);
    float w[4][16], b[4][4];
    for (int k = 0; k < 4; k++) {
        for (int i = 0; i < 16; i++) w[k][i] = (float)((i * 7 + k * 3) % 11 - 5) / 8.0f;
        for (int i = 0; i < 4; i++) b[k][i] = (float)(i - k) / 4.0f;
    }
    if (w_out) memcpy(w_out, w, sizeof w);
    sdc_mil_scope(g, "l1");
    mil_var *W1 = sdc_mil_const_floats(g, t, 2, ws, w[0]);
    mil_var *a = sdc_mil_linear(g, x, W1, sdc_mil_const_floats(g, t, 1, bs, b[0]));
    sdc_mil_scope(g, "act");
    mil_var *s = sdc_mil_silu(g, a);
    sdc_mil_scope(g, "l2");
    mil_var *bb = sdc_mil_linear(g, s, sdc_mil_const_floats(g, t, 2, ws, w[1]), sdc_mil_const_floats(g, t, 1, bs, b[1]));
    sdc_mil_scope(g, "skip");
    mil_var *tt = sdc_mil_add(g, bb, a);
    sdc_mil_scope(g, "dead");
    (void)sdc_mil_sigmoid(g, tt);
    sdc_mil_scope(g, "l3");
    mil_var *c = sdc_mil_linear(g, tt, sdc_mil_const_floats(g, t, 2, ws, w[2]), sdc_mil_const_floats(g, t, 1, bs, b[2]));
    sdc_mil_scope(g, "cond");
    mil_var *d = sdc_mil_add(g, c, y);
    sdc_mil_scope(g, "l4");
    mil_var *o = sdc_mil_linear(g, d, W1, sdc_mil_const_floats(g, t, 1, bs, b[3]));
    if (t == SDC_DT_F16) o = sdc_mil_cast(g, o, SDC_DT_F32);
    sdc_mil_output(g, o, "out");
    return g;
}

static void test_toy(sdc_dtype t) {
    mil_graph *g = toy(t, NULL);
    if (!CHECK_MSG(sdc_mil_graph_ok(g), "%s", g->err.msg)) return;
    size_t n_ops = g->n_ops;
    mil_chunks ch;
    sdc_err err = {0};
    if (!CHECK_MSG(sdc_chunk_graph(g, &ch, &err) == SDC_OK, "%s", err.msg)) {
        sdc_mil_graph_free(g);
        return;
    }
    size_t es = t == SDC_DT_F16 ? 2 : 4;
    CHECK(g->n_ops == n_ops); /* the source is left alone */
    CHECK_MSG(!strcmp(ch.cut_name, "l2_linear"), "cut at %s", ch.cut_name);
    CHECK(ch.const_bytes == 3 * 16 * es + 4 * 4 * es); /* W1 counted once */
    CHECK(ch.n_boundary == 2);
    /* W1 is stored by both chunks */
    CHECK(ch.bytes1 == 2 * (16 + 4) * es && ch.bytes2 == 2 * (16 + 4) * es);
    const mil_graph *c1 = ch.chunk1, *c2 = ch.chunk2;
    CHECK(well_formed(c1) && well_formed(c2));

    /* chunk 1: all the inputs; outputs a and b, as float32, under their names */
    CHECK(c1->n_inputs == 2 && !strcmp(c1->inputs[0]->name, "x") && !strcmp(c1->inputs[1]->name, "y"));
    if (CHECK(c1->n_outputs == 2)) {
        CHECK_MSG(!strcmp(c1->outputs[0]->name, "l1_linear") && !strcmp(c1->outputs[1]->name, "l2_linear"), "%s %s",
                  c1->outputs[0]->name, c1->outputs[1]->name);
        for (int i = 0; i < 2; i++) {
            CHECK(c1->outputs[i]->type.dtype == SDC_DT_F32 && c1->outputs[i]->type.shape[1] == 4);
            CHECK(!strcmp(c1->outputs[i]->producer->type, t == SDC_DT_F16 ? "cast" : "linear"));
            CHECK(!strcmp(c1->outputs[i]->producer->name, c1->outputs[i]->name));
        }
    }
    CHECK(count_ops(c1, "linear") == 2 && count_ops(c1, "add") == 0 && count_ops(c1, "sigmoid") == 0);

    /* chunk 2: y (x is not used after the cut), then the boundary as float32 inputs */
    if (CHECK(c2->n_inputs == 3)) {
        CHECK(!strcmp(c2->inputs[0]->name, "y") && c2->inputs[0]->type.dtype == t);
        for (int i = 0; i < 2 && c1->n_outputs == 2; i++) {
            CHECK(!strcmp(c2->inputs[1 + i]->name, c1->outputs[i]->name));
            CHECK(c2->inputs[1 + i]->type.dtype == SDC_DT_F32 && sdc_mil_shape_eq(&c2->inputs[1 + i]->type, &c1->outputs[i]->type));
        }
    }
    CHECK(!find_input(c2, "x"));
    CHECK(c2->n_outputs == 1 && !strcmp(c2->outputs[0]->name, "out") && c2->outputs[0]->type.dtype == SDC_DT_F32);
    CHECK(count_ops(c2, "linear") == 2 && count_ops(c2, "add") == 2 && count_ops(c2, "silu") == 0);
    CHECK(count_ops(c2, "sigmoid") == 0); /* dead code is gone */
    CHECK(count_ops(c2, "cast") == (t == SDC_DT_F16 ? 3 : 0));

    sdc_chunks_free(&ch);
    sdc_mil_graph_free(g);
}

/* Nothing to cut: the only op's output is the graph's output. */
static void test_no_cut(void) {
    mil_graph *g = sdc_mil_graph_new(6);
    int64_t xs[1] = {4};
    mil_var *x = sdc_mil_input(g, "x", SDC_DT_F32, 1, xs);
    sdc_mil_output(g, sdc_mil_silu(g, x), "out");
    mil_chunks ch;
    sdc_err err = {0};
    CHECK(sdc_chunk_graph(g, &ch, &err) == SDC_E_UNSUPPORTED && strstr(err.msg, "cannot be cut"));
    CHECK(!ch.chunk1 && !ch.chunk2);
    sdc_mil_graph_free(g);
}

/* ---------------------------------------------------------------- run through the interpreter */

static bool write_pkg(const mil_graph *g, const char *path) {
    sdc_package_info info = {.spec_version = 7, .short_description = "", .author = "", .license = "", .version = ""};
    sdc_err err = {0};
    sdc_status s = sdc_write_package(g, &info, path, NULL, &err);
    if (s) fprintf(stderr, "write %s: %s\n", path, err.msg);
    return s == SDC_OK;
}

static sdc_ndarray *run(const char *path, const sdc_ndarray *in, int n_in, int *n_out) {
    sdc_model *m;
    char err[1024];
    sdc_ndarray *out = NULL;
    if (!CHECK_MSG(sdc_model_load(path, NULL, &m, err, sizeof err) == SDC_OK, "%s", err)) return NULL;
    /* the model's inputs by name from `in` */
    int n = sdc_model_n_inputs(m);
    sdc_ndarray feeds[8];
    bool ok = n <= 8;
    for (int i = 0; i < n && ok; i++) {
        ok = false;
        for (int k = 0; k < n_in; k++)
            if (!strcmp(in[k].name, sdc_model_input(m, i)->name)) {
                feeds[i] = in[k];
                ok = true;
                break;
            }
    }
    if (CHECK(ok)) CHECK_MSG(sdc_model_predict(m, feeds, n, &out, n_out, err, sizeof err) == SDC_OK, "%s", err);
    sdc_model_free(m);
    return out;
}

static void test_run(const char *dir, sdc_dtype t) {
    char pf[512], p1[512], p2[512];
    const char *tag = t == SDC_DT_F16 ? "f16" : "f32";
    snprintf(pf, sizeof pf, "%s/full-%s.mlpackage", dir, tag);
    snprintf(p1, sizeof p1, "%s/full-%s_chunk1.mlpackage", dir, tag);
    snprintf(p2, sizeof p2, "%s/full-%s_chunk2.mlpackage", dir, tag);
    mil_graph *g = toy(t, NULL);
    mil_chunks ch;
    sdc_err err = {0};
    bool ok = CHECK_MSG(sdc_chunk_graph(g, &ch, &err) == SDC_OK, "%s", err.msg);
    ok = ok && CHECK(write_pkg(g, pf)) && CHECK(write_pkg(ch.chunk1, p1)) && CHECK(write_pkg(ch.chunk2, p2));
    sdc_chunks_free(&ch);
    sdc_mil_graph_free(g);
    if (!ok) return;

    float xv[8], yv[8];
    for (int i = 0; i < 8; i++) {
        xv[i] = (float)(i % 5) / 3.0f - 0.5f;
        yv[i] = (float)(i % 3) / 7.0f;
    }
    sdc_ndarray in[2] = {{.name = "x", .dtype = SDC_ND_F32, .rank = 2, .shape = {2, 4}, .data = xv},
                         {.name = "y", .dtype = SDC_ND_F32, .rank = 2, .shape = {2, 4}, .data = yv}};
    int n_full = 0, n1 = 0, n2 = 0;
    sdc_ndarray *full = run(pf, in, 2, &n_full);
    sdc_ndarray *o1 = run(p1, in, 2, &n1);
    sdc_ndarray merged[8];
    int nm = 0;
    for (int i = 0; i < n1 && nm < 8; i++) merged[nm++] = o1[i]; /* chunk 1's outputs win, as in Swift */
    for (int i = 0; i < 2 && nm < 8; i++) merged[nm++] = in[i];
    sdc_ndarray *o2 = o1 ? run(p2, merged, nm, &n2) : NULL;
    if (CHECK(full && o2 && n_full == 1 && n2 == 1))
        CHECK_MSG(full[0].dtype == SDC_ND_F32 && o2[0].dtype == SDC_ND_F32 && !memcmp(full[0].data, o2[0].data, 8 * sizeof(float)),
                  "%s: chunk 1 → chunk 2 differs from the whole graph", tag);
    sdc_ndarrays_free(full, n_full);
    sdc_ndarrays_free(o1, n1);
    sdc_ndarrays_free(o2, n2);
}

/* The writer states every input and output shape in the model description: a graph whose
   output is sized at run time (non_zero's count) is refused naming the output, and nothing is
   left at the path. */
static void test_unknown_feature_dim(const char *dir) {
    mil_graph *g = sdc_mil_graph_new(6);
    int64_t xs[1] = {4};
    mil_var *x = sdc_mil_input(g, "x", SDC_DT_F32, 1, xs);
    CHECK(sdc_mil_output(g, sdc_mil_non_zero(g, x), "where"));
    char path[512];
    snprintf(path, sizeof path, "%s/open.mlpackage", dir);
    sdc_package_info info = {.spec_version = 7, .short_description = "", .author = "", .license = "", .version = ""};
    sdc_err err = {0};
    CHECK(sdc_write_package(g, &info, path, NULL, &err) == SDC_E_UNSUPPORTED);
    CHECK(strstr(err.msg, "output 'where'") && strstr(err.msg, "run time") && !strchr(err.msg, '\n'));
    CHECK(access(path, F_OK) != 0);
    sdc_mil_graph_free(g);
}

int main(void) {
    char dir[] = "/tmp/sdc-test-chunk-XXXXXX";
    if (!mkdtemp(dir)) return 1;
    test_toy(SDC_DT_F16);
    test_toy(SDC_DT_F32);
    test_no_cut();
    test_run(dir, SDC_DT_F16);
    test_run(dir, SDC_DT_F32);
    test_unknown_feature_dim(dir);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return CHECK_DONE("test_chunk");
}
