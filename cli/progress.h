/*
 * progress.h — what the commands print while the library works: its log lines and one
 * progress line on stderr (terminals only, redrawn in place; --quiet silences both progress
 * and informational lines). Nothing goes to stdout.
 */
#ifndef SDCOREML_CLI_PROGRESS_H
#define SDCOREML_CLI_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>

#include "sdcoreml.h"

typedef struct sdc_cli_ui {
    bool quiet, tty;
    double last;    /* when the line was last drawn */
    bool line_open; /* a progress line waits to be erased */
    /* the download being shown, for its rate: when it began and how many bytes it had then */
    char what[512];
    double started;
    uint64_t start_bytes;
} sdc_cli_ui;

/* quiet from --quiet; tty from isatty(2). */
void sdc_cli_ui_init(sdc_cli_ui *u, bool quiet);
/* An sdc_log_fn and an sdc_progress_fn; user is the sdc_cli_ui. */
void sdc_cli_on_log(void *user, sdc_log_level level, const char *line);
void sdc_cli_on_progress(void *user, const char *what, uint64_t done, uint64_t total);
/* Seconds on the monotonic clock: the CLI's one clock (run, generate, progress). The library
   keeps its own (src/common.h): the two are separate link units and the library's public API
   is for models, not for timekeeping. */
double sdc_cli_now(void);
/* Erases a progress line left open (before an error is printed). */
void sdc_cli_end_progress(sdc_cli_ui *u);

#endif
