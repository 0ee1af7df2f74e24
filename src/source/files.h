/*
 * files.h — the small files of a model folder (files.c): strict JSON, bounded reads, paths.
 */
#ifndef SDC_SOURCE_FILES_H
#define SDC_SOURCE_FILES_H

#include "common.h"

#include <jansson.h>

/* Reads a whole regular file of at most `limit` bytes into *out (malloc'd, NUL-terminated; the
   caller frees it), its length in *len. Errors name the file. */
sdc_status sdc_read_small_file(const char *path, size_t limit, char **out, size_t *len, sdc_err *err);

/* Reads a JSON file strictly (duplicate keys rejected, size bounded). */
sdc_status sdc_json_load(const char *path, json_t **out, sdc_err *err);
/* The same, and the document must be an object. */
sdc_status sdc_json_load_object(const char *path, json_t **out, sdc_err *err);

/* dir/name into buf; an error naming both when it does not fit. */
sdc_status sdc_path_join(char *buf, size_t size, const char *dir, const char *name, sdc_err *err);
bool sdc_is_dir(const char *path);
bool sdc_is_file(const char *path);
/* Present in the folder listing, even as a dangling symlink (an incomplete download). */
bool sdc_entry_exists(const char *path);
/* A relative path shown as "./x" so a reader sees where it was looked for. */
const char *sdc_display_path(const char *path, char *buf, size_t size);
/* A single file name inside a folder: not empty, no separators, no parent references. */
bool sdc_is_plain_file_name(const char *name);

#endif
