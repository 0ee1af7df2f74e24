/*
 * progress.c — log lines and the progress line of every command; see progress.h.
 */
#include "progress.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

double sdc_cli_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void sdc_cli_ui_init(sdc_cli_ui *u, bool quiet) {
    memset(u, 0, sizeof *u);
    u->quiet = quiet;
    u->tty = isatty(2) != 0;
}

void sdc_cli_end_progress(sdc_cli_ui *u) {
    if (u->line_open) fputs("\r\033[K", stderr);
    u->line_open = false;
}

void sdc_cli_on_log(void *user, sdc_log_level level, const char *line) {
    sdc_cli_ui *u = user;
    if (u->quiet && level == SDC_LOG_INFO) return;
    sdc_cli_end_progress(u);
    fprintf(stderr, "sdcoreml: %s%s\n", level == SDC_LOG_WARNING ? "warning: " : "", line);
}

/* "12.3 MB" */
static void megabytes(char *out, size_t size, uint64_t bytes) { snprintf(out, size, "%.1f MB", (double)bytes / 1e6); }

/* file, bytes, rate and time left of the download in progress */
static void draw_download(sdc_cli_ui *u, const char *what, uint64_t done, uint64_t total, double t) {
    if (strcmp(u->what, what)) { /* a new file: its rate starts here (a resumed file's old bytes do not count) */
        snprintf(u->what, sizeof u->what, "%s", what);
        u->started = t;
        u->start_bytes = done;
    }
    double secs = t - u->started, rate = secs > 0.05 ? (double)(done - u->start_bytes) / secs : 0;
    char have[32], all[32], eta[32] = "--:--";
    megabytes(have, sizeof have, done);
    megabytes(all, sizeof all, total);
    if (rate > 0 && total >= done) {
        long left = (long)((double)(total - done) / rate + 0.5);
        snprintf(eta, sizeof eta, "%ld:%02ld", left / 60, left % 60);
    }
    const char *name = what + strlen("download ");
    size_t n = strlen(name);
    fprintf(stderr, "\r\033[Ksdcoreml: %s%.40s %3.0f%% %s / %s, %.1f MB/s, ETA %s", n > 40 ? "..." : "",
            n > 40 ? name + n - 40 : name, total ? 100.0 * (double)done / (double)total : 100.0, have, all, rate / 1e6,
            eta);
}

static void clock_text(char *out, size_t size, double secs) {
    long s = (long)(secs + 0.5);
    snprintf(out, size, "%ld:%02ld", s / 60, s % 60);
}

/* ops done of a prediction, elapsed time and time left (from the ops' average so far; the
   clock starts at the run's first op) */
static void draw_ops(sdc_cli_ui *u, const char *what, uint64_t done, uint64_t total, double t) {
    double secs = t - u->started;
    char spent[32], eta[32] = "--:--";
    clock_text(spent, sizeof spent, secs);
    if (done > 0 && total >= done && secs > 0.5) clock_text(eta, sizeof eta, secs / (double)done * (double)(total - done));
    const char *name = what + strlen("run "), *slash = strrchr(name, '/');
    if (slash && slash[1]) name = slash + 1;
    size_t n = strlen(name);
    fprintf(stderr, "\r\033[Ksdcoreml: %s%.50s: op %llu/%llu %3.0f%%, %s, ETA %s", n > 50 ? "..." : "",
            n > 50 ? name + n - 50 : name, (unsigned long long)done, (unsigned long long)total,
            total ? 100.0 * (double)done / (double)total : 100.0, spent, eta);
}

/* A progress line on terminals only, redrawn at most 10 times a second. */
void sdc_cli_on_progress(void *user, const char *what, uint64_t done, uint64_t total) {
    sdc_cli_ui *u = user;
    if (u->quiet || !u->tty) return;
    double t = sdc_cli_now();
    bool download = !strncmp(what, "download ", 9), ops = !strncmp(what, "run ", 4);
    if (download && strcmp(u->what, what)) draw_download(u, what, done, total, t); /* start the new file's clock */
    if (ops && (strncmp(u->what, what, sizeof u->what - 1) || done <= 1)) { /* start the run's clock */
        snprintf(u->what, sizeof u->what, "%s", what);
        u->started = t;
    }
    if (done < total && t - u->last < 0.1) return;
    u->last = t;
    if (download)
        draw_download(u, what, done, total, t);
    else if (ops)
        draw_ops(u, what, done, total, t);
    else
        fprintf(stderr, "\r\033[Ksdcoreml: %s: writing weights %3.0f%% (%.1f / %.1f MB)", what,
                total ? 100.0 * (double)done / (double)total : 100.0, (double)done / 1e6, (double)total / 1e6);
    u->line_open = true;
    if (done >= total) sdc_cli_end_progress(u);
}
