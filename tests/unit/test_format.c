/*
 * test_format.c — the dtype table (src/dtype.c) against the facts of
 * reference/coreml-format.md §3–§4, and blob storage written by the writer and read back by
 * the reader (src/coreml/blob.c).
 */
#include "check.h"
#include "coreml/blob.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

/* §4.3: blob code ↔ MIL DataType, every code the format defines. */
static void test_blob_codes(void) {
    static const struct {
        sdc_dtype t;
        uint32_t code;
    } pairs[] = {
        {SDC_DT_F16, 1}, {SDC_DT_F32, 2}, {SDC_DT_U8, 3},  {SDC_DT_I8, 4},   {SDC_DT_BF16, 5},
        {SDC_DT_I16, 6}, {SDC_DT_U16, 7}, {SDC_DT_I4, 8},  {SDC_DT_U1, 9},   {SDC_DT_U2, 10},
        {SDC_DT_U4, 11}, {SDC_DT_U3, 12}, {SDC_DT_U6, 13}, {SDC_DT_I32, 14}, {SDC_DT_U32, 15},
    };
    for (size_t i = 0; i < SDC_COUNT_OF(pairs); i++) {
        CHECK(sdc_dtype_info_of(pairs[i].t)->blob == pairs[i].code);
        CHECK(sdc_dtype_by_blob(pairs[i].code)->code == pairs[i].t);
    }
    CHECK(sdc_dtype_info_of(SDC_DT_F64)->blob == 0 && !sdc_dtype_by_blob(0) && !sdc_dtype_by_blob(16));
    /* the writer's rule (spec <= 8): fp16, fp32, uint8, int8 only */
    for (int t = 0; t < 64; t++) {
        bool writer_blob = t == SDC_DT_F16 || t == SDC_DT_F32 || t == SDC_DT_U8 || t == SDC_DT_I8;
        CHECK(!!sdc_dtype_blob_code((sdc_dtype)t) == writer_blob);
    }
}

static void test_sizes_and_names(void) {
    static const struct {
        sdc_dtype t;
        size_t bytes;
        const char *name, *mil;
    } rows[] = {
        {SDC_DT_F32, 4, "F32", "fp32"},   {SDC_DT_F16, 2, "F16", "fp16"},   {SDC_DT_BF16, 2, "BF16", "bf16"},
        {SDC_DT_F64, 8, "F64", "fp64"},   {SDC_DT_I64, 8, "I64", "int64"},  {SDC_DT_I32, 4, "I32", "int32"},
        {SDC_DT_I16, 2, "I16", "int16"},  {SDC_DT_I8, 1, "I8", "int8"},     {SDC_DT_U8, 1, "U8", "uint8"},
        {SDC_DT_BOOL, 1, "BOOL", "bool"}, {SDC_DT_U16, 2, "U16", "uint16"}, {SDC_DT_U32, 4, "U32", "uint32"},
        {SDC_DT_U64, 8, "U64", "uint64"}, {SDC_DT_STRING, 0, "STRING", "string"},
    };
    for (size_t i = 0; i < SDC_COUNT_OF(rows); i++) {
        CHECK(sdc_dtype_size(rows[i].t) == rows[i].bytes);
        CHECK(!strcmp(sdc_dtype_name(rows[i].t), rows[i].name));
        CHECK(!strcmp(sdc_dtype_info_of(rows[i].t)->mil_name, rows[i].mil));
        CHECK(sdc_dtype_by_name(rows[i].name)->code == rows[i].t);
    }
    CHECK(!strcmp(sdc_dtype_name(SDC_DT_INVALID), "INVALID") && sdc_dtype_size(SDC_DT_INVALID) == 0);
    CHECK(!sdc_dtype_info_of(3) && !sdc_dtype_info_of(-1) && !sdc_dtype_info_of(1000));
    CHECK(sdc_dtype_bits(SDC_DT_U6) == 6 && sdc_dtype_bits(SDC_DT_I4) == 4 && sdc_dtype_size(SDC_DT_U4) == 0);
    CHECK(sdc_dtype_is_float(SDC_DT_BF16) && !sdc_dtype_is_float(SDC_DT_I32) && !sdc_dtype_is_float(SDC_DT_STRING));
    CHECK(sdc_dtype_is_int(SDC_DT_BOOL) && sdc_dtype_is_int(SDC_DT_U3) && !sdc_dtype_is_int(SDC_DT_F16));
}

/* §2.4: the MultiArray types of model descriptions, and the public ndarray dtypes. */
static void test_array_and_nd(void) {
    CHECK(sdc_dtype_by_array_type(65568)->code == SDC_DT_F32);
    CHECK(sdc_dtype_by_array_type(65552)->code == SDC_DT_F16);
    CHECK(sdc_dtype_by_array_type(65600)->code == SDC_DT_F64);
    CHECK(sdc_dtype_by_array_type(131104)->code == SDC_DT_I32);
    CHECK(sdc_dtype_by_array_type(131080)->code == SDC_DT_I8);
    CHECK(!sdc_dtype_by_array_type(0));
    CHECK(sdc_dtype_to_nd(SDC_DT_F32) == SDC_ND_F32 && sdc_dtype_to_nd(SDC_DT_F16) == SDC_ND_F16 &&
          sdc_dtype_to_nd(SDC_DT_I32) == SDC_ND_I32 && sdc_dtype_to_nd(SDC_DT_F64) == -1);
    CHECK(!strcmp(sdc_nd_dtype_name(SDC_ND_F16), "float16") && !strcmp(sdc_nd_dtype_name((sdc_nd_dtype)7), "invalid"));
    CHECK(sdc_dtype_by_npy_descr("<i4")->code == SDC_DT_I32 && !sdc_dtype_by_npy_descr(">f4"));
}

/* Two blobs written by the writer, walked back by the reader (§4.2 worked example). */
static void test_blob_round_trip(void) {
    char path[] = "/tmp/sdc_test_format_XXXXXX";
    int fd = mkstemp(path);
    if (!CHECK(fd >= 0)) return;
    close(fd);
    sdc_err err = {0};
    sdc_blob_writer w;
    float a[500] = {0}, b[500] = {0};
    uint64_t r1 = 0, r2 = 0;
    CHECK(!sdc_blob_open(&w, path, &err));
    CHECK(!sdc_blob_begin(&w, SDC_BLOB_F32, sizeof a, &r1, &err) && !sdc_blob_write(&w, a, sizeof a, &err));
    CHECK(!sdc_blob_begin(&w, SDC_BLOB_F32, sizeof b, &r2, &err) && !sdc_blob_write(&w, b, sizeof b, &err));
    CHECK(!sdc_blob_close(&w, &err));
    CHECK(r1 == 64 && r2 == 2176);

    sdc_blob_file f;
    sdc_blob_record rec;
    if (CHECK_MSG(!sdc_blob_file_open(path, false, &f, &err), "%s", err.msg)) {
        CHECK(f.count == 2 && f.map.size == 2240 + sizeof b);
        CHECK(sdc_blob_record_at(&f, r2, &rec) && rec.sentinel_ok && rec.code == SDC_BLOB_F32 && rec.data == 2240 &&
              rec.size == sizeof b && rec.padding_bits == 0 && sdc_blob_data_inside(&f, &rec));
        CHECK(sdc_blob_record_at(&f, 100, &rec) && !rec.sentinel_ok);
        CHECK(!sdc_blob_record_at(&f, 0, &rec) && !sdc_blob_record_at(&f, f.map.size - 63, &rec));
        sdc_blob_file_close(&f);
    }
    /* a file shorter than the header, and a wrong version, are refused naming the file */
    FILE *fp = fopen(path, "wb");
    fwrite("\0\0\0\0\3\0\0\0", 1, 8, fp);
    fclose(fp);
    sdc_err e1 = {0};
    CHECK(sdc_blob_file_open(path, false, &f, &e1) == SDC_E_FORMAT && strstr(e1.msg, path) && strstr(e1.msg, "too short"));
    fp = fopen(path, "wb");
    uint8_t header[64] = {0, 0, 0, 0, 3};
    fwrite(header, 1, sizeof header, fp);
    fclose(fp);
    sdc_err e2 = {0};
    CHECK(sdc_blob_file_open(path, false, &f, &e2) == SDC_E_FORMAT && strstr(e2.msg, "version 3"));
    unlink(path);
}

/* The writer's buffering, through the pieces that reach every path of it: small writes that
   fill its buffer, a piece that ends exactly at a chunk boundary, one of whole chunks from an
   empty buffer (written directly), and pieces crossing boundaries; the file holds every byte in
   order, and a second blob after them is found where the first one's size says. */
static void test_blob_writer_chunks(void) {
    char path[] = "/tmp/sdc_test_format_XXXXXX";
    int fd = mkstemp(path);
    if (!CHECK(fd >= 0)) return;
    close(fd);
    const size_t C = SDC_BLOB_WRITE_CHUNK;
    const size_t pieces[] = {1, 63, C - 128 - 64, 2 * C, C + 5, 7, C - 12, 3 * C + 1};
    size_t total = 0;
    for (size_t i = 0; i < sizeof pieces / sizeof *pieces; i++) total += pieces[i];
    uint8_t *data = malloc(total);
    if (!CHECK(data)) return;
    uint32_t lcg = 12345;
    for (size_t i = 0; i < total; i++) data[i] = (uint8_t)((lcg = lcg * 1664525u + 1013904223u) >> 24);
    sdc_err err = {0};
    sdc_blob_writer w;
    uint64_t r1 = 0, r2 = 0;
    uint8_t tail[3] = {7, 8, 9};
    CHECK(!sdc_blob_open(&w, path, &err) && !sdc_blob_begin(&w, SDC_BLOB_U8, total, &r1, &err));
    for (size_t i = 0, at = 0; i < sizeof pieces / sizeof *pieces; at += pieces[i++])
        CHECK(!sdc_blob_write(&w, data + at, pieces[i], &err));
    CHECK(!sdc_blob_begin(&w, SDC_BLOB_U8, sizeof tail, &r2, &err) && !sdc_blob_write(&w, tail, sizeof tail, &err));
    CHECK_MSG(!sdc_blob_close(&w, &err), "%s", err.msg);
    CHECK(r1 == 64 && r2 == sdc_blob_next_record(r1, total));
    sdc_blob_file f;
    sdc_blob_record rec;
    if (CHECK_MSG(!sdc_blob_file_open(path, false, &f, &err), "%s", err.msg)) {
        CHECK(f.count == 2 && f.map.size == r2 + 64 + sizeof tail);
        CHECK(sdc_blob_record_at(&f, r1, &rec) && rec.sentinel_ok && rec.size == total && sdc_blob_data_inside(&f, &rec) &&
              !memcmp(f.map.data + rec.data, data, total));
        CHECK(sdc_blob_record_at(&f, r2, &rec) && rec.sentinel_ok && rec.size == sizeof tail &&
              !memcmp(f.map.data + rec.data, tail, sizeof tail));
        sdc_blob_file_close(&f);
    }
    free(data);
    unlink(path);
    /* a writer that was never opened is aborted without touching descriptor 0 */
    bool stdin_open = fcntl(0, F_GETFD) != -1;
    sdc_blob_writer zero = {0};
    sdc_blob_abort(&zero);
    CHECK((fcntl(0, F_GETFD) != -1) == stdin_open);
}

int main(void) {
    test_blob_codes();
    test_sizes_and_names();
    test_array_and_nd();
    test_blob_round_trip();
    test_blob_writer_chunks();
    return CHECK_DONE("test_format");
}
