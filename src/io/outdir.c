/* outdir.c — fsync, commit by rename, and the removal of temporaries left by dead runs. */
#include "io/outdir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

/* Temporaries nest a few levels (package/Data/com.apple.CoreML/weights/weight.bin, Resources/
   controlnet/X.mlmodelc/...); deeper is not ours. */
#define MAX_DEPTH 16

/* On macOS fsync only reaches the drive's cache; F_FULLFSYNC asks the drive to write it out
   (and fails on file systems that cannot, where fsync is what there is). */
static int sync_to_disk(int fd) {
#ifdef F_FULLFSYNC
    if (fcntl(fd, F_FULLFSYNC) == 0) return 0;
#endif
    return fsync(fd);
}

static sdc_status mkdir_one(const char *path, sdc_err *err) {
    struct stat st;
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        return sdc_fail(err, SDC_E_IO, "%s: cannot create directory: %s", path, strerror(errno));
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) return sdc_fail(err, SDC_E_IO, "%s: not a directory", path);
    return SDC_OK;
}

sdc_status sdc_outdir_mkdirs(const char *path, bool including_last, sdc_err *err) {
    char p[4096];
    if (!sdc_fmt(p, sizeof p, "%s", path)) return sdc_fail(err, SDC_E_ARG, "path too long: '%.200s'", path);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/' || s[-1] == '/') continue;
        *s = '\0';
        sdc_status st = mkdir_one(p, err);
        *s = '/';
        if (st) return st;
    }
    return including_last ? mkdir_one(p, err) : SDC_OK;
}

sdc_status sdc_outdir_fsync(const char *path, sdc_err *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return sdc_fail(err, SDC_E_IO, "%s: cannot open to sync: %s", path, strerror(errno));
    int rc = sync_to_disk(fd), e = errno;
    close(fd);
    /* some file systems cannot sync a directory (EINVAL): nothing more can be done there */
    if (rc != 0 && e != EINVAL) return sdc_fail(err, SDC_E_IO, "%s: fsync failed: %s", path, strerror(e));
    return SDC_OK;
}

/* Children first, then the directory itself, so its entries are durable last. */
static sdc_status fsync_tree(const char *path, int depth, sdc_err *err) {
    struct stat st;
    if (lstat(path, &st) != 0) return sdc_fail(err, SDC_E_IO, "%s: %s", path, strerror(errno));
    if (S_ISLNK(st.st_mode)) return SDC_OK;
    if (S_ISDIR(st.st_mode) && depth < MAX_DEPTH) {
        DIR *d = opendir(path);
        if (!d) return sdc_fail(err, SDC_E_IO, "%s: cannot open: %s", path, strerror(errno));
        sdc_status s = SDC_OK;
        struct dirent *e;
        char child[4200];
        while (!s && (e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            if (!sdc_fmt(child, sizeof child, "%s/%s", path, e->d_name))
                s = sdc_fail(err, SDC_E_ARG, "%s/%s: path too long", path, e->d_name);
            else
                s = fsync_tree(child, depth + 1, err);
        }
        closedir(d);
        if (s) return s;
    }
    return sdc_outdir_fsync(path, err);
}

/* The directory that holds `path` ("." for a bare name). */
static void parent_of(const char *path, char *out, size_t size) {
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(out, size, ".");
    else if (slash == path)
        snprintf(out, size, "/");
    else
        snprintf(out, size, "%.*s", (int)(slash - path), path);
}

sdc_status sdc_outdir_commit(const char *tmp, const char *final, bool *lost_race, sdc_err *err) {
    *lost_race = false;
    sdc_status s = fsync_tree(tmp, 0, err);
    if (s) return s;
    if (rename(tmp, final) != 0) {
        int e = errno;
        struct stat st;
        if ((e == ENOTEMPTY || e == EEXIST) && stat(final, &st) == 0 && S_ISDIR(st.st_mode)) {
            *lost_race = true;
            return SDC_OK;
        }
        return sdc_fail(err, SDC_E_IO, "%s: cannot rename the finished output into place: %s", final, strerror(e));
    }
    char parent[4200];
    parent_of(final, parent, sizeof parent);
    return sdc_outdir_fsync(parent, err);
}

static void remove_tree(const char *path, int depth) {
    struct stat st;
    if (lstat(path, &st) != 0) return;
    if (S_ISDIR(st.st_mode) && depth < MAX_DEPTH) {
        DIR *d = opendir(path);
        struct dirent *e;
        char child[4200];
        while (d && (e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") &&
                sdc_fmt(child, sizeof child, "%s/%s", path, e->d_name))
                remove_tree(child, depth + 1);
        if (d) closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

void sdc_outdir_remove_tree(const char *path) { remove_tree(path, 0); }

/* Digits only, at least one, as a pid > 0. */
static long parse_pid(const char *s, const char **end) {
    long pid = 0;
    const char *p = s;
    while (*p >= '0' && *p <= '9' && pid < 100000000) pid = pid * 10 + (*p++ - '0');
    *end = p;
    return p > s ? pid : 0;
}

long sdc_outdir_temp_pid(const char *name) {
    static const char reference[] = ".sdcoreml-reference-", partial[] = ".partial-";
    const char *end;
    if (name[0] != '.') return 0;
    if (!strncmp(name, reference, sizeof reference - 1)) {
        long pid = parse_pid(name + sizeof reference - 1, &end);
        return *end == '-' ? pid : 0;
    }
    const char *p = strstr(name, partial);
    while (p && strstr(p + 1, partial)) p = strstr(p + 1, partial); /* the last one */
    if (!p || p == name) return 0;
    long pid = parse_pid(p + sizeof partial - 1, &end);
    return *end == 0 ? pid : 0;
}

static bool process_gone(long pid) { return kill((pid_t)pid, 0) != 0 && errno == ESRCH; }

int sdc_outdir_remove_stale(const char *dir, void (*note)(void *user, const char *path, long pid), void *user) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int removed = 0;
    struct dirent *e;
    char path[4200];
    while ((e = readdir(d))) {
        long pid = sdc_outdir_temp_pid(e->d_name);
        if (pid <= 0 || pid == (long)getpid() || !process_gone(pid)) continue;
        if (!sdc_fmt(path, sizeof path, "%s/%s", dir, e->d_name)) continue;
        remove_tree(path, 0);
        removed++;
        if (note) note(user, path, pid);
    }
    closedir(d);
    return removed;
}
