/* chunk.c — --chunk-unet: the two chunk packages of a UNet, and their check. */
#include "convert/chunk.h"

#include "passes/chunk.h"

/* "<dir>/<stem>.mlpackage" → "<dir>/<stem>_chunk<n>.mlpackage", as bisect_model names them. */
static sdc_status chunk_path(const sdc_conv_ctx *c, const char *path, int n, char *out, size_t size) {
    size_t len = strlen(path), ext = strlen(".mlpackage");
    if (len < ext || strcmp(path + len - ext, ".mlpackage"))
        return sdc_fail(c->err, SDC_E_INTERNAL, "%s: not a .mlpackage path", path);
    if (!sdc_fmt(out, size, "%.*s_chunk%d.mlpackage", (int)(len - ext), path, n))
        return sdc_fail(c->err, SDC_E_ARG, "-o: output path too long");
    return SDC_OK;
}

bool sdc_conv_chunks_missing(const sdc_conv_ctx *c, const char *path) {
    char p[4200];
    if (!c->job->chunk_unet) return false;
    for (int n = 1; n <= 2; n++)
        if (chunk_path(c, path, n, p, sizeof p) || !sdc_path_exists(p)) return true;
    return false;
}

static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* ---------------------------------------------------------------- writing */

/* The feature descriptions of a chunk: an original input or output keeps its text (matched by
   name), a boundary tensor gets none. */
static const char **chunk_docs(const mil_var *const *vars, int n, const mil_var *const *orig, int n_orig,
                               const char *const *orig_docs, int n_docs) {
    const char **d = sdc_calloc((size_t)(n ? n : 1), sizeof *d);
    if (!d || !orig_docs) return d;
    if (n_docs > 0 && n_docs < n_orig) n_orig = n_docs; /* docs for the first n_docs only */
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n_orig; j++)
            if (!strcmp(vars[i]->name, orig[j]->name)) d[i] = orig_docs[j];
    return d;
}

static sdc_status write_chunk(const sdc_conv_ctx *c, const mil_graph *chunk, const mil_graph *g, const char *path,
                              const char *what, const sdc_conv_docs *docs) {
    const char **in = chunk_docs((const mil_var *const *)chunk->inputs, chunk->n_inputs,
                                 (const mil_var *const *)g->inputs, g->n_inputs, docs ? docs->inputs : NULL,
                                 docs ? docs->n_inputs : 0);
    const char **out = chunk_docs((const mil_var *const *)chunk->outputs, chunk->n_outputs,
                                  (const mil_var *const *)g->outputs, g->n_outputs, docs ? docs->outputs : NULL,
                                  docs ? docs->n_outputs : 0);
    sdc_status s;
    if (!in || !out) {
        s = sdc_fail(c->err, SDC_E_NOMEM, "out of memory");
    } else {
        sdc_conv_docs d = {.inputs = in, .outputs = out};
        if (docs) {
            d.version = docs->version;
            d.license = docs->license;
            d.short_description = docs->short_description;
        }
        s = sdc_conv_write(c, chunk, path, what, &d);
    }
    sdc_free(in);
    sdc_free(out);
    return s;
}

static double mb(uint64_t bytes) { return (double)bytes / 1e6; }

static sdc_status write_chunks(const sdc_conv_ctx *c, const sdc_conv_package *p, const char *p1, const char *w1,
                               bool need1, const char *p2, const char *w2, bool need2) {
    const char *what = p->what;
    mil_graph *g = NULL;
    mil_chunks ch;
    memset(&ch, 0, sizeof ch);
    /* The graph as the package's: built, then palettized with --quantize-nbits as emit does
       before writing (every UNet kind is palettized), so the chunks carry the package's
       weights — unlike the anchor, whose chunks stay float16. */
    char label[128];
    snprintf(label, sizeof label, "%s chunks", what);
    sdc_status s = p->build(c, p->state, false, &g);
    if (!s) s = sdc_conv_palettize(c, g, label);
    if (!s) s = sdc_chunk_graph(g, &ch, c->err);
    if (!s)
        sdc_conv_log(c, SDC_LOG_INFO,
                 "chunking %s at op '%s' (%zu of %zu): %d tensors cross the cut; weights %.1f MB + %.1f MB "
                 "(of %.1f MB)",
                 what, ch.cut_name, ch.cut + 1, g->n_ops, ch.n_boundary, mb(ch.bytes1), mb(ch.bytes2),
                 mb(ch.const_bytes));
    if (!s && need1) s = write_chunk(c, ch.chunk1, g, p1, w1, p->docs);
    if (!s && need2) s = write_chunk(c, ch.chunk2, g, p2, w2, p->docs);
    if (s) sdc_err_prefix(c->err, "--chunk-unet: %s: ", what);
    sdc_chunks_free(&ch); /* before g: the chunks borrow from it */
    sdc_mil_graph_free(g);
    return s;
}

/* ---------------------------------------------------------------- check */

/* A model's declared inputs taken by name from `first` (chunk 1's outputs win, as in Swift),
   else from `second`. The arrays are borrowed. */
static sdc_status gather_inputs(const sdc_conv_ctx *c, const sdc_model *m, const char *which, const sdc_ndarray *first,
                                int n_first, const sdc_ndarray *second, int n_second, sdc_ndarray **out) {
    int n = sdc_model_n_inputs(m);
    sdc_ndarray *in = sdc_calloc((size_t)(n ? n : 1), sizeof *in);
    if (!in) return sdc_fail(c->err, SDC_E_NOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        const char *name = sdc_model_input(m, i)->name;
        const sdc_ndarray *a = sdc_check_find_output(first, n_first, name);
        if (!a) a = sdc_check_find_output(second, n_second, name);
        if (!a) {
            sdc_free(in);
            return sdc_fail(c->err, SDC_E_CHECK, "--check-output-correctness: %s: input '%s' is neither an input of the "
                            "UNet nor an output of chunk 1", which, name);
        }
        in[i] = *a;
        in[i].name = name;
    }
    *out = in;
    return SDC_OK;
}

static sdc_status check_chunks(const sdc_conv_ctx *c, const char *path, const char *p1, const char *p2,
                               const sdc_conv_check_hint *hint) {
    char msg[1024], label[600];
    sdc_model *full = NULL, *m1 = NULL, *m2 = NULL;
    sdc_ndarray *in = NULL, *in1 = NULL, *in2 = NULL, *fo = NULL, *o1 = NULL, *o2 = NULL;
    int n_in = 0, n_fo = 0, n_o1 = 0, n_o2 = 0;
    bool names_owned = false; /* in[].name: the UNet model's, then our copies */
    const char *b1 = base_name(p1);
    size_t stem = strlen(b1) - strlen("1.mlpackage");
    snprintf(label, sizeof label, "%.*s1+chunk2", (int)stem, b1); /* "<stem>_chunk1+chunk2" */
    /* one model at a time: the whole UNet, then chunk 1, then chunk 2, each with the job's
       progress line, as the unchunked check has */
    sdc_model_options opt = {.progress = c->job->progress, .progress_user = c->job->user};
    sdc_status s = sdc_model_load(path, &opt, &full, msg, sizeof msg);
    if (s) {
        sdc_fail(c->err, s, "--check-output-correctness: %s", msg);
        goto done;
    }
    if (!(in = sdc_check_seeded_inputs(full, hint))) {
        s = sdc_fail(c->err, SDC_E_NOMEM, "out of memory");
        goto done;
    }
    n_in = sdc_model_n_inputs(full);
    sdc_conv_log(c, SDC_LOG_INFO, "checking %s: running %s, chunk 1 and chunk 2", label, base_name(path));
    if ((s = sdc_model_predict(full, in, n_in, &fo, &n_fo, msg, sizeof msg))) {
        sdc_fail(c->err, s, "--check-output-correctness: %s: %s", base_name(path), msg);
        goto done;
    }
    for (int i = 0; i < n_in; i++) in[i].name = sdc_strdup(in[i].name); /* outlive the model */
    names_owned = true;
    for (int i = 0; i < n_in; i++)
        if (!in[i].name) {
            s = sdc_fail(c->err, SDC_E_NOMEM, "out of memory");
            goto done;
        }
    sdc_model_free(full);
    full = NULL;
    if ((s = sdc_model_load(p1, &opt, &m1, msg, sizeof msg))) {
        sdc_fail(c->err, s, "--check-output-correctness: %s", msg);
        goto done;
    }
    if ((s = gather_inputs(c, m1, b1, NULL, 0, in, n_in, &in1))) goto done;
    if ((s = sdc_model_predict(m1, in1, sdc_model_n_inputs(m1), &o1, &n_o1, msg, sizeof msg))) {
        sdc_fail(c->err, s, "--check-output-correctness: %s: %s", b1, msg);
        goto done;
    }
    if ((s = sdc_model_load(p2, &opt, &m2, msg, sizeof msg))) {
        sdc_fail(c->err, s, "--check-output-correctness: %s", msg);
        goto done;
    }
    if ((s = gather_inputs(c, m2, base_name(p2), o1, n_o1, in, n_in, &in2))) goto done;
    if ((s = sdc_model_predict(m2, in2, sdc_model_n_inputs(m2), &o2, &n_o2, msg, sizeof msg))) {
        sdc_fail(c->err, s, "--check-output-correctness: %s: %s", base_name(p2), msg);
        goto done;
    }
    /* Swift takes chunk 2's first output feature, whatever its name */
    const sdc_ndarray *got = n_o2 > 0 ? &o2[0] : NULL, *ref = got ? sdc_check_find_output(fo, n_fo, got->name) : NULL;
    if (!ref && n_fo > 0) ref = &fo[0];
    if (!got || !ref || sdc_ndarray_numel(got) != sdc_ndarray_numel(ref)) {
        s = sdc_fail(c->err, SDC_E_CHECK, "--check-output-correctness: %s: chunk 2's first output does not match "
                     "the shape of %s's", label, base_name(path));
        goto done;
    }
    s = sdc_check_output(c, label, ref, got, base_name(path));
done:
    if (in)
        for (int i = 0; i < n_in; i++) {
            sdc_free(in[i].data);
            if (names_owned) sdc_free((char *)in[i].name);
        }
    sdc_free(in);
    sdc_free(in1);
    sdc_free(in2);
    sdc_ndarrays_free(fo, n_fo);
    sdc_ndarrays_free(o1, n_o1);
    sdc_ndarrays_free(o2, n_o2);
    sdc_model_free(full);
    sdc_model_free(m1);
    sdc_model_free(m2);
    return s;
}

/* ---------------------------------------------------------------- entry point */

sdc_status sdc_conv_emit_chunks(const sdc_conv_ctx *c, const sdc_conv_package *p) {
    if (!c->job->chunk_unet) return SDC_OK;
    char p1[4200], p2[4200], w1[96], w2[96];
    sdc_status s = chunk_path(c, p->path, 1, p1, sizeof p1);
    if (!s) s = chunk_path(c, p->path, 2, p2, sizeof p2);
    if (s) return s;
    snprintf(w1, sizeof w1, "%s_chunk1", p->what);
    snprintf(w2, sizeof w2, "%s_chunk2", p->what);
    bool need1 = !sdc_conv_exists_skip(c, p1, w1), need2 = !sdc_conv_exists_skip(c, p2, w2);
    if (need1 || need2) s = write_chunks(c, p, p1, w1, need1, p2, w2, need2);
    if (!s && c->job->check_output_correctness && (s = check_chunks(c, p->path, p1, p2, p->hint)) == SDC_E_CHECK) {
        sdc_conv_quarantine(c, p1);
        sdc_conv_quarantine(c, p2);
    }
    return s;
}
