/*
 * bundle.c — --bundle-resources-for-swift-cli (anchor §11): <-o>/Resources/ with each
 * package compiled to the .mlmodelc name Apple's Swift pipeline loads, ControlNets under
 * Resources/controlnet/, and the tokenizer's vocab.json and merges.txt.
 *
 * Compiling an .mlpackage to .mlmodelc is done by Apple's `xcrun coremlcompiler` (macOS with
 * Xcode); the format of .mlmodelc is not documented, so sdcoreml does not fake it. Without
 * xcrun on PATH the option is refused before any conversion starts. Unlike the anchor, the
 * tokenizer files come from the model's own tokenizer/ folder by default; an explicit
 * --text-encoder-vocabulary-url / --text-encoder-merges-url names a local file or an http(s)
 * URL, downloaded (src/hub/) by the prepare step into a temporary file, so that a bad URL fails
 * before anything is converted. Both are checked before anything is converted. Resources/ is filled from a hidden staging folder,
 * so a failing bundle leaves it as it was.
 */
#include <ctype.h>
#include <dirent.h>
#include <stddef.h>
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "convert/convert.h"
#include "hub/hub.h"
#include "io/outdir.h"

#ifdef __APPLE__
#include <crt_externs.h>
#define environ (*_NSGetEnviron()) /* a dynamic library on macOS cannot name `environ` itself */
#else
extern char **environ;
#endif

/* Full path of an executable found on PATH, or false. */
static bool find_on_path(const char *exe, char *out, size_t size) {
    const char *path = getenv("PATH");
    if (!path) return false;
    while (*path) {
        size_t n = strcspn(path, ":");
        if (n && sdc_fmt(out, size, "%.*s/%s", (int)n, path, exe) && access(out, X_OK) == 0) return true;
        path += n + (path[n] == ':');
    }
    return false;
}

sdc_status sdc_conv_bundle_preflight(const sdc_conv_ctx *c) {
    char xcrun[4096];
    if (!find_on_path("xcrun", xcrun, sizeof xcrun))
        return sdc_fail(c->err, SDC_E_UNSUPPORTED,
                        "--bundle-resources-for-swift-cli compiles packages with Apple's `xcrun coremlcompiler` "
                        "(macOS with Xcode), which is not on PATH; convert without it and compile on a Mac");
    return SDC_OK;
}

/* Runs xcrun coremlcompiler compile PKG DIR with its output discarded (the library prints
   nothing); a failure names the package. */
static sdc_status compile(const sdc_conv_ctx *c, const char *package, const char *dir) {
    char xcrun[4096];
    if (!find_on_path("xcrun", xcrun, sizeof xcrun)) return sdc_conv_bundle_preflight(c);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    char *argv[] = {xcrun, "coremlcompiler", "compile", (char *)package, (char *)dir, NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, xcrun, &fa, NULL, argv, environ), status = 0;
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) return sdc_fail(c->err, SDC_E_IO, "%s: cannot run: %s", xcrun, strerror(rc));
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return sdc_fail(c->err, SDC_E_IO, "%s: xcrun coremlcompiler compile failed (status %d)", package, status);
    return SDC_OK;
}

/* Compiles <-o>/<package> into <stage>/<sub><target>.mlmodelc unless <resources>/<sub><target>.mlmodelc
   exists (kept, as the anchor does) or the package was not written. */
static sdc_status bundle_one(const sdc_conv_ctx *c, const char *package, const char *resources, const char *stage,
                             const char *sub, const char *target) {
    char pkg[4200], compiled[4400], kept[4400], staged[4400], dir[4300];
    const char *out = c->job->output_dir ? c->job->output_dir : ".";
    snprintf(pkg, sizeof pkg, "%s/%s", out, package);
    snprintf(kept, sizeof kept, "%s/%s%s.mlmodelc", resources, sub, target);
    if (!sdc_path_exists(pkg) || sdc_path_exists(kept)) return SDC_OK;
    snprintf(dir, sizeof dir, "%s/%s", stage, sub);
    snprintf(staged, sizeof staged, "%s/%s.mlmodelc", dir, target);
    size_t stem = strlen(package) - strlen(".mlpackage");
    snprintf(compiled, sizeof compiled, "%s/%.*s.mlmodelc", dir, (int)stem, package);
    sdc_status s = compile(c, pkg, dir);
    if (s) return s;
    if (!sdc_path_exists(compiled))
        return sdc_fail(c->err, SDC_E_IO, "%s: coremlcompiler wrote no %s", pkg, compiled);
    if (rename(compiled, staged) != 0)
        return sdc_fail(c->err, SDC_E_IO, "%s: cannot rename to %s: %s", compiled, staged, strerror(errno));
    sdc_conv_log(c, SDC_LOG_INFO, "bundled %s", kept);
    return SDC_OK;
}

/* Swift's name for a ControlNet: the id with '/' as '_', split on '_' and '-', each piece in
   Python's str.title() (upper after any non-letter), joined: lllyasviel/sd-controlnet-mlsd →
   LllyasvielSdControlnetMlsd, control_v11p_sd15_canny → ControlV11PSd15Canny. */
static void swift_controlnet_name(const char *id, char *out, size_t size) {
    size_t n = 0;
    bool up = true;
    for (const char *p = id; *p && n + 1 < size; p++) {
        if (*p == '/' || *p == '_' || *p == '-') {
            up = true;
            continue;
        }
        unsigned char ch = (unsigned char)*p;
        out[n++] = isalpha(ch) ? (char)(up ? toupper(ch) : tolower(ch)) : (char)ch;
        up = !isalpha(ch);
    }
    out[n] = 0;
}

/* Into the staging folder, which is itself the temporary: no rename of its own needed. */
static sdc_status copy_file(const sdc_conv_ctx *c, const char *from, const char *to) {
    FILE *in = fopen(from, "rb");
    if (!in) return sdc_fail(c->err, SDC_E_IO, "%s: cannot open: %s", from, strerror(errno));
    FILE *out = fopen(to, "wb");
    if (!out) {
        fclose(in);
        return sdc_fail(c->err, SDC_E_IO, "%s: cannot create: %s", to, strerror(errno));
    }
    char buf[1 << 16];
    size_t k;
    bool ok = true;
    while ((k = fread(buf, 1, sizeof buf, in)) > 0) ok = ok && fwrite(buf, 1, k, out) == k;
    ok = !ferror(in) && ok;
    fclose(in);
    ok = fclose(out) == 0 && ok;
    return ok ? SDC_OK : sdc_fail(c->err, SDC_E_IO, "%s: cannot write (copying %s)", to, from);
}

static bool is_http_url(const char *url) {
    return url && (!strncmp(url, "http://", 7) || !strncmp(url, "https://", 8));
}

/* Where prepare puts a downloaded tokenizer file until the bundle step copies it: one per
   process and file name, removed by sdc_conv_bundle_cleanup. */
static bool downloaded_path(const char *file, char *out, size_t size) {
    const char *tmp = getenv("TMPDIR");
    return sdc_fmt(out, size, "%s/.sdcoreml-%ld-%s", tmp && *tmp ? tmp : "/tmp", (long)getpid(), file);
}

/* Where vocab.json / merges.txt come from: an explicit local file (path or file://) or the
   download of an http(s) URL, else the pipeline's own tokenizer (tokenizer/, or tokenizer_2/
   for a refiner-only pipeline). */
static sdc_status tokenizer_source(const sdc_conv_ctx *c, const char *url, const char *file, char *from, size_t size) {
    if (url && strncmp(url, "file://", 7) && strstr(url, "://") && !is_http_url(url))
        return sdc_fail(c->err, SDC_E_UNSUPPORTED, "%s: only http(s) URLs, file:// and local files are read for %s", url, file);
    if (is_http_url(url)) {
        if (!downloaded_path(file, from, size)) return sdc_fail(c->err, SDC_E_ARG, "TMPDIR: path too long");
    } else if (url) {
        if (!sdc_fmt(from, size, "%s", strncmp(url, "file://", 7) ? url : url + 7))
            return sdc_fail(c->err, SDC_E_ARG, "%s: path too long", url);
    } else if (!sdc_pipeline_tokenizer_file(c->src, file, from, size)) {
        return sdc_fail(c->err, SDC_E_NOTFOUND, "%s: no tokenizer/%s to bundle; pass it as a local file or URL with --text-encoder-%s-url%s",
                        c->src->root, file, strcmp(file, "vocab.json") ? "merges" : "vocabulary",
                        c->src->single ? " (a single checkpoint file holds no tokenizer; --config DIR with tokenizer/ also gives it)" : "");
    }
    if (access(from, R_OK) != 0) return sdc_fail(c->err, SDC_E_IO, "%s: cannot read: %s", from, strerror(errno));
    return SDC_OK;
}

/* An http(s) tokenizer URL is downloaded once, before anything is converted. */
static sdc_status download_tokenizer_file(const sdc_conv_ctx *c, const char *url, const char *file) {
    char dest[4200];
    if (!is_http_url(url)) return SDC_OK;
    if (sdc_hub_offline())
        return sdc_fail(c->err, SDC_E_NOTFOUND, "%s: HF_HUB_OFFLINE is set, so %s is not downloaded; unset it or give a local file",
                        url, file);
    if (!downloaded_path(file, dest, sizeof dest)) return sdc_fail(c->err, SDC_E_ARG, "TMPDIR: path too long");
    sdc_hub_callbacks cb = {c->job->log, c->job->progress, c->job->user};
    sdc_status s = sdc_hub_fetch_url(url, dest, &cb, c->err);
    if (s) sdc_err_prefix(c->err, "--text-encoder-%s-url: ", strcmp(file, "vocab.json") ? "merges" : "vocabulary");
    return s;
}

static const struct {
    const char *file;
    size_t url; /* offsetof(sdc_job, <the option naming it>) */
} TOKENIZER_FILES[] = {{"vocab.json", offsetof(sdc_job, text_encoder_vocabulary_url)},
                       {"merges.txt", offsetof(sdc_job, text_encoder_merges_url)}};

static const char *tokenizer_url(const sdc_job *job, size_t i) {
    return *(const char *const *)((const char *)job + TOKENIZER_FILES[i].url);
}

/* Before anything is converted: the tokenizer files are downloaded (URLs), exist and are readable. */
sdc_status sdc_conv_bundle_prepare(const sdc_conv_ctx *c) {
    char from[4200];
    for (size_t i = 0; i < SDC_COUNT_OF(TOKENIZER_FILES); i++) {
        sdc_status s = download_tokenizer_file(c, tokenizer_url(c->job, i), TOKENIZER_FILES[i].file);
        if (!s) s = tokenizer_source(c, tokenizer_url(c->job, i), TOKENIZER_FILES[i].file, from, sizeof from);
        if (s) return s;
    }
    return SDC_OK;
}

void sdc_conv_bundle_cleanup(const sdc_conv_ctx *c) {
    char path[4200];
    for (size_t i = 0; i < SDC_COUNT_OF(TOKENIZER_FILES); i++)
        if (is_http_url(tokenizer_url(c->job, i)) && downloaded_path(TOKENIZER_FILES[i].file, path, sizeof path)) unlink(path);
}

/* Everything the staging folder holds goes into Resources/: each entry by one durable rename,
   files replacing older ones, compiled models (never present in Resources/, see bundle_one)
   added — or left out when another run put the same one there first. */
static sdc_status move_staged(const sdc_conv_ctx *c, const char *stage, const char *resources) {
    sdc_status s = sdc_outdir_mkdirs(resources, true, c->err);
    DIR *d = s ? NULL : opendir(stage);
    if (!s && !d) s = sdc_fail(c->err, SDC_E_IO, "%s: cannot open: %s", stage, strerror(errno));
    struct dirent *e;
    while (!s && (e = readdir(d))) {
        char from[4400], to[4400];
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(from, sizeof from, "%s/%s", stage, e->d_name);
        snprintf(to, sizeof to, "%s/%s", resources, e->d_name);
        struct stat st;
        if (!strcmp(e->d_name, "controlnet") && stat(to, &st) == 0 && S_ISDIR(st.st_mode))
            s = move_staged(c, from, to); /* Resources/controlnet/ exists: merge into it */
        else {
            bool lost_race;
            s = sdc_outdir_commit(from, to, &lost_race, c->err);
        }
    }
    if (d) closedir(d);
    return s;
}

/* Compiles into a hidden staging folder beside Resources/ and moves the result in when all of it
   is there, so a failing compile or copy leaves Resources/ as it was. */
sdc_status sdc_conv_bundle(const sdc_conv_ctx *c) {
    char resources[4200], stage[4200], path[4200];
    const char *out = c->job->output_dir ? c->job->output_dir : ".";
    snprintf(resources, sizeof resources, "%s/Resources", out);
    if (!sdc_fmt(stage, sizeof stage, "%s/.Resources.partial-%ld", out, (long)getpid()))
        return sdc_fail(c->err, SDC_E_ARG, "-o: output path too long");
    sdc_outdir_remove_tree(stage); /* a leftover of a crashed run with our pid */
    sdc_status s = sdc_outdir_mkdirs(stage, true, c->err);
    for (size_t i = 0; !s && i < c->n_rows; i++) {
        const sdc_conv_resource *r = c->rows[i].resources;
        for (size_t k = 0; !s && k < SDC_CONV_MAX_RESOURCES && r[k].submodule; k++) {
            if ((s = sdc_conv_package_path(c, r[k].submodule, path, sizeof path))) break;
            const char *base = strrchr(path, '/');
            s = bundle_one(c, base ? base + 1 : path, resources, stage, "", r[k].swift);
        }
    }
    if (!s && c->job->n_controlnet) {
        char cdir[4300];
        snprintf(cdir, sizeof cdir, "%s/controlnet", stage);
        s = sdc_outdir_mkdirs(cdir, true, c->err);
        for (int i = 0; !s && i < c->job->n_controlnet; i++) {
            char pkg[700], name[600];
            snprintf(pkg, sizeof pkg, "ControlNet_%s.mlpackage", c->job->controlnet[i]);
            for (char *p = pkg; *p; p++)
                if (*p == '/') *p = '_';
            swift_controlnet_name(c->job->controlnet[i], name, sizeof name);
            s = bundle_one(c, pkg, resources, stage, "controlnet/", name);
        }
    }
    for (size_t i = 0; !s && i < SDC_COUNT_OF(TOKENIZER_FILES); i++) {
        char from[4200], to[4400];
        const char *file = TOKENIZER_FILES[i].file;
        snprintf(to, sizeof to, "%s/%s", stage, file);
        if (!(s = tokenizer_source(c, tokenizer_url(c->job, i), file, from, sizeof from))) s = copy_file(c, from, to);
    }
    if (!s) s = move_staged(c, stage, resources);
    sdc_outdir_remove_tree(stage);
    return s;
}
