/*
 * inspect.c — reads an existing .mlpackage (ours or anyone's) and describes it as JSON:
 * inputs, outputs, metadata, op histogram of the main function (ops of nested blocks
 * included) and weight bytes; and two packages side by side, their differences listed.
 * Every byte is untrusted: the manifest, the protobuf and the weight file are checked.
 */
#include <errno.h>
#include <sys/stat.h>

#include <jansson.h>

#include "coreml/blob.h"
#include "coreml/package.h"
#include "coreml/package_names.h"

static const char *array_type_name(int t) {
    const sdc_dtype_info *d = sdc_dtype_by_array_type(t);
    return d ? d->array_name : "UNKNOWN";
}

static json_t *features_json(size_t n, Sdc__Coreml__FeatureDescription **f) {
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *shape = json_array();
        const char *dtype = "NOT_A_MULTIARRAY";
        if (f[i]->type && f[i]->type->type_case == SDC__COREML__FEATURE_TYPE__TYPE_MULTI_ARRAY_TYPE) {
            Sdc__Coreml__ArrayFeatureType *a = f[i]->type->multiarraytype;
            for (size_t k = 0; k < a->n_shape; k++) json_array_append_new(shape, json_integer(a->shape[k]));
            dtype = array_type_name(a->datatype);
        }
        /* json_pack refuses text that is not UTF-8: then the whole list fails (NULL) */
        if (json_array_append_new(arr, json_pack("{s:s, s:o, s:s, s:s}", "name", f[i]->name, "shape", shape,
                                                 "dtype", dtype, "description", f[i]->shortdescription))) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

static json_t *metadata_json(const Sdc__Coreml__Metadata *md) {
    json_t *user = json_object();
    if (!md) return json_pack("{s:o}", "user_defined", user);
    for (size_t i = 0; i < md->n_userdefined; i++) {
        /* a key or value that is not UTF-8 fails the whole metadata (NULL) */
        if (json_object_set_new(user, md->userdefined[i]->key, json_string(md->userdefined[i]->value))) {
            json_decref(user);
            return NULL;
        }
    }
    return json_pack("{s:s, s:s, s:s, s:s, s:o}", "author", md->author, "license", md->license, "version",
                     md->versionstring, "short_description", md->shortdescription, "user_defined", user);
}

static const Sdc__Coreml__Block *main_block(const Sdc__Coreml__Model *m, const char **opset) {
    if (m->type_case != SDC__COREML__MODEL__TYPE_ML_PROGRAM || !m->mlprogram) return NULL;
    for (size_t i = 0; i < m->mlprogram->n_functions; i++) {
        Sdc__Coreml__Program__FunctionsEntry *fe = m->mlprogram->functions[i];
        if (strcmp(fe->key, "main") || !fe->value) continue;
        for (size_t k = 0; k < fe->value->n_block_specializations; k++) {
            if (!strcmp(fe->value->block_specializations[k]->key, fe->value->opset)) {
                *opset = fe->value->opset;
                return fe->value->block_specializations[k]->value;
            }
        }
    }
    return NULL;
}

/* Operation.blocks (field 4 of Core ML's Operation): the bodies of control-flow ops. Our schema
   leaves the field out (coreml.proto says why), so protobuf-c keeps each block as unknown bytes;
   they are decoded here one level at a time, and only so deep. */
enum { OPERATION_BLOCKS_FIELD = 4, MAX_BLOCK_DEPTH = 32 };

typedef struct op_counter {
    json_t *histogram; /* op type -> count */
    json_int_t total;
    const char *file; /* for messages */
    sdc_err *err;
} op_counter;

static sdc_status count_block(op_counter *c, const Sdc__Coreml__Block *b, int depth);

/* protobuf-c keeps an unknown length-delimited field with its length varint in front: the
   message starts at *at and is *len bytes, which must be all the rest. */
static bool length_prefixed(const uint8_t *data, size_t size, size_t *at, size_t *len) {
    uint64_t v = 0;
    for (size_t i = 0; i < size && i < 10; i++) {
        v |= (uint64_t)(data[i] & 0x7f) << (7 * i);
        if (!(data[i] & 0x80)) {
            *at = i + 1;
            *len = (size_t)v;
            return v == size - *at;
        }
    }
    return false;
}

static sdc_status count_nested_blocks(op_counter *c, const Sdc__Coreml__Operation *op, int depth) {
    for (unsigned i = 0; i < op->base.n_unknown_fields; i++) {
        const ProtobufCMessageUnknownField *u = &op->base.unknown_fields[i];
        if (u->tag != OPERATION_BLOCKS_FIELD || u->wire_type != PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED) continue;
        if (depth >= MAX_BLOCK_DEPTH)
            return sdc_fail(c->err, SDC_E_UNSUPPORTED, "%s: op '%s' nests blocks more than %d deep", c->file, op->type,
                            MAX_BLOCK_DEPTH);
        size_t at = 0, len = 0;
        Sdc__Coreml__Block *inner = NULL;
        if (length_prefixed(u->data, u->len, &at, &len)) inner = sdc__coreml__block__unpack(NULL, len, u->data + at);
        if (!inner) return sdc_fail(c->err, SDC_E_FORMAT, "%s: op '%s' has a malformed nested block", c->file, op->type);
        sdc_status s = count_block(c, inner, depth + 1);
        sdc__coreml__block__free_unpacked(inner, NULL);
        if (s) return s;
    }
    return SDC_OK;
}

/* Every op of the block and of the blocks nested in its ops, by type. */
static sdc_status count_block(op_counter *c, const Sdc__Coreml__Block *b, int depth) {
    for (size_t i = 0; b && i < b->n_operations; i++) {
        const Sdc__Coreml__Operation *op = b->operations[i];
        json_t *n = json_object_get(c->histogram, op->type);
        if (json_object_set_new(c->histogram, op->type, json_integer(n ? json_integer_value(n) + 1 : 1)))
            return sdc_fail(c->err, SDC_E_FORMAT, "%s: an op type is not UTF-8 text", c->file);
        c->total++;
        sdc_status s = count_nested_blocks(c, op, depth);
        if (s) return s;
    }
    return SDC_OK;
}

/* Walks the blob records of the weight file, checking sentinels and bounds; sums data bytes.
   A package without one has no weights. */
static sdc_status weight_bytes(const sdc_package *p, uint64_t *total, uint64_t *count, sdc_err *err) {
    char path[8192];
    struct stat st;
    *total = *count = 0;
    sdc_status s = sdc_package_blob_path(p, SDC_WEIGHT_FILE_REF, path, sizeof path, err);
    if (s || (stat(path, &st) != 0 && errno == ENOENT)) return s;
    sdc_blob_file f;
    if ((s = sdc_blob_file_open(path, false, &f, err))) return s;
    uint64_t off = SDC_BLOB_HEADER;
    while (off < f.map.size) {
        sdc_blob_record r;
        if (!sdc_blob_record_at(&f, off, &r)) {
            s = sdc_fail(err, SDC_E_FORMAT, "%s: truncated record at offset %llu", path, (unsigned long long)off);
            break;
        }
        if (!r.sentinel_ok || r.data != off + SDC_BLOB_HEADER || !sdc_blob_data_inside(&f, &r)) {
            s = sdc_fail(err, SDC_E_FORMAT, "%s: bad blob record at offset %llu", path, (unsigned long long)off);
            break;
        }
        *total += r.size;
        (*count)++;
        off = sdc_blob_next_record(off, r.size);
    }
    if (!s && *count != f.count)
        s = sdc_fail(err, SDC_E_FORMAT, "%s: header says %u blobs, found %llu", path, f.count, (unsigned long long)*count);
    sdc_blob_file_close(&f);
    return s;
}

/* The inspect document of one package, or NULL with `err` set (naming the file at fault). */
static json_t *inspect_doc(const char *package_path, sdc_err *err) {
    sdc_package p;
    uint64_t wbytes = 0, blobs = 0;
    json_t *doc = NULL;
    sdc_status s = sdc_package_open(package_path, &p, err);
    const Sdc__Coreml__Model *m = p.model;
    if (!s) s = weight_bytes(&p, &wbytes, &blobs, err);
    op_counter ops = {.histogram = json_object(), .file = p.model_path, .err = err};
    const char *opset = "";
    const Sdc__Coreml__Block *b = s ? NULL : main_block(m, &opset);
    if (!s) s = count_block(&ops, b, 0);
    if (!s) {
        Sdc__Coreml__ModelDescription *d = m->description;
        doc = json_pack("{s:i, s:s, s:o, s:o, s:o, s:O, s:I, s:I, s:I}", "specification_version",
                        m->specificationversion, "opset", opset, "inputs",
                        d ? features_json(d->n_input, d->input) : json_array(), "outputs",
                        d ? features_json(d->n_output, d->output) : json_array(), "metadata",
                        metadata_json(d ? d->metadata : NULL), "op_histogram", ops.histogram, "op_count", ops.total,
                        "weight_bytes", (json_int_t)wbytes, "weight_blobs", (json_int_t)blobs);
        if (!doc) sdc_fail(err, SDC_E_FORMAT, "%s: a name or text is not UTF-8", p.model_path);
    }
    json_decref(ops.histogram);
    sdc_package_close(&p);
    return doc;
}

/* The document as malloc'd text, or the error in errbuf. Takes the reference to doc. */
static sdc_status dump_doc(json_t *doc, sdc_err *err, char **json_out, char *errbuf, size_t err_size) {
    sdc_status s = err->code;
    *json_out = NULL;
    if (!s && !(*json_out = doc ? json_dumps(doc, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL))
        s = sdc_fail(err, SDC_E_NOMEM, "out of memory");
    json_decref(doc);
    if (errbuf && err_size) snprintf(errbuf, err_size, "%s", s ? err->msg : "");
    return s;
}

sdc_status sdc_inspect_json(const char *package_path, char **json_out, char *errbuf, size_t err_size) {
    sdc_err err = {0};
    json_t *doc = inspect_doc(package_path, &err);
    return dump_doc(doc, &err, json_out, errbuf, err_size);
}

/* ---------------------------------------------------------------- two packages side by side */

/* The metadata fields that describe the model (compared); the user-defined ones name the tool,
   its version and the conversion date, which differ between any two tools, so are not. */
static const char *const COMPARED_METADATA[] = {"author", "license", "version", "short_description"};
static const char *const FEATURE_FIELDS[] = {"dtype", "shape"};

static void add_row(json_t *rows, const char *field, json_t *a, json_t *b) {
    json_array_append_new(rows, json_pack("{s:s, s:O?, s:O?, s:b}", "field", field, "a", a, "b", b, "same",
                                          json_equal(a, b) || (!a && !b)));
}

static json_t *feature_named(json_t *features, const char *name) {
    size_t i;
    json_t *f;
    json_array_foreach(features, i, f) if (!strcmp(json_string_value(json_object_get(f, "name")), name)) return f;
    return NULL;
}

/* Inputs by name: Core ML binds them by name, in any order. */
static void compare_inputs(json_t *rows, json_t *a, json_t *b) {
    json_t *sides[2] = {a, b};
    for (int side = 0; side < 2; side++) {
        size_t i;
        json_t *f;
        json_array_foreach(sides[side], i, f) {
            const char *name = json_string_value(json_object_get(f, "name"));
            if (side == 1 && feature_named(a, name)) continue; /* already compared from a's side */
            json_t *fa = feature_named(a, name), *fb = feature_named(b, name);
            for (size_t k = 0; k < SDC_COUNT_OF(FEATURE_FIELDS); k++) {
                char field[600];
                snprintf(field, sizeof field, "inputs.%s.%s", name, FEATURE_FIELDS[k]);
                add_row(rows, field, json_object_get(fa, FEATURE_FIELDS[k]), json_object_get(fb, FEATURE_FIELDS[k]));
            }
        }
    }
}

/* Outputs by position: Apple's Swift pipeline reads the UNet's and the decoder's that way. */
static void compare_outputs(json_t *rows, json_t *a, json_t *b) {
    size_t n = json_array_size(a) > json_array_size(b) ? json_array_size(a) : json_array_size(b);
    static const char *const fields[] = {"name", "dtype", "shape"};
    for (size_t i = 0; i < n; i++) {
        json_t *fa = json_array_get(a, i), *fb = json_array_get(b, i);
        for (size_t k = 0; k < SDC_COUNT_OF(fields); k++) {
            char field[64];
            snprintf(field, sizeof field, "outputs[%zu].%s", i, fields[k]);
            add_row(rows, field, json_object_get(fa, fields[k]), json_object_get(fb, fields[k]));
        }
    }
}

/* Every field of the contract as a row {field, a, b, same}, in a fixed order. */
static json_t *contract_rows(json_t *a, json_t *b) {
    json_t *rows = json_array();
    add_row(rows, "specification_version", json_object_get(a, "specification_version"),
            json_object_get(b, "specification_version"));
    add_row(rows, "opset", json_object_get(a, "opset"), json_object_get(b, "opset"));
    compare_inputs(rows, json_object_get(a, "inputs"), json_object_get(b, "inputs"));
    compare_outputs(rows, json_object_get(a, "outputs"), json_object_get(b, "outputs"));
    json_t *ma = json_object_get(a, "metadata"), *mb = json_object_get(b, "metadata");
    for (size_t k = 0; k < SDC_COUNT_OF(COMPARED_METADATA); k++) {
        char field[64];
        snprintf(field, sizeof field, "metadata.%s", COMPARED_METADATA[k]);
        add_row(rows, field, json_object_get(ma, COMPARED_METADATA[k]), json_object_get(mb, COMPARED_METADATA[k]));
    }
    add_row(rows, "weight_bytes", json_object_get(a, "weight_bytes"), json_object_get(b, "weight_bytes"));
    return rows;
}

static json_t *counts(json_int_t a, json_int_t b) {
    return json_pack("{s:I, s:I, s:I}", "a", a, "b", b, "difference", b - a);
}

static json_int_t count_of(json_t *histogram, const char *op) {
    return json_integer_value(json_object_get(histogram, op)); /* 0 when absent */
}

/* Every op type of either package: {a, b, difference = b - a}. */
static json_t *histogram_rows(json_t *ha, json_t *hb, json_t *differing) {
    json_t *rows = json_object();
    json_t *sides[2] = {ha, hb};
    for (int side = 0; side < 2; side++) {
        const char *op;
        json_t *v;
        json_object_foreach(sides[side], op, v) {
            if (json_object_get(rows, op)) continue;
            json_int_t a = count_of(ha, op), b = count_of(hb, op);
            json_object_set_new(rows, op, counts(a, b));
            if (a != b) json_array_append_new(differing, json_string(op));
        }
    }
    return rows;
}

static json_t *only_differences(json_t *rows) {
    json_t *out = json_array();
    size_t i;
    json_t *r;
    json_array_foreach(rows, i, r) {
        if (!json_is_true(json_object_get(r, "same")))
            json_array_append_new(out, json_pack("{s:O, s:O, s:O}", "field", json_object_get(r, "field"), "a",
                                                 json_object_get(r, "a"), "b", json_object_get(r, "b")));
    }
    return out;
}

static json_t *compare_docs(const char *path_a, json_t *a, const char *path_b, json_t *b, bool *differ) {
    json_t *contract = contract_rows(a, b), *differing_ops = json_array();
    json_t *histogram = histogram_rows(json_object_get(a, "op_histogram"), json_object_get(b, "op_histogram"), differing_ops);
    json_t *contract_diff = only_differences(contract);
    *differ = json_array_size(contract_diff) || json_array_size(differing_ops);
    json_object_set_new(a, "package", json_string(path_a));
    json_object_set_new(b, "package", json_string(path_b));
    return json_pack("{s:O, s:O, s:b, s:o, s:o, s:o, s:o, s:o}", "a", a, "b", b, "same", !*differ, "contract", contract,
                     "contract_differences", contract_diff, "op_histogram", histogram, "op_types_differing",
                     differing_ops, "op_count",
                     counts(json_integer_value(json_object_get(a, "op_count")),
                            json_integer_value(json_object_get(b, "op_count"))));
}

sdc_status sdc_inspect_compare_json(const char *package_a, const char *package_b, char **json_out, bool *differ,
                                    char *errbuf, size_t err_size) {
    sdc_err err = {0};
    json_t *a = inspect_doc(package_a, &err), *b = a ? inspect_doc(package_b, &err) : NULL, *doc = NULL;
    *differ = false;
    if (a && b && !(doc = compare_docs(package_a, a, package_b, b, differ)))
        sdc_fail(&err, SDC_E_NOMEM, "out of memory");
    json_decref(a);
    json_decref(b);
    return dump_doc(doc, &err, json_out, errbuf, err_size);
}
