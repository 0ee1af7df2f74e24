/*
 * http.c — one HTTP exchange with libcurl (see http.h). Without libcurl (SDC_HAVE_CURL unset)
 * every exchange fails with a message saying so; the token and endpoint helpers work alike.
 */
#include "hub/http.h"

#include <ctype.h>
#include <strings.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef SDC_HAVE_CURL
#include <curl/curl.h>
#include <pthread.h>
#endif

#define TOKEN_FILE_MAX 4096u

long sdc_http_backoff_ms(void) {
    const char *v = getenv("SDCOREML_HUB_BACKOFF_MS");
    char *end;
    long ms = v && *v ? strtol(v, &end, 10) : 250;
    return v && *v && (*end || ms < 0 || ms > 60000) ? 250 : ms;
}

bool sdc_http_escape(char *out, size_t size, const char *s, bool keep_slash) {
    size_t n = strlen(out);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        bool plain = isalnum(*p) || strchr("-._~", *p) || (keep_slash && *p == '/');
        int w = plain ? snprintf(out + n, n < size ? size - n : 0, "%c", *p)
                      : snprintf(out + n, n < size ? size - n : 0, "%%%02X", *p);
        n += (size_t)w;
        if (n >= size) return false;
    }
    return true;
}

sdc_status sdc_http_endpoint(char *out, size_t size, sdc_err *err) {
    const char *v = getenv("HF_ENDPOINT");
    if (!v || !*v) v = "https://huggingface.co";
    if (strncmp(v, "https://", 8) && strncmp(v, "http://", 7))
        return sdc_fail(err, SDC_E_ARG, "HF_ENDPOINT '%.200s' is not an http(s) URL", v);
    if (!sdc_fmt(out, size, "%s", v)) return sdc_fail(err, SDC_E_ARG, "HF_ENDPOINT is too long");
    size_t n = strlen(out);
    while (n > 0 && out[n - 1] == '/') out[--n] = '\0';
    return SDC_OK;
}

/* Reads a small token file; a missing file is no token. */
static sdc_status read_token_file(const char *path, char *out, size_t size, sdc_err *err) {
    FILE *f = fopen(path, "r");
    if (!f) return SDC_OK;
    size_t n = fread(out, 1, size - 1, f);
    bool too_long = n == size - 1 && fgetc(f) != EOF;
    fclose(f);
    out[n] = '\0';
    if (too_long) return sdc_fail(err, SDC_E_FORMAT, "%s: token file longer than %zu bytes", path, size - 1);
    return SDC_OK;
}

sdc_status sdc_http_token(char *out, size_t size, sdc_err *err) {
    out[0] = '\0';
    const char *v = getenv("HF_TOKEN"), *where = "HF_TOKEN";
    char path[4096];
    if (v && *v) {
        if (!sdc_fmt(out, size, "%s", v)) return sdc_fail(err, SDC_E_ARG, "HF_TOKEN is too long");
    } else {
        const char *p = getenv("HF_TOKEN_PATH"), *home = getenv("HF_HOME"), *xdg = getenv("XDG_CACHE_HOME");
        bool ok = p && *p ? sdc_fmt(path, sizeof path, "%s", p)
                  : home && *home ? sdc_fmt(path, sizeof path, "%s/token", home)
                  : xdg && *xdg   ? sdc_fmt(path, sizeof path, "%s/huggingface/token", xdg)
                                  : sdc_fmt(path, sizeof path, "%s/.cache/huggingface/token", getenv("HOME") ? getenv("HOME") : "");
        if (!ok) return SDC_OK;
        sdc_status s = read_token_file(path, out, size, err);
        if (s) return s;
        where = path;
    }
    char *b = out, *e = out + strlen(out);
    while (b < e && isspace((unsigned char)*b)) b++;
    while (e > b && isspace((unsigned char)e[-1])) e--;
    memmove(out, b, (size_t)(e - b));
    out[e - b] = '\0';
    for (const unsigned char *q = (const unsigned char *)out; *q; q++)
        if (*q < 0x21 || *q == 0x7f) {
            out[0] = '\0';
            return sdc_fail(err, SDC_E_ARG, "the token in %s holds spaces or control characters", where);
        }
    return SDC_OK;
}

#ifndef SDC_HAVE_CURL

sdc_status sdc_http_perform(sdc_http_request *req, sdc_http_headers *h, bool *transient, sdc_err *err) {
    memset(h, 0, sizeof *h);
    *transient = false;
    return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: this sdcoreml was built without libcurl and cannot download",
                    req->url);
}

#else

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void init_curl(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

/* What the callbacks share during one exchange. */
typedef struct exchange {
    CURL *curl;
    sdc_http_request *req;
    sdc_http_headers *h;
    bool started;       /* the first body byte of the final response was seen */
    bool restarted;     /* the server ignored Range: the file was started over */
    char fault[300];    /* why a callback stopped the transfer */
    size_t body_cap;
} exchange;

static bool parse_u64(const char *s, uint64_t *out) {
    uint64_t v = 0;
    if (!*s) return false;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > (UINT64_MAX - 9) / 10) return false;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return true;
}

static void copy_value(char *dst, size_t size, const char *v) { snprintf(dst, size, "%s", v); }

/* One header line (libcurl hands them over one at a time, CRLF included). */
static size_t on_header(char *data, size_t one, size_t n, void *user) {
    exchange *x = user;
    sdc_http_headers *h = x->h;
    char line[2300];
    size_t len = n < sizeof line - 1 ? n : sizeof line - 1;
    memcpy(line, data, len);
    line[len] = '\0';
    while (len && (line[len - 1] == '\r' || line[len - 1] == '\n')) line[--len] = '\0';
    if (!strncmp(line, "HTTP/", 5)) { /* a new response (after a redirect): forget the last */
        memset(h, 0, sizeof *h);
        const char *sp = strchr(line, ' ');
        h->status = sp ? strtol(sp + 1, NULL, 10) : 0;
        return n;
    }
    char *colon = strchr(line, ':');
    if (!colon) return n;
    *colon = '\0';
    char *v = colon + 1;
    while (*v == ' ' || *v == '\t') v++;
    if (!strcasecmp(line, "ETag")) copy_value(h->etag, sizeof h->etag, v);
    else if (!strcasecmp(line, "X-Linked-Etag")) copy_value(h->linked_etag, sizeof h->linked_etag, v);
    else if (!strcasecmp(line, "X-Repo-Commit")) copy_value(h->repo_commit, sizeof h->repo_commit, v);
    else if (!strcasecmp(line, "Location")) copy_value(h->location, sizeof h->location, v);
    else if (!strcasecmp(line, "X-Error-Code")) copy_value(h->error_code, sizeof h->error_code, v);
    else if (!strcasecmp(line, "Content-Range")) copy_value(h->content_range, sizeof h->content_range, v);
    else if (!strcasecmp(line, "Content-Length")) h->has_content_length = parse_u64(v, &h->content_length);
    else if (!strcasecmp(line, "X-Linked-Size")) h->has_linked_size = parse_u64(v, &h->linked_size);
    (void)one;
    return n;
}

/* A 206 must continue exactly where the file ends: "bytes <offset>-<end>/<total>". */
static bool range_continues(const char *content_range, uint64_t offset) {
    uint64_t start;
    char num[32];
    if (strncmp(content_range, "bytes ", 6)) return false;
    size_t k = strcspn(content_range + 6, "-");
    if (k == 0 || k >= sizeof num) return false;
    memcpy(num, content_range + 6, k);
    num[k] = '\0';
    return parse_u64(num, &start) && start == offset;
}

/* At the first body byte of a 2xx answer: continue the file, or start it over. */
static bool begin_body(exchange *x, long status) {
    sdc_http_request *r = x->req;
    x->started = true;
    if (r->fd < 0 || r->offset == 0) return true;
    if (status == 206) {
        if (range_continues(x->h->content_range, r->offset)) return true;
        snprintf(x->fault, sizeof x->fault, "the server answered Range bytes=%llu- with Content-Range '%.100s'",
                 (unsigned long long)r->offset, x->h->content_range);
        return false;
    }
    /* 200: the whole file again */
    if (ftruncate(r->fd, 0) != 0 || lseek(r->fd, 0, SEEK_SET) != 0) {
        snprintf(x->fault, sizeof x->fault, "cannot truncate the partial file: %s", strerror(errno));
        return false;
    }
    r->offset = 0;
    if (r->hash) sdc_sha256_init(r->hash);
    x->restarted = true;
    return true;
}

static size_t on_body(char *data, size_t one, size_t n, void *user) {
    exchange *x = user;
    sdc_http_request *r = x->req;
    long status = 0;
    curl_easy_getinfo(x->curl, CURLINFO_RESPONSE_CODE, &status);
    if (status < 200 || status >= 300) return n; /* an error page: its headers say enough */
    if (!x->started && !begin_body(x, status)) return 0;
    uint64_t have = r->fd >= 0 ? r->offset : r->body_len;
    if (r->limit && (n > r->limit || have > r->limit - n)) {
        snprintf(x->fault, sizeof x->fault, "the server sent more than the %llu bytes expected",
                 (unsigned long long)r->limit);
        return 0;
    }
    if (r->fd < 0) {
        if (r->body_len + n + 1 > x->body_cap) {
            size_t cap = (x->body_cap ? x->body_cap * 2 : 65536) + n;
            char *b = sdc_realloc(r->body, cap);
            if (!b) return snprintf(x->fault, sizeof x->fault, "out of memory"), 0;
            r->body = b;
            x->body_cap = cap;
        }
        memcpy(r->body + r->body_len, data, n);
        r->body_len += n;
        r->body[r->body_len] = '\0';
        return n;
    }
    if (!sdc_write_all(r->fd, data, n)) {
        snprintf(x->fault, sizeof x->fault, "cannot write the partial file: %s", strerror(errno));
        return 0;
    }
    if (r->hash) sdc_sha256_update(r->hash, data, n);
    r->offset += n;
    if (r->cb && r->cb->progress) r->cb->progress(r->cb->user, r->what, r->offset, r->total ? r->total : r->offset);
    (void)one;
    return n;
}

/* Errors after which the same request may succeed: the connection, not the request, failed. */
static bool is_transient(CURLcode rc) {
    switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        return true;
    default:
        return false;
    }
}

static void set_options(exchange *x, struct curl_slist *headers) {
    CURL *c = x->curl;
    sdc_http_request *r = x->req;
    curl_easy_setopt(c, CURLOPT_URL, r->url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "sdcoreml/" SDC_VERSION_STRING);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_BUFFERSIZE, 512L * 1024); /* fewer, larger writes and hash updates */
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(c, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    /* HEAD answers the Hub's metadata on the first response (a 302 for LFS files); a GET
       follows to the CDN. libcurl drops our Authorization header when a redirect changes host
       or port, so the token never reaches the CDN. */
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, r->head ? 0L : 1L);
    curl_easy_setopt(c, CURLOPT_MAXREDIRS, 5L);
    curl_easy_setopt(c, CURLOPT_NOBODY, r->head ? 1L : 0L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 30L);
    /* a transfer stalled below 1 kB/s for a minute is a lost connection: resumed by the caller */
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1024L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(c, CURLOPT_ACCEPT_ENCODING, NULL); /* identity: sizes and hashes are of the bytes */
    if (!r->head && r->fd >= 0 && r->offset) {
        char range[64];
        snprintf(range, sizeof range, "%llu-", (unsigned long long)r->offset);
        curl_easy_setopt(c, CURLOPT_RANGE, range);
    }
}

sdc_status sdc_http_perform(sdc_http_request *req, sdc_http_headers *h, bool *transient, sdc_err *err) {
    memset(h, 0, sizeof *h);
    *transient = false;
    pthread_once(&curl_once, init_curl);
    exchange x = {.curl = curl_easy_init(), .req = req, .h = h};
    if (!x.curl) return sdc_fail(err, SDC_E_NOMEM, "%s: cannot start libcurl", req->url);
    struct curl_slist *headers = NULL;
    char auth[4200];
    if (req->token && *req->token && sdc_fmt(auth, sizeof auth, "Authorization: Bearer %s", req->token))
        headers = curl_slist_append(headers, auth);
    set_options(&x, headers);
    CURLcode rc = curl_easy_perform(x.curl);
    sdc_status s = SDC_OK;
    if (rc == CURLE_OK) {
        curl_easy_getinfo(x.curl, CURLINFO_RESPONSE_CODE, &h->status);
    } else if (x.fault[0]) {
        s = sdc_fail(err, SDC_E_IO, "%s: %s", req->url, x.fault);
    } else {
        *transient = is_transient(rc);
        s = sdc_fail(err, SDC_E_IO, "%s: %s", req->url, curl_easy_strerror(rc));
    }
    curl_slist_free_all(headers);
    curl_easy_cleanup(x.curl);
    return s;
}

#endif

/* ---- plain URLs (tokenizer files) ---------------------------------------------------------- */

static sdc_status fetch_url_once(const char *url, int fd, const sdc_hub_callbacks *cb, bool *transient, sdc_err *err) {
    if (ftruncate(fd, 0) != 0 || lseek(fd, 0, SEEK_SET) != 0)
        return sdc_fail(err, SDC_E_IO, "cannot truncate the download of %s: %s", url, strerror(errno));
    sdc_http_request req = {.url = url, .fd = fd, .limit = (uint64_t)1 << 32, .cb = cb, .what = url};
    sdc_http_headers h;
    sdc_status s = sdc_http_perform(&req, &h, transient, err);
    if (s) return s;
    if (h.status >= 200 && h.status < 300) return SDC_OK;
    *transient = h.status >= 500 || h.status == 429;
    return sdc_fail(err, SDC_E_NOTFOUND, "%s: HTTP %ld", url, h.status);
}

sdc_status sdc_hub_fetch_url(const char *url, const char *dest, const sdc_hub_callbacks *cb, sdc_err *err) {
    char tmp[4200];
    if (!sdc_fmt(tmp, sizeof tmp, "%s.incomplete", dest)) return sdc_fail(err, SDC_E_ARG, "%s: path too long", dest);
    int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return sdc_fail(err, SDC_E_IO, "%s: cannot create: %s", tmp, strerror(errno));
    sdc_status s = SDC_E_IO;
    for (int attempt = 0; attempt < SDC_HTTP_ATTEMPTS; attempt++) {
        sdc_err e = {0};
        bool transient;
        if (attempt) usleep((useconds_t)(sdc_http_backoff_ms() * 1000L << (attempt - 1)));
        s = fetch_url_once(url, fd, cb, &transient, &e);
        if (!s || !transient || attempt + 1 == SDC_HTTP_ATTEMPTS) {
            if (s) {
                sdc_fail(err, e.code, "%s%s", e.msg, transient ? " (after 5 attempts)" : "");
            }
            break;
        }
    }
    if (!s && fsync(fd) != 0) s = sdc_fail(err, SDC_E_IO, "%s: cannot sync: %s", tmp, strerror(errno));
    close(fd);
    if (!s && rename(tmp, dest) != 0) s = sdc_fail(err, SDC_E_IO, "%s: cannot rename: %s", tmp, strerror(errno));
    if (s) unlink(tmp);
    return s;
}
