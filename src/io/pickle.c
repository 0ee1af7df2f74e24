/*
 * pickle.c — a pickle VM that builds data and never runs code (see pickle.h). The opcodes and
 * their operands are those of CPython's Lib/pickletools.py; what the allowed globals stand
 * for is what torch/_utils.py and torch/serialization.py do with them.
 */
#include "io/pickle.h"

struct sdc_pk_vm {
    sdc_arena arena;
    const char *where;
    sdc_pk_persistent_fn persistent;
    void *user;
    size_t objects;
    /* one load */
    const uint8_t *begin, *p, *end;
    size_t op_at;
    const char *op_name;
    sdc_pk_obj **stack;
    size_t sp, stack_cap;
    size_t *marks;
    size_t nmarks, marks_cap;
    sdc_pk_obj **memo;
    size_t memo_cap, memo_count; /* slots allocated, slots set */
    bool stopped;
    sdc_pk_obj *result;
};

/* ---- errors and allocation ------------------------------------------------------------ */

/* Every error names where (file and entry), the opcode and its offset. */
static sdc_status pk_fail(sdc_pk_vm *vm, sdc_err *err, sdc_status code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static sdc_status pk_fail(sdc_pk_vm *vm, sdc_err *err, sdc_status code, const char *fmt, ...) {
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return sdc_fail(err, code, "%s: pickle opcode %s at offset %zu: %s", vm->where, vm->op_name ? vm->op_name : "?",
                    vm->op_at, what);
}

sdc_pk_obj *sdc_pk_new(sdc_pk_vm *vm, sdc_pk_kind kind, sdc_err *err) {
    if (vm->objects >= SDC_PK_MAX_OBJECTS) {
        pk_fail(vm, err, SDC_E_FORMAT, "more than %u objects", SDC_PK_MAX_OBJECTS);
        return NULL;
    }
    sdc_pk_obj *o = sdc_arena_alloc(&vm->arena, sizeof *o);
    if (!o) {
        pk_fail(vm, err, SDC_E_NOMEM, "out of memory");
        return NULL;
    }
    vm->objects++;
    o->kind = kind;
    return o;
}

static void *vm_alloc(sdc_pk_vm *vm, size_t n, sdc_err *err) {
    void *p = sdc_arena_alloc(&vm->arena, n ? n : 1);
    if (!p) pk_fail(vm, err, SDC_E_NOMEM, "out of memory");
    return p;
}

/* Grows a pointer array (arena-backed: the old block stays until the VM is freed, so growth by
   doubling wastes at most as much as it keeps). */
static bool grow_ptrs(sdc_pk_vm *vm, sdc_pk_obj ***items, size_t n, size_t *cap, size_t want, sdc_err *err) {
    if (want <= *cap) return true;
    size_t c = *cap ? *cap : 4;
    while (c < want) c *= 2;
    sdc_pk_obj **fresh = vm_alloc(vm, c * sizeof *fresh, err);
    if (!fresh) return false;
    if (n) memcpy(fresh, *items, n * sizeof *fresh);
    *items = fresh;
    *cap = c;
    return true;
}

const char *sdc_pk_kind_name(sdc_pk_kind kind) {
    static const char *const names[] = {
        [SDC_PK_NONE] = "None",       [SDC_PK_BOOL] = "bool",         [SDC_PK_INT] = "int",
        [SDC_PK_BIGINT] = "int",      [SDC_PK_FLOAT] = "float",       [SDC_PK_STR] = "str",
        [SDC_PK_BYTES] = "bytes",     [SDC_PK_TUPLE] = "tuple",       [SDC_PK_LIST] = "list",
        [SDC_PK_SET] = "set",         [SDC_PK_DICT] = "dict",         [SDC_PK_GLOBAL] = "global",
        [SDC_PK_OPAQUE] = "placeholder", [SDC_PK_STORAGE] = "storage", [SDC_PK_TENSOR] = "tensor",
    };
    return (size_t)kind < SDC_COUNT_OF(names) && names[kind] ? names[kind] : "?";
}

bool sdc_pk_is_str(const sdc_pk_obj *o, const char *s) {
    return o && o->kind == SDC_PK_STR && o->u.str.len == strlen(s) && memcmp(o->u.str.s, s, o->u.str.len) == 0;
}

const sdc_pk_obj *sdc_pk_dict_get(const sdc_pk_obj *dict, const char *key) {
    if (!dict || dict->kind != SDC_PK_DICT) return NULL;
    for (size_t i = dict->u.dict.n; i-- > 0;)
        if (sdc_pk_is_str(dict->u.dict.keys[i], key)) return dict->u.dict.vals[i];
    return NULL;
}

/* ---- reading operands ------------------------------------------------------------------- */

/* The next n operand bytes, or an error when the pickle ends first. */
static const uint8_t *take(sdc_pk_vm *vm, uint64_t n, sdc_err *err) {
    if (n > (uint64_t)(vm->end - vm->p)) {
        pk_fail(vm, err, SDC_E_FORMAT, "operand of %llu bytes runs past the end of the pickle (%zu bytes left)",
                (unsigned long long)n, (size_t)(vm->end - vm->p));
        return NULL;
    }
    const uint8_t *at = vm->p;
    vm->p += n;
    return at;
}

/* A little-endian length operand of n bytes. */
static bool take_len(sdc_pk_vm *vm, size_t n, uint64_t *len, sdc_err *err) {
    const uint8_t *b = take(vm, n, err);
    if (!b) return false;
    *len = sdc_load_le(b, n);
    return true;
}

/* A text line operand (GLOBAL, INST), without its newline. */
static const char *take_line(sdc_pk_vm *vm, sdc_err *err) {
    size_t left = (size_t)(vm->end - vm->p), limit = left < 1024 ? left : 1024;
    const uint8_t *nl = memchr(vm->p, '\n', limit);
    if (!nl) {
        pk_fail(vm, err, SDC_E_FORMAT, "no newline within %zu bytes", limit);
        return NULL;
    }
    size_t n = (size_t)(nl - vm->p);
    if (memchr(vm->p, 0, n)) { /* a name must not match an allowed one up to a NUL */
        pk_fail(vm, err, SDC_E_FORMAT, "NUL byte in a module or global name");
        return NULL;
    }
    char *s = vm_alloc(vm, n + 1, err);
    if (!s) return NULL;
    memcpy(s, vm->p, n);
    vm->p = nl + 1;
    return s;
}

/* ---- the stack -------------------------------------------------------------------------- */

static sdc_status push(sdc_pk_vm *vm, sdc_pk_obj *o, sdc_err *err) {
    if (!o) return err->code ? err->code : SDC_E_NOMEM;
    if (vm->sp == vm->stack_cap) {
        if (vm->sp >= SDC_PK_MAX_STACK)
            return pk_fail(vm, err, SDC_E_FORMAT, "stack deeper than %u values", SDC_PK_MAX_STACK);
        size_t cap = vm->stack_cap ? vm->stack_cap * 2 : 64;
        sdc_pk_obj **s = sdc_realloc(vm->stack, cap * sizeof *s);
        if (!s) return pk_fail(vm, err, SDC_E_NOMEM, "out of memory");
        vm->stack = s;
        vm->stack_cap = cap;
    }
    vm->stack[vm->sp++] = o;
    return SDC_OK;
}

/* The lowest index of the stack that the current opcode may pop: the last mark. */
static size_t floor_of(const sdc_pk_vm *vm) { return vm->nmarks ? vm->marks[vm->nmarks - 1] : 0; }

static sdc_pk_obj *pop(sdc_pk_vm *vm, sdc_err *err) {
    if (vm->sp <= floor_of(vm)) {
        pk_fail(vm, err, SDC_E_FORMAT, "stack underflow");
        return NULL;
    }
    return vm->stack[--vm->sp];
}

static sdc_pk_obj *top(sdc_pk_vm *vm, sdc_err *err) {
    if (vm->sp <= floor_of(vm)) {
        pk_fail(vm, err, SDC_E_FORMAT, "stack underflow");
        return NULL;
    }
    return vm->stack[vm->sp - 1];
}

/* Pops everything above the last mark and the mark itself: *items (valid until the next push)
   and *n. */
static sdc_status pop_mark(sdc_pk_vm *vm, sdc_pk_obj ***items, size_t *n, sdc_err *err) {
    if (!vm->nmarks) return pk_fail(vm, err, SDC_E_FORMAT, "no MARK on the stack");
    size_t m = vm->marks[--vm->nmarks];
    *items = vm->stack ? vm->stack + m : NULL; /* a MARK on an empty stack, before any push */
    *n = vm->sp - m;
    vm->sp = m;
    return SDC_OK;
}

static sdc_pk_obj *make_seq(sdc_pk_vm *vm, sdc_pk_kind kind, sdc_pk_obj **items, size_t n, sdc_err *err) {
    sdc_pk_obj *o = sdc_pk_new(vm, kind, err);
    if (!o || !grow_ptrs(vm, &o->u.seq.items, 0, &o->u.seq.cap, n, err)) return NULL;
    if (n) memcpy(o->u.seq.items, items, n * sizeof *items);
    o->u.seq.n = n;
    return o;
}

static sdc_pk_obj *make_str(sdc_pk_vm *vm, sdc_pk_kind kind, const uint8_t *s, size_t n, sdc_err *err) {
    sdc_pk_obj *o = sdc_pk_new(vm, kind, err);
    char *copy = o ? vm_alloc(vm, n + 1, err) : NULL;
    if (!copy) return NULL;
    if (n) memcpy(copy, s, n);
    o->u.str.s = copy;
    o->u.str.len = n;
    return o;
}

static sdc_pk_obj *make_int(sdc_pk_vm *vm, int64_t v, sdc_err *err) {
    sdc_pk_obj *o = sdc_pk_new(vm, SDC_PK_INT, err);
    if (o) o->u.i = v;
    return o;
}

/* ---- globals ---------------------------------------------------------------------------- */

static const struct {
    const char *module, *name;
    sdc_pk_fn fn;
} ALLOWED_GLOBALS[] = {
    {"torch._utils", "_rebuild_tensor_v2", SDC_PK_FN_REBUILD_TENSOR_V2},
    {"torch._utils", "_rebuild_tensor", SDC_PK_FN_REBUILD_TENSOR},
    {"torch._utils", "_rebuild_parameter", SDC_PK_FN_REBUILD_PARAMETER},
    {"torch._utils", "_rebuild_parameter_with_state", SDC_PK_FN_REBUILD_PARAMETER},
    {"torch._tensor", "_rebuild_from_type_v2", SDC_PK_FN_REBUILD_FROM_TYPE},
    {"torch.tensor", "_rebuild_from_type_v2", SDC_PK_FN_REBUILD_FROM_TYPE}, /* torch's load_module_mapping */
    {"collections", "OrderedDict", SDC_PK_FN_ORDERED_DICT},
    {"torch", "Size", SDC_PK_FN_SIZE},
};

/* torch.<Name>Storage → element type (torch/storage.py's _dtype_to_storage_type_map); the
   complex, quantized and 8-bit float ones are storages of dtypes sdcoreml does not read. */
static const struct {
    const char *name;
    sdc_dtype dtype;
} STORAGE_TYPES[] = {
    {"DoubleStorage", SDC_DT_F64}, {"FloatStorage", SDC_DT_F32}, {"HalfStorage", SDC_DT_F16},
    {"BFloat16Storage", SDC_DT_BF16}, {"LongStorage", SDC_DT_I64}, {"IntStorage", SDC_DT_I32},
    {"ShortStorage", SDC_DT_I16}, {"CharStorage", SDC_DT_I8}, {"ByteStorage", SDC_DT_U8},
    {"BoolStorage", SDC_DT_BOOL}, {"UntypedStorage", SDC_DT_U8},
    {"ComplexFloatStorage", SDC_DT_INVALID}, {"ComplexDoubleStorage", SDC_DT_INVALID},
    {"QInt8Storage", SDC_DT_INVALID}, {"QUInt8Storage", SDC_DT_INVALID}, {"QInt32Storage", SDC_DT_INVALID},
    {"QUInt4x2Storage", SDC_DT_INVALID}, {"QUInt2x4Storage", SDC_DT_INVALID},
};

static void set_global(sdc_pk_obj *o, const char *module, const char *name, sdc_pk_fn fn, sdc_dtype dtype) {
    o->u.global.module = module;
    o->u.global.name = name;
    o->u.global.fn = fn;
    o->u.global.dtype = dtype;
}

/* A global as data: an allowed one, or a placeholder that only remembers its name. */
static sdc_pk_obj *resolve_global(sdc_pk_vm *vm, const char *module, const char *name, sdc_err *err) {
    for (size_t i = 0; i < SDC_COUNT_OF(ALLOWED_GLOBALS); i++) {
        if (strcmp(module, ALLOWED_GLOBALS[i].module) || strcmp(name, ALLOWED_GLOBALS[i].name)) continue;
        sdc_pk_obj *o = sdc_pk_new(vm, SDC_PK_GLOBAL, err);
        if (o) set_global(o, module, name, ALLOWED_GLOBALS[i].fn, SDC_DT_INVALID);
        return o;
    }
    for (size_t i = 0; strcmp(module, "torch") == 0 && i < SDC_COUNT_OF(STORAGE_TYPES); i++) {
        if (strcmp(name, STORAGE_TYPES[i].name)) continue;
        sdc_pk_obj *o = sdc_pk_new(vm, SDC_PK_GLOBAL, err);
        if (o) set_global(o, module, name, SDC_PK_FN_STORAGE_TYPE, STORAGE_TYPES[i].dtype);
        return o;
    }
    sdc_pk_obj *o = sdc_pk_new(vm, SDC_PK_OPAQUE, err);
    if (o && !(o->u.opaque = sdc_arena_printf(&vm->arena, "%s.%s", module, name))) {
        pk_fail(vm, err, SDC_E_NOMEM, "out of memory");
        return NULL;
    }
    return o;
}

/* What calling a placeholder gives: another placeholder with the same name. */
static sdc_pk_obj *opaque_from(sdc_pk_vm *vm, const sdc_pk_obj *callee, sdc_err *err) {
    sdc_pk_obj *o = sdc_pk_new(vm, SDC_PK_OPAQUE, err);
    if (o) o->u.opaque = callee->kind == SDC_PK_OPAQUE ? callee->u.opaque : callee->u.global.name;
    return o;
}

/* ---- the allowed calls -------------------------------------------------------------------- */

static bool arg_ints(const sdc_pk_obj *t, int64_t *out, int *rank) {
    if (!t || (t->kind != SDC_PK_TUPLE && t->kind != SDC_PK_LIST) || t->u.seq.n > SDC_MAX_RANK) return false;
    for (size_t i = 0; i < t->u.seq.n; i++) {
        if (t->u.seq.items[i]->kind != SDC_PK_INT) return false;
        out[i] = t->u.seq.items[i]->u.i;
    }
    *rank = (int)t->u.seq.n;
    return true;
}

/* _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, ...)
   and _rebuild_tensor(storage, storage_offset, size, stride). */
static sdc_pk_obj *rebuild_tensor(sdc_pk_vm *vm, const sdc_pk_obj *args, size_t min_args, sdc_err *err) {
    if (args->u.seq.n < min_args) {
        pk_fail(vm, err, SDC_E_FORMAT, "_rebuild_tensor with %zu arguments", args->u.seq.n);
        return NULL;
    }
    sdc_pk_obj *const *a = args->u.seq.items;
    if (a[0]->kind == SDC_PK_OPAQUE) { /* torch.save hands every storage to persistent_id: never in its files */
        pk_fail(vm, err, SDC_E_FORMAT, "the storage of a tensor is a %s placeholder, not a persistent storage",
                a[0]->u.opaque);
        return NULL;
    }
    sdc_pk_tensor *t = vm_alloc(vm, sizeof *t, err);
    if (!t) return NULL;
    int stride_rank = -1;
    if (a[0]->kind != SDC_PK_STORAGE || a[1]->kind != SDC_PK_INT || !arg_ints(a[2], t->shape, &t->rank) ||
        !arg_ints(a[3], t->stride, &stride_rank) || stride_rank != t->rank) {
        pk_fail(vm, err, SDC_E_FORMAT,
                "_rebuild_tensor arguments are not (storage, offset, shape, stride) of up to %d dimensions "
                "(got %s, %s, %s, %s)",
                SDC_MAX_RANK, sdc_pk_kind_name(a[0]->kind), sdc_pk_kind_name(a[1]->kind), sdc_pk_kind_name(a[2]->kind),
                sdc_pk_kind_name(a[3]->kind));
        return NULL;
    }
    t->storage = a[0];
    t->offset = a[1]->u.i;
    sdc_pk_obj *o = sdc_pk_new(vm, SDC_PK_TENSOR, err);
    if (o) o->u.tensor = t;
    return o;
}

static sdc_pk_obj *call_allowed(sdc_pk_vm *vm, const sdc_pk_obj *fn, const sdc_pk_obj *args, int depth, sdc_err *err);

/* _rebuild_from_type_v2(func, new_type, args, state): func(*args); the subclass and its state
   are dropped. */
static sdc_pk_obj *rebuild_from_type(sdc_pk_vm *vm, const sdc_pk_obj *args, int depth, sdc_err *err) {
    sdc_pk_obj *const *a = args->u.seq.items;
    if (args->u.seq.n < 3 || a[2]->kind != SDC_PK_TUPLE || depth > 0) {
        pk_fail(vm, err, SDC_E_FORMAT, "_rebuild_from_type_v2 arguments are not (func, type, args, state)");
        return NULL;
    }
    if (a[0]->kind == SDC_PK_OPAQUE) return opaque_from(vm, a[0], err);
    if (a[0]->kind != SDC_PK_GLOBAL) {
        pk_fail(vm, err, SDC_E_FORMAT, "_rebuild_from_type_v2 of a %s", sdc_pk_kind_name(a[0]->kind));
        return NULL;
    }
    return call_allowed(vm, a[0], a[2], depth + 1, err);
}

/* OrderedDict() or OrderedDict([(key, value), ...]). */
static sdc_pk_obj *ordered_dict(sdc_pk_vm *vm, const sdc_pk_obj *args, sdc_err *err) {
    sdc_pk_obj *d = sdc_pk_new(vm, SDC_PK_DICT, err);
    if (!d || args->u.seq.n == 0) return d;
    const sdc_pk_obj *pairs = args->u.seq.items[0];
    bool ok = args->u.seq.n == 1 && (pairs->kind == SDC_PK_LIST || pairs->kind == SDC_PK_TUPLE);
    for (size_t i = 0; ok && i < pairs->u.seq.n; i++) {
        const sdc_pk_obj *kv = pairs->u.seq.items[i];
        ok = (kv->kind == SDC_PK_TUPLE || kv->kind == SDC_PK_LIST) && kv->u.seq.n == 2;
    }
    if (!ok) {
        pk_fail(vm, err, SDC_E_FORMAT, "OrderedDict arguments are not a list of pairs");
        return NULL;
    }
    size_t n = pairs->u.seq.n;
    if (!grow_ptrs(vm, &d->u.dict.keys, 0, &d->u.dict.cap, n, err)) return NULL;
    size_t cap = 0;
    if (!grow_ptrs(vm, &d->u.dict.vals, 0, &cap, n, err)) return NULL;
    d->u.dict.cap = cap < d->u.dict.cap ? cap : d->u.dict.cap;
    for (size_t i = 0; i < n; i++) {
        d->u.dict.keys[i] = pairs->u.seq.items[i]->u.seq.items[0];
        d->u.dict.vals[i] = pairs->u.seq.items[i]->u.seq.items[1];
    }
    d->u.dict.n = n;
    return d;
}

/* torch.Size(iterable) is a tuple. */
static sdc_pk_obj *size_of(sdc_pk_vm *vm, const sdc_pk_obj *args, sdc_err *err) {
    if (args->u.seq.n == 0) return make_seq(vm, SDC_PK_TUPLE, NULL, 0, err);
    const sdc_pk_obj *a = args->u.seq.items[0];
    if (args->u.seq.n != 1 || (a->kind != SDC_PK_TUPLE && a->kind != SDC_PK_LIST)) {
        pk_fail(vm, err, SDC_E_FORMAT, "torch.Size arguments are not one tuple");
        return NULL;
    }
    return make_seq(vm, SDC_PK_TUPLE, a->u.seq.items, a->u.seq.n, err);
}

/* Applies an allowed global to an argument tuple: builds data, runs nothing. */
static sdc_pk_obj *call_allowed(sdc_pk_vm *vm, const sdc_pk_obj *fn, const sdc_pk_obj *args, int depth, sdc_err *err) {
    switch (fn->u.global.fn) {
    case SDC_PK_FN_REBUILD_TENSOR_V2:
    case SDC_PK_FN_REBUILD_TENSOR: return rebuild_tensor(vm, args, 4, err);
    case SDC_PK_FN_REBUILD_PARAMETER:
        if (args->u.seq.n >= 1 &&
            (args->u.seq.items[0]->kind == SDC_PK_TENSOR || args->u.seq.items[0]->kind == SDC_PK_OPAQUE))
            return args->u.seq.items[0];
        pk_fail(vm, err, SDC_E_FORMAT, "_rebuild_parameter of something that is not a tensor");
        return NULL;
    case SDC_PK_FN_REBUILD_FROM_TYPE: return rebuild_from_type(vm, args, depth, err);
    case SDC_PK_FN_ORDERED_DICT: return ordered_dict(vm, args, err);
    case SDC_PK_FN_SIZE: return size_of(vm, args, err);
    case SDC_PK_FN_STORAGE_TYPE: return opaque_from(vm, fn, err); /* a storage made in pickle code: unused */
    }
    pk_fail(vm, err, SDC_E_FORMAT, "call of global %s.%s", fn->u.global.module, fn->u.global.name);
    return NULL;
}

/* What REDUCE, NEWOBJ and friends give for callee(*args). */
static sdc_pk_obj *apply(sdc_pk_vm *vm, const sdc_pk_obj *callee, const sdc_pk_obj *args, bool new_object,
                         sdc_err *err) {
    if (callee->kind == SDC_PK_OPAQUE) return opaque_from(vm, callee, err);
    if (callee->kind != SDC_PK_GLOBAL) {
        pk_fail(vm, err, SDC_E_FORMAT, "calling a %s", sdc_pk_kind_name(callee->kind));
        return NULL;
    }
    if (args->kind != SDC_PK_TUPLE) {
        pk_fail(vm, err, SDC_E_FORMAT, "arguments of %s.%s are a %s, not a tuple", callee->u.global.module,
                callee->u.global.name, sdc_pk_kind_name(args->kind));
        return NULL;
    }
    /* cls.__new__(cls, *args) of the allowed classes makes an empty one */
    if (new_object && callee->u.global.fn == SDC_PK_FN_ORDERED_DICT) return sdc_pk_new(vm, SDC_PK_DICT, err);
    if (new_object && callee->u.global.fn != SDC_PK_FN_SIZE) return opaque_from(vm, callee, err);
    return call_allowed(vm, callee, args, 0, err);
}

/* ---- opcodes ---------------------------------------------------------------------------- */

typedef sdc_status (*op_fn)(sdc_pk_vm *vm, uint8_t op, sdc_err *err);

static sdc_status op_proto(sdc_pk_vm *vm, uint8_t op, sdc_err *err) {
    const uint8_t *v = take(vm, 1, err);
    if (!v) return err->code;
    if (*v < 2 || *v > 5) return pk_fail(vm, err, SDC_E_UNSUPPORTED, "pickle protocol %u (2 to 5 are read)", *v);
    return SDC_OK;
}

static sdc_status op_frame(sdc_pk_vm *vm, uint8_t op, sdc_err *err) {
    uint64_t n;
    if (!take_len(vm, 8, &n, err)) return err->code;
    if (n > (uint64_t)(vm->end - vm->p))
        return pk_fail(vm, err, SDC_E_FORMAT, "frame of %llu bytes runs past the end of the pickle",
                       (unsigned long long)n);
    return SDC_OK; /* frames only group opcodes; the data are read in place */
}

static sdc_status op_stop(sdc_pk_vm *vm, uint8_t op, sdc_err *err) {
    sdc_pk_obj *o = pop(vm, err);
    if (!o) return err->code;
    if (vm->sp || vm->nmarks) return pk_fail(vm, err, SDC_E_FORMAT, "%zu values left on the stack at STOP", vm->sp);
    vm->result = o;
    vm->stopped = true;
    return SDC_OK;
}

static sdc_status op_mark(sdc_pk_vm *vm, uint8_t op, sdc_err *err) {
    if (vm->nmarks == vm->marks_cap) {
        if (vm->nmarks >= SDC_PK_MAX_MARKS)
            return pk_fail(vm, err, SDC_E_FORMAT, "more than %u nested MARKs", SDC_PK_MAX_MARKS);
        size_t cap = vm->marks_cap ? vm->marks_cap * 2 : 16;
        size_t *m = sdc_realloc(vm->marks, cap * sizeof *m);
        if (!m) return pk_fail(vm, err, SDC_E_NOMEM, "out of memory");
        vm->marks = m;
        vm->marks_cap = cap;
    }
    vm->marks[vm->nmarks++] = vm->sp;
    return SDC_OK;
}

static sdc_status op_pop(sdc_pk_vm *vm, uint8_t op, sdc_err *err) { return pop(vm, err) ? SDC_OK : err->code; }

static sdc_status op_pop_mark(sdc_pk_vm *vm, uint8_t op, sdc_err *err) {
    sdc_pk_obj **items = NULL;
    size_t n = 0;
    return pop_mark(vm, &items, &n, err);
}

static sdc_status op_dup(sdc_pk_vm *vm, uint8_t op, sdc_err *err) {
    sdc_pk_obj *o = top(vm, err);
    return o ? push(vm, o, err) : err->code;
}

static sdc_status op_const(sdc_pk_vm *vm, uint8_t op, sdc_err *err) {
    sdc_pk_obj *o = sdc_pk_new(vm, op == 'N' ? SDC_PK_NONE : SDC_PK_BOOL, err);
    if (o) o->u.b = op == 0x88;
    return push(vm, o, err);
}

/* BININT, BININT1, BININT2. */
static sdc_status op_binint(sdc_pk_vm *vm, uint8_t op, sdc_err *err) {
    size_t n = op == 'J' ? 4 : op == 'K' ? 1 : 2;
    uint64_t v;
    if (!take_len(vm, n, &v, err)) return err->code;
    return push(vm, make_int(vm, op == 'J' ? (int64_t)(int32_t)(uint32_t)v : (int64_t)v, err), err);
}

/* LONG1, LONG4: little-endian two's complement of any length. */
static sdc_status op_long(sdc_pk_vm *vm, uint8_t op, sdc_err *err) {
    uint64_t n;
    if (!take_len(vm, op == 0x8a ? 1 : 4, &n, err)) return err->code;
    if (op == 0x8b && n > INT32_MAX) return pk_fail(vm, err, SDC_E_FORMAT, "negative LONG4 length");
    const uint8_t *b = take(vm, n, err);
    if (!b) return err->code;
    if (n > 8) return push(vm, make_str(vm, SDC_PK_BIGINT, b, (size_t)n, err), err);
    uint64_t v = sdc_load_le(b, (size_t)n);
    if (n && n < 8 && (b[n - 1] & 0x80)) v |= ~UINT64_C(0) << (8 * n); /* sign-extend */
    return push(vm, make_int(vm, (int64_t)v, err), err);
}

static sdc_status op_binfloat(sdc_pk_vm *vm, uint8_t op, sdc_err *err) {
    const uint8_t *b = take(vm, 8, err);
    if (!b) return err->code;
    uint64_t bits = 0;
    for (int i = 0; i < 8; i++) bits = (bits << 8) | b[i]; /* big-endian */
    sdc_pk_obj *o = sdc_pk_new(vm, SDC_PK_FLOAT, err);
    if (o) memcpy(&o->u.f, &bits, sizeof bits);
    return push(vm, o, err);
}

/* The string and bytes opcodes: the width of their length operand and what they make. */
static const struct {
    uint8_t op;
    uint8_t len_bytes;
    sdc_pk_kind kind;
} STRING_OPS[] = {
    {'X', 4, SDC_PK_STR},   {0x8c, 1, SDC_PK_STR},   {0x8d, 8, SDC_PK_STR},   /* BINUNICODE, SHORT_, 8 */
    {'T', 4, SDC_PK_STR},   {'U', 1, SDC_PK_STR},                             /* BINSTRING, SHORT_ (py2) */
    {'B', 4, SDC_PK_BYTES}, {'C', 1, SDC_PK_BYTES}, {0x8e, 8, SDC_PK_BYTES}, /* BINBYTES, SHORT_, 8 */
    {0x96, 8, SDC_PK_BYTES},                                                  /* BYTEARRAY8 */
};

static sdc_status op_string(sdc_pk_vm *vm, uint8_t op, sdc_err *err) {
    size_t i = 0;
    while (STRING_OPS[i].op != op) i++;
    uint64_t n;
    if (!take_len(vm, STRING_OPS[i].len_bytes, &n, err)) return err->code;
    if (op == 'T' && n > INT32_MAX) return pk_fail(vm, err, SDC_E_FORMAT, "negative BINSTRING length");
    const uint8_t *s = take(vm, n, err);
    return s ? push(vm, make_str(vm, STRING_OPS[i].kind, s, (size_t)n, err), err) : err->code;
}

static sdc_status op_empty(sdc_pk_vm *vm, uint8_t op, sdc_err *err) {
    sdc_pk_kind kind = op == ')' ? SDC_PK_TUPLE : op == ']' ? SDC_PK_LIST : op == '}' ? SDC_PK_DICT : SDC_PK_SET;
    return push(vm, sdc_pk_new(vm, kind, err), err);
}

/* TUPLE1, TUPLE2, TUPLE3. */
static sdc_status op_tuple_n(sdc_pk_vm *vm, uint8_t op, sdc_err *err) {
    size_t n = (size_t)(op - 0x84);
    if (vm->sp < floor_of(vm) + n) return pk_fail(vm, err, SDC_E_FORMAT, "stack underflow");
    vm->sp -= n;
    return push(vm, make_seq(vm, SDC_PK_TUPLE, vm->stack + vm->sp, n, err), err);
}

/* TUPLE, LIST, FROZENSET: the values above the mark. */
static sdc_status op_from_mark(sdc_pk_vm *vm, uint8_t op, sdc_err *err) {
    sdc_pk_obj **items = NULL;
    size_t n = 0;
    sdc_status st = pop_mark(vm, &items, &n, err);
    if (st) return st;
    sdc_pk_kind kind = op == 't' ? SDC_PK_TUPLE : op == 'l' ? SDC_PK_LIST : SDC_PK_SET;
    return push(vm, make_seq(vm, kind, items, n, err), err);
}

static sdc_status add_items(sdc_pk_vm *vm, sdc_pk_obj *to, sdc_pk_obj **items, size_t n, sdc_err *err) {
    if (to->kind == SDC_PK_OPAQUE) return SDC_OK; /* obj.append/extend/add is never called */
    if (!grow_ptrs(vm, &to->u.seq.items, to->u.seq.n, &to->u.seq.cap, to->u.seq.n + n, err)) return err->code;
    if (n) memcpy(to->u.seq.items + to->u.seq.n, items, n * sizeof *items);
    to->u.seq.n += n;
    return SDC_OK;
}

/* APPEND, APPENDS, ADDITEMS. */
static sdc_status op_append(sdc_pk_vm *vm, uint8_t op, sdc_err *err) {
    sdc_pk_obj **items = NULL, *one;
    size_t n = 1;
    sdc_status st = SDC_OK;
    if (op == 'a') {
        if (!(one = pop(vm, err))) return err->code;
        items = &one;
    } else if ((st = pop_mark(vm, &items, &n, err))) {
        return st;
    }
    sdc_pk_obj *to = top(vm, err);
    if (!to) return err->code;
    sdc_pk_kind want = op == 0x90 ? SDC_PK_SET : SDC_PK_LIST;
    if (to->kind != want && to->kind != SDC_PK_OPAQUE)
        return pk_fail(vm, err, SDC_E_FORMAT, "adding items to a %s", sdc_pk_kind_name(to->kind));
    return add_items(vm, to, items, n, err);
}

static sdc_status set_items(sdc_pk_vm *vm, sdc_pk_obj *d, sdc_pk_obj **kv, size_t n, sdc_err *err) {
    if (n % 2) return pk_fail(vm, err, SDC_E_FORMAT, "odd number of values for a dict");
    if (d->kind == SDC_PK_OPAQUE) return SDC_OK; /* obj.__setitem__ is never called */
    if (d->kind != SDC_PK_DICT) return pk_fail(vm, err, SDC_E_FORMAT, "setting items of a %s", sdc_pk_kind_name(d->kind));
    size_t want = d->u.dict.n + n / 2, kcap = d->u.dict.cap, vcap = d->u.dict.cap;
    if (!grow_ptrs(vm, &d->u.dict.keys, d->u.dict.n, &kcap, want, err) ||
        !grow_ptrs(vm, &d->u.dict.vals, d->u.dict.n, &vcap, want, err))
        return err->code;
    d->u.dict.cap = kcap;
    for (size_t i = 0; i < n; i += 2) {
        d->u.dict.keys[d->u.dict.n] = kv[i];
        d->u.dict.vals[d->u.dict.n++] = kv[i + 1];
    }
    return SDC_OK;
}

/* SETITEM, SETITEMS. */
static sdc_status op_setitems(sdc_pk_vm *vm, uint8_t op, sdc_err *err) {
    sdc_pk_obj **items = NULL, *pair[2];
    size_t n = 2;
    sdc_status st;
    if (op == 's') {
        if (!(pair[1] = pop(vm, err)) || !(pair[0] = pop(vm, err))) return err->code;
        items = pair;
    } else if ((st = pop_mark(vm, &items, &n, err))) {
        return st;
    }
    sdc_pk_obj *d = top(vm, err);
    return d ? set_items(vm, d, items, n, err) : err->code;
}

/* DICT: a dict of the key, value pairs above the mark. */
static sdc_status op_dict(sdc_pk_vm *vm, uint8_t op, sdc_err *err) {
    sdc_pk_obj **items = NULL;
    size_t n = 0;
    sdc_status st = pop_mark(vm, &items, &n, err);
    if (st) return st;
    sdc_pk_obj *d = sdc_pk_new(vm, SDC_PK_DICT, err);
    if (!d) return err->code;
    /* items stay valid: nothing was pushed since pop_mark */
    return (st = set_items(vm, d, items, n, err)) ? st : push(vm, d, err);
}

static sdc_status op_get(sdc_pk_vm *vm, uint8_t op, sdc_err *err) {
    uint64_t i;
    if (!take_len(vm, op == 'h' ? 1 : 4, &i, err)) return err->code;
    if (i >= vm->memo_cap || !vm->memo[i])
        return pk_fail(vm, err, SDC_E_FORMAT, "memo index %llu is not set", (unsigned long long)i);
    return push(vm, vm->memo[i], err);
}

static sdc_status memo_put(sdc_pk_vm *vm, uint64_t i, sdc_err *err) {
    sdc_pk_obj *o = top(vm, err);
    if (!o) return err->code;
    if (i >= SDC_PK_MAX_MEMO) return pk_fail(vm, err, SDC_E_FORMAT, "memo index %llu exceeds the limit of %u",
                                             (unsigned long long)i, SDC_PK_MAX_MEMO);
    if (i >= vm->memo_cap) {
        size_t cap = vm->memo_cap ? vm->memo_cap : 64;
        while (cap <= i) cap *= 2;
        sdc_pk_obj **m = sdc_realloc(vm->memo, cap * sizeof *m);
        if (!m) return pk_fail(vm, err, SDC_E_NOMEM, "out of memory");
        memset(m + vm->memo_cap, 0, (cap - vm->memo_cap) * sizeof *m);
        vm->memo = m;
        vm->memo_cap = cap;
    }
    if (!vm->memo[i]) vm->memo_count++;
    vm->memo[i] = o;
    return SDC_OK;
}

static sdc_status op_put(sdc_pk_vm *vm, uint8_t op, sdc_err *err) {
    uint64_t i;
    if (!take_len(vm, op == 'q' ? 1 : 4, &i, err)) return err->code;
    return memo_put(vm, i, err);
}

/* MEMOIZE: the next index is the number of memo slots set so far (len(memo) in CPython). */
static sdc_status op_memoize(sdc_pk_vm *vm, uint8_t op, sdc_err *err) {
    return memo_put(vm, vm->memo_count, err);
}

static sdc_status op_global(sdc_pk_vm *vm, uint8_t op, sdc_err *err) {
    const char *module = take_line(vm, err), *name = module ? take_line(vm, err) : NULL;
    return name ? push(vm, resolve_global(vm, module, name, err), err) : err->code;
}

static sdc_status op_stack_global(sdc_pk_vm *vm, uint8_t op, sdc_err *err) {
    sdc_pk_obj *name = pop(vm, err), *module = name ? pop(vm, err) : NULL;
    if (!module) return err->code;
    if (name->kind != SDC_PK_STR || module->kind != SDC_PK_STR || strlen(name->u.str.s) != name->u.str.len ||
        strlen(module->u.str.s) != module->u.str.len)
        return pk_fail(vm, err, SDC_E_FORMAT, "module and name are not strings without NUL bytes");
    return push(vm, resolve_global(vm, module->u.str.s, name->u.str.s, err), err);
}

static sdc_status op_reduce(sdc_pk_vm *vm, uint8_t op, sdc_err *err) {
    sdc_pk_obj *args = pop(vm, err), *callee = args ? pop(vm, err) : NULL;
    return callee ? push(vm, apply(vm, callee, args, false, err), err) : err->code;
}

/* NEWOBJ: cls.__new__(cls, *args); NEWOBJ_EX also has keyword arguments (ignored). */
static sdc_status op_newobj(sdc_pk_vm *vm, uint8_t op, sdc_err *err) {
    if (op == 0x92 && !pop(vm, err)) return err->code;
    sdc_pk_obj *args = pop(vm, err), *cls = args ? pop(vm, err) : NULL;
    return cls ? push(vm, apply(vm, cls, args, true, err), err) : err->code;
}

/* OBJ: MARK cls args... OBJ; INST: MARK args... INST module name. */
static sdc_status op_obj(sdc_pk_vm *vm, uint8_t op, sdc_err *err) {
    sdc_pk_obj *cls = NULL;
    if (op == 'i') {
        const char *module = take_line(vm, err), *name = module ? take_line(vm, err) : NULL;
        if (!name || !(cls = resolve_global(vm, module, name, err))) return err->code;
    }
    sdc_pk_obj **items = NULL;
    size_t n = 0;
    sdc_status st = pop_mark(vm, &items, &n, err);
    if (st) return st;
    if (!cls) {
        if (!n) return pk_fail(vm, err, SDC_E_FORMAT, "no class above the MARK");
        cls = items[0];
        items++, n--;
    }
    sdc_pk_obj *args = make_seq(vm, SDC_PK_TUPLE, items, n, err);
    return args ? push(vm, apply(vm, cls, args, true, err), err) : err->code;
}

/* BUILD sets an object's state (__setstate__ or its __dict__): state is dropped, nothing runs. */
static sdc_status op_build(sdc_pk_vm *vm, uint8_t op, sdc_err *err) {
    return pop(vm, err) && top(vm, err) ? SDC_OK : err->code;
}

static sdc_status op_binpersid(sdc_pk_vm *vm, uint8_t op, sdc_err *err) {
    sdc_pk_obj *pid = pop(vm, err), *out = NULL;
    if (!pid) return err->code;
    if (!vm->persistent) return pk_fail(vm, err, SDC_E_FORMAT, "persistent id where none is expected");
    sdc_status st = vm->persistent(vm->user, vm, pid, &out, err);
    return st ? st : push(vm, out, err);
}

/* Every opcode the VM knows, by byte: its pickletools name and its handler; a NULL handler is
   a known opcode that is refused. */
static const struct {
    const char *name;
    op_fn fn;
} OPS[256] = {
    ['('] = {"MARK", op_mark},
    ['.'] = {"STOP", op_stop},
    ['0'] = {"POP", op_pop},
    ['1'] = {"POP_MARK", op_pop_mark},
    ['2'] = {"DUP", op_dup},
    ['N'] = {"NONE", op_const},
    [0x88] = {"NEWTRUE", op_const},
    [0x89] = {"NEWFALSE", op_const},
    ['J'] = {"BININT", op_binint},
    ['K'] = {"BININT1", op_binint},
    ['M'] = {"BININT2", op_binint},
    [0x8a] = {"LONG1", op_long},
    [0x8b] = {"LONG4", op_long},
    ['G'] = {"BINFLOAT", op_binfloat},
    ['X'] = {"BINUNICODE", op_string},
    [0x8c] = {"SHORT_BINUNICODE", op_string},
    [0x8d] = {"BINUNICODE8", op_string},
    ['T'] = {"BINSTRING", op_string},
    ['U'] = {"SHORT_BINSTRING", op_string},
    ['B'] = {"BINBYTES", op_string},
    ['C'] = {"SHORT_BINBYTES", op_string},
    [0x8e] = {"BINBYTES8", op_string},
    [0x96] = {"BYTEARRAY8", op_string},
    [')'] = {"EMPTY_TUPLE", op_empty},
    [']'] = {"EMPTY_LIST", op_empty},
    ['}'] = {"EMPTY_DICT", op_empty},
    [0x8f] = {"EMPTY_SET", op_empty},
    [0x85] = {"TUPLE1", op_tuple_n},
    [0x86] = {"TUPLE2", op_tuple_n},
    [0x87] = {"TUPLE3", op_tuple_n},
    ['t'] = {"TUPLE", op_from_mark},
    ['l'] = {"LIST", op_from_mark},
    [0x91] = {"FROZENSET", op_from_mark},
    ['d'] = {"DICT", op_dict},
    ['a'] = {"APPEND", op_append},
    ['e'] = {"APPENDS", op_append},
    [0x90] = {"ADDITEMS", op_append},
    ['s'] = {"SETITEM", op_setitems},
    ['u'] = {"SETITEMS", op_setitems},
    ['h'] = {"BINGET", op_get},
    ['j'] = {"LONG_BINGET", op_get},
    ['q'] = {"BINPUT", op_put},
    ['r'] = {"LONG_BINPUT", op_put},
    [0x94] = {"MEMOIZE", op_memoize},
    ['c'] = {"GLOBAL", op_global},
    [0x93] = {"STACK_GLOBAL", op_stack_global},
    ['R'] = {"REDUCE", op_reduce},
    [0x81] = {"NEWOBJ", op_newobj},
    [0x92] = {"NEWOBJ_EX", op_newobj},
    ['o'] = {"OBJ", op_obj},
    ['i'] = {"INST", op_obj},
    ['b'] = {"BUILD", op_build},
    ['Q'] = {"BINPERSID", op_binpersid},
    [0x80] = {"PROTO", op_proto},
    [0x95] = {"FRAME", op_frame},
    /* refused: protocol 0 text operands, the copyreg extension registry, out-of-band buffers */
    ['I'] = {"INT", NULL},
    ['L'] = {"LONG", NULL},
    ['F'] = {"FLOAT", NULL},
    ['S'] = {"STRING", NULL},
    ['V'] = {"UNICODE", NULL},
    ['g'] = {"GET", NULL},
    ['p'] = {"PUT", NULL},
    ['P'] = {"PERSID", NULL},
    [0x82] = {"EXT1", NULL},
    [0x83] = {"EXT2", NULL},
    [0x84] = {"EXT4", NULL},
    [0x97] = {"NEXT_BUFFER", NULL},
    [0x98] = {"READONLY_BUFFER", NULL},
};

/* ---- the VM ----------------------------------------------------------------------------- */

sdc_pk_vm *sdc_pk_vm_new(const char *where, sdc_pk_persistent_fn persistent, void *user) {
    sdc_pk_vm *vm = sdc_calloc(1, sizeof *vm);
    if (!vm) return NULL;
    sdc_arena_init(&vm->arena);
    vm->where = where;
    vm->persistent = persistent;
    vm->user = user;
    return vm;
}

void sdc_pk_vm_set_where(sdc_pk_vm *vm, const char *where) { vm->where = where; }

void sdc_pk_vm_free(sdc_pk_vm *vm) {
    if (!vm) return;
    sdc_arena_free(&vm->arena);
    sdc_free(vm->stack);
    sdc_free(vm->marks);
    sdc_free(vm->memo);
    sdc_free(vm);
}

sdc_status sdc_pk_load(sdc_pk_vm *vm, const uint8_t *data, size_t size, size_t *used, sdc_pk_obj **out,
                       sdc_err *err) {
    *out = NULL;
    vm->begin = vm->p = data;
    vm->end = data + size;
    vm->sp = vm->nmarks = 0;
    vm->stopped = false;
    vm->result = NULL;
    vm->op_name = NULL;
    if (vm->memo) memset(vm->memo, 0, vm->memo_cap * sizeof *vm->memo);
    vm->memo_count = 0;
    sdc_status st = SDC_OK;
    while (!st && !vm->stopped) {
        vm->op_at = (size_t)(vm->p - vm->begin);
        if (vm->p == vm->end) {
            vm->op_name = "(end)";
            return pk_fail(vm, err, SDC_E_FORMAT, "the pickle ends without STOP (truncated?)");
        }
        uint8_t op = *vm->p++;
        vm->op_name = OPS[op].name;
        if (!OPS[op].name) {
            vm->op_name = "?";
            return pk_fail(vm, err, SDC_E_FORMAT, "unknown opcode 0x%02x", op);
        }
        if (!OPS[op].fn)
            return pk_fail(vm, err, SDC_E_UNSUPPORTED, "not an opcode of what torch.save writes (protocols 2-5)");
        st = OPS[op].fn(vm, op, err);
    }
    if (st) return st;
    if (used) *used = (size_t)(vm->p - vm->begin);
    *out = vm->result;
    return SDC_OK;
}
