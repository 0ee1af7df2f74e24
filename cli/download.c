/*
 * download.c — `sdcoreml download ID [--revision REV] [--include-weights-for COMPONENTS]`:
 * fills the Hugging Face cache with what converting the model reads, without converting, so a
 * later run (HF_HUB_OFFLINE=1 included) finds it there.
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "sdcoreml.h"

#include "options.h"
#include "progress.h"

enum { MAX_COMPONENTS = 16 };

typedef struct download_args {
    const char *id, *revision, *include;
    bool quiet;
} download_args;

static const sdc_cli_option DOWNLOAD_OPTIONS[] = {
    {.name = "--revision", .store = SDC_CLI_STRING, .offset = offsetof(download_args, revision), .metavar = "REV",
     .help = "branch, tag or commit [main, or ID's @REV]"},
    {.name = "--include-weights-for", .store = SDC_CLI_STRING, .offset = offsetof(download_args, include),
     .metavar = "COMPONENTS",
     .help = "comma-separated component folders whose weights to fetch (unet,text_encoder,...),\n"
             "'none' for configs only [every component]"},
    {.name = "--quiet", .store = SDC_CLI_TRUE, .offset = offsetof(download_args, quiet),
     .help = "print errors and warnings only"},
};

static const sdc_cli_command DOWNLOAD = {
    .name = "download",
    .options = DOWNLOAD_OPTIONS,
    .n_options = sizeof DOWNLOAD_OPTIONS / sizeof DOWNLOAD_OPTIONS[0],
    .positional = "ID",
    .positional_offset = offsetof(download_args, id),
    .help_head = "Usage: sdcoreml download ID [--revision REV] [--include-weights-for COMPONENTS]\n"
                 "Downloads a Hub model (org/name) into the Hugging Face cache without converting it: every\n"
                 "component's config, the weights a conversion reads (the fp16 variant when the repository has\n"
                 "it), the tokenizer's vocab.json and merges.txt, and the model card.\n\n",
    .help_tail = "\nEnvironment: HF_ENDPOINT [https://huggingface.co], HF_TOKEN (else $HF_HOME/token) for gated\n"
                 "or private models, HF_HUB_CACHE / HF_HOME for the cache.\n",
    .help_column = 36,
};

/* "unet,text_encoder" → the list, in place; "none" → no components. */
static int split_components(char *list, const char **out, int *n) {
    *n = 0;
    if (!strcmp(list, "none")) return 0;
    for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
        if (*n == MAX_COMPONENTS)
            return sdc_cli_usage_error(&DOWNLOAD, "--include-weights-for: at most %d components", MAX_COMPONENTS);
        out[(*n)++] = tok;
    }
    return *n ? 0 : sdc_cli_usage_error(&DOWNLOAD, "--include-weights-for: no component given");
}

/* argv[0] is the program, argv[1] "download" */
int sdc_cli_download(int argc, char **argv) {
    download_args a = {0};
    int rc = sdc_cli_parse(&DOWNLOAD, argc - 2, argv + 2, &a);
    if (rc != SDC_CLI_CONTINUE) return rc;
    const char *components[MAX_COMPONENTS];
    char include[1024];
    int n = 0;
    if (a.include) {
        if (snprintf(include, sizeof include, "%s", a.include) >= (int)sizeof include)
            return sdc_cli_usage_error(&DOWNLOAD, "--include-weights-for: too long");
        if ((rc = split_components(include, components, &n))) return rc;
    }
    sdc_cli_ui u;
    sdc_cli_ui_init(&u, a.quiet);
    sdc_download_job job = {.model = a.id, .revision = a.revision, .components = components, .n_components = n,
                            .all_components = !a.include, .tokenizer_files = true, .model_card = true,
                            .log = sdc_cli_on_log, .progress = sdc_cli_on_progress, .user = &u};
    char err[1024];
    sdc_status s = sdc_download(&job, err, sizeof err);
    sdc_cli_end_progress(&u);
    if (s == SDC_OK) return 0;
    fprintf(stderr, "sdcoreml download: error: %s\n", err);
    return s == SDC_E_ARG ? SDC_CLI_EXIT_USAGE : 1;
}
