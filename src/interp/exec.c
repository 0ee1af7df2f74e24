/*
 * exec.c — the public interpreter API: load, describe, predict. It is the top of the
 * interpreter: it uses the loader (load.c), the accessors (access.c) and, through the op
 * table (optable.c), the kernels; none of them calls back.
 *
 * predict walks the ops in block order. Before an op runs, the constants it reads are
 * decoded from their stored form into temporaries; after it, the temporaries are freed, its
 * fp16 outputs are rounded to fp16, and every runtime value whose last reader it was is freed.
 */
#include <sys/mman.h>
#include <unistd.h>

#include "interp/from_graph.h"
#include "interp/interp.h"
#include "io/fp16.h"
#include "io/mapfile.h"
#include "io/npy.h"

/* ---------------------------------------------------------------- public API */

/* What every model gets once its program is loaded: its worker threads. */
static sdc_status start_model(sdc_model *m, const sdc_model_options *opt, sdc_err *err) {
    int n = opt->n_threads > 0 ? opt->n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) n = 1;
    sdc_igemm_set_threads(1); /* the pool's threads split every product (gemm.c) */
    m->pool = sdc_ipool_new(n);
    m->prof = sdc_calloc((size_t)m->n_ops + 2, sizeof *m->prof); /* at most one row per op, and the drops' */
    return m->pool && m->prof ? SDC_OK : sdc_fail(err, SDC_E_NOMEM, "out of memory");
}

/* A model named `path` loaded by `load` (a package, or a graph), started; NULL on failure. */
static sdc_model *new_model(const char *path, const sdc_model_options *options,
                            sdc_status (*load)(const void *what, sdc_model *m, sdc_err *err), const void *what,
                            sdc_err *err) {
    sdc_model_options opt = {0};
    if (options) opt = *options;
    sdc_model *m = sdc_calloc(1, sizeof *m);
    sdc_status s = SDC_OK;
    if (!m || !(m->path = sdc_strdup(path))) s = sdc_fail(err, SDC_E_NOMEM, "out of memory");
    if (!s) {
        m->exact_fp16_off = opt.no_fp16_rounding;
        m->progress = opt.progress;
        m->progress_user = opt.progress_user;
        s = load(what, m, err);
    }
    if (!s) s = start_model(m, &opt, err);
    if (s) {
        sdc_model_free(m);
        return NULL;
    }
    return m;
}

static sdc_status load_package(const void *path, sdc_model *m, sdc_err *err) {
    return sdc_interp_model_load(path, m, err);
}

sdc_status sdc_model_load(const char *package_path, const sdc_model_options *options, sdc_model **out, char *errbuf,
                          size_t err_size) {
    sdc_err err = {0};
    *out = new_model(package_path, options, load_package, package_path, &err);
    if (errbuf && err_size) snprintf(errbuf, err_size, "%s", err.code ? err.msg : "");
    return err.code;
}

static sdc_status load_graph(const void *g, sdc_model *m, sdc_err *err) { return sdc_interp_graph_load(g, m, err); }

sdc_status sdc_model_from_graph(const mil_graph *g, const char *label, const sdc_model_options *options,
                                sdc_model **out, sdc_err *err) {
    *out = new_model(label, options, load_graph, g, err);
    return *out ? SDC_OK : err->code;
}

void sdc_model_free(sdc_model *m) {
    if (!m) return;
    sdc_interp_model_release(m);
    sdc_ipool_free(m->pool);
    sdc_free(m->prof);
    sdc_free(m->path);
    sdc_free(m);
}

int sdc_model_n_inputs(const sdc_model *m) { return m->n_inputs; }
int sdc_model_n_outputs(const sdc_model *m) { return m->n_outputs; }
const sdc_ndarray *sdc_model_input(const sdc_model *m, int i) { return i >= 0 && i < m->n_inputs ? &m->in_desc[i] : NULL; }
const sdc_ndarray *sdc_model_output(const sdc_model *m, int i) { return i >= 0 && i < m->n_outputs ? &m->out_desc[i] : NULL; }

static sdc_status bind_input(irun *r, int idx, const sdc_ndarray *a) {
    sdc_model *m = r->m;
    const sdc_ndarray *d = &m->in_desc[idx];
    int s = m->inputs[idx];
    const islot *sl = &m->slots[s];
    char want[200], got[200];
    shape_str(d->rank, d->shape, want, sizeof want);
    bool same = a->rank == d->rank;
    for (int i = 0; same && i < d->rank; i++) same = d->shape[i] < 0 ? a->shape[i] >= 1 : a->shape[i] == d->shape[i];
    if (!same)
        return sdc_fail(r->err, SDC_E_ARG, "%s: input '%s' has shape %s, the model expects %s %s", m->path, d->name,
                        shape_str(a->rank, a->shape, got, sizeof got), want, sdc_nd_dtype_name(d->dtype));
    if (a->dtype != d->dtype && a->dtype != SDC_ND_F32)
        return sdc_fail(r->err, SDC_E_ARG, "%s: input '%s' is %s, the model expects %s %s (float32 is also converted)", m->path,
                        d->name, sdc_nd_dtype_name(a->dtype), sdc_nd_dtype_name(d->dtype), want);
    if (!a->data && sdc_ndarray_numel(a))
        return sdc_fail(r->err, SDC_E_ARG, "%s: input '%s' has no data", m->path, d->name);
    itensor *t = sdc_it_new(sl->dtype, a->rank, a->shape);
    if (!t) return sdc_fail(r->err, SDC_E_NOMEM, "%s: out of memory for input '%s'", m->path, d->name);
    r->vals[s] = t;
    if (a->dtype == SDC_ND_F16) {
        sdc_f16_expand(m->pool, a->data, t->f, t->n);
    } else if (a->dtype == SDC_ND_I32) {
        memcpy(t->i, a->data, t->n * 4);
    } else if (mt_is_float(sl->dtype)) {
        memcpy(t->f, a->data, t->n * 4);
        if (sl->dtype == MT_FP16) sdc_round_f16(m->pool, t->f, t->n);
    } else {
        const float *f = a->data;
        for (size_t i = 0; i < t->n; i++) {
            if (!(f[i] == (float)(int32_t)f[i]) || f[i] >= 2147483648.0f)
                return sdc_fail(r->err, SDC_E_ARG, "%s: input '%s' is int32 in the model, but the float32 value %g given at element %zu is not an integer",
                                m->path, d->name, (double)f[i], i);
            t->i[i] = (int32_t)f[i];
        }
    }
    return SDC_OK;
}

static void free_temps(irun *r) {
    for (int i = 0; i < r->n_temps; i++) sdc_it_free(r->temps[i]);
    r->n_temps = 0;
}

/* Constants this large are mapped in with one call before each op that reads them (smaller
   ones fault in as they are read). */
#define POPULATE_MIN_BYTES ((size_t)64 << 10)
/* The weights' pages a run leaves mapped before dropping them together: a bound of 64 MiB
   on top of one op's weights, each weight counted as the 2 MiB folios it touches (a 1 KB
   bias counts 2 MiB), so a batch is dropped when it holds 64 MiB or less. */
#define DROP_BATCH_BYTES ((size_t)64 << 20)

/* madvise(advice) over a mapped constant's pages, or their drop added to the run's batch.
   Mapping in covers the whole pages inside it (a neighbour's pages at either end may not be
   needed). Dropping covers every page it touches, however small: a model's weights are read
   once per run, so keeping them resident would only grow the run's memory to the whole weight
   file; and where the page cache holds the file in 2 MiB folios, reading a 1 KB bias maps its
   whole 2 MiB. Dropping a page a later op reads costs that op a fault, never a wrong value
   (sdc_map_drop). */
static void advise_source(irun *r, const csrc *c, int advice) {
    if (advice == MADV_DONTNEED) {
        sdc_csrc_drop(c, r->drops);
        return;
    }
    size_t bytes = sdc_csrc_bytes(c);
    if (!c->mapped || bytes < POPULATE_MIN_BYTES) return;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t begin = ((uintptr_t)c->ptr + page - 1) & ~(uintptr_t)(page - 1);
    uintptr_t end = ((uintptr_t)c->ptr + bytes) & ~(uintptr_t)(page - 1);
    if (end > begin) madvise((void *)begin, end - begin, advice);
}

/* Before an op, its weights are mapped in with one call (faulting them in page by page costs
   more); after it, their pages join the run's drop batch. Both are hints: failure changes
   nothing. */
#ifdef MADV_POPULATE_READ
#define ADVICE_POPULATE MADV_POPULATE_READ
#else
#define ADVICE_POPULATE MADV_WILLNEED
#endif

/* The same advice for every mapped constant op reads, through constexpr chains (advise_source
   leaves small ones out of mapping in); to map pages in, not for an input the op reads only in
   part (its pages fault in as it reads them). */
static void advise_consts(irun *r, const iop *op, int advice) {
    const char *part = advice == ADVICE_POPULATE && op->def ? sdc_iop_reads_part(op->def->type) : NULL;
    for (int p = 0; p < op->n_params; p++) {
        if (part && !strcmp(op->params[p].name, part)) continue;
        for (int k = 0; k < op->params[p].n; k++) {
            const islot *sl = &r->m->slots[op->params[p].slots[k]];
            if (sl->kind != SL_CONST || sl->val) continue;
            if (sl->src.kind == CS_RAW) advise_source(r, &sl->src, advice);
            else if (sl->src.kind == CS_CONSTEXPR) advise_consts(r, &r->m->ops[sl->src.op], advice); /* depth bounded at load */
        }
    }
}

/* Frees every runtime value that `reader` (op i, or an op fused into it) reads last. */
static void free_dead(irun *r, const iop *reader, int i) {
    for (int p = 0; p < reader->n_params; p++) {
        for (int k = 0; k < reader->params[p].n; k++) {
            int sidx = reader->params[p].slots[k];
            if (r->m->slots[sidx].last_use == i && r->vals[sidx]) {
                sdc_it_free(r->vals[sidx]);
                r->vals[sidx] = NULL;
            }
        }
    }
}

/* Adds time and work to the row of `type` (a handful of types: a linear search). */
static void profile_row(sdc_model *m, const char *type, double seconds, double flops) {
    int k = 0;
    while (k < m->n_prof && strcmp(m->prof[k].op_type, type)) k++;
    if (k == m->n_prof) m->prof[m->n_prof++].op_type = type;
    m->prof[k].seconds += seconds;
    m->prof[k].flops += flops;
    m->prof[k].calls++;
}

static void profile_add(sdc_model *m, const iop *op, double seconds, double flops) {
    profile_row(m, op->fuse_first >= 0 ? op->def->type : op->type, seconds, flops);
}

/* Drops the pages of the weights read so far, in the profile's row of its own: they are
   several ops' weights. */
static void drop_read_weights(irun *r) {
    if (!r->drops->n) return;
    double t0 = sdc_now_seconds();
    sdc_drop_batch_flush(r->drops);
    profile_row(r->m, SDC_PROFILE_DROPS, sdc_now_seconds() - t0, 0);
}

int sdc_model_profile(const sdc_model *m, const sdc_op_profile **rows) {
    *rows = m->prof;
    return m->n_prof;
}

/* Whether op's outputs of dtype `dt` hold only values copied from inputs of that same dtype,
   which are already rounded to it (every value of an fp16 slot is: inputs, constants,
   constexpr values and op outputs are rounded when made), so rounding again changes nothing. */
static bool moves_exact(const sdc_model *m, const iop *op, int dt) {
    const char *const *moved = op->fuse_first >= 0 ? NULL : sdc_iop_moves(op->def->type);
    if (!moved) return false;
    for (int n = 0; n < SDC_IOP_MOVES && moved[n]; n++) {
        const iparam *p = sdc_rt_param(op, moved[n]);
        for (int k = 0; p && k < p->n; k++)
            if (m->slots[p->slots[k]].dtype != dt) return false;
    }
    return true;
}

/* The output rounded to its declared dtype, unless the kernel did it or it cannot change. */
static void round_output(irun *r, const iop *op, itensor *t) {
    sdc_model *m = r->m;
    if (m->exact_fp16_off || r->rounded || (t->dtype != MT_FP16 && t->dtype != MT_BF16) ||
        (t->dtype == MT_FP16 && moves_exact(m, op, MT_FP16))) /* bf16 inputs are not rounded when bound */
        return;
    if (t->dtype == MT_FP16) sdc_round_f16(m->pool, t->f, t->n);
    else
        for (size_t e = 0; e < t->n; e++) t->f[e] = sdc_bf16_to_f32(sdc_f32_to_bf16(t->f[e]));
}

static sdc_status run_op(irun *r, int i) {
    sdc_model *m = r->m;
    const iop *op = &m->ops[i];
    double t0 = sdc_now_seconds();
    r->op = op;
    r->flops = 0;
    r->rounded = false;
    advise_consts(r, op, ADVICE_POPULATE);
    sdc_status s = op->def->fn(r, op);
    free_temps(r);
    advise_consts(r, op, MADV_DONTNEED);
    if (s) return s;
    for (int k = 0; k < op->n_out; k++) {
        int o = op->outs[k];
        itensor *t = r->vals[o];
        if (!t) return sdc_rt_fail(r, op, SDC_E_INTERNAL, "output %d was not computed", k);
        round_output(r, op, t);
        if (m->slots[o].last_use < 0) { /* nobody reads it */
            sdc_it_free(t);
            r->vals[o] = NULL;
        }
    }
    free_dead(r, op, i);
    if (op->fuse_first >= 0) /* the ops it computes read their inputs here */
        for (int j = op->fuse_first; j < i; j++)
            if (m->ops[j].fused_into == i) free_dead(r, &m->ops[j], i);
    profile_add(m, op, sdc_now_seconds() - t0, r->flops);
    return SDC_OK;
}

/* const and constexpr ops are values, read when used */
static bool is_computed(const iop *op) { return op->def && !op->def->value && op->fused_into < 0; }

static sdc_status make_output(irun *r, int i, sdc_ndarray *o) {
    sdc_model *m = r->m;
    int s = m->outputs[i];
    itensor *t = sdc_interp_slot_value(r, NULL, s);
    if (!t) return r->err->code;
    o->name = sdc_strdup(m->slots[s].name);
    o->dtype = (sdc_nd_dtype)m->out_dtype[i];
    o->rank = t->rank;
    memcpy(o->shape, t->shape, sizeof(int64_t) * (size_t)t->rank);
    o->data = sdc_malloc(t->n * (o->dtype == SDC_ND_F16 ? 2 : 4));
    if (!o->name || !o->data) return sdc_fail(r->err, SDC_E_NOMEM, "out of memory");
    if (o->dtype == SDC_ND_F16) {
        uint16_t *h = o->data;
        for (size_t e = 0; e < t->n; e++) h[e] = sdc_f32_to_f16(it_getf(t, e));
    } else if (o->dtype == SDC_ND_F32) {
        float *f = o->data;
        for (size_t e = 0; e < t->n; e++) f[e] = it_getf(t, e);
    } else {
        int32_t *d = o->data;
        if (mt_is_float(t->dtype))
            for (size_t e = 0; e < t->n; e++) d[e] = (int32_t)t->f[e];
        else
            memcpy(d, t->i, t->n * 4);
    }
    return SDC_OK;
}

sdc_status sdc_model_predict(sdc_model *m, const sdc_ndarray *inputs, int n_inputs, sdc_ndarray **outputs, int *n_outputs,
                             char *errbuf, size_t err_size) {
    sdc_err err = {0};
    sdc_drop_batch drops = {0};
    irun r = {.m = m, .err = &err, .drops = &drops};
    sdc_status s = SDC_OK;
    sdc_ndarray *outs = NULL;
    *outputs = NULL;
    *n_outputs = 0;
    r.vals = sdc_calloc((size_t)m->n_slots, sizeof *r.vals);
    if (!r.vals) s = sdc_fail(&err, SDC_E_NOMEM, "out of memory");
    /* inputs: each declared one exactly once, nothing else */
    for (int k = 0; !s && k < n_inputs; k++) {
        int idx = -1;
        for (int i = 0; i < m->n_inputs; i++)
            if (inputs[k].name && !strcmp(inputs[k].name, m->in_desc[i].name)) idx = i;
        if (idx < 0) {
            char names[600] = "";
            size_t len = 0;
            for (int i = 0; i < m->n_inputs && len < sizeof names; i++)
                len += (size_t)snprintf(names + len, sizeof names - len, "%s%s", i ? ", " : "", m->in_desc[i].name);
            s = sdc_fail(&err, SDC_E_ARG, "%s: '%s' is not an input of the model (inputs: %s)", m->path,
                         inputs[k].name ? inputs[k].name : "(null)", names);
        } else if (r.vals[m->inputs[idx]]) {
            s = sdc_fail(&err, SDC_E_ARG, "%s: input '%s' is given twice", m->path, inputs[k].name);
        } else {
            s = bind_input(&r, idx, &inputs[k]);
        }
    }
    for (int i = 0; !s && i < m->n_inputs; i++) {
        if (!r.vals[m->inputs[i]]) {
            char want[200];
            s = sdc_fail(&err, SDC_E_ARG, "%s: input '%s' is missing (expected %s %s)", m->path, m->in_desc[i].name,
                         sdc_nd_dtype_name(m->in_desc[i].dtype), shape_str(m->in_desc[i].rank, m->in_desc[i].shape, want, sizeof want));
        }
    }
    uint64_t total = 0, done = 0;
    for (int i = 0; i < m->n_ops; i++) total += is_computed(&m->ops[i]);
    char what[4200];
    snprintf(what, sizeof what, "run %s", m->path);
    for (int i = 0; !s && i < m->n_ops; i++) {
        if (!is_computed(&m->ops[i])) continue;
        s = run_op(&r, i);
        if (!s && drops.resident >= DROP_BATCH_BYTES) drop_read_weights(&r);
        if (m->progress && !s) m->progress(m->progress_user, what, ++done, total);
    }
    drop_read_weights(&r);
    if (!s) {
        outs = sdc_calloc((size_t)m->n_outputs + 1, sizeof *outs);
        if (!outs) s = sdc_fail(&err, SDC_E_NOMEM, "out of memory");
        for (int i = 0; !s && i < m->n_outputs; i++) s = make_output(&r, i, &outs[i]);
        free_temps(&r);
    }
    if (r.vals)
        for (int i = 0; i < m->n_slots; i++) sdc_it_free(r.vals[i]);
    free_temps(&r);
    sdc_drop_batch_free(&drops);
    sdc_free(r.temps);
    sdc_free(r.vals);
    sdc_ibuf_trim();
    if (s) {
        sdc_ndarrays_free(outs, m->n_outputs);
    } else {
        *outputs = outs;
        *n_outputs = m->n_outputs;
    }
    if (errbuf && err_size) snprintf(errbuf, err_size, "%s", s ? err.msg : "");
    return s;
}

void sdc_ndarrays_free(sdc_ndarray *arrays, int n) {
    if (!arrays) return;
    for (int i = 0; i < n; i++) {
        sdc_free((void *)arrays[i].name);
        sdc_free(arrays[i].data);
    }
    sdc_free(arrays);
}

float *sdc_ndarray_to_f32(const sdc_ndarray *a) {
    size_t n = sdc_ndarray_numel(a);
    float *f = sdc_malloc(n * sizeof *f);
    if (!f) return NULL;
    for (size_t i = 0; i < n; i++) {
        if (a->dtype == SDC_ND_F32) f[i] = ((const float *)a->data)[i];
        else if (a->dtype == SDC_ND_F16) f[i] = sdc_f16_to_f32(((const uint16_t *)a->data)[i]);
        else f[i] = (float)((const int32_t *)a->data)[i];
    }
    return f;
}
