/* harness.c — scratch files and input splitting for the libFuzzer harnesses (harness.h). */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char scratch[4096];

void sdc_fuzz_die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fuzz harness: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

void sdc_fuzz_split(const uint8_t *data, size_t size, sdc_fuzz_part *parts, size_t n) {
    static const char sep[] = SDC_FUZZ_SEPARATOR;
    const size_t sep_len = sizeof sep - 1;
    for (size_t i = 0; i < n; i++) parts[i] = (sdc_fuzz_part){data + size, 0};
    for (size_t i = 0; i < n; i++) {
        const uint8_t *cut = i + 1 < n ? memmem(data, size, sep, sep_len) : NULL;
        size_t len = cut ? (size_t)(cut - data) : size;
        parts[i] = (sdc_fuzz_part){data, len};
        if (!cut) break;
        data = cut + sep_len;
        size -= len + sep_len;
    }
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

/* Only the process that made the folder removes it (libFuzzer does not fork, but be sure). */
static pid_t scratch_owner;

static void remove_scratch(void) {
    if (scratch[0] && getpid() == scratch_owner) nftw(scratch, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

const char *sdc_fuzz_dir(void) {
    if (scratch[0]) return scratch;
    /* Every input is written to files: in tmpfs that costs microseconds, on a disk file system
       (O_TRUNC, then write) it costs more than the parsing, so /dev/shm is preferred. */
    const char *tmp = getenv("SDC_FUZZ_TMPDIR");
    struct stat sb;
    if (!tmp || !tmp[0]) tmp = stat("/dev/shm", &sb) == 0 && S_ISDIR(sb.st_mode) && access("/dev/shm", W_OK) == 0 ? "/dev/shm" : NULL;
    if (!tmp) tmp = getenv("TMPDIR");
    if (!tmp || !tmp[0]) tmp = "/tmp";
    if (snprintf(scratch, sizeof scratch, "%s/sdc-fuzz-XXXXXX", tmp) >= (int)sizeof scratch)
        sdc_fuzz_die("TMPDIR too long");
    if (!mkdtemp(scratch)) sdc_fuzz_die("mkdtemp %s: %s", scratch, strerror(errno));
    scratch_owner = getpid();
    atexit(remove_scratch);
    return scratch;
}

const char *sdc_fuzz_path(char *buf, size_t size, const char *rel) {
    if (snprintf(buf, size, "%s/%s", sdc_fuzz_dir(), rel) >= (int)size) sdc_fuzz_die("path too long: %s", rel);
    return buf;
}

void sdc_fuzz_mkdirs(const char *rel) {
    char path[4096];
    sdc_fuzz_path(path, sizeof path, rel);
    for (char *p = path + strlen(sdc_fuzz_dir()) + 1;; p++) {
        if (*p != '/' && *p) continue;
        char c = *p;
        *p = '\0';
        if (mkdir(path, 0700) != 0 && errno != EEXIST) sdc_fuzz_die("mkdir %s: %s", path, strerror(errno));
        *p = c;
        if (!c) break;
    }
}

void sdc_fuzz_write(const char *path, const void *data, size_t size) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) sdc_fuzz_die("open %s: %s", path, strerror(errno));
    const uint8_t *p = data;
    while (size) {
        ssize_t n = write(fd, p, size);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) sdc_fuzz_die("write %s: %s", path, strerror(errno));
        p += n;
        size -= (size_t)n;
    }
    close(fd);
}

void sdc_fuzz_write_part(const char *path, sdc_fuzz_part part) {
    if (part.size) {
        sdc_fuzz_write(path, part.data, part.size);
    } else if (unlink(path) != 0 && errno != ENOENT) {
        sdc_fuzz_die("unlink %s: %s", path, strerror(errno));
    }
}

void sdc_fuzz_copy(const char *from, const char *to) {
    FILE *f = fopen(from, "rb");
    if (!f) sdc_fuzz_die("open %s: %s", from, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    for (size_t got; buf && (got = fread(buf + n, 1, cap - n, f)) > 0;) {
        n += got;
        if (n == cap) buf = realloc(buf, cap *= 2);
    }
    if (!buf || ferror(f)) sdc_fuzz_die("read %s failed", from);
    fclose(f);
    sdc_fuzz_write(to, buf, n);
    free(buf);
}

/* ---- packages ---------------------------------------------------------------------------- */

#include "sdcoreml.h"

static char pkg_dir[4096];

void sdc_fuzz_package_init(const char *base) {
    sdc_fuzz_mkdirs(SDC_FUZZ_PKG "/Data/com.apple.CoreML/weights");
    sdc_fuzz_path(pkg_dir, sizeof pkg_dir, SDC_FUZZ_PKG);
    if (!base || !base[0]) return;
    const char *from = getenv("SDC_FUZZ_PACKAGE");
    if (!from || !from[0]) sdc_fuzz_die("set SDC_FUZZ_PACKAGE to a valid .mlpackage (bench/fuzz.sh makes one)");
    static const struct {
        const char *what, *rel, *scratch;
    } files[] = {
        {"manifest", "Manifest.json", SDC_FUZZ_PKG_MANIFEST},
        {"model", "Data/com.apple.CoreML/model.mlmodel", SDC_FUZZ_PKG_MODEL},
        {"weights", "Data/com.apple.CoreML/weights/weight.bin", SDC_FUZZ_PKG_WEIGHTS},
    };
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        if (!strstr(base, files[i].what)) continue;
        char src[4096], dst[4096];
        if (snprintf(src, sizeof src, "%s/%s", from, files[i].rel) >= (int)sizeof src) sdc_fuzz_die("path too long");
        sdc_fuzz_copy(src, sdc_fuzz_path(dst, sizeof dst, files[i].scratch));
    }
}

static void check_one_line(sdc_status st, const char *err) {
    if (st && (!err[0] || strchr(err, '\n'))) sdc_fuzz_die("an error must be one non-empty line: '%s'", err);
}

/* A loaded model's description must be readable end to end. */
static void touch_description(const sdc_model *m) {
    size_t sum = 0;
    for (int i = 0; i < sdc_model_n_inputs(m); i++) {
        const sdc_ndarray *a = sdc_model_input(m, i);
        if (!a || a->rank < 0 || a->rank > SDC_ND_MAX_RANK) sdc_fuzz_die("input %d has a bad description", i);
        sum += strlen(a->name) + (size_t)a->shape[a->rank ? a->rank - 1 : 0];
    }
    for (int i = 0; i < sdc_model_n_outputs(m); i++) {
        const sdc_ndarray *a = sdc_model_output(m, i);
        if (!a || a->rank < 0 || a->rank > SDC_ND_MAX_RANK) sdc_fuzz_die("output %d has a bad description", i);
        sum += strlen(a->name) + strlen(sdc_nd_dtype_name(a->dtype));
    }
    volatile size_t sink = sum;
    (void)sink;
}

void sdc_fuzz_package_read(void) {
    char err[1024];
    char *json = NULL;
    sdc_status st = sdc_inspect_json(pkg_dir, &json, err, sizeof err);
    check_one_line(st, err);
    free(json);

    /* One thread: no worker pool to start and stop per input. */
    sdc_model_options opt = {.n_threads = 1};
    sdc_model *m = NULL;
    st = sdc_model_load(pkg_dir, &opt, &m, err, sizeof err);
    check_one_line(st, err);
    if (m) touch_description(m);
    sdc_model_free(m);
}
