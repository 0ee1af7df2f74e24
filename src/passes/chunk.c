/* chunk.c — the two halves of a graph, as coremltools' bisect_model cuts it (see chunk.h). */
#include "passes/chunk.h"

/* ---------------------------------------------------------------- what we know of each var
   Open addressing keyed by the var's address: the IR has no var ids. */

typedef struct var_info {
    const mil_var *key;
    size_t n_uses;   /* param bindings, plus one per graph output naming it */
    size_t last_use; /* index of the last op using it; SIZE_MAX when it is a graph output */
    bool graph_output, boundary, need1, need2;
    mil_var *copy1, *copy2;
} var_info;

typedef struct var_map {
    var_info *slots;
    size_t cap;
} var_map;

static size_t hash_ptr(const void *p) {
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (size_t)x;
}

/* The var's slot; a new one when `add`, else NULL for an unknown var. */
static var_info *vm_get(var_map *m, const mil_var *v, bool add) {
    for (size_t j = hash_ptr(v) & (m->cap - 1);; j = (j + 1) & (m->cap - 1)) {
        var_info *s = &m->slots[j];
        if (s->key == v) return s;
        if (!s->key) {
            if (!add) return NULL;
            s->key = v;
            return s;
        }
    }
}

typedef struct chunk_ctx {
    const mil_graph *g;
    var_map vars;
    bool *in1, *in2; /* per source op: copied into chunk 1 / chunk 2 */
    var_info **boundary;
    int n_boundary;
    sdc_err *err;
} chunk_ctx;

static mil_var *map1(void *user, const mil_var *v) {
    var_info *s = vm_get(&((chunk_ctx *)user)->vars, v, false);
    return s ? s->copy1 : NULL;
}

static mil_var *map2(void *user, const mil_var *v) {
    var_info *s = vm_get(&((chunk_ctx *)user)->vars, v, false);
    return s ? s->copy2 : NULL;
}

/* Bytes the cut counts for an op, as bisect_model: constants whose value is an array. A
   constexpr op with inputs is not counted itself; the constants feeding it are. */
static uint64_t counted_bytes(const mil_op *op) {
    if (!sdc_mil_op_is_const(op) || op->n_params > 0) return 0;
    uint64_t n = 0;
    for (int k = 0; k < op->n_outputs; k++)
        if (op->outputs[k]->type.rank > 0) n += sdc_mil_const_nbytes(op->outputs[k]);
    return n;
}

static sdc_status index_vars(chunk_ctx *cx) {
    const mil_graph *g = cx->g;
    size_t n_vars = (size_t)g->n_inputs, cap = 16;
    for (size_t i = 0; i < g->n_ops; i++) n_vars += (size_t)g->ops[i]->n_outputs;
    while (cap < 2 * n_vars) cap *= 2;
    cx->vars.cap = cap;
    cx->vars.slots = sdc_calloc(cap, sizeof *cx->vars.slots);
    if (!cx->vars.slots) return sdc_fail(cx->err, SDC_E_NOMEM, "out of memory");
    for (int i = 0; i < g->n_inputs; i++) vm_get(&cx->vars, g->inputs[i], true);
    for (size_t i = 0; i < g->n_ops; i++)
        for (int k = 0; k < g->ops[i]->n_outputs; k++) vm_get(&cx->vars, g->ops[i]->outputs[k], true);
    for (size_t i = 0; i < g->n_ops; i++) {
        const mil_op *op = g->ops[i];
        for (int p = 0; p < op->n_params; p++)
            for (int k = 0; k < op->params[p].n; k++) {
                var_info *s = vm_get(&cx->vars, op->params[p].vars[k], false);
                if (!s)
                    return sdc_fail(cx->err, SDC_E_INTERNAL, "chunking: op '%s' uses '%s', which no op makes",
                                    op->name, op->params[p].vars[k]->name);
                s->n_uses++;
                s->last_use = i;
            }
    }
    for (int i = 0; i < g->n_outputs; i++) {
        var_info *s = vm_get(&cx->vars, g->outputs[i], false);
        if (!s) return sdc_fail(cx->err, SDC_E_INTERNAL, "chunking: output '%s' is not made by an op", g->outputs[i]->name);
        s->n_uses++;
        s->last_use = SIZE_MAX;
        s->graph_output = true;
    }
    return SDC_OK;
}

/* The first op that is not a constant, at a cumulative constant size >= half the total, with
   one output used by exactly one op. */
static sdc_status find_cut(chunk_ctx *cx, mil_chunks *out) {
    const mil_graph *g = cx->g;
    uint64_t total = 0, cum = 0;
    for (size_t i = 0; i < g->n_ops; i++) total += counted_bytes(g->ops[i]);
    out->const_bytes = total;
    for (size_t i = 0; i < g->n_ops; i++) {
        const mil_op *op = g->ops[i];
        cum += counted_bytes(op);
        if (sdc_mil_op_is_const(op) || cum < total - total / 2 || op->n_outputs != 1) continue;
        const var_info *s = vm_get(&cx->vars, op->outputs[0], false);
        if (s->n_uses == 1 && !s->graph_output) {
            out->cut = i;
            out->cut_name = op->name;
            return SDC_OK;
        }
    }
    return sdc_fail(cx->err, SDC_E_UNSUPPORTED,
                    "chunking: no op past half of the weights has a single output used once; the graph cannot be cut");
}

/* Which ops each chunk needs, sweeping backwards from its outputs (dead-code elimination), and
   the boundary: non-constant vars of ops at or before the cut that chunk 2 uses. */
static sdc_status mark(chunk_ctx *cx, size_t cut) {
    const mil_graph *g = cx->g;
    for (int i = 0; i < g->n_outputs; i++) vm_get(&cx->vars, g->outputs[i], false)->need2 = true;
    for (size_t i = g->n_ops; i-- > 0;) {
        const mil_op *op = g->ops[i];
        bool needed = false;
        for (int k = 0; k < op->n_outputs; k++) needed |= vm_get(&cx->vars, op->outputs[k], false)->need2;
        if (!needed) continue;
        if (i <= cut && !sdc_mil_op_is_const(op)) {
            for (int k = 0; k < op->n_outputs; k++) {
                var_info *s = vm_get(&cx->vars, op->outputs[k], false);
                if (!s->need2) continue;
                if (s->graph_output)
                    return sdc_fail(cx->err, SDC_E_UNSUPPORTED, "chunking: output '%s' is made before the cut at '%s'",
                                    s->key->name, g->ops[cut]->name);
                sdc_dtype t = s->key->type.dtype;
                if (t != SDC_DT_F16 && t != SDC_DT_F32 && t != SDC_DT_I32)
                    return sdc_fail(cx->err, SDC_E_UNSUPPORTED,
                                    "chunking: tensor '%s' crosses the cut but is %s, which cannot be a model feature",
                                    s->key->name, sdc_dtype_name(t));
                s->boundary = s->need1 = true;
                cx->n_boundary++;
            }
            continue;
        }
        cx->in2[i] = true;
        for (int p = 0; p < op->n_params; p++)
            for (int k = 0; k < op->params[p].n; k++) vm_get(&cx->vars, op->params[p].vars[k], false)->need2 = true;
    }
    cx->boundary = sdc_calloc((size_t)(cx->n_boundary ? cx->n_boundary : 1), sizeof *cx->boundary);
    if (!cx->boundary) return sdc_fail(cx->err, SDC_E_NOMEM, "out of memory");
    int nb = 0;
    for (size_t i = 0; i <= cut; i++) /* in op order: deterministic, and the order values are made */
        for (int k = 0; k < g->ops[i]->n_outputs; k++) {
            var_info *s = vm_get(&cx->vars, g->ops[i]->outputs[k], false);
            if (s->boundary) cx->boundary[nb++] = s;
        }
    SDC_ASSERT(nb == cx->n_boundary);
    for (size_t i = cut + 1; i-- > 0;) {
        const mil_op *op = g->ops[i];
        bool needed = false;
        for (int k = 0; k < op->n_outputs; k++) needed |= vm_get(&cx->vars, op->outputs[k], false)->need1;
        if (!needed) continue;
        cx->in1[i] = true;
        for (int p = 0; p < op->n_params; p++)
            for (int k = 0; k < op->params[p].n; k++) vm_get(&cx->vars, op->params[p].vars[k], false)->need1 = true;
    }
    return SDC_OK;
}

static sdc_status graph_status(mil_graph *g, sdc_err *err, const char *which) {
    if (sdc_mil_graph_ok(g)) return SDC_OK;
    return sdc_fail(err, g->err.code, "chunking (%s): %s", which, g->err.msg);
}

/* Chunk 1: every original input, the ops the boundary needs, the boundary as outputs. A
   float16 boundary var is renamed and cast to float32 under its own name. */
static sdc_status build_chunk1(chunk_ctx *cx, size_t cut, mil_graph **out) {
    const mil_graph *g = cx->g;
    mil_graph *c1 = sdc_mil_graph_new(g->opset);
    if (!c1) return sdc_fail(cx->err, SDC_E_NOMEM, "out of memory");
    for (int i = 0; i < g->n_inputs; i++) {
        const mil_var *v = g->inputs[i];
        vm_get(&cx->vars, v, false)->copy1 = sdc_mil_input(c1, v->name, v->type.dtype, v->type.rank, v->type.shape);
    }
    for (size_t i = 0; i <= cut && sdc_mil_graph_ok(c1); i++) {
        if (!cx->in1[i]) continue;
        const mil_op *src = g->ops[i];
        mil_op *op = sdc_mil_clone_op(c1, src, map1, cx);
        if (!op) break;
        /* Names stay as they are, except a float16 boundary var's, which its cast takes. */
        bool op_name_free = true;
        for (int k = 0; k < src->n_outputs; k++) {
            var_info *s = vm_get(&cx->vars, src->outputs[k], false);
            s->copy1 = op->outputs[k];
            bool renamed = s->boundary && s->key->type.dtype == SDC_DT_F16;
            if (renamed && !strcmp(src->outputs[k]->name, src->name)) op_name_free = false;
            if (!renamed && strcmp(src->outputs[k]->name, src->name) && !sdc_mil_reserve_name(c1, src->outputs[k]->name))
                sdc_mil_fail(c1, SDC_E_INTERNAL, "name '%s' used twice", src->outputs[k]->name);
        }
        if (op_name_free && !sdc_mil_reserve_name(c1, src->name)) sdc_mil_fail(c1, SDC_E_INTERNAL, "name '%s' used twice", src->name);
    }
    for (int b = 0; b < cx->n_boundary && sdc_mil_graph_ok(c1); b++) {
        var_info *s = cx->boundary[b];
        mil_var *v = s->copy1;
        const char *name = s->key->name;
        if (s->key->type.dtype != SDC_DT_F16) {
            sdc_mil_output(c1, v, name);
            continue;
        }
        char hint[512];
        snprintf(hint, sizeof hint, "%s_fp16", name);
        sdc_mil_scope(c1, "%s", "");
        const char *fresh = sdc_mil_unique_name(c1, hint);
        if (!fresh) break;
        if (!strcmp(v->producer->name, name)) v->producer->name = fresh;
        v->name = fresh;
        sdc_mil_scope(c1, "%s", name);
        mil_var *f32 = sdc_mil_cast(c1, v, SDC_DT_F32);
        if (f32 && sdc_mil_output(c1, f32, name)) f32->producer->name = f32->name; /* op and var: the name */
    }
    sdc_mil_scope(c1, "%s", "");
    sdc_status st = graph_status(c1, cx->err, "chunk 1");
    if (st) sdc_mil_graph_free(c1);
    else *out = c1;
    return st;
}

/* Chunk 2: the original inputs still used, one input per boundary var (float32 for float16
   vars, cast back), the ops after the cut with the constants they use, the original outputs. */
static sdc_status build_chunk2(chunk_ctx *cx, mil_graph **out) {
    const mil_graph *g = cx->g;
    mil_graph *c2 = sdc_mil_graph_new(g->opset);
    if (!c2) return sdc_fail(cx->err, SDC_E_NOMEM, "out of memory");
    /* The copied ops' names first, so the casts' fresh names cannot take one of them. */
    for (size_t i = 0; i < g->n_ops; i++) {
        if (!cx->in2[i]) continue;
        const mil_op *src = g->ops[i];
        if (!sdc_mil_reserve_name(c2, src->name)) sdc_mil_fail(c2, SDC_E_INTERNAL, "name '%s' used twice", src->name);
        for (int k = 0; k < src->n_outputs; k++)
            if (strcmp(src->outputs[k]->name, src->name) && !sdc_mil_reserve_name(c2, src->outputs[k]->name))
                sdc_mil_fail(c2, SDC_E_INTERNAL, "name '%s' used twice", src->outputs[k]->name);
    }
    for (int i = 0; i < g->n_inputs; i++) {
        const mil_var *v = g->inputs[i];
        var_info *s = vm_get(&cx->vars, v, false);
        if (s->need2) s->copy2 = sdc_mil_input(c2, v->name, v->type.dtype, v->type.rank, v->type.shape);
    }
    for (int b = 0; b < cx->n_boundary && sdc_mil_graph_ok(c2); b++) {
        var_info *s = cx->boundary[b];
        const mil_type *t = &s->key->type;
        bool f16 = t->dtype == SDC_DT_F16;
        mil_var *in = sdc_mil_input(c2, s->key->name, f16 ? SDC_DT_F32 : t->dtype, t->rank, t->shape);
        sdc_mil_scope(c2, "%s", s->key->name);
        s->copy2 = f16 ? sdc_mil_cast(c2, in, SDC_DT_F16) : in;
    }
    sdc_mil_scope(c2, "%s", "");
    for (size_t i = 0; i < g->n_ops && sdc_mil_graph_ok(c2); i++) {
        if (!cx->in2[i]) continue;
        mil_op *op = sdc_mil_clone_op(c2, g->ops[i], map2, cx);
        if (!op) break;
        for (int k = 0; k < op->n_outputs; k++) vm_get(&cx->vars, g->ops[i]->outputs[k], false)->copy2 = op->outputs[k];
    }
    for (int i = 0; i < g->n_outputs && sdc_mil_graph_ok(c2); i++)
        sdc_mil_output(c2, vm_get(&cx->vars, g->outputs[i], false)->copy2, g->outputs[i]->name);
    sdc_status st = graph_status(c2, cx->err, "chunk 2");
    if (st) sdc_mil_graph_free(c2);
    else *out = c2;
    return st;
}

sdc_status sdc_chunk_graph(const mil_graph *g, mil_chunks *out, sdc_err *err) {
    memset(out, 0, sizeof *out);
    if (!sdc_mil_graph_ok(g)) return sdc_fail(err, g->err.code, "%s", g->err.msg);
    chunk_ctx cx = {.g = g, .err = err};
    cx.in1 = sdc_calloc(g->n_ops ? g->n_ops : 1, sizeof *cx.in1);
    cx.in2 = sdc_calloc(g->n_ops ? g->n_ops : 1, sizeof *cx.in2);
    sdc_status s = (!cx.in1 || !cx.in2) ? sdc_fail(err, SDC_E_NOMEM, "out of memory") : SDC_OK;
    if (!s) s = index_vars(&cx);
    if (!s) s = find_cut(&cx, out);
    if (!s) s = mark(&cx, out->cut);
    if (!s) s = build_chunk1(&cx, out->cut, &out->chunk1);
    if (!s) s = build_chunk2(&cx, &out->chunk2);
    if (!s) {
        out->n_boundary = cx.n_boundary;
        for (size_t i = 0; i < g->n_ops; i++) {
            if (cx.in1[i]) out->bytes1 += counted_bytes(g->ops[i]);
            if (cx.in2[i]) out->bytes2 += counted_bytes(g->ops[i]);
        }
    } else {
        sdc_chunks_free(out);
    }
    sdc_free(cx.in1);
    sdc_free(cx.in2);
    sdc_free(cx.boundary);
    sdc_free(cx.vars.slots);
    return s;
}

void sdc_chunks_free(mil_chunks *c) {
    if (!c) return;
    sdc_mil_graph_free(c->chunk1);
    sdc_mil_graph_free(c->chunk2);
    c->chunk1 = c->chunk2 = NULL;
}
