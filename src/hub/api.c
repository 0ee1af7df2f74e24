/*
 * api.c — sdc_download(), the public face of the downloader (sdcoreml download).
 */
#include "hub/hub.h"

sdc_status sdc_download(const sdc_download_job *job, char *errbuf, size_t err_size) {
    sdc_err err = {0};
    sdc_hub_want want = {.all_components = job->all_components, .tokenizer_files = job->tokenizer_files,
                         .model_card = job->model_card};
    char spec[600];
    sdc_status s = SDC_OK;
    if (!job->model || !job->model[0]) s = sdc_fail(&err, SDC_E_ARG, "no model id given");
    else if (job->revision && strchr(job->model, '@'))
        s = sdc_fail(&err, SDC_E_ARG, "'%s' names a revision already; drop --revision or the '@'", job->model);
    else if (!sdc_fmt(spec, sizeof spec, "%s%s%s", job->model, job->revision ? "@" : "", job->revision ? job->revision : ""))
        s = sdc_fail(&err, SDC_E_ARG, "model id too long");
    for (int i = 0; !s && !job->all_components && i < job->n_components; i++) {
        const char *c = job->components[i];
        if (i >= SDC_HUB_MAX_WANTED) s = sdc_fail(&err, SDC_E_ARG, "at most %d components", SDC_HUB_MAX_WANTED);
        else if (c[0] && !sdc_hub_safe_path(c)) s = sdc_fail(&err, SDC_E_ARG, "invalid component name '%.100s'", c);
        else want.components[want.n_components++] = c;
    }
    sdc_hub_callbacks cb = {job->log, job->progress, job->user};
    if (!s) s = sdc_hub_fetch(spec, &want, &cb, &err);
    if (errbuf && err_size) snprintf(errbuf, err_size, "%s", s ? err.msg : "");
    return s;
}
