/* package.c — the parts of reading an .mlpackage shared by `inspect` and the interpreter:
   Manifest.json → root model path, and the bounded read of model.mlmodel. */
#include "coreml/package.h"

#include <errno.h>
#include <sys/stat.h>

#include <jansson.h>

#include "source/source.h"

#define MAX_MODEL_FILE ((uint64_t)2 << 30)

sdc_status sdc_package_root_model(const char *pkg, char *out, size_t size, sdc_err *err) {
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

sdc_status sdc_package_read_model(const char *path, uint8_t **out, size_t *n, sdc_err *err) {
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

