/*
 * files.c — the small files of a model folder: strict JSON (size bounded, duplicate keys
 * refused, over-long integers read as reals), bounded text reads, and path tests and joins.
 * The floor under source.c, single_file.c and weights.c, which all read configs and indexes.
 */
#include "source/files.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define JSON_MAX_BYTES (64u * 1024u * 1024u) /* configs and indexes are kilobytes */

/* ---- paths -------------------------------------------------------------------------- */


sdc_status sdc_path_join(char *buf, size_t size, const char *dir, const char *name,
                            sdc_err *err) {
    if (!sdc_fmt(buf, size, "%s/%s", dir, name))
        return sdc_fail(err, SDC_E_ARG, "path too long: '%s/%s'", dir, name);
    return SDC_OK;
}

bool sdc_is_dir(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

bool sdc_is_file(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* Present in the folder listing, even as a dangling symlink (an incomplete download), so
   that opening it reports the real problem instead of silently falling back. */
bool sdc_entry_exists(const char *path) {
    struct stat sb;
    return lstat(path, &sb) == 0;
}

/* A relative path shown as "./x" so a reader sees where it was looked for. */
const char *sdc_display_path(const char *path, char *buf, size_t size) {
    if (path[0] == '/' || strncmp(path, "./", 2) == 0 || strncmp(path, "../", 3) == 0)
        return path;
    snprintf(buf, size, "./%s", path);
    return buf;
}

/* A single file name inside a folder: not empty, no separators, no parent references. */
bool sdc_is_plain_file_name(const char *name) {
    return name[0] && !strchr(name, '/') && !strstr(name, "..");
}


/* ---- strict JSON -------------------------------------------------------------------- */


sdc_status sdc_read_small_file(const char *path, size_t limit, char **out, size_t *len, sdc_err *err) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sdc_fail(err, errno == ENOENT ? SDC_E_NOTFOUND : SDC_E_IO, "%s: cannot open: %s",
                        path, strerror(errno));
    struct stat sb;
    sdc_status st = SDC_OK;
    char *buf = NULL;
    size_t got = 0;
    if (fstat(fd, &sb) != 0)
        st = sdc_fail(err, SDC_E_IO, "%s: cannot stat: %s", path, strerror(errno));
    else if (!S_ISREG(sb.st_mode))
        st = sdc_fail(err, SDC_E_IO, "%s: not a regular file", path);
    else if ((uint64_t)sb.st_size > limit)
        st = sdc_fail(err, SDC_E_FORMAT, "%s: %lld bytes exceeds the limit of %zu bytes", path,
                      (long long)sb.st_size, limit);
    else if (!(buf = sdc_malloc((size_t)sb.st_size + 1)))
        st = sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", path);
    while (!st && got < (size_t)sb.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)sb.st_size - got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) st = sdc_fail(err, SDC_E_IO, "%s: read failed: %s", path, strerror(errno));
        if (n <= 0) break; /* a file that shrank while read: parse what is there */
        got += (size_t)n;
    }
    close(fd);
    if (st) {
        sdc_free(buf);
        return st;
    }
    buf[got] = '\0';
    *out = buf;
    *len = got;
    return SDC_OK;
}

/* Integers longer than 18 digits, which JSON allows and jansson cannot hold in 64 bits
   (transformers writes model_max_length = 1000000000000000019884624838656 for "no limit"),
   rewritten as reals ("….0") so they parse; nothing that reads such a key wants an exact
   integer from it. Returns a new text (caller frees), or NULL when out of memory. */
static char *big_ints_as_reals(const char *text, size_t len, size_t *out_len) {
    char *out = sdc_malloc(len + len / 2 + 2); /* each rewrite adds 2 bytes to >= 19 digits */
    if (!out) return NULL;
    size_t n = 0;
    bool in_string = false;
    for (size_t i = 0; i < len;) {
        char ch = text[i];
        if (in_string) {
            out[n++] = text[i++];
            if (ch == '\\' && i < len) out[n++] = text[i++];
            else if (ch == '"') in_string = false;
            continue;
        }
        if (ch == '"') in_string = true;
        if (ch != '-' && !(ch >= '0' && ch <= '9')) {
            out[n++] = text[i++];
            continue;
        }
        size_t start = i, digits = 0;
        bool integral = true;
        for (; i < len && strchr("-+0123456789.eE", text[i]); i++) {
            digits += text[i] >= '0' && text[i] <= '9';
            integral = integral && (text[i] == '-' || (text[i] >= '0' && text[i] <= '9'));
        }
        memcpy(out + n, text + start, i - start);
        n += i - start;
        if (integral && digits > 18) {
            memcpy(out + n, ".0", 2);
            n += 2;
        }
    }
    *out_len = n;
    return out;
}

/* jansson's parser nests at most JSON_PARSER_MAX_DEPTH (2048) levels deep: a deeper file is
   refused with jansson's message, as malformed. */
sdc_status sdc_json_load(const char *path, json_t **out, sdc_err *err) {
    *out = NULL;
    char *text;
    size_t len;
    sdc_status st = sdc_read_small_file(path, JSON_MAX_BYTES, &text, &len, err);
    if (st) return st;
    json_error_t jerr;
    *out = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!*out && json_error_code(&jerr) == json_error_numeric_overflow) {
        size_t n;
        char *relaxed = big_ints_as_reals(text, len, &n);
        if (relaxed) *out = json_loadb(relaxed, n, JSON_REJECT_DUPLICATES, &jerr);
        sdc_free(relaxed);
    }
    sdc_free(text);
    if (*out) return SDC_OK;
    /* jansson says "duplicate object key"; say what the rule is. */
    bool dup = json_error_code(&jerr) == json_error_duplicate_key;
    return sdc_fail(err, SDC_E_FORMAT, "%s: invalid JSON at line %d, column %d: %s", path,
                    jerr.line, jerr.column, dup ? "duplicate key" : jerr.text);
}

sdc_status sdc_json_load_object(const char *path, json_t **out, sdc_err *err) {
    sdc_status st = sdc_json_load(path, out, err);
    if (st) return st;
    if (json_is_object(*out)) return SDC_OK;
    json_decref(*out);
    *out = NULL;
    return sdc_fail(err, SDC_E_FORMAT, "%s: not a JSON object", path);
}

