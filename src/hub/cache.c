/*
 * cache.c — Hub ids and the Hugging Face cache's layout (see hub.h): where the cache is, what
 * an id may look like, which paths from a repository may become files of a snapshot.
 */
#include "hub/hub.h"

#include <errno.h>
#include <strings.h>
#include <sys/stat.h>

static bool is_hub_name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
           c == '.';
}

/* One part of "org/name": the Hub's name characters, not starting with '.', no "..". */
static bool is_name_part(const char *p, size_t n) {
    if (n == 0 || n > 96 || p[0] == '.') return false;
    for (size_t i = 0; i < n; i++)
        if (!is_hub_name_char(p[i]) || (i && p[i] == '.' && p[i - 1] == '.')) return false;
    return true;
}

/* A branch, tag or commit: used in refs/<revision> and URLs, so only name characters. */
static bool is_revision(const char *r) {
    return is_name_part(r, strlen(r));
}

bool sdc_hub_is_id(const char *spec) {
    sdc_hub_id id;
    sdc_err err = {0};
    return sdc_hub_parse_id(spec, &id, &err) == SDC_OK;
}

sdc_status sdc_hub_parse_id(const char *spec, sdc_hub_id *out, sdc_err *err) {
    memset(out, 0, sizeof *out);
    const char *slash = strchr(spec, '/'), *at = strchr(spec, '@');
    size_t end = at ? (size_t)(at - spec) : strlen(spec);
    if (!slash || (size_t)(slash - spec) >= end || !is_name_part(spec, (size_t)(slash - spec)) ||
        !is_name_part(slash + 1, end - (size_t)(slash - spec) - 1))
        return sdc_fail(err, SDC_E_ARG, "'%.200s' is not a Hub id of the form org/name[@revision]", spec);
    if (at && !is_revision(at + 1))
        return sdc_fail(err, SDC_E_ARG, "'%.200s': invalid revision after '@'", spec);
    snprintf(out->repo, sizeof out->repo, "%.*s", (int)end, spec);
    snprintf(out->revision, sizeof out->revision, "%s", at ? at + 1 : "main");
    snprintf(out->folder, sizeof out->folder, "models--%.*s--%s", (int)(slash - spec), spec, out->repo + (slash - spec) + 1);
    return SDC_OK;
}

static const char *env_set(const char *name) {
    const char *v = getenv(name);
    return v && v[0] ? v : NULL;
}

bool sdc_hub_cache_root(char *root, size_t size, char *why, size_t why_size) {
    const char *v;
    if ((v = env_set("HF_HUB_CACHE"))) {
        snprintf(why, why_size, "from HF_HUB_CACHE");
        return sdc_fmt(root, size, "%s", v);
    }
    if ((v = env_set("HUGGINGFACE_HUB_CACHE"))) { /* the legacy name, still honoured */
        snprintf(why, why_size, "HF_HUB_CACHE unset, from HUGGINGFACE_HUB_CACHE");
        return sdc_fmt(root, size, "%s", v);
    }
    if ((v = env_set("HF_HOME"))) {
        snprintf(why, why_size, "HF_HUB_CACHE unset, from HF_HOME");
        return sdc_fmt(root, size, "%s/hub", v);
    }
    if ((v = env_set("XDG_CACHE_HOME"))) {
        snprintf(why, why_size, "HF_HUB_CACHE unset, HF_HOME unset, from XDG_CACHE_HOME");
        return sdc_fmt(root, size, "%s/huggingface/hub", v);
    }
    if ((v = env_set("HOME"))) {
        snprintf(why, why_size, "HF_HUB_CACHE unset, HF_HOME unset");
        return sdc_fmt(root, size, "%s/.cache/huggingface/hub", v);
    }
    snprintf(why, why_size, "HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME and HOME unset");
    return false;
}

bool sdc_hub_offline(void) {
    const char *v = getenv("HF_HUB_OFFLINE");
    if (!v) return false;
    static const char *const yes[] = {"1", "ON", "YES", "TRUE"};
    for (size_t i = 0; i < SDC_COUNT_OF(yes); i++)
        if (!strcasecmp(v, yes[i])) return true;
    return false;
}

bool sdc_hub_can_download(void) {
#ifdef SDC_HAVE_CURL
    return true;
#else
    return false;
#endif
}

const char *sdc_hub_missing_hint(void) {
    if (!sdc_hub_can_download())
        return "; this sdcoreml was built without libcurl, so Hub ids are read from the cache only "
               "(rebuild with libcurl4-openssl-dev, or fill the cache with another tool)";
    if (sdc_hub_offline()) return "; HF_HUB_OFFLINE is set: unset it, or fill the cache first with `sdcoreml download ID`";
    return "";
}

bool sdc_hub_safe_path(const char *path) {
    size_t n = strlen(path);
    if (n == 0 || n > 1000 || path[0] == '/') return false;
    const char *seg = path;
    for (const char *p = path;; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch == '/' || ch == '\0') {
            size_t len = (size_t)(p - seg);
            if (len == 0 || (len == 1 && seg[0] == '.') || (len == 2 && seg[0] == '.' && seg[1] == '.')) return false;
            if (!ch) return true;
            seg = p + 1;
        } else if (ch == '\\' || ch < 0x20 || ch == 0x7f || ch == ':') {
            return false; /* ':' too: never a drive letter or a URL scheme */
        }
    }
}


bool sdc_hub_file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}
