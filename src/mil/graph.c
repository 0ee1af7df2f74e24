/* graph.c — graph container, names, inputs/outputs and constants. Ops are in ops.c. */
#include "mil/graph.h"

#include "io/fp16.h"
#include "mil/graph_internal.h"

/* ---------------------------------------------------------------- graph */

mil_graph *sdc_mil_graph_new(int opset) {
    mil_graph *g = sdc_calloc(1, sizeof *g);
    if (!g) return NULL;
    sdc_arena_init(&g->arena);
    g->opset = opset;
    return g;
}

void sdc_mil_graph_free(mil_graph *g) {
    if (!g) return;
    sdc_strmap_clear(&g->names);
    sdc_free(g->ops);
    sdc_free(g->inputs);
    sdc_free(g->outputs);
    sdc_arena_free(&g->arena);
    sdc_free(g);
}

bool sdc_mil_graph_ok(const mil_graph *g) { return g->err.code == SDC_OK; }

void *sdc_mil_fail(mil_graph *g, sdc_status code, const char *fmt, ...) {
    if (g->err.code != SDC_OK) return NULL;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g->err.msg, sizeof g->err.msg, fmt, ap);
    va_end(ap);
    g->err.code = code;
    return NULL;
}

void *sdc_mil_oom(mil_graph *g) { return sdc_mil_fail(g, SDC_E_NOMEM, "out of memory while building the graph"); }

/* MIL identifiers: [A-Za-z_][A-Za-z0-9_@]*; we use the stricter [A-Za-z_][A-Za-z0-9_]*. */
static void sanitize_identifier(char *s) {
    for (char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9')))
            *p = '_';
}

void sdc_mil_scope(mil_graph *g, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g->scope, sizeof g->scope, fmt, ap);
    va_end(ap);
    sanitize_identifier(g->scope);
}

/* Reserves a fresh name "<scope>_<hint>" (or "<hint>"), adding "_<n>" until it is unused.
   Names that start with a digit or are MIL keywords get a prefix. */
const char *sdc_mil_fresh_name(mil_graph *g, const char *hint) {
    char base[384];
    if (g->scope[0])
        snprintf(base, sizeof base, "%s_%s", g->scope, hint);
    else
        snprintf(base, sizeof base, "%s", hint);
    sanitize_identifier(base);
    if (base[0] >= '0' && base[0] <= '9') {
        memmove(base + 1, base, strlen(base) + 1 < sizeof base - 1 ? strlen(base) + 1 : sizeof base - 2);
        base[0] = '_';
    }
    char name[400];
    snprintf(name, sizeof name, "%s", base);
    for (unsigned n = 1; sdc_strmap_get(&g->names, name) >= 0; n++) snprintf(name, sizeof name, "%s_%u", base, n);
    char *s = sdc_arena_strdup(&g->arena, name);
    if (!s || !sdc_strmap_put(&g->names, s, 1)) return sdc_mil_oom(g);
    return s;
}

/* Reserves `name`: false when it is taken — or when reserving it ran out of memory, which
   then fails the graph (so a caller's "used twice" never replaces the out-of-memory error). */
static bool reserve_name(mil_graph *g, const char *name) {
    if (sdc_strmap_get(&g->names, name) >= 0) return false;
    char *s = sdc_arena_strdup(&g->arena, name);
    if (s && sdc_strmap_put(&g->names, s, 1)) return true;
    sdc_mil_oom(g);
    return false;
}

static bool push_var(mil_graph *g, mil_var ***arr, int *n, int *cap, mil_var *v) {
    if (*n == *cap) {
        int c = *cap ? *cap * 2 : 8;
        mil_var **a = sdc_realloc(*arr, (size_t)c * sizeof *a);
        if (!a) return false;
        *arr = a;
        *cap = c;
    }
    (*arr)[(*n)++] = v;
    return true;
}

mil_var *sdc_mil_input(mil_graph *g, const char *name, sdc_dtype dtype, int rank, const int64_t *shape) {
    if (!sdc_mil_graph_ok(g)) return NULL;
    SDC_ASSERT(rank >= 0 && rank <= SDC_MAX_RANK);
    if (!reserve_name(g, name)) return sdc_mil_fail(g, SDC_E_INTERNAL, "input name '%s' used twice", name);
    mil_var *v = sdc_arena_alloc(&g->arena, sizeof *v);
    if (!v) return sdc_mil_oom(g);
    v->name = sdc_arena_strdup(&g->arena, name);
    if (!v->name) return sdc_mil_oom(g);
    v->type.dtype = dtype;
    v->type.rank = rank;
    memcpy(v->type.shape, shape, (size_t)rank * sizeof *shape);
    if (!push_var(g, &g->inputs, &g->n_inputs, &g->cap_inputs, v)) return sdc_mil_oom(g);
    return v;
}

bool sdc_mil_output(mil_graph *g, mil_var *v, const char *name) {
    if (!v || !sdc_mil_graph_ok(g)) return false;
    if (!v->producer || v->const_kind != MIL_NOT_CONST) {
        sdc_mil_fail(g, SDC_E_INTERNAL, "output '%s' must be computed by an op", name);
        return false;
    }
    if (strcmp(v->name, name) != 0) {
        if (!reserve_name(g, name)) {
            sdc_mil_fail(g, SDC_E_INTERNAL, "output name '%s' already in use", name);
            return false;
        }
        const char *renamed = sdc_arena_strdup(&g->arena, name);
        if (!renamed) {
            sdc_mil_oom(g);
            return false;
        }
        v->name = renamed;
    }
    if (!push_var(g, &g->outputs, &g->n_outputs, &g->cap_outputs, v)) {
        sdc_mil_oom(g);
        return false;
    }
    return true;
}

/* ---------------------------------------------------------------- shapes */

uint64_t sdc_mil_numel(const mil_type *t) {
    uint64_t n = 1;
    for (int i = 0; i < t->rank; i++) n *= (uint64_t)t->shape[i];
    return n;
}

bool sdc_mil_shape_eq(const mil_type *a, const mil_type *b) {
    if (a->rank != b->rank) return false;
    for (int i = 0; i < a->rank; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}

const char *sdc_mil_shape_str(const mil_type *t, char *buf, size_t size) {
    return sdc_shape_str(t->shape, t->rank, buf, size);
}

/* ---------------------------------------------------------------- ops (shared plumbing) */

/* Room for one more op in g->ops, and an arena op with room for `n_outputs` outputs; NULL
   (the graph marked failed) when out of memory. The caller appends the op when it is whole. */
static mil_op *alloc_op(mil_graph *g, int n_outputs, mil_var ***outs) {
    if (!sdc_mil_graph_ok(g)) return NULL;
    if (g->n_ops == g->cap_ops) {
        size_t c = g->cap_ops ? g->cap_ops * 2 : 256;
        mil_op **ops = sdc_realloc(g->ops, c * sizeof *ops);
        if (!ops) return sdc_mil_oom(g);
        g->ops = ops;
        g->cap_ops = c;
    }
    mil_op *op = sdc_arena_alloc(&g->arena, sizeof *op);
    *outs = sdc_arena_alloc(&g->arena, (size_t)(n_outputs ? n_outputs : 1) * sizeof **outs);
    if (!op || !*outs) return sdc_mil_oom(g);
    return op;
}

mil_op *sdc_mil_new_op(mil_graph *g, const char *type, int n_outputs) {
    mil_var **outs;
    mil_op *op = alloc_op(g, n_outputs, &outs);
    if (!op) return NULL;
    op->type = type;
    op->name = sdc_mil_fresh_name(g, type);
    op->n_outputs = n_outputs;
    op->outputs = outs;
    for (int i = 0; i < n_outputs; i++) {
        mil_var *v = sdc_arena_alloc(&g->arena, sizeof *v);
        if (!v) return sdc_mil_oom(g);
        v->producer = op;
        v->name = i == 0 ? op->name : sdc_mil_fresh_name(g, type);
        outs[i] = v;
    }
    if (!op->name) return NULL;
    g->ops[g->n_ops++] = op;
    return op;
}

bool sdc_mil_set_param(mil_graph *g, mil_op *op, const char *name, int n, mil_var **vars) {
    if (!op) return false;
    SDC_ASSERT(op->n_params < MIL_MAX_PARAMS);
    for (int i = 0; i < n; i++)
        if (!vars[i]) return false;
    mil_var **copy = sdc_arena_alloc(&g->arena, (size_t)n * sizeof *copy);
    if (!copy) return sdc_mil_oom(g) != NULL;
    memcpy(copy, vars, (size_t)n * sizeof *copy);
    op->params[op->n_params++] = (mil_param){name, n, copy};
    return true;
}

bool sdc_mil_param1(mil_graph *g, mil_op *op, const char *name, mil_var *v) {
    return sdc_mil_set_param(g, op, name, 1, &v);
}

/* ---------------------------------------------------------------- constants */

static mil_var *new_const(mil_graph *g, const char *hint, sdc_dtype dtype, int rank, const int64_t *shape) {
    mil_op *op = sdc_mil_new_op(g, "const", 1);
    if (!op) return NULL;
    /* const ops are named after what they hold, not "const" */
    mil_var *v = op->outputs[0];
    op->name = v->name = sdc_mil_fresh_name(g, hint);
    v->type.dtype = dtype;
    v->type.rank = rank;
    if (rank) memcpy(v->type.shape, shape, (size_t)rank * sizeof *shape);
    return op->name ? v : NULL;
}

mil_var *sdc_mil_const_weight(mil_graph *g, const sdc_tensor *src, sdc_dtype dtype, int rank,
                          const int64_t *shape, uint64_t first) {
    if (!sdc_mil_graph_ok(g)) return NULL;
    SDC_ASSERT(dtype == SDC_DT_F16 || dtype == SDC_DT_F32);
    mil_var *v = new_const(g, src->name, dtype, rank, shape);
    if (!v) return NULL;
    uint64_t n = sdc_mil_numel(&v->type), end;
    if (!sdc_add_u64(first, n, &end) || end > src->numel)
        return sdc_mil_fail(g, SDC_E_INTERNAL, "weight view [%llu, +%llu) outside tensor '%s'",
                        (unsigned long long)first, (unsigned long long)n, src->name);
    v->const_kind = MIL_CONST_WEIGHT;
    v->weight = (mil_weight){src, first, 1.0f};
    return v;
}

mil_var *sdc_mil_const_floats(mil_graph *g, sdc_dtype dtype, int rank, const int64_t *shape,
                          const float *values) {
    SDC_ASSERT(dtype == SDC_DT_F16 || dtype == SDC_DT_F32);
    mil_var *v = new_const(g, rank ? "const" : "scalar", dtype, rank, shape);
    if (!v) return NULL;
    uint64_t n = sdc_mil_numel(&v->type);
    void *bytes = sdc_arena_alloc(&g->arena, n * sdc_dtype_size(dtype));
    if (!bytes) return sdc_mil_oom(g);
    if (dtype == SDC_DT_F32)
        memcpy(bytes, values, n * sizeof(float));
    else
        for (uint64_t i = 0; i < n; i++) ((uint16_t *)bytes)[i] = sdc_f32_to_f16(values[i]);
    v->const_kind = MIL_CONST_BYTES;
    v->bytes = bytes;
    return v;
}

mil_var *sdc_mil_const_scalar(mil_graph *g, sdc_dtype dtype, float value) {
    return sdc_mil_const_floats(g, dtype, 0, NULL, &value);
}

mil_var *sdc_mil_const_ints(mil_graph *g, int n, const int32_t *values) {
    int64_t shape[1] = {n};
    mil_var *v = new_const(g, "ints", SDC_DT_I32, 1, shape);
    if (!v) return NULL;
    int32_t *bytes = sdc_arena_alloc(&g->arena, (size_t)n * sizeof *bytes);
    if (!bytes) return sdc_mil_oom(g);
    memcpy(bytes, values, (size_t)n * sizeof *bytes);
    v->const_kind = MIL_CONST_BYTES;
    v->bytes = bytes;
    return v;
}

mil_var *sdc_mil_const_int(mil_graph *g, int32_t value) {
    mil_var *v = new_const(g, "int", SDC_DT_I32, 0, NULL);
    if (!v) return NULL;
    int32_t *bytes = sdc_arena_alloc(&g->arena, sizeof *bytes);
    if (!bytes) return sdc_mil_oom(g);
    *bytes = value;
    v->const_kind = MIL_CONST_BYTES;
    v->bytes = bytes;
    return v;
}

mil_var *sdc_mil_const_bool(mil_graph *g, bool value) {
    mil_var *v = new_const(g, "bool", SDC_DT_BOOL, 0, NULL);
    if (!v) return NULL;
    uint8_t *bytes = sdc_arena_alloc(&g->arena, 1);
    if (!bytes) return sdc_mil_oom(g);
    *bytes = value;
    v->const_kind = MIL_CONST_BYTES;
    v->bytes = bytes;
    return v;
}

mil_var *sdc_mil_const_bools(mil_graph *g, int n, const int32_t *values) {
    int64_t shape[1] = {n};
    mil_var *v = new_const(g, "bools", SDC_DT_BOOL, 1, shape);
    if (!v) return NULL;
    uint8_t *bytes = sdc_arena_alloc(&g->arena, (size_t)n);
    if (!bytes) return sdc_mil_oom(g);
    for (int i = 0; i < n; i++) bytes[i] = values[i] != 0;
    v->const_kind = MIL_CONST_BYTES;
    v->bytes = bytes;
    return v;
}

mil_var *sdc_mil_const_string(mil_graph *g, const char *value) {
    mil_var *v = new_const(g, "str", SDC_DT_STRING, 0, NULL);
    if (!v) return NULL;
    v->const_kind = MIL_CONST_STRING;
    v->str = sdc_arena_strdup(&g->arena, value);
    return v->str ? v : sdc_mil_oom(g);
}

/* ---------------------------------------------------------------- for passes */

bool sdc_mil_op_is_const(const mil_op *op) {
    if (!strcmp(op->type, "const") || !strncmp(op->type, "constexpr_", 10)) return true;
    return op->n_outputs > 0 && op->outputs[0]->const_kind != MIL_NOT_CONST;
}

uint64_t sdc_mil_const_nbytes(const mil_var *v) {
    mil_storage st = sdc_mil_const_storage(v);
    if (v->lut_bits) return st.blob_bytes;
    return st.n_parts ? st.part[0].nbytes : 0;
}

bool sdc_mil_name_taken(const mil_graph *g, const char *name) { return sdc_strmap_get(&g->names, name) >= 0; }

bool sdc_mil_reserve_name(mil_graph *g, const char *name) { return reserve_name(g, name); }

const char *sdc_mil_unique_name(mil_graph *g, const char *hint) { return sdc_mil_fresh_name(g, hint); }

mil_op *sdc_mil_clone_op(mil_graph *g, const mil_op *src, mil_var *(*map)(void *user, const mil_var *v), void *user) {
    mil_var **outs;
    mil_op *op = alloc_op(g, src->n_outputs, &outs);
    if (!op) return NULL;
    *op = *src;
    op->outputs = outs;
    for (int i = 0; i < src->n_outputs; i++) {
        mil_var *v = sdc_arena_alloc(&g->arena, sizeof *v);
        if (!v) return sdc_mil_oom(g);
        *v = *src->outputs[i];
        v->producer = op;
        outs[i] = v;
    }
    for (int p = 0; p < src->n_params; p++) {
        const mil_param *sp = &src->params[p];
        mil_var **vars = sdc_arena_alloc(&g->arena, (size_t)(sp->n ? sp->n : 1) * sizeof *vars);
        if (!vars) return sdc_mil_oom(g);
        for (int k = 0; k < sp->n; k++)
            if (!(vars[k] = map(user, sp->vars[k])))
                return sdc_mil_fail(g, SDC_E_INTERNAL, "copying op '%s': its input '%s' has no copy", src->name,
                                sp->vars[k]->name);
        op->params[p].vars = vars;
    }
    g->ops[g->n_ops++] = op;
    return op;
}

/* ---------------------------------------------------------------- palettized consts */

bool sdc_mil_palettize_const(mil_graph *g, mil_var *v, int nbits, const mil_transform *t) {
    if (!sdc_mil_graph_ok(g)) return false;
    SDC_ASSERT(t && t->open && t->read && t->close);
    SDC_ASSERT(v->producer && v->producer->n_outputs == 1 && !v->lut_bits && nbits >= 1 && nbits <= 8 &&
               (v->const_kind == MIL_CONST_WEIGHT || v->const_kind == MIL_CONST_BYTES) &&
               (v->type.dtype == SDC_DT_F16 || v->type.dtype == SDC_DT_F32));
    char hint[400], scope[sizeof g->scope];
    snprintf(hint, sizeof hint, "%s_palettized", v->name);
    memcpy(scope, g->scope, sizeof scope); /* the name is not in the builder's current scope */
    g->scope[0] = 0;
    const char *name = sdc_mil_fresh_name(g, hint);
    memcpy(g->scope, scope, sizeof scope);
    if (!name) return false;
    v->producer->type = "constexpr_lut_to_dense";
    v->producer->name = v->name = name;
    v->lut_bits = nbits;
    v->lut_shaped = g->opset >= 8;
    v->transform = t;
    return true;
}

/* ---------------------------------------------------------------- how a const is stored */

/* coremltools writes a value to weight.bin from 10 elements on. */
static mil_stored_part stored_part(uint64_t count, int bits, uint64_t elements, bool blob_type) {
    mil_stored_part p = {.count = count, .bits = bits, .nbytes = (count * (uint64_t)bits + 7) / 8};
    p.in_blob = blob_type && elements >= 10;
    return p;
}

/* iOS 16 packs the indices into a uint8 vector (its elements are bytes); iOS 18 types them
   uintN in the const's shape, and the record declares the unused bits of the last byte. */
static void palettized_parts(const mil_var *v, mil_storage *st) {
    int nb = v->lut_bits;
    uint64_t n = sdc_mil_numel(&v->type), packed = (n * (uint64_t)nb + 7) / 8, entries = (uint64_t)1 << nb;
    mil_stored_part *idx = &st->part[MIL_PART_INDICES];
    *idx = stored_part(n, nb, v->lut_shaped ? n : packed, true);
    if (v->lut_shaped && nb < 8) idx->padding_bits = (uint32_t)((8 - (n * (uint64_t)nb) % 8) % 8);
    st->part[MIL_PART_TABLE] = stored_part(entries, 8 * (int)sdc_dtype_size(v->type.dtype), entries, true);
    st->n_parts = 2;
}

mil_storage sdc_mil_const_storage(const mil_var *v) {
    mil_storage st = {0};
    if (v->const_kind == MIL_NOT_CONST || v->const_kind == MIL_CONST_STRING) return st;
    if (v->lut_bits) {
        palettized_parts(v, &st);
    } else {
        uint64_t n = sdc_mil_numel(&v->type);
        st.part[0] = stored_part(n, 8 * (int)sdc_dtype_size(v->type.dtype), n, sdc_dtype_blob_code(v->type.dtype) != 0);
        st.n_parts = 1;
    }
    for (int i = 0; i < st.n_parts; i++) {
        if (!st.part[i].in_blob) continue;
        uint64_t end = MIL_BLOB_RECORD + st.part[i].nbytes;
        st.blob_bytes += st.part[i].nbytes;
        st.blob_span += (end + MIL_BLOB_ALIGN - 1) / MIL_BLOB_ALIGN * MIL_BLOB_ALIGN;
    }
    return st;
}

uint64_t sdc_mil_const_stored_bytes(const mil_var *v) { return sdc_mil_const_storage(v).blob_bytes; }
