/*
 * run.c — `sdcoreml run PKG --input NAME=FILE.npy ... -o DIR [--json] [--profile] [--threads N]`:
 * runs a package with the reference interpreter on NumPy inputs and writes one
 * DIR/<output name>.npy per output.
 *
 * Exit codes as the rest of the CLI: 0 success, 1 error in the inputs or the package, 2 usage.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "sdcoreml.h"

#include "options.h"
#include "progress.h"

int sdc_cli_run(int argc, char **argv);

enum { MAX_INPUTS = 256 };

typedef struct run_args {
    const char *package, *out_dir;
    const char *in_specs[MAX_INPUTS], *in_files[MAX_INPUTS]; /* NAME=FILE, FILE */
    size_t name_len[MAX_INPUTS];
    int n_in, threads;
    bool json, profile;
} run_args;

/* --input NAME=FILE.npy: both parts non-empty, each NAME once. */
static int add_input(const sdc_cli_command *cmd, void *state, const char *value) {
    run_args *a = state;
    const char *eq = strchr(value, '=');
    if (!eq || eq == value || !eq[1]) return sdc_cli_usage_error(cmd, "--input '%s' is not NAME=FILE.npy", value);
    if (a->n_in == MAX_INPUTS) return sdc_cli_usage_error(cmd, "too many --input options");
    size_t len = (size_t)(eq - value);
    for (int k = 0; k < a->n_in; k++)
        if (a->name_len[k] == len && !strncmp(a->in_specs[k], value, len))
            return sdc_cli_usage_error(cmd, "input '%s' is given twice", value);
    a->in_specs[a->n_in] = value;
    a->name_len[a->n_in] = len;
    a->in_files[a->n_in] = eq + 1;
    a->n_in++;
    return 0;
}

static const sdc_cli_option RUN_OPTIONS[] = {
    {.name = "--input", .store = SDC_CLI_CALL, .call = add_input, .metavar = "NAME=FILE.npy",
     .help = "one per model input; .npy dtypes float32, float16 or int32 in C order;\n"
             "float64 (NumPy's default) is read as float32, with a note;\n"
             "float32 is converted to the input's declared dtype"},
    {.name = "-o", .alias = "--output", .store = SDC_CLI_STRING, .offset = offsetof(run_args, out_dir), .metavar = "DIR",
     .help = "output folder (created if missing)"},
    {.name = "--json", .store = SDC_CLI_TRUE, .offset = offsetof(run_args, json), .help = "print a JSON document instead of text"},
    {.name = "--profile", .store = SDC_CLI_TRUE, .offset = offsetof(run_args, profile),
     .help = "time, matrix-product GFLOP/s (a convolution's at the direct sum's FLOPs) and calls per op type, and the time "
             "spent dropping the pages of weights already read (with --json: a \"profile\" object)"},
    {.name = "--threads", .store = SDC_CLI_INT, .offset = offsetof(run_args, threads), .metavar = "N", .int_min = 1,
     .int_max = 1024, .help = "worker threads [one per CPU]"},
};

static const sdc_cli_command RUN = {
    .name = "run",
    .options = RUN_OPTIONS,
    .n_options = sizeof RUN_OPTIONS / sizeof RUN_OPTIONS[0],
    .positional = "PACKAGE",
    .positional_offset = offsetof(run_args, package),
    .help_head =
        "Usage: sdcoreml run PACKAGE.mlpackage --input NAME=FILE.npy [--input ...] -o DIR [--json] [--profile] [--threads N]\n\n"
        "Runs function main of an ML Program package on the CPU with sdcoreml's reference interpreter\n"
        "(fp32 accumulation; results rounded to each op's declared dtype, so fp16 programs give fp16\n"
        "results) and writes DIR/<output name>.npy for every output. An output holding NaN or inf\n"
        "values (a float16 overflow, say) gets a warning on stderr that names it and counts them.\n"
        "On a terminal, a progress line shows the ops done, the time spent and the time left.\n\n",
    .help_column = 22,
};

static int mkdir_p(const char *dir) {
    char buf[4096];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof buf) return -1;
    memcpy(buf, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] == '/' || buf[i] == 0) {
            char c = buf[i];
            buf[i] = 0;
            if (mkdir(buf, 0777) != 0 && errno != EEXIST) return -1;
            buf[i] = c;
        }
    }
    struct stat st;
    return stat(dir, &st) == 0 && S_ISDIR(st.st_mode) ? 0 : -1;
}

static void shape_text(const sdc_ndarray *a, char *buf, size_t size) {
    size_t n = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < a->rank && n < size; i++) {
        if (a->shape[i] < 0) n += (size_t)snprintf(buf + n, size - n, "%s?", i ? ", " : "");
        else n += (size_t)snprintf(buf + n, size - n, "%s%lld", i ? ", " : "", (long long)a->shape[i]);
    }
    if (n < size) snprintf(buf + n, size - n, "]");
}

/* "profile": {op type: {"seconds", "flops", "calls"}} */
static json_t *profile_json(const sdc_model *m) {
    const sdc_op_profile *rows;
    int n = sdc_model_profile(m, &rows);
    json_t *p = json_object();
    for (int i = 0; i < n; i++)
        json_object_set_new(p, rows[i].op_type, json_pack("{s:f, s:f, s:I}", "seconds", rows[i].seconds, "flops", rows[i].flops,
                                                          "calls", (json_int_t)rows[i].calls));
    return p;
}

static int by_seconds_desc(const void *a, const void *b) {
    double x = ((const sdc_op_profile *)a)->seconds, y = ((const sdc_op_profile *)b)->seconds;
    return (x < y) - (x > y);
}

/* One line per op type, slowest first; GFLOP/s for the types that do matrix products. */
static void print_profile(const sdc_model *m, double total) {
    const sdc_op_profile *rows;
    int n = sdc_model_profile(m, &rows);
    sdc_op_profile *sorted = malloc(sizeof *sorted * (size_t)(n ? n : 1));
    if (!sorted) return;
    memcpy(sorted, rows, sizeof *sorted * (size_t)n);
    qsort(sorted, (size_t)n, sizeof *sorted, by_seconds_desc);
    printf("%-24s %10s %6s %8s %10s\n", "op type", "seconds", "share", "calls", "GFLOP/s");
    for (int i = 0; i < n; i++) {
        printf("%-24s %10.3f %5.1f%% %8lld", sorted[i].op_type, sorted[i].seconds, total > 0 ? 100.0 * sorted[i].seconds / total : 0.0,
               sorted[i].calls);
        if (sorted[i].flops > 0 && sorted[i].seconds > 0) printf(" %10.1f", sorted[i].flops / sorted[i].seconds * 1e-9);
        printf("\n");
    }
    free(sorted);
}

static json_t *shape_json(const sdc_ndarray *a) {
    json_t *s = json_array();
    for (int i = 0; i < a->rank; i++) json_array_append_new(s, json_integer(a->shape[i]));
    return s;
}

/* An output name as a file name: MIL names are [A-Za-z0-9_@]; anything else becomes '_'. */
static void file_name(const char *name, char *buf, size_t size) {
    size_t n = 0;
    for (const char *p = name; *p && n + 5 < size; p++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '@' || c == '-' ||
                  (c == '.' && n > 0);
        buf[n++] = ok ? c : '_';
    }
    if (n == 0) buf[n++] = '_';
    snprintf(buf + n, size - n, ".npy");
}

int sdc_cli_run(int argc, char **argv) {
    run_args a = {0};
    /* argv[0] is the program, argv[1] "run" */
    int parsed = sdc_cli_parse(&RUN, argc - 2, argv + 2, &a);
    if (parsed != SDC_CLI_CONTINUE) return parsed;
    if (!a.out_dir) return sdc_cli_usage_error(&RUN, "missing -o DIR");
    if (!*a.out_dir) return sdc_cli_usage_error(&RUN, "-o needs a directory");
    const char *pkg = a.package, *out_dir = a.out_dir;
    const char **in_specs = a.in_specs, **in_files = a.in_files;
    const size_t *name_len = a.name_len;
    const int n_in = a.n_in, threads = a.threads;
    const bool as_json = a.json;
    char *in_names[MAX_INPUTS] = {0};

    int rc = 1;
    char err[1024];
    sdc_model *m = NULL;
    sdc_ndarray inputs[MAX_INPUTS];
    sdc_ndarray *outputs = NULL;
    int n_out = 0, n_read = 0;
    json_t *doc = NULL;
    memset(inputs, 0, sizeof inputs);
    for (int k = 0; k < n_in; k++) {
        if (!(in_names[k] = strndup(in_specs[k], name_len[k]))) {
            fprintf(stderr, "sdcoreml: error: out of memory\n");
            goto done;
        }
    }
    sdc_cli_ui ui;
    sdc_cli_ui_init(&ui, false);
    sdc_model_options opt = {.n_threads = threads, .progress = sdc_cli_on_progress, .progress_user = &ui};
    if (sdc_model_load(pkg, &opt, &m, err, sizeof err)) {
        fprintf(stderr, "sdcoreml: error: %s\n", err);
        goto done;
    }
    /* every given input must exist, with the declared shape; every declared one must be given */
    for (int k = 0; k < n_in; k++) {
        const sdc_ndarray *d = NULL;
        for (int i = 0; i < sdc_model_n_inputs(m) && !d; i++)
            if (!strcmp(sdc_model_input(m, i)->name, in_names[k])) d = sdc_model_input(m, i);
        if (!d) {
            fprintf(stderr, "sdcoreml: error: %s: '%s' is not an input of the model (inputs:", pkg, in_names[k]);
            for (int i = 0; i < sdc_model_n_inputs(m); i++) fprintf(stderr, "%s %s", i ? "," : "", sdc_model_input(m, i)->name);
            fprintf(stderr, ")\n");
            goto done;
        }
        if (sdc_npy_read(in_files[k], &inputs[k], err, sizeof err)) {
            fprintf(stderr, "sdcoreml: error: input '%s': %s\n", in_names[k], err);
            goto done;
        }
        if (err[0]) fprintf(stderr, "sdcoreml: note: input '%s': %s: %s\n", in_names[k], in_files[k], err);
        n_read = k + 1;
        inputs[k].name = in_names[k];
        bool same = inputs[k].rank == d->rank;
        for (int i = 0; same && i < d->rank; i++) same = d->shape[i] < 0 ? inputs[k].shape[i] >= 1 : inputs[k].shape[i] == d->shape[i];
        char want[256], got[256];
        shape_text(d, want, sizeof want);
        shape_text(&inputs[k], got, sizeof got);
        if (!same) {
            fprintf(stderr, "sdcoreml: error: input '%s': %s has shape %s, the model expects %s %s\n", in_names[k], in_files[k], got, want,
                    sdc_nd_dtype_name(d->dtype));
            goto done;
        }
        if (inputs[k].dtype != d->dtype && inputs[k].dtype != SDC_ND_F32) {
            fprintf(stderr, "sdcoreml: error: input '%s': %s is %s, the model expects %s %s (float32 is also accepted)\n", in_names[k],
                    in_files[k], sdc_nd_dtype_name(inputs[k].dtype), sdc_nd_dtype_name(d->dtype), want);
            goto done;
        }
    }
    for (int i = 0; i < sdc_model_n_inputs(m); i++) {
        const sdc_ndarray *d = sdc_model_input(m, i);
        bool given = false;
        for (int k = 0; k < n_in && !given; k++) given = !strcmp(in_names[k], d->name);
        if (!given) {
            char want[256];
            shape_text(d, want, sizeof want);
            fprintf(stderr, "sdcoreml: error: %s: missing input '%s' (expected %s %s): add --input %s=FILE.npy\n", pkg, d->name,
                    sdc_nd_dtype_name(d->dtype), want, d->name);
            goto done;
        }
    }
    double t0 = sdc_cli_now();
    if (sdc_model_predict(m, inputs, n_in, &outputs, &n_out, err, sizeof err)) {
        sdc_cli_end_progress(&ui);
        fprintf(stderr, "sdcoreml: error: %s\n", err);
        goto done;
    }
    double seconds = sdc_cli_now() - t0;
    if (mkdir_p(out_dir) != 0) {
        fprintf(stderr, "sdcoreml: error: %s: cannot create directory: %s\n", out_dir, strerror(errno));
        goto done;
    }
    doc = json_object();
    json_t *arr = json_array();
    json_object_set_new(doc, "package", json_string(pkg));
    json_object_set_new(doc, "outputs", arr);
    json_object_set_new(doc, "predict_seconds", json_real(seconds));
    if (a.profile) json_object_set_new(doc, "profile", profile_json(m));
    for (int i = 0; i < n_out; i++) {
        char fname[600], path[5000];
        file_name(outputs[i].name, fname, sizeof fname);
        snprintf(path, sizeof path, "%s/%s", out_dir, fname);
        if (sdc_npy_write(path, &outputs[i], err, sizeof err)) {
            fprintf(stderr, "sdcoreml: error: output '%s': %s\n", outputs[i].name, err);
            goto done;
        }
        size_t nonfinite = sdc_ndarray_count_nonfinite(&outputs[i]);
        if (nonfinite) /* a float16 overflow, say: worth knowing, not a failure of run */
            fprintf(stderr, "sdcoreml: warning: output '%s': %zu of %zu values are NaN/inf\n", outputs[i].name, nonfinite,
                    sdc_ndarray_numel(&outputs[i]));
        json_array_append_new(arr, json_pack("{s:s, s:o, s:s, s:s, s:I}", "name", outputs[i].name, "shape", shape_json(&outputs[i]),
                                             "dtype", sdc_nd_dtype_name(outputs[i].dtype), "file", path, "nonfinite",
                                             (json_int_t)nonfinite));
        if (!as_json) {
            char shp[256];
            shape_text(&outputs[i], shp, sizeof shp);
            printf("%-28s %-16s %-8s %s\n", outputs[i].name, shp, sdc_nd_dtype_name(outputs[i].dtype), path);
        }
    }
    if (as_json) {
        /* reals (predict_seconds) with 6 significant digits, not the 17 of jansson's default */
        char *text = json_dumps(doc, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(6));
        if (text) printf("%s\n", text);
        free(text);
    } else {
        printf("predict: %.3f s\n", seconds);
        if (a.profile) print_profile(m, seconds);
    }
    rc = 0;
done:
    json_decref(doc);
    sdc_ndarrays_free(outputs, n_out);
    for (int k = 0; k < n_read; k++) free(inputs[k].data);
    for (int k = 0; k < n_in; k++) free(in_names[k]);
    sdc_model_free(m);
    return rc;
}
