/*
 * inspect.c — reads an existing .mlpackage (ours or anyone's) and describes it as JSON:
 * inputs, outputs, metadata, op histogram of the main function and weight bytes.
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
        json_array_append_new(arr, json_pack("{s:s, s:o, s:s, s:s}", "name", f[i]->name, "shape", shape, "dtype",
                                             dtype, "description", f[i]->shortdescription));
    }
    return arr;
}

static json_t *metadata_json(const Sdc__Coreml__Metadata *md) {
    json_t *user = json_object();
    if (!md) return json_pack("{s:o}", "user_defined", user);
    for (size_t i = 0; i < md->n_userdefined; i++)
        json_object_set_new(user, md->userdefined[i]->key, json_string(md->userdefined[i]->value));
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

static json_t *histogram_json(const Sdc__Coreml__Block *b) {
    json_t *h = json_object();
    for (size_t i = 0; b && i < b->n_operations; i++) {
        const char *t = b->operations[i]->type;
        json_t *c = json_object_get(h, t);
        json_object_set_new(h, t, json_integer(c ? json_integer_value(c) + 1 : 1));
    }
    return h;
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

sdc_status sdc_inspect_json(const char *package_path, char **json_out, char *errbuf, size_t err_size) {
    sdc_err err = {0};
    sdc_package p;
    uint64_t wbytes = 0, blobs = 0;
    sdc_status s = sdc_package_open(package_path, &p, &err);
    const Sdc__Coreml__Model *m = p.model;
    if (!s) s = weight_bytes(&p, &wbytes, &blobs, &err);
    if (!s) {
        const char *opset = "";
        const Sdc__Coreml__Block *b = main_block(m, &opset);
        Sdc__Coreml__ModelDescription *d = m->description;
        json_t *doc = json_pack(
            "{s:i, s:s, s:o, s:o, s:o, s:o, s:I, s:I, s:I}", "specification_version", m->specificationversion, "opset",
            opset, "inputs", d ? features_json(d->n_input, d->input) : json_array(), "outputs",
            d ? features_json(d->n_output, d->output) : json_array(), "metadata",
            metadata_json(d ? d->metadata : NULL), "op_histogram", histogram_json(b), "op_count",
            (json_int_t)(b ? b->n_operations : 0), "weight_bytes", (json_int_t)wbytes, "weight_blobs", (json_int_t)blobs);
        char *text = doc ? json_dumps(doc, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
        json_decref(doc);
        if (!text) s = sdc_fail(&err, SDC_E_NOMEM, "out of memory");
        *json_out = text;
    }
    sdc_package_close(&p);
    if (errbuf && err_size) snprintf(errbuf, err_size, "%s", s ? err.msg : "");
    return s;
}
