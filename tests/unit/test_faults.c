/*
 * test_faults.c — allocation failure injection (issue 9, item 5): every allocation of a tiny
 * conversion and of a tiny `run` is made to fail in turn, and each failure must end with a
 * clean error: a non-OK status (SDC_E_NOMEM) with a one-line message, nothing partial in -o
 * (no hidden temporary, no package or .npy that differs from a successful run's), and — under
 * AddressSanitizer with detect_leaks=1 — no leak and no bad access on the failure path.
 *
 * How: sdc_alloc_fail_at(n) (src/common.c) makes the nth allocation through sdc_malloc and
 * friends return NULL, once. A scenario is first run armed with a huge n, which counts its
 * allocations (total); then n = 1, 2, ... until a run succeeds. jansson and protobuf-c
 * allocate with their own malloc and are not failed here.
 *
 * Sampling, to keep CI fast (the whole test well under a minute plain, a few under ASan):
 * every n up to DENSE_LIMIT, then a stride chosen so that about SPARSE_POINTS more points
 * spread over the rest of the run, then total+1 (which must succeed). Set
 * SDC_FAULTS_EXHAUSTIVE=1 to fail every allocation instead (hours for the chunked UNet), or
 * SDC_FAULTS_POINTS=<n> for n sparse points per scenario.
 */
#include "check.h"
#include "common.h"

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef SDC_SOURCE_DIR
#error "SDC_SOURCE_DIR (the source tree, for examples/tiny-sd) is set by CMakeLists.txt"
#endif

enum { DENSE_LIMIT = 400, SPARSE_POINTS = 300 };

static char tmp[256];

static void die(const char *what) {
    perror(what);
    exit(2);
}

/* ---- directories ------------------------------------------------------------------- */

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void remove_tree(const char *path) { nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS); }

static void make_empty_dir(const char *path) {
    remove_tree(path);
    if (mkdir(path, 0755) != 0) die(path);
}

static bool read_whole(const char *path, char **data, size_t *n) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return false;
    fseek(fp, 0, SEEK_END);
    long len = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    *data = malloc(len > 0 ? (size_t)len : 1);
    *n = len > 0 ? (size_t)len : 0;
    bool ok = *data && fread(*data, 1, *n, fp) == *n;
    fclose(fp);
    return ok;
}

/* Byte for byte, or (sizes_only) the same size: a run that carried on without the memory it
   asked for (a gemm without packing buffers) may round differently, never write less. */
static bool sizes_only;

static bool same_file(const char *a, const char *b) {
    if (sizes_only) {
        struct stat sa, sb;
        return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_size == sb.st_size;
    }
    char *da = NULL, *db = NULL;
    size_t na = 0, nb = 0;
    bool same = read_whole(a, &da, &na) && read_whole(b, &db, &nb) && na == nb && !memcmp(da, db, na);
    free(da);
    free(db);
    return same;
}

/* True when the trees at a and b hold the same names and the same bytes (both ways). */
static bool same_tree(const char *a, const char *b);

static bool entries_of_a_in_b(const char *a, const char *b) {
    DIR *d = opendir(a);
    if (!d) return false;
    bool same = true;
    struct dirent *e;
    char pa[1200], pb[1200];
    while (same && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(pa, sizeof pa, "%s/%s", a, e->d_name);
        snprintf(pb, sizeof pb, "%s/%s", b, e->d_name);
        same = same_tree(pa, pb);
    }
    closedir(d);
    return same;
}

static bool same_tree(const char *a, const char *b) {
    struct stat sa, sb;
    if (lstat(a, &sa) != 0 || lstat(b, &sb) != 0) return false;
    if (S_ISDIR(sa.st_mode) != S_ISDIR(sb.st_mode)) return false;
    if (!S_ISDIR(sa.st_mode)) return S_ISREG(sa.st_mode) && S_ISREG(sb.st_mode) && same_file(a, b);
    return entries_of_a_in_b(a, b) && entries_of_a_in_b(b, a);
}

/* Counts what a failed run left in `out` that a successful run (its output in `golden`) does
   not explain: any hidden entry (a temporary) and any entry that differs from the golden one.
   Complete outputs committed before the failure (an earlier component, an earlier .npy) are
   fine: they are the same bytes a successful run writes. */
static int partial_entries(const char *out, const char *golden, bool exact) {
    sizes_only = !exact;
    DIR *d = opendir(out);
    if (!d) return 0; /* never created: nothing left */
    int partial = 0;
    struct dirent *e;
    char po[1200], pg[1200];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(po, sizeof po, "%s/%s", out, e->d_name);
        snprintf(pg, sizeof pg, "%s/%s", golden, e->d_name);
        if (e->d_name[0] == '.' || !same_tree(po, pg)) {
            fprintf(stderr, "    partial output left: %s\n", po);
            partial++;
        }
    }
    closedir(d);
    return partial;
}

/* A run that succeeded wrote every output the golden run did. */
static bool golden_entries_present(const char *out, const char *golden) {
    DIR *d = opendir(golden);
    if (!d) return false;
    bool all = true;
    struct dirent *e;
    char po[1200];
    struct stat st;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.' && (snprintf(po, sizeof po, "%s/%s", out, e->d_name), stat(po, &st) != 0)) all = false;
    closedir(d);
    return all;
}

/* ---- scenarios ------------------------------------------------------------------------ */

/* One run of a scenario into `out`: a status and the library's message. */
typedef sdc_status (*scenario_fn)(const char *out, char *err, size_t err_size);

/* A job converting examples/tiny-sd into `out`; the scenario sets what it converts. */
static sdc_job tiny_job(const char *out) {
    sdc_job job;
    sdc_job_init(&job);
    job.model_version = SDC_SOURCE_DIR "/examples/tiny-sd";
    job.output_dir = out;
    return job;
}

/* The builders, the writer and the commit of two packages. */
static sdc_status convert_text_vae(const char *out, char *err, size_t n) {
    sdc_job job = tiny_job(out);
    job.convert_text_encoder = job.convert_vae_decoder = true;
    return sdc_convert(&job, err, n);
}

/* The largest graph, cut in two: the chunk pass and three packages. */
static sdc_status convert_unet_chunked(const char *out, char *err, size_t n) {
    sdc_job job = tiny_job(out);
    job.convert_unet = job.chunk_unet = true;
    return sdc_convert(&job, err, n);
}

/* Palettization (k-means, lazy transforms on consts). */
static sdc_status convert_text_quantized(const char *out, char *err, size_t n) {
    sdc_job job = tiny_job(out);
    job.convert_text_encoder = true;
    job.quantize_nbits = 4;
    return sdc_convert(&job, err, n);
}

/* The check: the float32 reference written, both packages loaded and run in the interpreter. */
static sdc_status convert_text_checked(const char *out, char *err, size_t n) {
    sdc_job job = tiny_job(out);
    job.convert_text_encoder = job.check_output_correctness = true;
    return sdc_convert(&job, err, n);
}

/* --lora: the LoRA file (parsed, matched against the weight names, merged while streaming),
   written once by setup_lora. */
static char lora_path[512];

static sdc_status convert_text_lora(const char *out, char *err, size_t n) {
    sdc_job job = tiny_job(out);
    sdc_lora lora = {.path = lora_path, .scale = 0.5f};
    job.convert_text_encoder = true;
    job.loras = &lora;
    job.n_loras = 1;
    return sdc_convert(&job, err, n);
}

/* A kohya module (q_proj, with alpha) and a PEFT one (fc1 [37, 32]) for the tiny text encoder. */
static void setup_lora(void) {
    static const char header[] =
        "{\"lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
        "\"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight\":{\"dtype\":\"F32\",\"shape\":[2,32],"
        "\"data_offsets\":[4,260]},"
        "\"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight\":{\"dtype\":\"F32\",\"shape\":[32,2],"
        "\"data_offsets\":[260,516]},"
        "\"text_encoder.text_model.encoder.layers.1.mlp.fc1.lora_A.weight\":{\"dtype\":\"F32\",\"shape\":[2,32],"
        "\"data_offsets\":[516,772]},"
        "\"text_encoder.text_model.encoder.layers.1.mlp.fc1.lora_B.weight\":{\"dtype\":\"F32\",\"shape\":[37,2],"
        "\"data_offsets\":[772,1068]}}";
    snprintf(lora_path, sizeof lora_path, "%s/lora.safetensors", tmp);
    FILE *f = fopen(lora_path, "wb");
    if (!f) die(lora_path);
    uint64_t len = sizeof header - 1;
    unsigned char le[8];
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)(len >> (8 * i));
    fwrite(le, 1, 8, f);
    fwrite(header, 1, len, f);
    for (int i = 0; i < 1068 / 4; i++) {
        float v = i == 0 ? 1.0f : (float)((i * 37) % 11) / 11.0f - 0.5f;
        fwrite(&v, 4, 1, f);
    }
    if (fclose(f) != 0) die(lora_path);
}

/* The package and inputs of the `run` scenario, made once by setup_run. */
static char run_package[512], run_inputs[512];

/* What `sdcoreml run` does: read the .npy inputs, load, predict, write one .npy per output. */
static sdc_status run_package_into(const char *out, char *err, size_t err_size) {
    sdc_model *m = NULL;
    sdc_model_options opt = {.n_threads = 2};
    sdc_status s = sdc_model_load(run_package, &opt, &m, err, err_size);
    if (s) return s;
    int n_in = sdc_model_n_inputs(m), n_out = 0, n_read = 0;
    sdc_ndarray *in = calloc((size_t)n_in, sizeof *in), *outs = NULL;
    char path[1200];
    for (; !s && n_read < n_in; n_read++) {
        snprintf(path, sizeof path, "%s/%s.npy", run_inputs, sdc_model_input(m, n_read)->name);
        s = sdc_npy_read(path, &in[n_read], err, err_size);
        in[n_read].name = sdc_model_input(m, n_read)->name;
    }
    if (!s) s = sdc_model_predict(m, in, n_in, &outs, &n_out, err, err_size);
    if (!s && mkdir(out, 0755) != 0 && errno != EEXIST) die(out);
    for (int i = 0; !s && i < n_out; i++) {
        snprintf(path, sizeof path, "%s/%s.npy", out, outs[i].name);
        s = sdc_npy_write(path, &outs[i], err, err_size);
    }
    for (int i = 0; i < n_read; i++) free(in[i].data);
    free(in);
    sdc_ndarrays_free(outs, n_out);
    sdc_model_free(m);
    return s;
}

/* Converts the text encoder once and writes small integral inputs for it (token ids). */
static void setup_run(void) {
    char dir[300], err[1024];
    snprintf(dir, sizeof dir, "%s/run-package", tmp);
    make_empty_dir(dir);
    sdc_job job = tiny_job(dir);
    job.convert_text_encoder = true;
    if (sdc_convert(&job, err, sizeof err)) {
        fprintf(stderr, "setup: %s\n", err);
        exit(2);
    }
    /* the model id (an absolute path) names the package: find it by its suffix */
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (strstr(e->d_name, "_text_encoder.mlpackage"))
            snprintf(run_package, sizeof run_package, "%s/%s", dir, e->d_name);
    if (d) closedir(d);

    sdc_model *m = NULL;
    if (sdc_model_load(run_package, NULL, &m, err, sizeof err)) {
        fprintf(stderr, "setup: %s\n", err);
        exit(2);
    }
    snprintf(run_inputs, sizeof run_inputs, "%s/run-inputs", tmp);
    make_empty_dir(run_inputs);
    for (int i = 0; i < sdc_model_n_inputs(m); i++) {
        sdc_ndarray a = *sdc_model_input(m, i);
        a.dtype = SDC_ND_F32;
        for (int k = 0; k < a.rank; k++)
            if (a.shape[k] < 1) a.shape[k] = 1;
        size_t n = sdc_ndarray_numel(&a);
        float *v = malloc(n * sizeof *v);
        for (size_t k = 0; k < n; k++) v[k] = (float)((k * 7) % 50);
        a.data = v;
        char path[1200];
        snprintf(path, sizeof path, "%s/%s.npy", run_inputs, a.name);
        if (sdc_npy_write(path, &a, err, sizeof err)) {
            fprintf(stderr, "setup: %s\n", err);
            exit(2);
        }
        free(v);
    }
    sdc_model_free(m);
}

/* The packages of the `generate` scenario, converted once by setup_generate. */
static char gen_packages[512];

/* What `sdcoreml pipeline` does: every package of SD 1.x (the safety checker too), 2 steps, a PNG. */
static sdc_status generate_into(const char *out, char *err, size_t err_size) {
    sdc_generate_job job;
    sdc_generate_job_init(&job);
    job.prompt = "a red cube";
    job.packages_dir = gen_packages;
    job.output_dir = out;
    job.model_version = SDC_SOURCE_DIR "/examples/tiny-sd";
    job.num_inference_steps = 2;
    job.n_threads = 2;
    return sdc_generate(&job, NULL, err, err_size);
}

static void setup_generate(void) {
    char err[1024];
    snprintf(gen_packages, sizeof gen_packages, "%s/generate-packages", tmp);
    make_empty_dir(gen_packages);
    sdc_job job = tiny_job(gen_packages);
    job.convert_text_encoder = job.convert_unet = job.convert_vae_decoder = job.convert_safety_checker = true;
    if (sdc_convert(&job, err, sizeof err)) {
        fprintf(stderr, "setup: %s\n", err);
        exit(2);
    }
}

/* ---- the injection loop ------------------------------------------------------------------ */

static long sparse_points = SPARSE_POINTS;

static long next_point(long n, long total, bool exhaustive) {
    if (exhaustive || n < DENSE_LIMIT) return n + 1;
    long stride = (total - DENSE_LIMIT) / sparse_points;
    if (stride < 1) stride = 1;
    return n + stride <= total ? n + stride : n + 1; /* then every point to total + 1 */
}

typedef struct tally {
    long total, exercised, nomem, other, absorbed, partial;
} tally;

/* Fails allocation n of one run; checks the failure is clean. True when the run succeeded
   without reaching allocation n (n is past the run's last allocation). */
static bool fail_one(const char *name, scenario_fn run, long n, const char *out, const char *golden, tally *t) {
    char err[1024] = "";
    make_empty_dir(out);
    rmdir(out); /* the library creates -o itself; a missing -o is part of what it handles */
    sdc_alloc_fail_at(n);
    sdc_status s = run(out, err, sizeof err);
    bool failed_here = sdc_alloc_count() >= n; /* the nth allocation did happen */
    sdc_alloc_fail_at(0);
    int partial = partial_entries(out, golden, s || !failed_here);
    t->partial += partial;
    CHECK_MSG(partial == 0, "%s: allocation %ld failed: %d partial entries in -o", name, n, partial);
    if (!s && !failed_here) return true;
    t->exercised++;
    if (!s) { /* the library carried on without it (fewer worker threads, an unpacked product) */
        t->absorbed++;
        CHECK_MSG(golden_entries_present(out, golden), "%s: allocation %ld absorbed: outputs missing", name, n);
        return false;
    }
    if (s == SDC_E_NOMEM)
        t->nomem++;
    else
        t->other++;
    CHECK_MSG(s == SDC_E_NOMEM, "%s: allocation %ld failed: status %s, '%s'", name, n, sdc_status_str(s), err);
    CHECK_MSG(err[0] && !strchr(err, '\n'), "%s: allocation %ld: message '%s' is not one line", name, n, err);
    return false;
}

/* SDC_FAULTS_ONLY=<scenario>:<n> runs one failure point of one scenario (to debug it under gdb). */
static bool only_point(const char *name, long *n) {
    const char *only = getenv("SDC_FAULTS_ONLY");
    if (!only || !*only) return false;
    size_t len = strlen(name);
    *n = !strncmp(only, name, len) && only[len] == ':' ? atol(only + len + 1) : 0;
    return true;
}

static void scenario(const char *name, scenario_fn run, bool exhaustive) {
    char golden[300], out[300], err[1024];
    long only_n;
    bool only = only_point(name, &only_n);
    if (only && only_n <= 0) return;
    snprintf(golden, sizeof golden, "%s/%s-golden", tmp, name);
    snprintf(out, sizeof out, "%s/%s-out", tmp, name);
    make_empty_dir(golden);
    sdc_alloc_fail_at(__LONG_MAX__); /* armed, never reached: counts the run's allocations */
    sdc_status s = run(golden, err, sizeof err);
    tally t = {.total = sdc_alloc_count()};
    sdc_alloc_fail_at(0);
    if (!CHECK_MSG(s == SDC_OK, "%s: the run without failures failed: %s", name, err)) return;

    if (only) {
        fail_one(name, run, only_n, out, golden, &t);
        return;
    }
    long n = 1;
    while (!fail_one(name, run, n, out, golden, &t)) n = next_point(n, t.total, exhaustive);
    remove_tree(out);
    /* a run succeeds only once n passes its allocations (a few more or less with threads) */
    CHECK_MSG(n > t.total / 2, "%s: succeeded at allocation %ld of %ld", name, n, t.total);
    printf("%s: %ld allocations per run; %ld failure points exercised (%ld SDC_E_NOMEM, %ld other errors, "
           "%ld absorbed); %ld partial outputs; the run succeeds from allocation %ld\n",
           name, t.total, t.exercised, t.nomem, t.other, t.absorbed, t.partial, n);
}

int main(void) {
    /* thousands of runs each fsync their outputs: on tmpfs (/dev/shm) that costs nothing */
    snprintf(tmp, sizeof tmp, "/dev/shm/sdc_test_faults_XXXXXX");
    if (!mkdtemp(tmp)) {
        snprintf(tmp, sizeof tmp, "/tmp/sdc_test_faults_XXXXXX");
        if (!mkdtemp(tmp)) die("mkdtemp");
    }
    const char *env = getenv("SDC_FAULTS_EXHAUSTIVE");
    bool exhaustive = env && env[0] == '1';
    const char *points = getenv("SDC_FAULTS_POINTS"); /* more sparse points, for a longer hunt */
    if (points && atol(points) > 0) sparse_points = atol(points);

    scenario("convert-text-vae", convert_text_vae, exhaustive);
    scenario("convert-unet-chunked", convert_unet_chunked, exhaustive);
    scenario("convert-text-quantized", convert_text_quantized, exhaustive);
    scenario("convert-text-checked", convert_text_checked, exhaustive);
    setup_lora();
    scenario("convert-text-lora", convert_text_lora, exhaustive);
    setup_run();
    scenario("run-text-encoder", run_package_into, exhaustive);
    setup_generate();
    scenario("generate", generate_into, exhaustive);

    remove_tree(tmp);
    return CHECK_DONE("test_faults");
}
