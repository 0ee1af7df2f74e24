/*
 * outdir.h — durable, all-or-nothing output: what every writer of files into -o shares.
 *
 * Every output (a package, Resources/, an .npy file) is built under a hidden temporary name
 * beside its target that carries the writer's pid — ".<name>.partial-<pid>", or the check's
 * ".sdcoreml-reference-<pid>-<what>.mlpackage" — and committed by one rename:
 *   1. every file and directory of the temporary is fsynced (its data and its entries), so the
 *      renamed output never holds empty or short files after a power loss;
 *   2. rename(2) puts it in place atomically;
 *   3. the parent directory is fsynced, so the rename itself survives.
 * A run killed with SIGKILL (the out-of-memory killer) cannot remove its temporary; the next
 * run into the same -o removes every such temporary whose process is gone.
 */
#ifndef SDC_IO_OUTDIR_H
#define SDC_IO_OUTDIR_H

#include "common.h"

/* mkdir -p: creates the directories of `path` that are missing, `path` itself too when
   `including_last` (else only its parents); an existing non-directory is an error. */
sdc_status sdc_outdir_mkdirs(const char *path, bool including_last, sdc_err *err);

/* fsync of one file or directory; the error names the path. */
sdc_status sdc_outdir_fsync(const char *path, sdc_err *err);

/* Steps 1–3 above. When `final` already exists as a non-empty directory (another process
   committed the same output first: outputs are deterministic, so it holds the same bytes),
   *lost_race is set, nothing is renamed and SDC_OK is returned; the caller removes tmp. */
sdc_status sdc_outdir_commit(const char *tmp, const char *final, bool *lost_race, sdc_err *err);

/* Removes a temporary tree of ours recursively (never follows symlinks). Best effort. */
void sdc_outdir_remove_tree(const char *path);

/* The pid in a temporary name of ours, or 0 when `name` is not one. */
long sdc_outdir_temp_pid(const char *name);

/* Removes from `dir` every temporary of ours whose process is gone; calls note(user, path, pid)
   for each one removed. Returns how many were removed. */
int sdc_outdir_remove_stale(const char *dir, void (*note)(void *user, const char *path, long pid), void *user);

#endif
