/*
 * harness.h — what the libFuzzer harnesses of tests/fuzz share.
 *
 * The readers under test take paths, not buffers, so each harness writes the fuzz input into
 * files of a scratch folder private to the process and opens them. The folder is made in
 * $SDC_FUZZ_TMPDIR, else /dev/shm, else $TMPDIR or /tmp, and removed at a normal exit (after a
 * crash it stays: the scripts point SDC_FUZZ_TMPDIR at a folder they remove). Inputs that become several files (a model folder, a package) are one byte
 * string cut at SDC_FUZZ_SEPARATOR: a text line that neither JSON nor the seeds contain, so
 * the mutator can move, copy and drop whole parts.
 */
#ifndef SDC_FUZZ_HARNESS_H
#define SDC_FUZZ_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SDC_FUZZ_SEPARATOR "\n--8<--\n"
#define SDC_FUZZ_MAX_PARTS 8

typedef struct sdc_fuzz_part {
    const uint8_t *data;
    size_t size;
} sdc_fuzz_part;

/* Cuts data at the first n-1 separators into parts[0..n); the last part keeps the rest and
   missing parts are empty. */
void sdc_fuzz_split(const uint8_t *data, size_t size, sdc_fuzz_part *parts, size_t n);

/* The process's scratch folder, made on first use. */
const char *sdc_fuzz_dir(void);
/* "<scratch>/<rel>" in buf (aborts if it does not fit: a harness bug, not a finding). */
const char *sdc_fuzz_path(char *buf, size_t size, const char *rel);
/* mkdir -p of "<scratch>/<rel>". */
void sdc_fuzz_mkdirs(const char *rel);

/* Replaces the file with exactly these bytes; aborts when the scratch folder fails. */
void sdc_fuzz_write(const char *path, const void *data, size_t size);
/* The same, but an empty part means "no such file", so absent files are fuzzed too. */
void sdc_fuzz_write_part(const char *path, sdc_fuzz_part part);
/* Copies a whole file into the scratch folder (for the fixed parts of a harness). */
void sdc_fuzz_copy(const char *from, const char *to);

/* ---- packages (fuzz_package*.c) ---- */

/* The package folder the package harnesses write, and its three files. */
#define SDC_FUZZ_PKG "pkg.mlpackage"
#define SDC_FUZZ_PKG_MANIFEST SDC_FUZZ_PKG "/Manifest.json"
#define SDC_FUZZ_PKG_MODEL SDC_FUZZ_PKG "/Data/com.apple.CoreML/model.mlmodel"
#define SDC_FUZZ_PKG_WEIGHTS SDC_FUZZ_PKG "/Data/com.apple.CoreML/weights/weight.bin"

/* Makes the package's folders; with `base` set (a harness's fixed parts), copies those of the
   package named by $SDC_FUZZ_PACKAGE ("manifest", "model", "weights" in `base`). */
void sdc_fuzz_package_init(const char *base);
/* Reads the package as `sdcoreml inspect` and the interpreter's load do, checking that a
   refusal is one line and that an accepted model describes itself consistently. */
void sdc_fuzz_package_read(void);

/* Dies with a message: for a harness's own setup, never for what the input does. */
void sdc_fuzz_die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
