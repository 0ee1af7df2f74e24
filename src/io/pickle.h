/*
 * pickle.h — a pickle virtual machine that builds data and never runs code, for the PyTorch
 * checkpoints of io/ckpt.c.
 *
 * It implements the opcodes of protocols 2 to 5 that torch.save and Python's pickler emit for
 * state dicts (protocol 0/1 text opcodes, extension codes and out-of-band buffers are refused
 * by name). Globals are not imported: an allow-list maps the few torch.save needs to data —
 * torch._utils._rebuild_tensor_v2 / _rebuild_tensor / _rebuild_parameter(_with_state),
 * torch._tensor._rebuild_from_type_v2, the torch.*Storage types, collections.OrderedDict and
 * torch.Size — and every other global (os.system, builtins.eval, a training callback's class,
 * numpy's scalar) becomes an inert placeholder. Calling, instantiating or building a
 * placeholder (REDUCE, NEWOBJ, NEWOBJ_EX, OBJ, INST, BUILD) yields another placeholder; its
 * name is kept for messages only. Nothing is ever executed. A tensor rebuilt on a placeholder
 * instead of a persistent storage is an error (torch.save hands every storage to persistent_id,
 * so its files never hold one).
 *
 * Persistent ids (BINPERSID) go to the caller's callback, which turns torch's
 * ('storage', type, key, location, numel[, view]) tuples into storage objects.
 *
 * Every input byte is untrusted: reads are bounded by the buffer; the stack, the mark stack
 * (nesting), the memo and the number of objects have limits; errors are one line starting with
 * the VM's `where` and naming the opcode and its offset. Objects live in the VM's arena until
 * sdc_pk_vm_free().
 */
#ifndef SDC_PICKLE_H
#define SDC_PICKLE_H

#include "arena.h"
#include "common.h"

#define SDC_PK_MAX_STACK (1u << 20)   /* values on the stack */
#define SDC_PK_MAX_MARKS 1024u        /* open MARKs: how deep tuples, lists and dicts nest */
#define SDC_PK_MAX_MEMO (1u << 22)    /* memo slots */
#define SDC_PK_MAX_OBJECTS (1u << 22) /* objects made by one VM */

typedef enum sdc_pk_kind {
    SDC_PK_NONE,
    SDC_PK_BOOL,
    SDC_PK_INT,
    SDC_PK_BIGINT, /* an int past 64 bits: its little-endian two's complement bytes in str */
    SDC_PK_FLOAT,
    SDC_PK_STR,   /* str, and Python 2 str */
    SDC_PK_BYTES, /* bytes, bytearray */
    SDC_PK_TUPLE,
    SDC_PK_LIST,
    SDC_PK_SET, /* set, frozenset */
    SDC_PK_DICT,
    SDC_PK_GLOBAL,  /* a global of the allow-list */
    SDC_PK_OPAQUE,  /* a placeholder: any other global, or what came from one */
    SDC_PK_STORAGE, /* made by the persistent-id callback */
    SDC_PK_TENSOR,
} sdc_pk_kind;

/* What an allowed global stands for. */
typedef enum sdc_pk_fn {
    SDC_PK_FN_REBUILD_TENSOR_V2 = 1,
    SDC_PK_FN_REBUILD_TENSOR,
    SDC_PK_FN_REBUILD_PARAMETER,
    SDC_PK_FN_REBUILD_FROM_TYPE,
    SDC_PK_FN_ORDERED_DICT,
    SDC_PK_FN_SIZE,
    SDC_PK_FN_STORAGE_TYPE,
} sdc_pk_fn;

typedef struct sdc_pk_obj sdc_pk_obj;

/* A tensor as _rebuild_tensor_v2 describes it: a view of `storage`, in elements. Nothing here
   is checked against the storage yet; io/ckpt.c does that. */
typedef struct sdc_pk_tensor {
    const sdc_pk_obj *storage;
    int64_t offset;
    int rank;
    int64_t shape[SDC_MAX_RANK], stride[SDC_MAX_RANK];
} sdc_pk_tensor;

struct sdc_pk_obj {
    sdc_pk_kind kind;
    union {
        bool b;
        int64_t i;
        double f;
        struct {
            const char *s; /* NUL-terminated copy (may hold NULs before len) */
            size_t len;
        } str; /* STR, BYTES, BIGINT */
        struct {
            sdc_pk_obj **items;
            size_t n, cap;
        } seq; /* TUPLE, LIST, SET */
        struct {
            sdc_pk_obj **keys, **vals; /* insertion order; duplicate keys kept */
            size_t n, cap;
        } dict;
        struct {
            const char *module, *name;
            sdc_pk_fn fn;
            sdc_dtype dtype; /* SDC_PK_FN_STORAGE_TYPE: the element type; INVALID if unsupported */
        } global;
        const char *opaque; /* "module.name" of the global it came from */
        struct {
            size_t index; /* the callback's own numbering */
            sdc_dtype dtype;
        } storage;
        sdc_pk_tensor *tensor;
    } u;
};

typedef struct sdc_pk_vm sdc_pk_vm;

/* Turns a persistent id into an object (made with sdc_pk_new); an error stops the load. */
typedef sdc_status (*sdc_pk_persistent_fn)(void *user, sdc_pk_vm *vm, const sdc_pk_obj *pid, sdc_pk_obj **out,
                                           sdc_err *err);

/* `where` (e.g. "model.ckpt: archive/data.pkl") starts every message; it is borrowed. */
sdc_pk_vm *sdc_pk_vm_new(const char *where, sdc_pk_persistent_fn persistent, void *user);
void sdc_pk_vm_free(sdc_pk_vm *vm); /* NULL is a no-op; frees every object */
void sdc_pk_vm_set_where(sdc_pk_vm *vm, const char *where);

/* Runs one pickle from data[0, size) to its STOP; *used (may be NULL) gets how many bytes it
   took, so several pickles can follow each other (the legacy torch format). The memo starts
   empty for each pickle. */
sdc_status sdc_pk_load(sdc_pk_vm *vm, const uint8_t *data, size_t size, size_t *used, sdc_pk_obj **out,
                       sdc_err *err);

/* A new zeroed object of `kind` in the VM's arena, counted against its limit; NULL on failure
   (err filled). */
sdc_pk_obj *sdc_pk_new(sdc_pk_vm *vm, sdc_pk_kind kind, sdc_err *err);

/* Helpers for callers walking the result. */
const char *sdc_pk_kind_name(sdc_pk_kind kind);
bool sdc_pk_is_str(const sdc_pk_obj *o, const char *s); /* a STR equal to s */
/* The value of a STR key in a DICT (the last one when repeated), or NULL. */
const sdc_pk_obj *sdc_pk_dict_get(const sdc_pk_obj *dict, const char *key);

#endif
