/*
 * test_ckpt.c — the checkpoint reader's C-level contract (tests/python/test_ckpt.py does the
 * torch.save round trips and the hostile files): the pickle VM's values, placeholders and
 * allow-list; a legacy-format and a zip-format file assembled here byte by byte; and every
 * allocation of opening them failing in turn (a clean SDC_E_NOMEM, one line, never a crash).
 */
#include "check.h"
#include "io/ckpt.h"
#include "io/pickle.h"

#include <stdlib.h>
#include <unistd.h>

static char tmpdir[256];

/* ---- a byte buffer ------------------------------------------------------------------------- */

typedef struct buf {
    uint8_t data[4096];
    size_t n;
} buf;

static void put(buf *b, const void *p, size_t n) {
    if (b->n + n > sizeof b->data) abort();
    memcpy(b->data + b->n, p, n);
    b->n += n;
}
#define PUTS(b, s) put((b), (s), sizeof(s) - 1)

static void put_le(buf *b, uint64_t v, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)(v >> (8 * i));
        put(b, &c, 1);
    }
}

static void put_uni(buf *b, const char *s) { /* BINUNICODE */
    PUTS(b, "X");
    put_le(b, strlen(s), 4);
    put(b, s, strlen(s));
}

/* {'w': _rebuild_tensor_v2(storage '0' of 4 floats, offset 1, shape [2], stride [1])} */
static void put_state_dict(buf *b, bool legacy) {
    PUTS(b, "\x80\x02}");
    put_uni(b, "w");
    PUTS(b, "ctorch._utils\n_rebuild_tensor_v2\n((");
    put_uni(b, "storage");
    PUTS(b, "ctorch\nFloatStorage\n");
    put_uni(b, "0");
    put_uni(b, "cpu");
    PUTS(b, "K\x04");
    if (legacy) PUTS(b, "N");
    PUTS(b, "tQK\x01(K\x02t(K\x01t\x89" "ccollections\nOrderedDict\n)RtRs.");
}

static const float FLOATS[4] = {1.0f, 2.0f, 3.0f, 4.0f};

static void write_file(const char *path, const buf *b) {
    FILE *fp = fopen(path, "wb");
    if (!fp || fwrite(b->data, 1, b->n, fp) != b->n) abort();
    fclose(fp);
}

static const char *legacy_file(void) {
    static char path[512];
    snprintf(path, sizeof path, "%s/legacy.ckpt", tmpdir);
    buf b = {0};
    PUTS(&b, "\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.");   /* magic number */
    PUTS(&b, "\x80\x02M\xe9\x03.");                                         /* 1001 */
    PUTS(&b, "\x80\x02}");                                                  /* sys info */
    put_uni(&b, "little_endian");
    PUTS(&b, "\x88s.");
    put_state_dict(&b, true);
    PUTS(&b, "\x80\x02]");                                                  /* storage keys */
    put_uni(&b, "0");
    PUTS(&b, "a.");
    put_le(&b, 4, 8);
    put(&b, FLOATS, sizeof FLOATS);
    write_file(path, &b);
    return path;
}

/* A stored ZIP of (name, bytes) entries as APPNOTE lays it out (CRCs left 0: not checked). */
static const char *zip_file(void) {
    static char path[512];
    snprintf(path, sizeof path, "%s/zip.ckpt", tmpdir);
    buf pkl = {0}, b = {0}, cd = {0};
    put_state_dict(&pkl, false);
    struct {
        const char *name;
        const void *data;
        size_t n;
    } entries[] = {{"arc/data.pkl", pkl.data, pkl.n}, {"arc/byteorder", "little", 6}, {"arc/data/0", FLOATS, 16}};
    for (size_t i = 0; i < SDC_COUNT_OF(entries); i++) {
        size_t off = b.n, nlen = strlen(entries[i].name);
        put_le(&b, 0x04034b50, 4), put_le(&b, 20, 2), put_le(&b, 0, 2), put_le(&b, 0, 2), put_le(&b, 0, 4);
        put_le(&b, 0, 4), put_le(&b, entries[i].n, 4), put_le(&b, entries[i].n, 4), put_le(&b, nlen, 2);
        put_le(&b, 0, 2), put(&b, entries[i].name, nlen), put(&b, entries[i].data, entries[i].n);
        put_le(&cd, 0x02014b50, 4), put_le(&cd, 20, 2), put_le(&cd, 20, 2), put_le(&cd, 0, 2), put_le(&cd, 0, 2);
        put_le(&cd, 0, 4), put_le(&cd, 0, 4), put_le(&cd, entries[i].n, 4), put_le(&cd, entries[i].n, 4);
        put_le(&cd, nlen, 2), put_le(&cd, 0, 2), put_le(&cd, 0, 2), put_le(&cd, 0, 2), put_le(&cd, 0, 2);
        put_le(&cd, 0, 4), put_le(&cd, off, 4), put(&cd, entries[i].name, nlen);
    }
    size_t cd_off = b.n;
    put(&b, cd.data, cd.n);
    put_le(&b, 0x06054b50, 4), put_le(&b, 0, 4), put_le(&b, 3, 2), put_le(&b, 3, 2);
    put_le(&b, cd.n, 4), put_le(&b, cd_off, 4), put_le(&b, 0, 2);
    write_file(path, &b);
    return path;
}

/* ---- files ----------------------------------------------------------------------------------- */

static void check_file(const char *path) {
    sdc_st_file *f = NULL;
    sdc_err err = {0};
    if (!CHECK_MSG(sdc_ckpt_open(path, &f, &err) == SDC_OK, "%s", err.msg)) return;
    CHECK(sdc_st_count(f) == 1);
    const sdc_tensor *t = sdc_st_find(f, "w");
    if (CHECK(t != NULL && t == sdc_st_at(f, 0))) {
        CHECK(t->dtype == SDC_DT_F32 && t->rank == 1 && t->shape[0] == 2 && t->numel == 2 && t->nbytes == 8);
        CHECK(sdc_tensor_get_f32(t, 0) == 2.0f && sdc_tensor_get_f32(t, 1) == 3.0f);
        CHECK(strcmp(sdc_st_path(t->file), path) == 0);
        sdc_tensor_release(t);
        CHECK(sdc_tensor_get_f32(t, 1) == 3.0f); /* re-read from the file */
    }
    CHECK(sdc_st_find(f, "missing") == NULL);
    sdc_st_close(f);
}

/* Every allocation of the open fails in turn: each gives SDC_E_NOMEM with one line naming the
   file, or (a failure the reader recovers from) success; never a crash or a partial handle. */
static void check_allocation_failures(const char *path) {
    sdc_alloc_fail_at(__LONG_MAX__);
    sdc_st_file *f = NULL;
    sdc_err err = {0};
    CHECK(sdc_ckpt_open(path, &f, &err) == SDC_OK);
    long total = sdc_alloc_count();
    sdc_alloc_fail_at(0);
    sdc_st_close(f);
    CHECK(total > 5);
    for (long n = 1; n <= total; n++) {
        sdc_err e = {0};
        f = NULL;
        sdc_alloc_fail_at(n);
        sdc_status st = sdc_ckpt_open(path, &f, &e);
        sdc_alloc_fail_at(0);
        if (st == SDC_OK) {
            sdc_st_close(f);
            continue;
        }
        CHECK_MSG(st == SDC_E_NOMEM && f == NULL && strstr(e.msg, path) && !strchr(e.msg, '\n'),
                  "allocation %ld: %d %s", n, st, e.msg);
    }
}

/* ---- the VM ------------------------------------------------------------------------------------ */

static sdc_pk_obj *run(sdc_pk_vm *vm, const char *bytes, size_t n, sdc_err *err) {
    sdc_pk_obj *o = NULL;
    size_t used = 0;
    *err = (sdc_err){0};
    if (sdc_pk_load(vm, (const uint8_t *)bytes, n, &used, &o, err)) return NULL;
    CHECK(used == n);
    return o;
}
#define RUN(vm, s, err) run((vm), (s), sizeof(s) - 1, (err))

static void check_vm(void) {
    sdc_pk_vm *vm = sdc_pk_vm_new("test.pkl", NULL, NULL);
    sdc_err err = {0};
    sdc_pk_obj *o;
    /* (-1, 1.5, -7, big int, b'ab', frozenset of 2, 'x' twice through DUP) */
    o = RUN(vm, "\x80\x04(\x8a\x01\xff" "G\x3f\xf8\x00\x00\x00\x00\x00\x00" "J\xf9\xff\xff\xff"
                "\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01" "C\x02" "ab" "(K\x01K\x02\x91" "\x8c\x01x2t.", &err);
    if (CHECK_MSG(o && o->kind == SDC_PK_TUPLE && o->u.seq.n == 8, "%s", err.msg)) {
        sdc_pk_obj **v = o->u.seq.items;
        CHECK(v[0]->kind == SDC_PK_INT && v[0]->u.i == -1);
        CHECK(v[1]->kind == SDC_PK_FLOAT && v[1]->u.f == 1.5);
        CHECK(v[2]->kind == SDC_PK_INT && v[2]->u.i == -7);
        CHECK(v[3]->kind == SDC_PK_BIGINT && v[3]->u.str.len == 9);
        CHECK(v[4]->kind == SDC_PK_BYTES && v[4]->u.str.len == 2);
        CHECK(v[5]->kind == SDC_PK_SET && v[5]->u.seq.n == 2);
        CHECK(sdc_pk_is_str(v[6], "x") && v[6] == v[7]);
    }
    /* a dict with a repeated key: the last value wins, as in Python */
    o = RUN(vm, "\x80\x02(\x8c\x01kK\x01\x8c\x01kK\x02" "d.", &err);
    CHECK(o && sdc_pk_dict_get(o, "k") && sdc_pk_dict_get(o, "k")->u.i == 2);
    /* protocol 4: STACK_GLOBAL, MEMOIZE, FRAME; an unknown global is a placeholder named after it,
       and so is what calling, building or instantiating it gives */
    o = RUN(vm, "\x80\x04\x95\x1b\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94)R\x94}b"
                "0h\x02)\x81.", &err);
    CHECK_MSG(o && o->kind == SDC_PK_OPAQUE && strcmp(o->u.opaque, "os.system") == 0, "%s", err.msg);
    /* OrderedDict(list of pairs) and torch.Size are data */
    o = RUN(vm, "\x80\x02" "ccollections\nOrderedDict\n(](\x8c\x01" "aK\x05tatR.", &err);
    CHECK_MSG(o && o->kind == SDC_PK_DICT && sdc_pk_dict_get(o, "a")->u.i == 5, "%s", err.msg);
    o = RUN(vm, "\x80\x02" "ctorch\nSize\n(K\x02K\x03t\x85R.", &err);
    CHECK(o && o->kind == SDC_PK_TUPLE && o->u.seq.n == 2);
    /* a persistent id without a callback is an error naming the opcode */
    o = RUN(vm, "\x80\x02NQ.", &err);
    CHECK(!o && strstr(err.msg, "test.pkl: pickle opcode BINPERSID at offset 3"));
    sdc_pk_vm_free(vm);
}

static void check_paths(void) {
    static const struct {
        const char *path;
        bool is_ckpt;
    } cases[] = {{"a.ckpt", true}, {"b.PT", true}, {"dir/c.pth", true}, {"d.safetensors", false},
                 {".pt", false},   {"e.bin", false}, {"f.ckpt.safetensors", false}};
    for (size_t i = 0; i < SDC_COUNT_OF(cases); i++)
        CHECK_MSG(sdc_ckpt_is_ckpt_path(cases[i].path) == cases[i].is_ckpt, "%s", cases[i].path);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/sdc-test-ckpt-XXXXXX");
    if (!mkdtemp(tmpdir)) return 2;
    check_vm();
    check_paths();
    const char *files[] = {legacy_file(), zip_file()};
    for (size_t i = 0; i < SDC_COUNT_OF(files); i++) {
        check_file(files[i]);
        check_allocation_failures(files[i]);
        unlink(files[i]);
    }
    rmdir(tmpdir);
    return CHECK_DONE("test_ckpt");
}
