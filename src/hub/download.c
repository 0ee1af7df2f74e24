/*
 * download.c — fills the Hugging Face cache from the Hub as huggingface_hub's snapshot_download
 * does (see hub.h for the layout), with only the files a conversion reads:
 *
 *   1. GET {endpoint}/api/models/{id}/revision/{rev}: the commit sha and the file listing;
 *   2. the plan: model_index.json, every component's config (converters read each other's),
 *      the weights of the wanted components chosen as the source reader chooses them (fp16
 *      variant first; a shard index, then its shards), tokenizer files and the model card
 *      when asked;
 *   3. per file: HEAD {endpoint}/{id}/resolve/{sha}/{path} gives the ETag (X-Linked-Etag,
 *      the SHA-256, for LFS files) and size; the bytes go to blobs/<etag>.incomplete, resumed
 *      with Range after a lost connection (in this run or the next), are verified and renamed
 *      to blobs/<etag>, and snapshots/<sha>/<path> becomes a relative symlink to the blob;
 *   4. refs/<rev> last, so a cache entry with a ref has its files.
 */
#include "hub/http.h"
#include "io/outdir.h"
#include "source/source.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define LISTING_MAX_BYTES (32u << 20)
#define MAX_FILE_BYTES ((uint64_t)1 << 42) /* 4 TB: a size beyond is a lie */
#define MAX_PLAN 4096

typedef struct fetcher {
    sdc_hub_id id;
    char endpoint[1024], token[4096], cache[4096], repo_dir[4500], sha[48];
    char **siblings; /* the repository's files, from the listing */
    size_t n_siblings;
    char **plan; /* files to fetch, in order; grows as shard indexes are read */
    size_t n_plan;
    const sdc_hub_callbacks *cb;
    sdc_err *err;
} fetcher;

static void note(const fetcher *f, sdc_log_level level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void note(const fetcher *f, sdc_log_level level, const char *fmt, ...) {
    if (!f->cb) return;
    va_list ap;
    va_start(ap, fmt);
    sdc_logv(f->cb->log, f->cb->user, level, fmt, ap);
    va_end(ap);
}

static void pause_before_attempt(int attempt) {
    long ms = sdc_http_backoff_ms() << (attempt - 1);
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

/* ---- answers the Hub gives instead of a file ------------------------------------------------ */

/* One line for a status that is not success, named by the Hub's X-Error-Code when it sends one. */
static sdc_status hub_refusal(const fetcher *f, const sdc_http_headers *h, const char *file) {
    const char *code = h->error_code, *repo = f->id.repo;
    if (!strcmp(code, "RepoNotFound"))
        return sdc_fail(f->err, SDC_E_NOTFOUND, "model '%s' not found on %s (HTTP %ld; if it is private, set HF_TOKEN)",
                        repo, f->endpoint, h->status);
    if (!strcmp(code, "GatedRepo") || h->status == 401 || h->status == 403)
        return sdc_fail(f->err, SDC_E_NOTFOUND,
                        "model '%s' is gated or private (HTTP %ld%s): accept its licence on %s/%s and set HF_TOKEN "
                        "(or put a token in $HF_HOME/token)",
                        repo, h->status, f->token[0] ? ", with the token given" : ", no token given", f->endpoint, repo);
    if (!strcmp(code, "RevisionNotFound"))
        return sdc_fail(f->err, SDC_E_NOTFOUND, "model '%s' has no revision '%s' (HTTP %ld)", repo, f->id.revision,
                        h->status);
    if (h->status == 404 && file)
        return sdc_fail(f->err, SDC_E_NOTFOUND, "model '%s': file '%s' not found at commit %s (HTTP 404)", repo, file,
                        f->sha);
    if (h->status == 404)
        return sdc_fail(f->err, SDC_E_NOTFOUND, "model '%s' not found on %s (HTTP 404)", repo, f->endpoint);
    return sdc_fail(f->err, SDC_E_IO, "model '%s': %s%s: HTTP %ld%s%s", repo, file ? "file " : "listing",
                    file ? file : "", h->status, code[0] ? " " : "", code);
}

static bool worth_retrying(long status) { return status >= 500 || status == 429; }

/* Runs a request until it answers with anything but a 5xx/429 or a lost connection, at most
   SDC_HTTP_ATTEMPTS times with doubling pauses. `what` names it in messages. */
static sdc_status perform_with_retries(const fetcher *f, sdc_http_request *req, sdc_http_headers *h, const char *what) {
    for (int attempt = 1;; attempt++) {
        sdc_err e = {0};
        bool transient = false;
        sdc_status s = sdc_http_perform(req, h, &transient, &e);
        if (!s && !worth_retrying(h->status)) return SDC_OK;
        char why[1100];
        if (s) snprintf(why, sizeof why, "%s", e.msg);
        else snprintf(why, sizeof why, "HTTP %ld from %s", h->status, req->url);
        if ((s && !transient) || attempt == SDC_HTTP_ATTEMPTS)
            return sdc_fail(f->err, s ? s : SDC_E_IO, "model '%s': %s failed%s: %s", f->id.repo, what,
                            s && !transient ? "" : " after 5 attempts", why);
        note(f, SDC_LOG_WARNING, "%s: %s: %s; attempt %d of %d in %ld ms", f->id.repo, what, why, attempt + 1,
             SDC_HTTP_ATTEMPTS, sdc_http_backoff_ms() << (attempt - 1));
        pause_before_attempt(attempt);
    }
}

/* ---- the listing ---------------------------------------------------------------------------- */

static bool is_hex(const char *s, size_t n) {
    if (strlen(s) != n) return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
    return true;
}

static sdc_status read_siblings(fetcher *f, const json_t *list, const char *url) {
    if (!json_is_array(list) || json_array_size(list) > 100000)
        return sdc_fail(f->err, SDC_E_FORMAT, "%s: 'siblings' is not a list of files", url);
    f->siblings = sdc_calloc(json_array_size(list) + 1, sizeof *f->siblings);
    if (!f->siblings) return sdc_fail(f->err, SDC_E_NOMEM, "%s: out of memory", url);
    size_t i;
    const json_t *e;
    json_array_foreach(list, i, e) {
        const char *name = json_string_value(json_object_get(e, "rfilename"));
        if (!name) return sdc_fail(f->err, SDC_E_FORMAT, "%s: siblings[%zu] has no 'rfilename' string", url, i);
        if (!sdc_hub_safe_path(name))
            return sdc_fail(f->err, SDC_E_FORMAT, "%s: refusing the file name '%.200s': it would leave the snapshot folder",
                            url, name);
        if (!(f->siblings[f->n_siblings++] = sdc_strdup(name))) return sdc_fail(f->err, SDC_E_NOMEM, "out of memory");
    }
    return SDC_OK;
}

static sdc_status parse_listing(fetcher *f, const char *text, size_t len, const char *url) {
    json_error_t je;
    json_t *doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(doc)) {
        json_decref(doc);
        return sdc_fail(f->err, SDC_E_FORMAT, "%s: not a JSON object (%s)", url, doc ? "another JSON value" : je.text);
    }
    const char *sha = json_string_value(json_object_get(doc, "sha"));
    sdc_status s = SDC_OK;
    if (!sha || !is_hex(sha, 40))
        s = sdc_fail(f->err, SDC_E_FORMAT, "%s: 'sha' is not a 40-digit commit hash", url);
    else {
        snprintf(f->sha, sizeof f->sha, "%s", sha);
        s = read_siblings(f, json_object_get(doc, "siblings"), url);
    }
    json_decref(doc);
    return s;
}

static sdc_status fetch_listing(fetcher *f) {
    char url[2600];
    snprintf(url, sizeof url, "%s/api/models/%s/revision/", f->endpoint, f->id.repo);
    if (!sdc_http_escape(url, sizeof url, f->id.revision, false)) return sdc_fail(f->err, SDC_E_ARG, "URL too long");
    sdc_http_request req = {.url = url, .token = f->token, .fd = -1, .limit = LISTING_MAX_BYTES};
    sdc_http_headers h;
    sdc_status s = perform_with_retries(f, &req, &h, "listing the files");
    if (!s && h.status != 200) s = hub_refusal(f, &h, NULL);
    if (!s) s = parse_listing(f, req.body ? req.body : "", req.body_len, url);
    sdc_free(req.body);
    return s;
}

/* ---- the plan --------------------------------------------------------------------------- */

static bool listed(const fetcher *f, const char *path) {
    for (size_t i = 0; i < f->n_siblings; i++)
        if (!strcmp(f->siblings[i], path)) return true;
    return false;
}

static sdc_status plan_add(fetcher *f, const char *path) {
    for (size_t i = 0; i < f->n_plan; i++)
        if (!strcmp(f->plan[i], path)) return SDC_OK;
    if (f->n_plan == MAX_PLAN) return sdc_fail(f->err, SDC_E_FORMAT, "model '%s': more than %d files to fetch", f->id.repo, MAX_PLAN);
    if (!(f->plan[f->n_plan] = sdc_strdup(path))) return sdc_fail(f->err, SDC_E_NOMEM, "out of memory");
    f->n_plan++;
    return SDC_OK;
}

/* "<dir>/<name>", or "<name>" for the root. */
static void in_folder(char *out, size_t size, const char *dir, const char *name) {
    snprintf(out, size, "%s%s%s", dir, dir[0] ? "/" : "", name);
}

/* The weights the source reader would open in `dir`: the first candidate the repository has. */
static sdc_status plan_weights(fetcher *f, const char *dir) {
    char name[128], path[1200];
    bool is_index;
    for (size_t i = 0; sdc_source_weight_name(i, name, sizeof name, &is_index); i++) {
        in_folder(path, sizeof path, dir, name);
        if (listed(f, path)) return plan_add(f, path); /* an index's shards are added once it is read */
    }
    return sdc_fail(f->err, SDC_E_NOTFOUND, "model '%s': no .safetensors weights in '%s' on the Hub", f->id.repo,
                    dir[0] ? dir : "(the root)");
}

/* Configs at the root or one folder down: the ones converters read. */
static bool is_config(const char *path) {
    static const char *const names[] = {"config.json", "scheduler_config.json", "tokenizer_config.json"};
    const char *slash = strchr(path, '/'), *base = slash ? slash + 1 : path;
    if (slash && strchr(base, '/')) return false;
    for (size_t i = 0; i < SDC_COUNT_OF(names); i++)
        if (!strcmp(base, names[i])) return true;
    return !strcmp(path, "model_index.json");
}

static bool has_config(const fetcher *f, const char *dir) {
    char path[1200];
    in_folder(path, sizeof path, dir, "config.json");
    return listed(f, path);
}

static sdc_status plan_components(fetcher *f, const sdc_hub_want *want) {
    sdc_status s = SDC_OK;
    if (want->all_components) {
        for (size_t i = 0; !s && i < f->n_siblings; i++) {
            const char *p = f->siblings[i], *slash = strchr(p, '/');
            char dir[1200];
            if (strcmp(slash ? slash + 1 : p, "config.json") || (slash && strchr(slash + 1, '/'))) continue;
            snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - p) : 0, p);
            s = plan_weights(f, dir);
        }
        return s;
    }
    bool any = false;
    for (size_t i = 0; !s && i < want->n_components; i++) {
        const char *dir = want->components[i];
        if (want->first_present && (any || !has_config(f, dir))) continue;
        if (!has_config(f, dir)) continue; /* a component the pipeline lacks: the converter says so */
        any = true;
        s = plan_weights(f, dir);
    }
    return s;
}

static sdc_status make_plan(fetcher *f, const sdc_hub_want *want) {
    if (!(f->plan = sdc_calloc(MAX_PLAN, sizeof *f->plan))) return sdc_fail(f->err, SDC_E_NOMEM, "out of memory");
    sdc_status s = SDC_OK;
    for (size_t i = 0; !s && i < f->n_siblings; i++)
        if (is_config(f->siblings[i])) s = plan_add(f, f->siblings[i]);
    if (!s) s = plan_components(f, want);
    static const char *const tokenizer_files[] = {"vocab.json", "merges.txt"};
    for (size_t i = 0; !s && want->tokenizer_files && i < SDC_COUNT_OF(tokenizer_files); i++) {
        char a[64], b[64];
        snprintf(a, sizeof a, "tokenizer/%s", tokenizer_files[i]);
        snprintf(b, sizeof b, "tokenizer_2/%s", tokenizer_files[i]);
        if (listed(f, a)) s = plan_add(f, a);
        else if (listed(f, b)) s = plan_add(f, b);
    }
    if (!s && want->model_card && listed(f, "README.md")) s = plan_add(f, "README.md");
    return s;
}

/* A shard index was fetched: its shards join the plan (plain names in the same folder). */
static sdc_status plan_shards(fetcher *f, const char *index_path, const char *snapshot_file) {
    json_t *doc;
    sdc_status s = sdc_json_load(snapshot_file, &doc, f->err);
    if (s) return s;
    const json_t *map = json_object_get(doc, "weight_map");
    char dir[1200];
    const char *slash = strrchr(index_path, '/');
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - index_path) : 0, index_path);
    if (!json_is_object(map)) s = sdc_fail(f->err, SDC_E_FORMAT, "%s: 'weight_map' is missing or not an object", snapshot_file);
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)map, key, v) {
        if (s) break;
        const char *shard = json_string_value(v);
        char path[1400];
        if (!shard || strchr(shard, '/') || !sdc_hub_safe_path(shard)) {
            s = sdc_fail(f->err, SDC_E_FORMAT, "%s: weight_map entry of tensor '%s' is not a file name in the same folder",
                         snapshot_file, key);
            break;
        }
        in_folder(path, sizeof path, dir, shard);
        if (!listed(f, path)) s = sdc_fail(f->err, SDC_E_NOTFOUND, "%s: shard '%s' is not in the repository", snapshot_file, path);
        else s = plan_add(f, path);
    }
    json_decref(doc);
    return s;
}

/* ---- one file ------------------------------------------------------------------------------ */

typedef struct remote_file {
    const char *path;
    char url[3000];
    char etag[130]; /* the blob's name */
    bool lfs;       /* etag is the SHA-256 of the bytes */
    uint64_t size;
    bool size_known;
} remote_file;

/* huggingface_hub's ETag normalisation: no weak prefix, no quotes. */
static bool normalise_etag(const char *raw, char *out, size_t size) {
    const char *p = raw;
    if (!strncmp(p, "W/", 2)) p += 2;
    size_t n = strlen(p);
    if (n >= 2 && p[0] == '"' && p[n - 1] == '"') p++, n -= 2;
    if (n == 0 || n >= size) return false;
    for (size_t i = 0; i < n; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'z') || (p[i] >= 'A' && p[i] <= 'Z') ||
              p[i] == '-' || p[i] == '_'))
            return false; /* it names a file: nothing else */
    memcpy(out, p, n);
    out[n] = '\0';
    return true;
}

static sdc_status read_metadata(const fetcher *f, remote_file *r) {
    sdc_http_request req = {.url = r->url, .token = f->token, .head = true, .fd = -1};
    sdc_http_headers h;
    sdc_status s = perform_with_retries(f, &req, &h, r->path);
    if (s) return s;
    if (h.status < 200 || h.status >= 400 || (h.status >= 300 && !h.location[0])) return hub_refusal(f, &h, r->path);
    r->lfs = h.linked_etag[0] != '\0';
    if (!normalise_etag(r->lfs ? h.linked_etag : h.etag, r->etag, sizeof r->etag))
        return sdc_fail(f->err, SDC_E_FORMAT, "model '%s': file '%s': the Hub's ETag '%.100s' is missing or malformed",
                        f->id.repo, r->path, r->lfs ? h.linked_etag : h.etag);
    if (r->lfs && !is_hex(r->etag, 64))
        return sdc_fail(f->err, SDC_E_FORMAT, "model '%s': file '%s': X-Linked-Etag '%.100s' is not a SHA-256",
                        f->id.repo, r->path, r->etag);
    r->size_known = h.has_linked_size || (!r->lfs && h.has_content_length);
    r->size = h.has_linked_size ? h.linked_size : h.content_length;
    if (r->size_known && r->size > MAX_FILE_BYTES)
        return sdc_fail(f->err, SDC_E_FORMAT, "model '%s': file '%s': a size of %llu bytes is not believable",
                        f->id.repo, r->path, (unsigned long long)r->size);
    return SDC_OK;
}

/* The SHA-256 of the bytes already in a partial download, so verification covers all of them. */
static sdc_status hash_prefix(const fetcher *f, int fd, uint64_t n, sdc_sha256 *hash, const char *path) {
    char buf[1 << 16];
    uint64_t done = 0;
    while (done < n) {
        size_t want = n - done < sizeof buf ? (size_t)(n - done) : sizeof buf;
        ssize_t got = pread(fd, buf, want, (off_t)done);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return sdc_fail(f->err, SDC_E_IO, "%s: cannot read: %s", path, got ? strerror(errno) : "short file");
        sdc_sha256_update(hash, buf, (size_t)got);
        done += (uint64_t)got;
    }
    return SDC_OK;
}

/* Transfers into fd from req->offset on, retrying lost connections and 5xx; each attempt
   continues where the last stopped. */
static sdc_status transfer(const fetcher *f, const remote_file *r, sdc_http_request *req) {
    for (int attempt = 1;; attempt++) {
        sdc_err e = {0};
        bool transient = false;
        sdc_http_headers h;
        uint64_t before = req->offset;
        sdc_status s = sdc_http_perform(req, &h, &transient, &e);
        if (!s && h.status == 416 && r->size_known && req->offset == r->size) return SDC_OK; /* it was all there */
        if (!s && h.status == 416) { /* the partial file is not a prefix of this file: start over */
            if (ftruncate(req->fd, 0) != 0) return sdc_fail(f->err, SDC_E_IO, "%s: cannot truncate: %s", r->path, strerror(errno));
            req->offset = 0;
            sdc_sha256_init(req->hash);
            transient = true;
        } else if (!s && h.status >= 200 && h.status < 300) {
            if (!r->size_known || req->offset == r->size) return SDC_OK;
            transient = req->offset < r->size; /* the connection closed early */
            snprintf(e.msg, sizeof e.msg, "%s: %llu of %llu bytes received", req->url, (unsigned long long)req->offset,
                     (unsigned long long)r->size);
        } else if (!s && !worth_retrying(h.status)) {
            return hub_refusal(f, &h, r->path);
        } else if (!s) {
            transient = true;
            snprintf(e.msg, sizeof e.msg, "HTTP %ld from %s", h.status, req->url);
        }
        if (!transient || attempt == SDC_HTTP_ATTEMPTS)
            return sdc_fail(f->err, SDC_E_IO, "model '%s': downloading '%s' failed%s: %s", f->id.repo, r->path,
                            transient ? " after 5 attempts" : "", e.msg);
        note(f, SDC_LOG_WARNING, "%s: %s: %s (%llu bytes this attempt); resuming at byte %llu (attempt %d of %d)",
             f->id.repo, r->path, e.msg, (unsigned long long)(req->offset >= before ? req->offset - before : 0),
             (unsigned long long)req->offset, attempt + 1, SDC_HTTP_ATTEMPTS);
        pause_before_attempt(attempt);
    }
}

static sdc_status verify(const fetcher *f, const remote_file *r, sdc_sha256 *hash, const char *partial) {
    if (!r->lfs) return SDC_OK; /* only LFS files carry a content hash the Hub vouches for */
    char hex[65];
    sdc_sha256_hex(hash, hex);
    if (!strcmp(hex, r->etag)) return SDC_OK;
    unlink(partial);
    return sdc_fail(f->err, SDC_E_FORMAT,
                    "model '%s': file '%s' is corrupt: its SHA-256 is %s, the Hub says %s; the download was deleted",
                    f->id.repo, r->path, hex, r->etag);
}

/* Downloads into blobs/<etag>.incomplete and renames it to blobs/<etag> once whole and verified.
   The caller holds the blob's lock. */
static sdc_status download_blob(const fetcher *f, const remote_file *r, const char *blob) {
    char partial[4700], what[1400];
    snprintf(partial, sizeof partial, "%s.incomplete", blob);
    int fd = open(partial, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return sdc_fail(f->err, SDC_E_IO, "%s: cannot create: %s", partial, strerror(errno));
    struct stat st;
    sdc_sha256 hash;
    sdc_sha256_init(&hash);
    uint64_t have = fstat(fd, &st) == 0 ? (uint64_t)st.st_size : 0;
    sdc_status s = SDC_OK;
    if (r->size_known && have > r->size) { /* not a prefix of this file */
        if (ftruncate(fd, 0) != 0) s = sdc_fail(f->err, SDC_E_IO, "%s: cannot truncate: %s", partial, strerror(errno));
        have = 0;
    }
    if (!s && have && r->lfs) s = hash_prefix(f, fd, have, &hash, partial);
    if (!s && have)
        note(f, SDC_LOG_NOTICE, "%s: resuming %s at byte %llu of %llu (Range request)", f->id.repo, r->path,
             (unsigned long long)have, (unsigned long long)r->size);
    snprintf(what, sizeof what, "download %s/%s", f->id.repo, r->path);
    sdc_http_request req = {.url = r->url, .token = f->token, .fd = fd, .offset = have,
                            .limit = r->size_known ? r->size : MAX_FILE_BYTES, .hash = &hash,
                            .cb = f->cb, .what = what, .total = r->size};
    if (!s && lseek(fd, (off_t)have, SEEK_SET) < 0) s = sdc_fail(f->err, SDC_E_IO, "%s: cannot seek: %s", partial, strerror(errno));
    if (!s) s = transfer(f, r, &req);
    if (!s) s = verify(f, r, &hash, partial);
    if (!s && fsync(fd) != 0) s = sdc_fail(f->err, SDC_E_IO, "%s: cannot sync: %s", partial, strerror(errno));
    close(fd);
    if (!s && rename(partial, blob) != 0) s = sdc_fail(f->err, SDC_E_IO, "%s: cannot rename: %s", partial, strerror(errno));
    return s;
}

/* Only one process downloads a blob at a time: the lock file huggingface_hub takes too. */
static sdc_status lock_blob(const fetcher *f, const char *etag, int *fd_out) {
    char lock[4700];
    snprintf(lock, sizeof lock, "%s/.locks/%s/%s.lock", f->cache, f->id.folder, etag);
    sdc_status s = sdc_outdir_mkdirs(lock, false, f->err);
    if (s) return s;
    int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return sdc_fail(f->err, SDC_E_IO, "%s: cannot create: %s", lock, strerror(errno));
    while (flock(fd, LOCK_EX) != 0) {
        if (errno == EINTR) continue;
        close(fd);
        return sdc_fail(f->err, SDC_E_IO, "%s: cannot lock: %s", lock, strerror(errno));
    }
    *fd_out = fd;
    return SDC_OK;
}

/* snapshots/<sha>/<path> → ../(…)/blobs/<etag>, replaced atomically. */
static sdc_status link_snapshot(const fetcher *f, const char *path, const char *etag, const char *link) {
    char target[1400] = "", tmp[4800];
    size_t up = 2; /* snapshots/<sha>/ */
    for (const char *p = path; *p; p++) up += *p == '/';
    /* a listed path may be 1000 bytes of "a/a/…": ~500 levels of "../" would not fit */
    if (3 * up >= sizeof target) return sdc_fail(f->err, SDC_E_UNSUPPORTED, "%s: path nested too deep", path);
    for (size_t i = 0; i < up; i++) strcat(target, "../");
    if (!sdc_fmt(target + strlen(target), sizeof target - strlen(target), "blobs/%s", etag) ||
        !sdc_fmt(tmp, sizeof tmp, "%s.sdcoreml-%ld", link, (long)getpid()))
        return sdc_fail(f->err, SDC_E_ARG, "%s: path too long", link);
    sdc_status s = sdc_outdir_mkdirs(link, false, f->err);
    if (s) return s;
    unlink(tmp);
    if (symlink(target, tmp) != 0 || rename(tmp, link) != 0) {
        s = sdc_fail(f->err, SDC_E_IO, "%s: cannot create the link: %s", link, strerror(errno));
        unlink(tmp);
    }
    return s;
}

static sdc_status fetch_file(const fetcher *f, const char *path, const char *link) {
    remote_file r = {.path = path};
    snprintf(r.url, sizeof r.url, "%s/%s/resolve/%s/", f->endpoint, f->id.repo, f->sha);
    if (!sdc_http_escape(r.url, sizeof r.url, path, true)) return sdc_fail(f->err, SDC_E_ARG, "%s: URL too long", path);
    sdc_status s = read_metadata(f, &r);
    char blob[4700];
    if (!s && !sdc_fmt(blob, sizeof blob, "%s/blobs/%s", f->repo_dir, r.etag))
        s = sdc_fail(f->err, SDC_E_ARG, "%s: path too long", path);
    if (!s && !sdc_hub_file_exists(blob)) {
        int lock = -1;
        if (!(s = sdc_outdir_mkdirs(blob, false, f->err)) && !(s = lock_blob(f, r.etag, &lock))) {
            if (!sdc_hub_file_exists(blob)) s = download_blob(f, &r, blob); /* not done meanwhile by another */
            close(lock);
        }
    }
    if (!s) s = link_snapshot(f, path, r.etag, link);
    return s;
}

/* ---- the whole repository ----------------------------------------------------------------- */

static sdc_status fetch_plan(fetcher *f) {
    size_t fetched = 0;
    for (size_t i = 0; i < f->n_plan; i++) {
        const char *path = f->plan[i];
        char link[4800];
        if (!sdc_fmt(link, sizeof link, "%s/snapshots/%s/%s", f->repo_dir, f->sha, path))
            return sdc_fail(f->err, SDC_E_ARG, "%s: path too long", path);
        sdc_status s = SDC_OK;
        if (!sdc_hub_file_exists(link)) {
            s = fetch_file(f, path, link);
            fetched++;
        }
        if (!s && strstr(path, ".safetensors.index."))
            s = plan_shards(f, path, link);
        if (s) return s;
    }
    note(f, SDC_LOG_INFO, "%s: %zu of %zu files fetched into %s (commit %s)", f->id.repo, fetched, f->n_plan,
         f->repo_dir, f->sha);
    return SDC_OK;
}

/* refs/<revision>, written last and atomically: a ref means its snapshot is usable. */
static sdc_status write_ref(const fetcher *f) {
    if (!strcmp(f->id.revision, f->sha)) return SDC_OK;
    char ref[4700], tmp[4800];
    snprintf(ref, sizeof ref, "%s/refs/%s", f->repo_dir, f->id.revision);
    snprintf(tmp, sizeof tmp, "%s.sdcoreml-%ld", ref, (long)getpid());
    sdc_status s = sdc_outdir_mkdirs(ref, false, f->err);
    if (s) return s;
    FILE *fp = fopen(tmp, "w");
    bool ok = fp && fputs(f->sha, fp) >= 0;
    ok = fp && fclose(fp) == 0 && ok;
    if (ok && rename(tmp, ref) == 0) return SDC_OK;
    unlink(tmp);
    return sdc_fail(f->err, SDC_E_IO, "%s: cannot write: %s", ref, strerror(errno));
}

static void free_list(char **list, size_t n) {
    for (size_t i = 0; list && i < n; i++) sdc_free(list[i]);
    sdc_free(list);
}

static sdc_status open_fetcher(fetcher *f, const char *spec) {
    char why[160];
    sdc_status s = sdc_hub_parse_id(spec, &f->id, f->err);
    if (!s && !sdc_hub_cache_root(f->cache, sizeof f->cache, why, sizeof why))
        s = sdc_fail(f->err, SDC_E_ARG, "model '%s': no Hugging Face cache folder (%s)", spec, why);
    if (!s && !sdc_fmt(f->repo_dir, sizeof f->repo_dir, "%s/%s", f->cache, f->id.folder))
        s = sdc_fail(f->err, SDC_E_ARG, "model '%s': cache path too long", spec);
    if (!s) s = sdc_http_endpoint(f->endpoint, sizeof f->endpoint, f->err);
    if (!s) s = sdc_http_token(f->token, sizeof f->token, f->err);
    return s;
}

sdc_status sdc_hub_fetch(const char *spec, const sdc_hub_want *want, const sdc_hub_callbacks *cb, sdc_err *err) {
    fetcher f = {.cb = cb, .err = err};
    sdc_status s = open_fetcher(&f, spec);
    if (!s && !sdc_hub_can_download())
        s = sdc_fail(err, SDC_E_UNSUPPORTED, "cannot download model '%s': this sdcoreml was built without libcurl "
                     "(rebuild with libcurl4-openssl-dev)", spec);
    if (!s && sdc_hub_offline())
        s = sdc_fail(err, SDC_E_NOTFOUND, "cannot download model '%s': HF_HUB_OFFLINE is set (unset it to download)",
                     spec);
    if (!s) {
        note(&f, SDC_LOG_INFO, "%s: downloading from %s (revision %s)", f.id.repo, f.endpoint, f.id.revision);
        s = fetch_listing(&f);
    }
    if (!s) s = make_plan(&f, want);
    if (!s) s = fetch_plan(&f);
    if (!s) s = write_ref(&f);
    free_list(f.siblings, f.n_siblings);
    free_list(f.plan, f.n_plan);
    return s;
}
