/*
 * run.c — `sdcoreml run PKG --input NAME=FILE.npy ... -o DIR [--json] [--threads N]`:
 * runs a package with the reference interpreter on NumPy inputs and writes one
 * DIR/<output name>.npy per output.
 *
 * Exit codes as the rest of the CLI: 0 success, 1 error in the inputs or the package, 2 usage.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <jansson.h>

#include "sdcoreml.h"

int sdc_cli_run(int argc, char **argv);

enum { RUN_EXIT_USAGE = 2, MAX_INPUTS = 256 };

static void run_usage(FILE *f) {
    fprintf(f,
            "Usage: sdcoreml run PACKAGE.mlpackage --input NAME=FILE.npy [--input ...] -o DIR [--json] [--threads N]\n\n"
            "Runs function main of an ML Program package on the CPU with sdcoreml's reference interpreter\n"
            "(fp32 accumulation; results rounded to each op's declared dtype, so fp16 programs give fp16\n"
            "results) and writes DIR/<output name>.npy for every output.\n\n"
            "  --input NAME=FILE.npy  one per model input; .npy dtypes float32, float16 or int32 in C order;\n"
            "                         float32 is converted to the input's declared dtype\n"
            "  -o DIR                 output folder (created if missing)\n"
            "  --json                 print a JSON document instead of text\n"
            "  --threads N            worker threads [one per CPU]\n");
}

static int run_usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "sdcoreml run: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry 'sdcoreml run --help'.\n");
    return RUN_EXIT_USAGE;
}

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
    const char *pkg = NULL, *out_dir = NULL;
    const char *in_specs[MAX_INPUTS], *in_files[MAX_INPUTS]; /* NAME=FILE, FILE */
    char *in_names[MAX_INPUTS] = {0};
    size_t name_len[MAX_INPUTS];
    int n_in = 0, threads = 0;
    bool as_json = false;
    /* argv[0] is the program, argv[1] "run" */
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *val = NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            run_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json")) {
            as_json = true;
        } else if (!strcmp(a, "--input") || !strncmp(a, "--input=", 8)) {
            val = a[7] == '=' ? a + 8 : (i + 1 < argc ? argv[++i] : NULL);
            if (!val) return run_usage_error("%s", "--input needs NAME=FILE.npy");
            const char *eq = strchr(val, '=');
            if (!eq || eq == val || !eq[1]) return run_usage_error("--input '%s' is not NAME=FILE.npy", val);
            if (n_in == MAX_INPUTS) return run_usage_error("%s", "too many --input options");
            size_t len = (size_t)(eq - val);
            for (int k = 0; k < n_in; k++)
                if (name_len[k] == len && !strncmp(in_specs[k], val, len)) return run_usage_error("input '%s' is given twice", val);
            in_specs[n_in] = val;
            name_len[n_in] = len;
            in_files[n_in] = eq + 1;
            n_in++;
        } else if (!strcmp(a, "-o") || !strncmp(a, "-o=", 3) || !strcmp(a, "--output") || !strncmp(a, "--output=", 9)) {
            const char *eqp = strchr(a, '=');
            val = eqp ? eqp + 1 : (i + 1 < argc ? argv[++i] : NULL);
            if (!val || !*val) return run_usage_error("%s", "-o needs a directory");
            out_dir = val;
        } else if (!strcmp(a, "--threads") || !strncmp(a, "--threads=", 10)) {
            val = a[9] == '=' ? a + 10 : (i + 1 < argc ? argv[++i] : NULL);
            char *end;
            long t = val ? strtol(val, &end, 10) : -1;
            if (!val || *end || t < 1 || t > 1024) return run_usage_error("--threads '%s' is not a number from 1 to 1024", val ? val : "");
            threads = (int)t;
        } else if (a[0] == '-') {
            return run_usage_error("unknown option '%s'", a);
        } else if (pkg) {
            return run_usage_error("unexpected argument '%s'", a);
        } else {
            pkg = a;
        }
    }
    if (!pkg) return run_usage_error("%s", "missing PACKAGE");
    if (!out_dir) return run_usage_error("%s", "missing -o DIR");

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
    sdc_model_options opt = {.n_threads = threads};
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
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (sdc_model_predict(m, inputs, n_in, &outputs, &n_out, err, sizeof err)) {
        fprintf(stderr, "sdcoreml: error: %s\n", err);
        goto done;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double seconds = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    if (mkdir_p(out_dir) != 0) {
        fprintf(stderr, "sdcoreml: error: %s: cannot create directory: %s\n", out_dir, strerror(errno));
        goto done;
    }
    doc = json_object();
    json_t *arr = json_array();
    json_object_set_new(doc, "package", json_string(pkg));
    json_object_set_new(doc, "outputs", arr);
    json_object_set_new(doc, "predict_seconds", json_real(seconds));
    for (int i = 0; i < n_out; i++) {
        char fname[600], path[5000];
        file_name(outputs[i].name, fname, sizeof fname);
        snprintf(path, sizeof path, "%s/%s", out_dir, fname);
        if (sdc_npy_write(path, &outputs[i], err, sizeof err)) {
            fprintf(stderr, "sdcoreml: error: output '%s': %s\n", outputs[i].name, err);
            goto done;
        }
        json_array_append_new(arr, json_pack("{s:s, s:o, s:s, s:s}", "name", outputs[i].name, "shape", shape_json(&outputs[i]), "dtype",
                                             sdc_nd_dtype_name(outputs[i].dtype), "file", path));
        if (!as_json) {
            char shp[256];
            shape_text(&outputs[i], shp, sizeof shp);
            printf("%-28s %-16s %-8s %s\n", outputs[i].name, shp, sdc_nd_dtype_name(outputs[i].dtype), path);
        }
    }
    if (as_json) {
        char *text = json_dumps(doc, JSON_INDENT(2) | JSON_SORT_KEYS);
        if (text) printf("%s\n", text);
        free(text);
    } else {
        printf("predict: %.3f s\n", seconds);
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
