/* package.c — reading an .mlpackage for `inspect` and the interpreter: Manifest.json → root
   model path, the bounded read of model.mlmodel, its protobuf decoding, and the weight files
   its values name. */
#include "coreml/package.h"

#include <errno.h>
#include <sys/stat.h>

#include <jansson.h>

#include "source/source.h"

#define MAX_MODEL_FILE ((uint64_t)2 << 30)

/* sdc_dtype's values are the schema's DataType codes (dtype.h) and the dtype table holds the
   ArrayDataType codes: both are checked against the code generated from coreml.proto. */
#define SAME_CODE(ours, generated) _Static_assert((int)(ours) == (int)(generated), #ours " is " #generated)
SAME_CODE(SDC_DT_BOOL, SDC__COREML__DATA_TYPE__BOOL);
SAME_CODE(SDC_DT_STRING, SDC__COREML__DATA_TYPE__STRING);
SAME_CODE(SDC_DT_F16, SDC__COREML__DATA_TYPE__FLOAT16);
SAME_CODE(SDC_DT_F32, SDC__COREML__DATA_TYPE__FLOAT32);
SAME_CODE(SDC_DT_F64, SDC__COREML__DATA_TYPE__FLOAT64);
SAME_CODE(SDC_DT_BF16, SDC__COREML__DATA_TYPE__BFLOAT16);
SAME_CODE(SDC_DT_I8, SDC__COREML__DATA_TYPE__INT8);
SAME_CODE(SDC_DT_I16, SDC__COREML__DATA_TYPE__INT16);
SAME_CODE(SDC_DT_I32, SDC__COREML__DATA_TYPE__INT32);
SAME_CODE(SDC_DT_I64, SDC__COREML__DATA_TYPE__INT64);
SAME_CODE(SDC_DT_I4, SDC__COREML__DATA_TYPE__INT4);
SAME_CODE(SDC_DT_U8, SDC__COREML__DATA_TYPE__UINT8);
SAME_CODE(SDC_DT_U16, SDC__COREML__DATA_TYPE__UINT16);
SAME_CODE(SDC_DT_U32, SDC__COREML__DATA_TYPE__UINT32);
SAME_CODE(SDC_DT_U64, SDC__COREML__DATA_TYPE__UINT64);
SAME_CODE(SDC_DT_U4, SDC__COREML__DATA_TYPE__UINT4);
SAME_CODE(SDC_DT_U2, SDC__COREML__DATA_TYPE__UINT2);
SAME_CODE(SDC_DT_U1, SDC__COREML__DATA_TYPE__UINT1);
SAME_CODE(SDC_DT_U6, SDC__COREML__DATA_TYPE__UINT6);
SAME_CODE(SDC_DT_U3, SDC__COREML__DATA_TYPE__UINT3);

/* A run-time check for the ArrayDataType column (a table is not a constant expression):
   each named code must be the generated one. */
static bool array_types_match_schema(void) {
    static const struct {
        sdc_dtype t;
        int generated;
    } pairs[] = {
        {SDC_DT_F32, SDC__COREML__ARRAY_FEATURE_TYPE__ARRAY_DATA_TYPE__FLOAT32},
        {SDC_DT_F16, SDC__COREML__ARRAY_FEATURE_TYPE__ARRAY_DATA_TYPE__FLOAT16},
        {SDC_DT_F64, SDC__COREML__ARRAY_FEATURE_TYPE__ARRAY_DATA_TYPE__DOUBLE},
        {SDC_DT_I32, SDC__COREML__ARRAY_FEATURE_TYPE__ARRAY_DATA_TYPE__INT32},
        {SDC_DT_I8, SDC__COREML__ARRAY_FEATURE_TYPE__ARRAY_DATA_TYPE__INT8},
    };
    for (size_t i = 0; i < SDC_COUNT_OF(pairs); i++)
        if (sdc_dtype_info_of(pairs[i].t)->array_type != pairs[i].generated) return false;
    return true;
}

static sdc_status root_model_path(const char *pkg, char *out, size_t size, sdc_err *err) {
    char path[4096];
    if (!sdc_fmt(path, sizeof path, "%s/Manifest.json", pkg)) return sdc_fail(err, SDC_E_ARG, "%s: path too long", pkg);
    json_t *m;
    sdc_status s = sdc_json_load(path, &m, err);
    if (s) return s;
    json_t *version = json_object_get(m, "fileFormatVersion");
    json_t *root = json_object_get(m, "rootModelIdentifier");
    json_t *items = json_object_get(m, "itemInfoEntries");
    json_t *item = json_is_string(root) && json_is_object(items) ? json_object_get(items, json_string_value(root)) : NULL;
    json_t *rel = json_is_object(item) ? json_object_get(item, "path") : NULL;
    if (!json_is_string(version))
        s = sdc_fail(err, SDC_E_FORMAT, "%s: no fileFormatVersion string", path);
    else if (!json_is_string(rel))
        s = sdc_fail(err, SDC_E_FORMAT, "%s: rootModelIdentifier does not name an item with a path", path);
    else if (strstr(json_string_value(rel), "..") || json_string_value(rel)[0] == '/' || !json_string_value(rel)[0])
        s = sdc_fail(err, SDC_E_FORMAT, "%s: root model path '%s' leaves the package", path, json_string_value(rel));
    else if (!sdc_fmt(out, size, "%s/Data/%s", pkg, json_string_value(rel)))
        s = sdc_fail(err, SDC_E_ARG, "%s: path too long", path);
    json_decref(m);
    return s;
}

static sdc_status read_model_file(const char *path, uint8_t **out, size_t *n, sdc_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return sdc_fail(err, SDC_E_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= 0 || (uint64_t)st.st_size > MAX_MODEL_FILE) {
        fclose(f);
        return sdc_fail(err, SDC_E_FORMAT, "%s: empty, not a file, or larger than 2 GiB", path);
    }
    uint8_t *buf = sdc_malloc((size_t)st.st_size);
    if (!buf) {
        fclose(f);
        return sdc_fail(err, SDC_E_NOMEM, "out of memory");
    }
    size_t got = fread(buf, 1, (size_t)st.st_size, f);
    fclose(f);
    if (got != (size_t)st.st_size) {
        sdc_free(buf);
        return sdc_fail(err, SDC_E_IO, "%s: short read", path);
    }
    *out = buf;
    *n = got;
    return SDC_OK;
}


sdc_status sdc_package_open(const char *pkg, sdc_package *p, sdc_err *err) {
    SDC_ASSERT(array_types_match_schema());
    memset(p, 0, sizeof *p);
    uint8_t *buf = NULL;
    size_t n = 0;
    sdc_status s = root_model_path(pkg, p->model_path, sizeof p->model_path, err);
    if (s) return s;
    const char *slash = strrchr(p->model_path, '/');
    snprintf(p->model_dir, sizeof p->model_dir, "%.*s", (int)(slash - p->model_path), p->model_path);
    if ((s = read_model_file(p->model_path, &buf, &n, err))) return s;
    p->model = sdc__coreml__model__unpack(NULL, n, buf);
    /* protobuf-c copies every string and byte field: the file buffer is not needed any more */
    sdc_free(buf);
    if (!p->model) return sdc_fail(err, SDC_E_FORMAT, "%s: not a Core ML model protobuf", p->model_path);
    return SDC_OK;
}

void sdc_package_close(sdc_package *p) {
    if (p->model) sdc__coreml__model__free_unpacked(p->model, NULL);
    p->model = NULL;
}

sdc_status sdc_package_blob_path(const sdc_package *p, const char *file_name, char *out, size_t size, sdc_err *err) {
    static const char prefix[] = "@model_path/";
    bool prefixed = !strncmp(file_name, prefix, sizeof prefix - 1);
    const char *rel = prefixed ? file_name + sizeof prefix - 1 : "";
    if (!*rel || rel[0] == '/' || strstr(rel, ".."))
        return sdc_fail(err, SDC_E_FORMAT, "%s: blob file name '%s' is not @model_path/<relative path>", p->model_path,
                        file_name);
    if (!sdc_fmt(out, size, "%s/%s", p->model_dir, rel))
        return sdc_fail(err, SDC_E_ARG, "%s: blob path too long", p->model_path);
    return SDC_OK;
}
