/*
 * main.c — the sdcoreml command: argument parsing, progress, messages and exit codes.
 * The only place that prints. Options are spelled as torch2coreml spells them, and parsed
 * like Python's argparse: "--opt value" or "--opt=value", unambiguous prefixes accepted.
 *
 * Exit codes: 0 success, 1 conversion or input error, 2 usage error or unsupported option.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "sdcoreml.h"

enum { EXIT_USAGE = 2 };

typedef enum { FLAG, VALUE, LIST } opt_kind;

typedef struct cli_opt {
    const char *name;
    opt_kind kind;
    const char *metavar;
    const char *help;
} cli_opt;

/* In the order of torch2coreml's --help, then ours. */
static const cli_opt OPTIONS[] = {
    {"--convert-text-encoder", FLAG, NULL, "convert text_encoder (and text_encoder_2 when present)"},
    {"--convert-vae-decoder", FLAG, NULL, "convert the VAE decoder (fp32 with --xl-version unless --custom-vae-version)"},
    {"--convert-vae-encoder", FLAG, NULL, "convert the VAE encoder, for image-to-image (fp32 with --xl-version)"},
    {"--convert-unet", FLAG, NULL, "convert the UNet (and the refiner with --refiner-version)"},
    {"--convert-mmdit", FLAG, NULL, "convert the SD3 MMDiT (not supported yet)"},
    {"--convert-safety-checker", FLAG, NULL, "convert the safety checker (skipped with a warning if the pipeline has none)"},
    {"--convert-controlnet", LIST, "ID", "convert these ControlNets (SD 1.x/2.x) to ControlNet_<ID>.mlpackage"},
    {"--model-version", VALUE, "ID", "diffusers folder, or Hub id org/name in the local HF cache (required)"},
    {"--refiner-version", VALUE, "ID", "SDXL refiner, converted with --convert-unet as <model>_refiner"},
    {"--custom-vae-version", VALUE, "ID", "replacement VAE: folder or Hub id (vae/ or config.json at its root)"},
    {"--compute-unit", VALUE, "UNIT", "ALL, CPU_AND_GPU, CPU_ONLY or CPU_AND_NE; load-time only [ALL]"},
    {"--latent-h", VALUE, "N", "latent height [UNet sample_size]"},
    {"--latent-w", VALUE, "N", "latent width [UNet sample_size]"},
    {"--text-token-sequence-length", VALUE, "N", "token length S of encoder_hidden_states [77]"},
    {"--text-encoder-hidden-size", VALUE, "N", "channels D of encoder_hidden_states [cross_attention_dim]"},
    {"--attention-implementation", VALUE, "IMPL", "ORIGINAL, SPLIT_EINSUM or SPLIT_EINSUM_V2 [SPLIT_EINSUM]"},
    {"-o", VALUE, "DIR", "output directory [.]"},
    {"--check-output-correctness", FLAG, NULL, "run each package and a float32 reference in the interpreter; fail below 35 dB PSNR"},
    {"--chunk-unet", FLAG, NULL, "also write the UNet (and refiner) as <name>_chunk1/_chunk2 packages of about half the weights each"},
    {"--quantize-nbits", VALUE, "N", "palettize text encoder, UNet and ControlNet weights to 1, 2, 4, 6 or 8 bits (k-means)"},
    {"--unet-support-controlnet", FLAG, NULL, "UNet with ControlNet residual inputs, written as control-unet"},
    {"--unet-batch-one", FLAG, NULL, "UNet batch 1 instead of 2"},
    {"--include-t5", FLAG, NULL, "SD3: bundle the T5 encoder (not supported yet)"},
    {"--bundle-resources-for-swift-cli", FLAG, NULL, "write Resources/ for the Swift CLI (compiles with xcrun coremlcompiler: macOS)"},
    {"--text-encoder-vocabulary-url", VALUE, "URL", "local vocab.json for Resources/ [the model's tokenizer/]"},
    {"--text-encoder-merges-url", VALUE, "URL", "local merges.txt for Resources/ [the model's tokenizer/]"},
    {"--text-encoder-t5-url", VALUE, "URL", "SD3 T5 encoder for Resources/"},
    {"--text-encoder-t5-config-url", VALUE, "URL", "SD3 T5 tokenizer config"},
    {"--text-encoder-t5-data-url", VALUE, "URL", "SD3 T5 tokenizer data"},
    {"--min-deployment-target", VALUE, "TARGET", "macOS13, macOS14, macOS15, iOS16, iOS17, iOS18 [macOS13]"},
    {"--xl-version", FLAG, NULL, "the model is SDXL"},
    {"--sd3-version", FLAG, NULL, "the model is SD3 (not supported yet)"},
    {"--compute-precision", VALUE, "P", "FLOAT16 or FLOAT32 weights and compute [FLOAT16]"},
    {"--quiet", FLAG, NULL, "print errors and warnings only"},
    {"--help", FLAG, NULL, "show this help and exit"},
    {"--version", FLAG, NULL, "show the version and exit"},
};

static void usage(FILE *f) {
    fprintf(f,
            "sdcoreml converts Stable Diffusion models to Core ML packages, with the options of\n"
            "Apple's python_coreml_stable_diffusion.torch2coreml.\n\n"
            "Usage:\n"
            "  sdcoreml --model-version ID [--convert-text-encoder ...] [-o DIR] [options]\n"
            "  sdcoreml inspect PACKAGE.mlpackage [--json]\n"
            "  sdcoreml run PACKAGE.mlpackage --input NAME=FILE.npy ... -o DIR [--json]\n\n"
            "Options:\n");
    for (size_t i = 0; i < sizeof OPTIONS / sizeof OPTIONS[0]; i++) {
        char left[64];
        snprintf(left, sizeof left, "%s%s%s%s", OPTIONS[i].name, OPTIONS[i].metavar ? " " : "",
                 OPTIONS[i].metavar ? OPTIONS[i].metavar : "", OPTIONS[i].kind == LIST ? " ..." : "");
        fprintf(f, "  %-38s %s\n", left, OPTIONS[i].help);
    }
    fprintf(f,
            "\nOutputs: <DIR>/Stable_Diffusion_version_<ID with / as _>_<component>.mlpackage; an existing\n"
            "package is kept and skipped. Packages are built in a hidden temporary directory and renamed\n"
            "into place when complete.\n\n"
            "Environment: HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME locate the Hugging Face cache for Hub ids.\n\n"
            "Examples:\n"
            "  sdcoreml --convert-text-encoder --model-version examples/tiny-sd -o out\n"
            "  sdcoreml --convert-text-encoder --xl-version --model-version stabilityai/stable-diffusion-xl-base-1.0 -o out\n"
            "  sdcoreml inspect out/Stable_Diffusion_version_examples_tiny-sd_text_encoder.mlpackage\n\n"
            "Exit status: 0 success, 1 error in the input or the conversion, 2 usage error.\n");
}

static int usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "sdcoreml: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry 'sdcoreml --help'.\n");
    return EXIT_USAGE;
}

/* Exact match, else a unique prefix (argparse's allow_abbrev). NULL and *ambiguous when two
   options share the prefix. */
static const cli_opt *find_option(const char *arg, size_t len, int *ambiguous) {
    const cli_opt *found = NULL;
    *ambiguous = 0;
    for (size_t i = 0; i < sizeof OPTIONS / sizeof OPTIONS[0]; i++) {
        if (strlen(OPTIONS[i].name) == len && !strncmp(OPTIONS[i].name, arg, len)) return &OPTIONS[i];
        if (len > 2 && !strncmp(OPTIONS[i].name, arg, len)) {
            if (found) *ambiguous = 1;
            found = &OPTIONS[i];
        }
    }
    return *ambiguous ? NULL : found;
}

/* ---------------------------------------------------------------- option values */

typedef struct cli_state {
    sdc_job job;
    const char *controlnets[64];
    bool quiet, help, version;
} cli_state;

static bool parse_int(const char *s, int lo, int hi, int *out) {
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi) return false;
    *out = (int)v;
    return true;
}

static int set_value(cli_state *st, const char *name, const char *v) {
    sdc_job *j = &st->job;
    if (!strcmp(name, "--model-version")) j->model_version = v;
    else if (!strcmp(name, "--refiner-version")) j->refiner_version = v;
    else if (!strcmp(name, "--custom-vae-version")) j->custom_vae_version = v;
    else if (!strcmp(name, "-o")) j->output_dir = v;
    else if (!strcmp(name, "--min-deployment-target")) j->min_deployment_target = v;
    else if (!strcmp(name, "--text-encoder-vocabulary-url")) j->text_encoder_vocabulary_url = v;
    else if (!strcmp(name, "--text-encoder-merges-url")) j->text_encoder_merges_url = v;
    else if (!strcmp(name, "--text-encoder-t5-url")) j->text_encoder_t5_url = v;
    else if (!strcmp(name, "--text-encoder-t5-config-url")) j->text_encoder_t5_config_url = v;
    else if (!strcmp(name, "--text-encoder-t5-data-url")) j->text_encoder_t5_data_url = v;
    else if (!strcmp(name, "--compute-unit")) {
        if (strcmp(v, "ALL") && strcmp(v, "CPU_AND_GPU") && strcmp(v, "CPU_ONLY") && strcmp(v, "CPU_AND_NE"))
            return usage_error("--compute-unit: invalid choice '%s' (ALL, CPU_AND_GPU, CPU_ONLY, CPU_AND_NE)", v);
        j->compute_unit = v;
    } else if (!strcmp(name, "--attention-implementation")) {
        if (!strcmp(v, "ORIGINAL")) j->attention = SDC_ATTN_ORIGINAL;
        else if (!strcmp(v, "SPLIT_EINSUM")) j->attention = SDC_ATTN_SPLIT_EINSUM;
        else if (!strcmp(v, "SPLIT_EINSUM_V2")) j->attention = SDC_ATTN_SPLIT_EINSUM_V2;
        else return usage_error("--attention-implementation: invalid choice '%s' (ORIGINAL, SPLIT_EINSUM, SPLIT_EINSUM_V2)", v);
    } else if (!strcmp(name, "--compute-precision")) {
        if (!strcmp(v, "FLOAT16")) j->precision = SDC_PRECISION_FLOAT16;
        else if (!strcmp(v, "FLOAT32")) j->precision = SDC_PRECISION_FLOAT32;
        else return usage_error("--compute-precision: invalid choice '%s' (FLOAT16, FLOAT32)", v);
    } else if (!strcmp(name, "--quantize-nbits")) {
        if (!parse_int(v, 1, 8, &j->quantize_nbits) || j->quantize_nbits == 3 || j->quantize_nbits == 5 ||
            j->quantize_nbits == 7)
            return usage_error("--quantize-nbits: invalid choice '%s' (1, 2, 4, 6, 8)", v);
    } else {
        int *target = !strcmp(name, "--latent-h")                     ? &j->latent_h
                      : !strcmp(name, "--latent-w")                   ? &j->latent_w
                      : !strcmp(name, "--text-token-sequence-length") ? &j->text_token_sequence_length
                                                                      : &j->text_encoder_hidden_size;
        if (!parse_int(v, 1, 1 << 20, target)) return usage_error("%s: expected a positive integer", name);
    }
    return 0;
}

static void set_flag(cli_state *st, const char *name) {
    sdc_job *j = &st->job;
    struct {
        const char *name;
        bool *field;
    } flags[] = {
        {"--convert-text-encoder", &j->convert_text_encoder},
        {"--convert-vae-decoder", &j->convert_vae_decoder},
        {"--convert-vae-encoder", &j->convert_vae_encoder},
        {"--convert-unet", &j->convert_unet},
        {"--convert-mmdit", &j->convert_mmdit},
        {"--convert-safety-checker", &j->convert_safety_checker},
        {"--check-output-correctness", &j->check_output_correctness},
        {"--chunk-unet", &j->chunk_unet},
        {"--unet-support-controlnet", &j->unet_support_controlnet},
        {"--unet-batch-one", &j->unet_batch_one},
        {"--include-t5", &j->include_t5},
        {"--bundle-resources-for-swift-cli", &j->bundle_resources_for_swift_cli},
        {"--xl-version", &j->xl_version},
        {"--sd3-version", &j->sd3_version},
        {"--quiet", &st->quiet},
        {"--help", &st->help},
        {"--version", &st->version},
    };
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
        if (!strcmp(flags[i].name, name)) *flags[i].field = true;
}

static int parse_args(cli_state *st, int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (arg[0] != '-' || !arg[1]) return usage_error("unexpected argument '%s'", arg);
        const char *eq = strchr(arg, '=');
        size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
        int ambiguous;
        const cli_opt *o = find_option(arg, len, &ambiguous);
        if (!o) return usage_error(ambiguous ? "ambiguous option '%s'" : "unknown option '%s'", arg);
        if (o->kind == FLAG) {
            if (eq) return usage_error("option '%s' takes no value", o->name);
            set_flag(st, o->name);
        } else if (o->kind == VALUE) {
            const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
            if (!v) return usage_error("option '%s' needs a value", o->name);
            int rc = set_value(st, o->name, v);
            if (rc) return rc;
        } else { /* LIST: --convert-controlnet [ID ...], like argparse's nargs="*" */
            st->job.convert_controlnet = true;
            if (eq) st->controlnets[st->job.n_controlnet++] = eq + 1;
            while (i + 1 < argc && argv[i + 1][0] != '-' && st->job.n_controlnet < 64) {
                st->controlnets[st->job.n_controlnet++] = argv[++i];
            }
            st->job.controlnet = st->controlnets;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- progress and logs */

typedef struct ui {
    bool quiet, tty;
    double last;
    bool line_open;
} ui;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void end_progress_line(ui *u) {
    if (u->line_open) fputs("\r\033[K", stderr);
    u->line_open = false;
}

static void on_log(void *user, sdc_log_level level, const char *line) {
    ui *u = user;
    if (u->quiet && level == SDC_LOG_INFO) return;
    end_progress_line(u);
    fprintf(stderr, "sdcoreml: %s%s\n", level == SDC_LOG_WARNING ? "warning: " : "", line);
}

/* A progress line on terminals only, redrawn at most 10 times a second. */
static void on_progress(void *user, const char *what, uint64_t done, uint64_t total) {
    ui *u = user;
    if (u->quiet || !u->tty) return;
    double t = now();
    if (done < total && t - u->last < 0.1) return;
    u->last = t;
    fprintf(stderr, "\r\033[Ksdcoreml: %s: writing weights %3.0f%% (%.1f / %.1f MB)", what,
            total ? 100.0 * (double)done / (double)total : 100.0, (double)done / 1e6, (double)total / 1e6);
    u->line_open = true;
    if (done >= total) end_progress_line(u);
}

/* ---------------------------------------------------------------- inspect */

static void print_features(const char *title, json_t *arr) {
    printf("%s:\n", title);
    size_t i;
    json_t *f;
    json_array_foreach(arr, i, f) {
        printf("  %-28s %-8s [", json_string_value(json_object_get(f, "name")),
               json_string_value(json_object_get(f, "dtype")));
        size_t k;
        json_t *d;
        json_array_foreach(json_object_get(f, "shape"), k, d) printf("%s%lld", k ? ", " : "", (long long)json_integer_value(d));
        printf("]\n");
    }
}

static void print_inspect_text(json_t *doc) {
    printf("specification version %lld, opset %s\n", (long long)json_integer_value(json_object_get(doc, "specification_version")),
           json_string_value(json_object_get(doc, "opset")));
    print_features("inputs", json_object_get(doc, "inputs"));
    print_features("outputs", json_object_get(doc, "outputs"));
    json_t *md = json_object_get(doc, "metadata");
    printf("metadata:\n");
    const char *key;
    json_t *v;
    json_object_foreach(md, key, v) {
        if (json_is_string(v)) printf("  %s: %s\n", key, json_string_value(v));
    }
    json_object_foreach(json_object_get(md, "user_defined"), key, v) printf("  %s: %s\n", key, json_string_value(v));
    printf("ops: %lld\n", (long long)json_integer_value(json_object_get(doc, "op_count")));
    json_object_foreach(json_object_get(doc, "op_histogram"), key, v)
        printf("  %-24s %lld\n", key, (long long)json_integer_value(v));
    printf("weights: %lld bytes in %lld blobs\n", (long long)json_integer_value(json_object_get(doc, "weight_bytes")),
           (long long)json_integer_value(json_object_get(doc, "weight_blobs")));
}

static int cmd_inspect(int argc, char **argv) {
    const char *pkg = NULL;
    bool as_json = false;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) as_json = true;
        else if (!strcmp(argv[i], "--help")) {
            printf("Usage: sdcoreml inspect PACKAGE.mlpackage [--json]\n"
                   "Prints the inputs, outputs, metadata, op histogram and weight bytes of a package.\n");
            return 0;
        } else if (argv[i][0] == '-') return usage_error("inspect: unknown option '%s'", argv[i]);
        else if (pkg) return usage_error("inspect: unexpected argument '%s'", argv[i]);
        else pkg = argv[i];
    }
    if (!pkg) return usage_error("%s", "inspect: missing PACKAGE");
    char err[1024], *text = NULL;
    if (sdc_inspect_json(pkg, &text, err, sizeof err) != SDC_OK) {
        fprintf(stderr, "sdcoreml: error: %s\n", err);
        return 1;
    }
    if (as_json) {
        printf("%s\n", text);
    } else {
        json_t *doc = json_loads(text, 0, NULL);
        if (doc) print_inspect_text(doc);
        json_decref(doc);
    }
    free(text);
    return 0;
}

/* ---------------------------------------------------------------- main */

/* Ctrl-C or a kill during a conversion: remove the half-written package, then die of the
   same signal so the caller sees it. */
static void on_signal(int sig) {
    sdc_remove_partial_output();
    signal(sig, SIG_DFL);
    raise(sig);
}

int sdc_cli_run(int argc, char **argv); /* cli/run.c */

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "inspect")) return cmd_inspect(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "run")) return sdc_cli_run(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    static cli_state st;
    sdc_job_init(&st.job);
    int rc = parse_args(&st, argc, argv);
    if (rc) return rc;
    if (st.help) {
        usage(stdout);
        return 0;
    }
    if (st.version) {
        printf("sdcoreml %s\nCore ML specification versions written: 7, 8, 9 (opsets CoreML6..CoreML8)\n", sdc_version());
        return 0;
    }
    if (!st.job.model_version) return usage_error("%s", "the following arguments are required: --model-version");
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGHUP, on_signal);
    ui u = {.quiet = st.quiet, .tty = isatty(2) != 0};
    st.job.log = on_log;
    st.job.progress = on_progress;
    st.job.user = &u;
    char err[1024];
    sdc_status s = sdc_convert(&st.job, err, sizeof err);
    end_progress_line(&u);
    if (s == SDC_OK) return 0;
    fprintf(stderr, "sdcoreml: error: %s\n", err);
    return s == SDC_E_ARG ? EXIT_USAGE : 1;
}
