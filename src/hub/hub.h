/*
 * hub.h — the Hugging Face Hub: its cache layout (cache.c), HTTP (http.c, libcurl, optional)
 * and the downloader (download.c) that fills the cache as huggingface_hub does, so Python tools
 * and sdcoreml share one cache:
 *
 *   <cache>/models--<org>--<name>/blobs/<etag>             file contents, named by ETag
 *                                /blobs/<etag>.incomplete  a download in progress (resumed)
 *                                /snapshots/<sha>/<path>   relative symlinks into blobs/
 *                                /refs/<revision>          the commit sha a revision names
 *   <cache>/.locks/models--<org>--<name>/<etag>.lock      held while a blob is downloaded
 *
 * <cache> is $HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else
 * ~/.cache/huggingface/hub. Everything read from the network is untrusted and checked.
 */
#ifndef SDC_HUB_HUB_H
#define SDC_HUB_HUB_H

#include "common.h"

/* ---- ids and the cache (cache.c) ------------------------------------------------------- */

/* "org/name" or "org/name@revision". */
typedef struct sdc_hub_id {
    char repo[256];     /* "org/name" */
    char revision[128]; /* "main" unless "@rev" named another */
    char folder[300];   /* "models--org--name" */
} sdc_hub_id;

/* True when `spec` has the form of a Hub id (it may still be a local folder: callers check that
   first, as diffusers does). */
bool sdc_hub_is_id(const char *spec);
sdc_status sdc_hub_parse_id(const char *spec, sdc_hub_id *out, sdc_err *err);

/* The cache folder as huggingface_hub picks it, and which variables decided it (for messages). */
bool sdc_hub_cache_root(char *root, size_t size, char *why, size_t why_size);
/* HF_HUB_OFFLINE is 1/ON/YES/TRUE (any case), as huggingface_hub reads it. */
bool sdc_hub_offline(void);
/* Built with libcurl. */
bool sdc_hub_can_download(void);
/* Why a missing Hub id was not downloaded, to end a "not found" message ("" when it would be). */
const char *sdc_hub_missing_hint(void);

/* A path from a repository listing that stays inside the snapshot folder: relative, no "..",
   "." or empty segments, no backslashes or control characters. */
bool sdc_hub_safe_path(const char *path);

/* `path` (a regular file, or a symlink to one) exists. */
bool sdc_hub_file_exists(const char *path);

/* ---- HTTP (http.c) ------------------------------------------------------------------------ */

typedef struct sdc_hub_callbacks {
    sdc_log_fn log;
    sdc_progress_fn progress;
    void *user;
} sdc_hub_callbacks;

/* Downloads an http(s) URL to `dest` (through dest.incomplete, renamed when complete). */
sdc_status sdc_hub_fetch_url(const char *url, const char *dest, const sdc_hub_callbacks *cb, sdc_err *err);

/* ---- the downloader (download.c) --------------------------------------------------------- */

#define SDC_HUB_MAX_WANTED 16

/* What a conversion reads from a repository. The configs of every component (kilobytes:
   converters read each other's) are always fetched; weights only of `components`. */
typedef struct sdc_hub_want {
    const char *components[SDC_HUB_MAX_WANTED]; /* folders whose weights are needed; "" the root */
    size_t n_components;
    bool first_present; /* only the first of components[] the repository has (config.json) */
    bool all_components; /* every folder with a config.json (sdcoreml download's default) */
    bool tokenizer_files; /* vocab.json and merges.txt (tokenizer/, else tokenizer_2/) */
    bool model_card;      /* README.md (a ControlNet names its base model there) */
} sdc_hub_want;

/* Fills the cache with what `want` needs of the id (which names its revision, "main" by
   default), downloading what is missing; writes refs/<revision> last. */
sdc_status sdc_hub_fetch(const char *spec, const sdc_hub_want *want, const sdc_hub_callbacks *cb, sdc_err *err);

#endif
