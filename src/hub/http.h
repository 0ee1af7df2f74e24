/*
 * http.h — one HTTP exchange with libcurl, for the downloader (download.c) and tokenizer URLs.
 * Retries, resumption and verification are the callers'; this file only moves bytes and
 * reads the headers the Hub answers with, all bounded.
 */
#ifndef SDC_HUB_HTTP_H
#define SDC_HUB_HTTP_H

#include "hub/hub.h"
#include "hub/sha256.h"

/* The headers of the last response of an exchange (a followed redirect's replaced). Values
   longer than their buffer are cut, which the callers' checks then refuse. */
typedef struct sdc_http_headers {
    long status;
    char etag[200], linked_etag[200], repo_commit[100], location[2048], error_code[100];
    char content_range[200];
    uint64_t content_length, linked_size;
    bool has_content_length, has_linked_size;
} sdc_http_headers;

typedef struct sdc_http_request {
    const char *url;
    const char *token; /* sent as "Authorization: Bearer"; NULL: none */
    bool head;         /* HEAD without following redirects (the Hub's metadata answer) */
    /* A 2xx body goes to `fd` (from byte `offset`, asked with Range when not 0), or, with
       fd < 0, into memory (body, body_len; caller frees). A body beyond `limit` bytes in all
       is cut off with an error. */
    int fd;
    uint64_t offset;
    uint64_t limit;
    sdc_sha256 *hash; /* every byte written to fd, restarted when the server restarts at 0 */
    char *body;
    size_t body_len;
    /* progress of fd downloads */
    const sdc_hub_callbacks *cb;
    const char *what;
    uint64_t total;
} sdc_http_request;

/* One exchange. SDC_OK: a response came (any status, in h->status); req->offset is then the
   number of bytes in fd. An error sets *transient when trying again may help (a connection
   lost, refused or timed out). */
sdc_status sdc_http_perform(sdc_http_request *req, sdc_http_headers *h, bool *transient, sdc_err *err);

/* Base delay of the retry backoff in milliseconds (doubled per attempt): 250, or
   $SDCOREML_HUB_BACKOFF_MS (tests make it short). */
long sdc_http_backoff_ms(void);
#define SDC_HTTP_ATTEMPTS 5

/* The user agent's token: $HF_TOKEN, else the file $HF_TOKEN_PATH, else $HF_HOME/token (HF_HOME
   defaulting to $XDG_CACHE_HOME/huggingface or ~/.cache/huggingface), whitespace trimmed;
   "" when none. A token with control characters is refused (it goes into a header). */
sdc_status sdc_http_token(char *out, size_t size, sdc_err *err);

/* The Hub's address: $HF_ENDPOINT without trailing '/', else https://huggingface.co. */
sdc_status sdc_http_endpoint(char *out, size_t size, sdc_err *err);

/* Appends `s` to out percent-encoded, keeping unreserved characters (and '/' when keep_slash). */
bool sdc_http_escape(char *out, size_t size, const char *s, bool keep_slash);

#endif
