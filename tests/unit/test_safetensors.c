/*
 * test_safetensors.c — the reader on a valid file and on every kind of malformed file the
 * header comment promises to reject, each with a one-line message naming file and tensor.
 */
#include "check.h"
#include "io/fp16.h"
#include "io/safetensors.h"

#include <math.h>
#include <stdlib.h>
#include <unistd.h>

static char tmpdir[256];
static int n_files;

/* ---- helpers -------------------------------------------------------------------------- */

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *fp = fopen(path, "wb");
    if (!fp || fwrite(data, 1, n, fp) != n) {
        perror(path);
        exit(2);
    }
    fclose(fp);
}

/* Writes [N][header][data] where data is `data_len` bytes of `data` (or a pattern if NULL)
   and returns the path, held in a ring of static buffers. */
static const char *make_file_n(const char *name, uint64_t header_len, const char *header,
                               const void *data, size_t data_len) {
    static char paths[64][512];
    char *path = paths[n_files++ % 64];
    snprintf(path, 512, "%s/%s", tmpdir, name);
    size_t hlen = strlen(header);
    size_t total = 8 + hlen + data_len;
    uint8_t *buf = malloc(total ? total : 1);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(header_len >> (8 * i));
    memcpy(buf + 8, header, hlen);
    for (size_t i = 0; i < data_len; i++)
        buf[8 + hlen + i] = data ? ((const uint8_t *)data)[i] : (uint8_t)(i * 7 + 1);
    write_bytes(path, buf, total);
    free(buf);
    return path;
}

static const char *make_file(const char *name, const char *header, size_t data_len) {
    return make_file_n(name, strlen(header), header, NULL, data_len);
}

/* Opens a file that must be rejected; checks the message is one line, names the file and
   contains each of the (up to two) expected fragments. Returns the status. */
static sdc_status expect_error(const char *path, const char *frag1, const char *frag2) {
    sdc_err err = {0};
    sdc_st_file *f = (sdc_st_file *)1;
    sdc_status st = sdc_st_open(path, &f, &err);
    CHECK_MSG(st != SDC_OK, "%s: expected an error", path);
    CHECK(f == NULL);
    CHECK(err.code == st);
    CHECK_MSG(strstr(err.msg, path) != NULL, "message does not name the file: %s", err.msg);
    CHECK_MSG(strchr(err.msg, '\n') == NULL, "message is not one line: %s", err.msg);
    if (frag1) CHECK_MSG(strstr(err.msg, frag1) != NULL, "missing '%s' in: %s", frag1, err.msg);
    if (frag2) CHECK_MSG(strstr(err.msg, frag2) != NULL, "missing '%s' in: %s", frag2, err.msg);
    if (getenv("CHECK_VERBOSE")) printf("    %s\n", err.msg);
    if (st == SDC_OK) sdc_st_close(f);
    return st;
}

static void put_f32(uint8_t *p, float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(u >> (8 * i));
}

static void put_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* ---- valid files ---------------------------------------------------------------------- */

static void test_valid(void) {
    /* Data layout, deliberately unaligned and in another order than the JSON keys:
       h: F16 [3] at [0, 6), w: F32 [2, 3] at [6, 30), b: BF16 [2] at [30, 34),
       ids: I64 [2] at [34, 50), s: F64 [] at [50, 58), e: F32 [0, 4] at [58, 58). */
    uint8_t data[58] = {0};
    const float h[3] = {1.0f, -2.5f, 0.099975586f};
    for (int i = 0; i < 3; i++) put_u16(data + 2 * i, sdc_f32_to_f16(h[i]));
    for (int i = 0; i < 6; i++) put_f32(data + 6 + 4 * i, (float)i * 0.5f);
    put_u16(data + 30, 0x3f80); /* 1.0 */
    put_u16(data + 32, 0xc040); /* -3.0 */
    data[34] = 7;
    data[42] = 9;
    double s = 0.25;
    memcpy(data + 50, &s, 8);
    const char *header =
        "{\"__metadata__\":{\"format\":\"pt\"},"
        "\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[6,30]},"
        "\"e\":{\"shape\":[0,4],\"dtype\":\"F32\",\"data_offsets\":[58,58]},"
        "\"h\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,6]},"
        "\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[30,34]},"
        "\"ids\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[34,50]},"
        "\"s\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[50,58]}}      ";
    const char *path = make_file_n("valid.safetensors", strlen(header), header, data, sizeof data);

    sdc_err err = {0};
    sdc_st_file *f = NULL;
    if (!CHECK_MSG(sdc_st_open(path, &f, &err) == SDC_OK, "%s", err.msg)) return;
    CHECK(strcmp(sdc_st_path(f), path) == 0);
    CHECK(sdc_st_count(f) == 6);
    CHECK(sdc_st_find(f, "__metadata__") == NULL);
    CHECK(sdc_st_find(f, "nope") == NULL);
    /* sdc_st_at is in data-offset order; the empty tensor sits at the very end */
    const char *order[] = {"h", "w", "b", "ids", "s", "e"};
    for (size_t i = 0; i < 6; i++) CHECK(strcmp(sdc_st_at(f, i)->name, order[i]) == 0);
    CHECK(sdc_st_at(f, 6) == NULL);

    const sdc_tensor *w = sdc_st_find(f, "w");
    if (CHECK(w != NULL)) {
        CHECK(w->dtype == SDC_DT_F32 && w->rank == 2 && w->shape[0] == 2 && w->shape[1] == 3);
        CHECK(w->numel == 6 && w->nbytes == 24 && w->file == f);
        CHECK(w->data == sdc_st_find(f, "h")->data + 6);
        for (uint64_t i = 0; i < 6; i++) CHECK(sdc_tensor_get_f32(w, i) == (float)i * 0.5f);
    }
    const sdc_tensor *th = sdc_st_find(f, "h");
    if (CHECK(th != NULL)) {
        CHECK(th->dtype == SDC_DT_F16 && th->rank == 1 && th->numel == 3 && th->nbytes == 6);
        CHECK(sdc_tensor_get_f32(th, 0) == 1.0f);
        CHECK(sdc_tensor_get_f32(th, 1) == -2.5f);
        CHECK(fabsf(sdc_tensor_get_f32(th, 2) - 0.1f) < 1e-4f);
    }
    const sdc_tensor *b = sdc_st_find(f, "b");
    if (CHECK(b != NULL)) {
        CHECK(b->dtype == SDC_DT_BF16 && b->numel == 2);
        CHECK(sdc_tensor_get_f32(b, 0) == 1.0f && sdc_tensor_get_f32(b, 1) == -3.0f);
    }
    const sdc_tensor *ids = sdc_st_find(f, "ids");
    CHECK(ids && ids->dtype == SDC_DT_I64 && ids->data[0] == 7 && ids->data[8] == 9);
    const sdc_tensor *ts = sdc_st_find(f, "s");
    CHECK(ts && ts->rank == 0 && ts->numel == 1 && sdc_tensor_get_f32(ts, 0) == 0.25f);
    const sdc_tensor *te = sdc_st_find(f, "e");
    CHECK(te && te->numel == 0 && te->nbytes == 0 && te->rank == 2);
    sdc_st_close(f);
    sdc_st_close(NULL);
}

static void test_valid_edge_cases(void) {
    sdc_err err = {0};
    sdc_st_file *f = NULL;
    /* no tensors at all, and leading/trailing JSON whitespace */
    const char *path = make_file("empty_ok.safetensors", " \n{\"__metadata__\":{}}\t ", 0);
    CHECK_MSG(sdc_st_open(path, &f, &err) == SDC_OK, "%s", err.msg);
    if (f) CHECK(sdc_st_count(f) == 0);
    sdc_st_close(f);
    /* several empty tensors at the same offset */
    path = make_file("zeros.safetensors",
                     "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
                     "\"c\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                     "\"b\":{\"dtype\":\"F16\",\"shape\":[3,0],\"data_offsets\":[0,0]}}",
                     4);
    f = NULL;
    CHECK_MSG(sdc_st_open(path, &f, &err) == SDC_OK, "%s", err.msg);
    if (f) CHECK(sdc_st_count(f) == 3 && strcmp(sdc_st_at(f, 2)->name, "c") == 0);
    sdc_st_close(f);
}

/* ---- malformed files ------------------------------------------------------------------ */

static void test_file_level_errors(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/zero.safetensors", tmpdir);
    write_bytes(path, "", 0);
    expect_error(path, "too short", NULL);

    snprintf(path, sizeof path, "%s/five.safetensors", tmpdir);
    write_bytes(path, "\x10\0\0\0\0", 5);
    expect_error(path, "too short", NULL);

    snprintf(path, sizeof path, "%s/absent.safetensors", tmpdir);
    CHECK(expect_error(path, "cannot open", NULL) == SDC_E_NOTFOUND);

    CHECK(expect_error(tmpdir, "not a regular file", NULL) == SDC_E_IO);

    const char *hdr = "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    expect_error(make_file_n("past_end.safetensors", 1000, hdr, NULL, 8), "past the end",
                 "1000");
    expect_error(make_file_n("huge_header.safetensors", 200000000ull, hdr, NULL, 8), "exceeds",
                 "200000000");
    expect_error(make_file_n("max_u64.safetensors", UINT64_MAX, hdr, NULL, 8), "exceeds", NULL);
    expect_error(make_file_n("zero_header.safetensors", 0, "", NULL, 0), "invalid JSON", NULL);

    /* a valid file cut short inside the data: the tensor now runs past the end */
    expect_error(make_file("truncated.safetensors", hdr, 5), "'t'", "past the end");
    /* the boundaries: exactly one byte short of the data, one byte too many */
    expect_error(make_file("one_short.safetensors", hdr, 7), "'t'", "past the end");
    expect_error(make_file("one_long.safetensors", hdr, 9), "1 trailing bytes", NULL);
    /* a header length one byte too long: with no data it runs past the end of the file; with
       data it swallows the first data byte into the JSON */
    expect_error(make_file_n("hlen_plus_one_empty.safetensors", strlen(hdr) + 1, hdr, NULL, 0),
                 "runs past the end", NULL);
    expect_error(make_file_n("hlen_plus_one.safetensors", strlen(hdr) + 1, hdr, NULL, 8), NULL, NULL);
    /* ... and one byte too short: the JSON loses its closing brace */
    expect_error(make_file_n("hlen_minus_one.safetensors", strlen(hdr) - 1, hdr, NULL, 8), "invalid JSON",
                 NULL);
    /* cut short inside the header */
    char cut[512];
    snprintf(cut, sizeof cut, "%s/cut_header.safetensors", tmpdir);
    {
        size_t n = strlen(hdr);
        uint8_t buf[8 + 20];
        for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(n >> (8 * i));
        memcpy(buf + 8, hdr, 20);
        write_bytes(cut, buf, sizeof buf);
    }
    expect_error(cut, "past the end", NULL);
}

static void test_json_errors(void) {
    const char *p = make_file("bad_json.safetensors", "{\"t\": }", 0);
    expect_error(p, "invalid JSON", "line 1");
    expect_error(make_file("not_object.safetensors", "[1, 2]", 0), "not an object", NULL);
    char nul[512];
    snprintf(nul, sizeof nul, "%s/nul.safetensors", tmpdir);
    write_bytes(nul, "\x04\0\0\0\0\0\0\0{}\0\0", 12); /* NUL padding is not whitespace */
    expect_error(nul, "invalid JSON", NULL);
    expect_error(make_file("dup.safetensors",
                           "{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                           "\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                           2),
                 "duplicate key", NULL);
    expect_error(make_file("dup_inner.safetensors",
                           "{\"t\":{\"dtype\":\"U8\",\"dtype\":\"U8\",\"shape\":[1],"
                           "\"data_offsets\":[0,1]}}",
                           1),
                 "duplicate key", NULL);
    expect_error(make_file("meta_obj.safetensors", "{\"__metadata__\":[]}", 0), "__metadata__",
                 NULL);
    expect_error(make_file("meta_val.safetensors", "{\"__metadata__\":{\"format\":1}}", 0),
                 "'format'", "not a string");
    /* newlines in a name or in jansson's quoted token must not break the line */
    expect_error(make_file("newline.safetensors",
                           "{\"a\\nb\":{\"dtype\":\"X\",\"shape\":[],\"data_offsets\":[0,0]}}",
                           0),
                 "unsupported dtype", NULL);
    expect_error(make_file("raw_newline.safetensors", "{\"a\n\": 1}", 0), "invalid JSON", NULL);
}

static void test_entry_errors(void) {
    CHECK(expect_error(make_file("f8.safetensors",
                                 "{\"q\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],"
                                 "\"data_offsets\":[0,2]}}",
                                 2),
                       "tensor 'q'", "unsupported dtype 'F8_E4M3'") == SDC_E_UNSUPPORTED);
    expect_error(make_file("foo_dtype.safetensors",
                           "{\"q\":{\"dtype\":\"FOO\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2),
                 "tensor 'q'", "unsupported dtype 'FOO'");
    expect_error(make_file("dtype_num.safetensors",
                           "{\"q\":{\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,2]}}", 2),
                 "tensor 'q'", "dtype");
    expect_error(make_file("neg_shape.safetensors",
                           "{\"q\":{\"dtype\":\"U8\",\"shape\":[-1,2],\"data_offsets\":[0,2]}}",
                           2),
                 "tensor 'q'", "non-negative");
    expect_error(make_file("float_shape.safetensors",
                           "{\"q\":{\"dtype\":\"U8\",\"shape\":[2.0],\"data_offsets\":[0,2]}}",
                           2),
                 "tensor 'q'", "shape [2.0]");
    expect_error(make_file("str_shape.safetensors",
                           "{\"q\":{\"dtype\":\"U8\",\"shape\":\"2\",\"data_offsets\":[0,2]}}",
                           2),
                 "tensor 'q'", "shape");
    expect_error(make_file("rank9.safetensors",
                           "{\"q\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                           "\"data_offsets\":[0,1]}}",
                           1),
                 "tensor 'q'", "rank 9");
    expect_error(make_file("missing_field.safetensors",
                           "{\"q\":{\"dtype\":\"U8\",\"shape\":[2]}}", 2),
                 "tensor 'q'", "missing field 'data_offsets'");
    expect_error(make_file("extra_field.safetensors",
                           "{\"q\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2],"
                           "\"x\":1}}",
                           2),
                 "tensor 'q'", "unexpected field 'x'");
    expect_error(make_file("entry_array.safetensors", "{\"q\":[1]}", 0), "tensor 'q'",
                 "not a JSON object");
    expect_error(make_file("offsets3.safetensors",
                           "{\"q\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,1,2]}}",
                           2),
                 "tensor 'q'", "data_offsets");
    expect_error(make_file("offsets_neg.safetensors",
                           "{\"q\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[-2,-2]}}",
                           0),
                 "tensor 'q'", "data_offsets");
    expect_error(make_file("end_before.safetensors",
                           "{\"q\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,2]}}", 4),
                 "tensor 'q'", "end before");
    /* the example message of the brief, exactly */
    expect_error(make_file("nbytes.safetensors",
                           "{\"text_model.x.weight\":{\"dtype\":\"F32\",\"shape\":[4,4],"
                           "\"data_offsets\":[0,10]}}",
                           10),
                 "tensor 'text_model.x.weight': data_offsets [0, 10] hold 10 bytes but shape "
                 "[4, 4] of F32 needs 64",
                 NULL);
    expect_error(make_file("numel_overflow.safetensors",
                           "{\"q\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296],"
                           "\"data_offsets\":[0,0]}}",
                           0),
                 "tensor 'q'", "overflows");
    expect_error(make_file("bytes_overflow.safetensors",
                           "{\"q\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],"
                           "\"data_offsets\":[0,0]}}",
                           0),
                 "tensor 'q'", "overflows");
}

static void test_layout_errors(void) {
    expect_error(make_file("hole.safetensors",
                           "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                           "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
                           12),
                 "tensor 'b'", "hole");
    expect_error(make_file("overlap.safetensors",
                           "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                           "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                           12),
                 "tensor 'b'", "overlap");
    expect_error(make_file("same_range.safetensors",
                           "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                           "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                           8),
                 "overlap", NULL);
    expect_error(make_file("not_zero.safetensors",
                           "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8),
                 "tensor 'a'", "begin at 0");
    expect_error(make_file("trailing.safetensors",
                           "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 7),
                 "3 trailing bytes", NULL);
    expect_error(make_file("trailing_empty.safetensors", "{}", 1), "1 trailing bytes", NULL);
    expect_error(make_file("far.safetensors",
                           "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],"
                           "\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"U8\",\"shape\":[1],"
                           "\"data_offsets\":[9223372036854775806,9223372036854775807]}}",
                           4),
                 "tensor 'b'", "hole");
}

/* Deterministic mutations of a valid file (bytes of the length field, the header and the
   data replaced, the file cut short): the reader must never crash, and every rejection must
   be one line naming the file. Run under ASan/valgrind to make "never crash" mean something. */
static void test_mutations(void) {
    const char *header =
        "{\"__metadata__\":{\"format\":\"pt\"},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
        "\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[16,22]}}";
    size_t hlen = strlen(header), total = 8 + hlen + 22;
    uint8_t *good = malloc(total), *bad = malloc(total);
    for (int i = 0; i < 8; i++) good[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    memcpy(good + 8, header, hlen);
    for (size_t i = 0; i < 22; i++) good[8 + hlen + i] = (uint8_t)i;
    static const char alphabet[] = "{}[],:\"0123456789-.eE \\nF_";
    uint32_t seed = 12345;
    int opened = 0, rejected = 0, bad_messages = 0;
    char path[512];
    snprintf(path, sizeof path, "%s/mutant.safetensors", tmpdir);
    for (int iter = 0; iter < 3000; iter++) {
        memcpy(bad, good, total);
        size_t size = total;
        int edits = 1 + iter % 3;
        for (int k = 0; k < edits; k++) {
            seed = seed * 1103515245u + 12345u;
            size_t pos = (seed >> 8) % total;
            seed = seed * 1103515245u + 12345u;
            bad[pos] = (seed >> 9) % 4 ? (uint8_t)alphabet[(seed >> 12) % (sizeof alphabet - 1)]
                                       : (uint8_t)(seed >> 16);
        }
        if (iter % 10 == 9) size = (seed >> 4) % total;
        write_bytes(path, bad, size);
        sdc_err err = {0};
        sdc_st_file *f = NULL;
        if (sdc_st_open(path, &f, &err) == SDC_OK) {
            opened++;
            for (size_t i = 0; i < sdc_st_count(f); i++) {
                const sdc_tensor *t = sdc_st_at(f, i);
                if (t->dtype == SDC_DT_F32 || t->dtype == SDC_DT_F16 ||
                    t->dtype == SDC_DT_BF16 || t->dtype == SDC_DT_F64)
                    for (uint64_t j = 0; j < t->numel; j++) (void)sdc_tensor_get_f32(t, j);
                CHECK(sdc_st_find(f, t->name) == t);
            }
            sdc_st_close(f);
        } else {
            rejected++;
            if (strchr(err.msg, '\n') || !strstr(err.msg, path) || f != NULL) {
                if (bad_messages++ < 3) fprintf(stderr, "    bad message: %s\n", err.msg);
            }
        }
    }
    CHECK(bad_messages == 0);
    CHECK(rejected > 2000 && opened > 0);
    free(good);
    free(bad);
}

/* ---- main ----------------------------------------------------------------------------- */

static void remove_tmpdir(void) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/sdc_test_st_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 2;
    }
    test_valid();
    test_valid_edge_cases();
    test_file_level_errors();
    test_json_errors();
    test_entry_errors();
    test_layout_errors();
    test_mutations();
    remove_tmpdir();
    return CHECK_DONE("test_safetensors");
}
