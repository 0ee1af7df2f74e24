/*
 * load_graph.c — an in-memory MIL graph (src/mil/graph.h) into the interpreter's flat program
 * (interp.h), the way load.c turns a package into one: one slot per var, one op per graph op,
 * constants as sources read when an op uses them. Everything after this (liveness, small
 * constants, the run) is shared with packages.
 *
 * A const's source points where its value already is: a builder's small bytes in the
 * graph's arena, or a weight's elements in the mapped safetensors file, in the file's dtype
 * (decoded to the var's dtype per use, as weight.bin's would be). The graph was checked
 * when it was built, so errors here are the graph's shape of things the interpreter lacks.
 */
#include "interp/from_graph.h"
#include "interp/interp.h"

typedef struct gloader {
    sdc_model *m;
    const mil_graph *g;
    sdc_err *err;
} gloader;

static sdc_status oom(gloader *L) { return sdc_fail(L->err, SDC_E_NOMEM, "out of memory"); }

/* A slot for var v with its type; its name is the graph's (borrowed). */
static int var_slot(gloader *L, const mil_var *v, slot_kind kind) {
    sdc_model *m = L->m;
    int s = sdc_interp_new_slot(m, v->name);
    if (s < 0 || !sdc_strmap_put(&m->names, v->name, s)) return -1;
    islot *sl = &m->slots[s];
    sl->dtype = (int)v->type.dtype;
    sl->rank = v->type.rank;
    memcpy(sl->shape, v->type.shape, sizeof(int64_t) * (size_t)v->type.rank);
    sl->kind = kind;
    return s;
}

/* Where const v's value is, in stored form. */
static sdc_status const_source(gloader *L, const mil_var *v, islot *sl) {
    if (v->lut_bits || v->transform)
        return sdc_fail(L->err, SDC_E_UNSUPPORTED, "%s: const '%s' is palettized; only dense graphs are evaluated",
                        L->m->path, v->name);
    csrc *c = &sl->src;
    uint64_t n = sdc_mil_numel(&v->type);
    switch (v->const_kind) {
    case MIL_CONST_STRING:
        sl->val = sdc_arena_alloc(&L->m->arena, sizeof(itensor));
        if (!sl->val) return oom(L);
        sl->val->dtype = MT_STRING;
        sl->val->n = 1;
        sl->val->s = v->str;
        return SDC_OK;
    case MIL_CONST_BYTES: /* little-endian in the var's dtype; bools one byte each */
        c->kind = CS_RAW;
        c->fmt = v->type.dtype == SDC_DT_BOOL ? RAW_U8 : sdc_interp_raw_fmt((int)v->type.dtype, &c->bits);
        c->ptr = v->bytes;
        c->n = (size_t)n;
        return SDC_OK;
    case MIL_CONST_WEIGHT: {
        const mil_weight *w = &v->weight;
        if (w->scale != 1.0f)
            return sdc_fail(L->err, SDC_E_UNSUPPORTED, "%s: weight '%s' is scaled when written; the interpreter reads "
                            "weights unscaled", L->m->path, v->name);
        c->kind = CS_RAW;
        c->fmt = sdc_interp_raw_fmt((int)w->src->dtype, &c->bits);
        c->ptr = w->src->data + w->first * sdc_dtype_size(w->src->dtype);
        c->n = (size_t)n;
        c->mapped = !w->src->in_memory; /* a file's mapping: its pages may be dropped */
        return SDC_OK;
    }
    case MIL_NOT_CONST:
    default: return sdc_fail(L->err, SDC_E_INTERNAL, "%s: '%s' is not a constant", L->m->path, v->name);
    }
}

static sdc_status add_op(gloader *L, const mil_op *go, int index) {
    sdc_model *m = L->m;
    iop *op = &m->ops[index];
    op->type = go->type;
    op->name = go->name;
    bool is_const = !strcmp(go->type, "const");
    op->def = is_const ? NULL : sdc_iop_find(go->type);
    if (!is_const && (!op->def || op->def->value))
        return sdc_fail(L->err, SDC_E_UNSUPPORTED, "%s: op type '%s' (op '%s') is not supported by the interpreter",
                        m->path, go->type, go->name);
    op->n_params = go->n_params;
    op->params = sdc_arena_alloc(&m->arena, sizeof(iparam) * (size_t)(go->n_params ? go->n_params : 1));
    if (!op->params) return oom(L);
    for (int p = 0; p < go->n_params; p++) {
        const mil_param *gp = &go->params[p];
        iparam *ip = &op->params[p];
        ip->name = gp->name;
        ip->n = gp->n;
        ip->slots = sdc_arena_alloc(&m->arena, sizeof(int) * (size_t)(gp->n ? gp->n : 1));
        if (!ip->slots) return oom(L);
        for (int k = 0; k < gp->n; k++) {
            int s = sdc_strmap_get(&m->names, gp->vars[k]->name);
            if (s < 0)
                return sdc_fail(L->err, SDC_E_INTERNAL, "%s: op '%s': input '%s' uses '%s', which is not defined before it",
                                m->path, go->name, gp->name, gp->vars[k]->name);
            ip->slots[k] = s;
        }
    }
    op->n_out = go->n_outputs;
    op->outs = sdc_arena_alloc(&m->arena, sizeof(int) * (size_t)(go->n_outputs ? go->n_outputs : 1));
    if (!op->outs) return oom(L);
    for (int k = 0; k < go->n_outputs; k++) {
        const mil_var *v = go->outputs[k];
        int s = var_slot(L, v, is_const ? SL_CONST : SL_OP);
        if (s < 0) return oom(L);
        m->slots[s].producer = index;
        op->outs[k] = s;
        if (is_const) {
            sdc_status st = const_source(L, v, &m->slots[s]);
            if (st) return st;
        }
    }
    return SDC_OK;
}

static int nd_of(int dt) { return dt == MT_FP16 ? SDC_ND_F16 : mt_is_float(dt) ? SDC_ND_F32 : SDC_ND_I32; }

/* in_desc / out_desc from the slots, as a package's description would say. */
static sdc_status describe(gloader *L) {
    sdc_model *m = L->m;
    m->in_desc = sdc_arena_alloc(&m->arena, sizeof(sdc_ndarray) * (size_t)(m->n_inputs + 1));
    m->out_desc = sdc_arena_alloc(&m->arena, sizeof(sdc_ndarray) * (size_t)(m->n_outputs + 1));
    m->out_dtype = sdc_arena_alloc(&m->arena, sizeof(int) * (size_t)(m->n_outputs + 1));
    if (!m->in_desc || !m->out_desc || !m->out_dtype) return oom(L);
    for (int i = 0; i < m->n_inputs + m->n_outputs; i++) {
        bool in = i < m->n_inputs;
        const islot *s = &m->slots[in ? m->inputs[i] : m->outputs[i - m->n_inputs]];
        sdc_ndarray *a = in ? &m->in_desc[i] : &m->out_desc[i - m->n_inputs];
        if (s->dtype == MT_STRING || (in && s->dtype != MT_FP32 && s->dtype != MT_FP16 && s->dtype != MT_INT32))
            return sdc_fail(L->err, SDC_E_UNSUPPORTED, "%s: %s '%s' is %s", m->path, in ? "input" : "output", s->name,
                            mt_name(s->dtype));
        a->name = s->name;
        a->rank = s->rank;
        memcpy(a->shape, s->shape, sizeof(int64_t) * (size_t)s->rank);
        a->dtype = (sdc_nd_dtype)nd_of(s->dtype);
        if (!in) m->out_dtype[i - m->n_inputs] = (int)a->dtype;
    }
    return SDC_OK;
}

static sdc_status build(gloader *L) {
    sdc_model *m = L->m;
    const mil_graph *g = L->g;
    if (!sdc_mil_graph_ok(g)) return sdc_fail(L->err, g->err.code, "%s: %s", m->path, g->err.msg);
    m->inputs = sdc_arena_alloc(&m->arena, sizeof(int) * (size_t)(g->n_inputs + 1));
    m->outputs = sdc_arena_alloc(&m->arena, sizeof(int) * (size_t)(g->n_outputs + 1));
    m->ops = sdc_calloc(g->n_ops + 1, sizeof(iop));
    if (!m->inputs || !m->outputs || !m->ops) return oom(L);
    for (int i = 0; i < g->n_inputs; i++) {
        int s = var_slot(L, g->inputs[i], SL_INPUT);
        if (s < 0) return oom(L);
        m->inputs[m->n_inputs++] = s;
    }
    for (size_t i = 0; i < g->n_ops; i++) {
        sdc_status st = add_op(L, g->ops[i], (int)i);
        m->n_ops = (int)i + 1;
        if (st) return st;
    }
    for (int i = 0; i < g->n_outputs; i++) {
        int s = sdc_strmap_get(&m->names, g->outputs[i]->name);
        if (s < 0) return sdc_fail(L->err, SDC_E_INTERNAL, "%s: output '%s' is not computed", m->path, g->outputs[i]->name);
        m->outputs[m->n_outputs++] = s;
    }
    return describe(L);
}

sdc_status sdc_interp_graph_load(const mil_graph *g, sdc_model *m, sdc_err *err) {
    gloader L = {.m = m, .g = g, .err = err};
    sdc_status s = build(&L);
    if (!s) s = sdc_interp_decode_small(m, err);
    if (!s) {
        sdc_interp_fuse(m);
        sdc_interp_fuse_norm(m);
        sdc_interp_fuse_geglu(m);
        sdc_interp_liveness(m);
    }
    return s;
}
