/*
 * main.c — the sdcoreml command: the convert options, inspect, progress, messages and exit
 * codes. cli/ is the only place that prints. Options are spelled as torch2coreml spells them and
 * parsed by options.c like Python's argparse: "--opt value" or "--opt=value", unambiguous
 * prefixes accepted.
 *
 * Exit codes: 0 success, 1 conversion or input error, 2 usage error or unsupported option;
 * inspect --compare as diff: 0 same, 1 different, 2 an unreadable package or a usage error.
 */
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "sdcoreml.h"

#include "options.h"
#include "progress.h"

/* ---------------------------------------------------------------- convert's options */

enum { MAX_CONTROLNETS = 64, MAX_LORAS = 16, MAX_LORA_PATH = 4096 };

typedef struct convert_args {
    sdc_job job;
    sdc_cli_list controlnets;
    const char *controlnet_ids[MAX_CONTROLNETS];
    sdc_lora loras[MAX_LORAS];
    char lora_paths[MAX_LORAS][MAX_LORA_PATH];
    /* index in the option's choices, -1 when not given (the job keeps its default) */
    int compute_unit, attention, precision;
    bool quiet, version;
} convert_args;

static const char *const COMPUTE_UNITS[] = {"ALL", "CPU_AND_GPU", "CPU_ONLY", "CPU_AND_NE", NULL};
static const char *const ATTENTIONS[] = {"ORIGINAL", "SPLIT_EINSUM", "SPLIT_EINSUM_V2", NULL};
static const sdc_attention ATTENTION_VALUES[] = {SDC_ATTN_ORIGINAL, SDC_ATTN_SPLIT_EINSUM, SDC_ATTN_SPLIT_EINSUM_V2};
static const char *const PRECISIONS[] = {"FLOAT16", "FLOAT32", NULL};
static const sdc_precision PRECISION_VALUES[] = {SDC_PRECISION_FLOAT16, SDC_PRECISION_FLOAT32};

/* 1, 2, 4, 6 or 8, the bit widths coremltools palettizes to. */
static int store_quantize_nbits(const sdc_cli_command *cmd, void *state, const char *value) {
    int n;
    if (!sdc_cli_parse_int(value, 1, 8, &n) || n == 3 || n == 5 || n == 7)
        return sdc_cli_usage_error(cmd, "--quantize-nbits: invalid choice '%s' (1, 2, 4, 6, 8)", value);
    ((convert_args *)state)->job.quantize_nbits = n;
    return 0;
}

/* --lora FILE[:SCALE], repeatable: the text after the last ':' is the scale (a finite number),
   1.0 when there is no ':'. */
static int store_lora(const sdc_cli_command *cmd, void *state, const char *value) {
    convert_args *a = state;
    if (a->job.n_loras == MAX_LORAS) return sdc_cli_usage_error(cmd, "--lora: at most %d LoRAs", MAX_LORAS);
    const char *colon = strrchr(value, ':');
    size_t len = colon ? (size_t)(colon - value) : strlen(value);
    float scale = 1.0f;
    if (colon) {
        char *end;
        scale = strtof(colon + 1, &end);
        if (!colon[1] || *end || !isfinite(scale))
            return sdc_cli_usage_error(cmd, "--lora '%s': the scale '%s' is not a number (FILE[:SCALE])", value, colon + 1);
    }
    if (!len || len >= MAX_LORA_PATH) return sdc_cli_usage_error(cmd, "--lora '%s': expected FILE[:SCALE]", value);
    char *path = a->lora_paths[a->job.n_loras];
    memcpy(path, value, len);
    path[len] = '\0';
    a->loras[a->job.n_loras++] = (sdc_lora){.path = path, .scale = scale};
    a->job.loras = a->loras;
    return 0;
}

#define ARG(field) offsetof(convert_args, field)
#define FLAG(name_, field, help_) {.name = name_, .store = SDC_CLI_TRUE, .offset = ARG(field), .help = help_}
#define STRING(name_, field, metavar_, help_) \
    {.name = name_, .store = SDC_CLI_STRING, .offset = ARG(field), .metavar = metavar_, .help = help_}
#define CHOICE(name_, field, metavar_, choices_, help_) \
    {.name = name_, .store = SDC_CLI_CHOICE, .offset = ARG(field), .metavar = metavar_, .choices = choices_, .help = help_}
#define POSITIVE_INT(name_, field, help_)                                                                        \
    {.name = name_, .store = SDC_CLI_INT, .offset = ARG(field), .metavar = "N", .int_min = 1, .int_max = 1 << 20, \
     .help = help_}

/* In the order of torch2coreml's --help, then ours. */
static const sdc_cli_option CONVERT_OPTIONS[] = {
    FLAG("--convert-text-encoder", job.convert_text_encoder, "convert text_encoder (and text_encoder_2 when present)"),
    FLAG("--convert-vae-decoder", job.convert_vae_decoder,
         "convert the VAE decoder (fp32 with --xl-version unless --custom-vae-version)"),
    FLAG("--convert-vae-encoder", job.convert_vae_encoder, "convert the VAE encoder, for image-to-image (fp32 with --xl-version)"),
    FLAG("--convert-unet", job.convert_unet, "convert the UNet (and the refiner with --refiner-version)"),
    FLAG("--convert-mmdit", job.convert_mmdit, "convert the SD3 MMDiT (not supported yet)"),
    FLAG("--convert-safety-checker", job.convert_safety_checker,
         "convert the safety checker (skipped with a warning if the pipeline has none)"),
    {.name = "--convert-controlnet", .store = SDC_CLI_LIST, .offset = ARG(controlnets), .metavar = "ID",
     .help = "convert these ControlNets (SD 1.x/2.x) to ControlNet_<ID>.mlpackage"},
    STRING("--model-version", job.model_version, "ID",
           "diffusers folder, Hub id org/name[@rev] (downloaded into the HF cache if missing), or a single "
           "file (.safetensors, .ckpt, .pt, .pth: a whole LDM/SGM or diffusers-named checkpoint, or a lone UNet "
           "or VAE) (required)"),
    STRING("--refiner-version", job.refiner_version, "ID", "SDXL refiner, converted with --convert-unet as <model>_refiner"),
    STRING("--custom-vae-version", job.custom_vae_version, "ID",
           "replacement VAE: folder or Hub id (vae/ or config.json at its root), or a single VAE file"),
    STRING("--config", job.config, "DIR",
           "diffusers folder or Hub id whose configs describe a single-file --model-version [inferred from its shapes]"),
    {.name = "--lora", .store = SDC_CLI_CALL, .metavar = "FILE[:SCALE]", .call = store_lora,
     .help = "merge a kohya or diffusers/PEFT LoRA (.safetensors, .ckpt/.pt/.bin) into UNet and text encoders\n"
             "[SCALE 1.0]; repeatable"},
    CHOICE("--compute-unit", compute_unit, "UNIT", COMPUTE_UNITS,
           "ALL, CPU_AND_GPU, CPU_ONLY or CPU_AND_NE; load-time only [ALL]"),
    POSITIVE_INT("--latent-h", job.latent_h, "latent height [UNet sample_size]"),
    POSITIVE_INT("--latent-w", job.latent_w, "latent width [UNet sample_size]"),
    POSITIVE_INT("--text-token-sequence-length", job.text_token_sequence_length, "token length S of encoder_hidden_states [77]"),
    POSITIVE_INT("--text-encoder-hidden-size", job.text_encoder_hidden_size,
                 "channels D of encoder_hidden_states [cross_attention_dim]"),
    CHOICE("--attention-implementation", attention, "IMPL", ATTENTIONS,
           "ORIGINAL, SPLIT_EINSUM or SPLIT_EINSUM_V2 [SPLIT_EINSUM]"),
    STRING("-o", job.output_dir, "DIR", "output directory [.]"),
    FLAG("--check-output-correctness", job.check_output_correctness,
         "run each package and a float32 reference in the interpreter; fail below 35 dB PSNR or on NaN/inf"),
    FLAG("--chunk-unet", job.chunk_unet,
         "also write the UNet (and refiner) as <name>_chunk1/_chunk2 packages of about half the weights each"),
    {.name = "--quantize-nbits", .store = SDC_CLI_CALL, .metavar = "N", .call = store_quantize_nbits,
     .help = "palettize text encoder, UNet and ControlNet weights to 1, 2, 4, 6 or 8 bits (k-means)"},
    FLAG("--unet-support-controlnet", job.unet_support_controlnet,
         "UNet with ControlNet residual inputs, written as control-unet"),
    FLAG("--unet-batch-one", job.unet_batch_one, "UNet batch 1 instead of 2"),
    FLAG("--include-t5", job.include_t5, "SD3: bundle the T5 encoder (not supported yet)"),
    FLAG("--bundle-resources-for-swift-cli", job.bundle_resources_for_swift_cli,
         "write Resources/ for the Swift CLI (compiles with xcrun coremlcompiler: macOS)"),
    STRING("--text-encoder-vocabulary-url", job.text_encoder_vocabulary_url, "URL",
           "vocab.json for Resources/: a file or an http(s) URL [the model's tokenizer/]"),
    STRING("--text-encoder-merges-url", job.text_encoder_merges_url, "URL",
           "merges.txt for Resources/: a file or an http(s) URL [the model's tokenizer/]"),
    STRING("--text-encoder-t5-url", job.text_encoder_t5_url, "URL", "SD3 T5 encoder for Resources/"),
    STRING("--text-encoder-t5-config-url", job.text_encoder_t5_config_url, "URL", "SD3 T5 tokenizer config"),
    STRING("--text-encoder-t5-data-url", job.text_encoder_t5_data_url, "URL", "SD3 T5 tokenizer data"),
    STRING("--min-deployment-target", job.min_deployment_target, "TARGET",
           "macOS13, macOS14, macOS15, iOS16, iOS17, iOS18 [macOS13]"),
    FLAG("--xl-version", job.xl_version, "the model is SDXL"),
    FLAG("--sd3-version", job.sd3_version, "the model is SD3 (not supported yet)"),
    CHOICE("--compute-precision", precision, "P", PRECISIONS, "FLOAT16 or FLOAT32 weights and compute [FLOAT16]"),
    FLAG("--quiet", quiet, "print errors and warnings only"),
    FLAG("--version", version, "show the version and exit"),
};

#undef ARG
#undef FLAG
#undef STRING
#undef CHOICE
#undef POSITIVE_INT

static const sdc_cli_command CONVERT = {
    .name = NULL,
    .options = CONVERT_OPTIONS,
    .n_options = sizeof CONVERT_OPTIONS / sizeof CONVERT_OPTIONS[0],
    .allow_abbrev = true, /* torch2coreml's argparse accepts unique prefixes */
    .help_head =
        "sdcoreml converts Stable Diffusion models to Core ML packages, with the options of\n"
        "Apple's python_coreml_stable_diffusion.torch2coreml.\n\n"
        "Usage:\n"
        "  sdcoreml --model-version ID [--convert-text-encoder ...] [-o DIR] [options]\n"
        "  sdcoreml inspect PACKAGE.mlpackage [--json]\n"
        "  sdcoreml inspect --compare A.mlpackage B.mlpackage [--json]\n"
        "  sdcoreml run PACKAGE.mlpackage --input NAME=FILE.npy ... -o DIR [--json] [--profile]\n"
        "  sdcoreml download ID [--revision REV] [--include-weights-for COMPONENTS]\n"
        "  sdcoreml pipeline --prompt TEXT -i DIR -o DIR [--seed N] [--model-version ID]\n"
        "  sdcoreml [inspect | run | download | pipeline] -h | --help\n\n"
        "Options:\n",
    .help_tail =
        "\nOutputs: <DIR>/Stable_Diffusion_version_<ID with / as _>_<component>.mlpackage; an existing\n"
        "package is kept and skipped. Packages are built in a hidden temporary directory and renamed\n"
        "into place when complete.\n\n"
        "Environment: HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME locate the Hugging Face cache for Hub ids;\n"
        "a Hub id missing from it is downloaded from HF_ENDPOINT [https://huggingface.co] with the token\n"
        "HF_TOKEN (else $HF_HOME/token), unless HF_HUB_OFFLINE=1.\n\n"
        "Examples:\n"
        "  sdcoreml --convert-text-encoder --model-version examples/tiny-sd -o out\n"
        "  sdcoreml --convert-text-encoder --xl-version --model-version stabilityai/stable-diffusion-xl-base-1.0 -o out\n"
        "  sdcoreml inspect out/Stable_Diffusion_version_examples_tiny-sd_text_encoder.mlpackage\n\n"
        "Exit status: 0 success, 1 error in the input or the conversion, 2 usage error.\n",
    .help_column = 38,
};

static void init_convert_args(convert_args *a) {
    memset(a, 0, sizeof *a);
    sdc_job_init(&a->job);
    a->controlnets = (sdc_cli_list){.items = a->controlnet_ids, .capacity = MAX_CONTROLNETS};
    a->compute_unit = a->attention = a->precision = -1;
}

/* What the parser stored beside the job goes into the job. */
static void finish_job(convert_args *a) {
    sdc_job *j = &a->job;
    if (a->compute_unit >= 0) j->compute_unit = COMPUTE_UNITS[a->compute_unit];
    if (a->attention >= 0) j->attention = ATTENTION_VALUES[a->attention];
    if (a->precision >= 0) j->precision = PRECISION_VALUES[a->precision];
    if (a->controlnets.given) {
        j->convert_controlnet = true;
        j->controlnet = a->controlnets.items;
        j->n_controlnet = a->controlnets.n;
    }
}

/* ---------------------------------------------------------------- inspect */

/* A feature's shape as [2, 4, 64, 64]: a dim the package leaves open (negative) as ?, and an
   empty shape, which Core ML reads as "not stated" (coremltools writes one for an output
   sized at run time), as [?]. Returns the characters written, as snprintf. */
static size_t shape_text(json_t *shape, char *buf, size_t size) {
    size_t n = (size_t)snprintf(buf, size, "[%s", json_array_size(shape) ? "" : "?");
    size_t i;
    json_t *d;
    json_array_foreach(shape, i, d) {
        long long v = (long long)json_integer_value(d);
        if (n < size) n += (size_t)(v < 0 ? snprintf(buf + n, size - n, "%s?", i ? ", " : "")
                                          : snprintf(buf + n, size - n, "%s%lld", i ? ", " : "", v));
    }
    if (n < size) n += (size_t)snprintf(buf + n, size - n, "]");
    return n;
}

static void print_features(const char *title, json_t *arr) {
    printf("%s:\n", title);
    size_t i;
    json_t *f;
    json_array_foreach(arr, i, f) {
        char shape[256];
        shape_text(json_object_get(f, "shape"), shape, sizeof shape);
        printf("  %-28s %-8s %s\n", json_string_value(json_object_get(f, "name")),
               json_string_value(json_object_get(f, "dtype")), shape);
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

/* --compare: both packages side by side. Columns: the field or op type, then A's and B's values. */
enum { FIELD_WIDTH = 36, VALUE_WIDTH = 34 };

/* A contract value as text: strings bare (control characters as spaces), shapes as
   shape_text writes them, a side that lacks the field as "-". */
static void value_text(json_t *v, char *buf, size_t size) {
    if (json_is_string(v)) {
        snprintf(buf, size, "%s", json_string_value(v));
    } else if (json_is_integer(v)) {
        snprintf(buf, size, "%lld", (long long)json_integer_value(v));
    } else if (json_is_array(v)) {
        shape_text(v, buf, size);
    } else {
        snprintf(buf, size, "-");
    }
    for (char *p = buf; *p; p++)
        if ((unsigned char)*p < 0x20) *p = ' ';
}

static bool utf8_continuation(char c) { return ((unsigned char)c & 0xc0) == 0x80; }

/* The column's worth of `text` from byte `from` on, "..." where it is cut (never inside a
   UTF-8 character). */
static void fit(const char *text, size_t from, char *out, size_t size) {
    size_t len = strlen(text);
    while (from < len && utf8_continuation(text[from])) from++;
    const char *head = from ? "..." : "";
    size_t room = VALUE_WIDTH - strlen(head), take = len - from;
    if (take > room) {
        take = room - 3;
        while (take && utf8_continuation(text[from + take])) take--;
    }
    snprintf(out, size, "%s%.*s%s", head, (int)take, text + from, from + take < len ? "..." : "");
}

/* Two long texts that differ past the column are shown from a little before where they part. */
static size_t where_to_start(const char *a, const char *b) {
    size_t common = 0;
    while (a[common] && a[common] == b[common]) common++;
    return common + 6 > VALUE_WIDTH && (a[common] || b[common]) ? common - 12 : 0;
}

static char mark(bool differs) { return differs ? '*' : ' '; }

static void print_contract_rows(json_t *rows) {
    printf("  %-*s %-*s %s\n", FIELD_WIDTH, "contract", VALUE_WIDTH, "A", "B");
    size_t i;
    json_t *r;
    json_array_foreach(rows, i, r) {
        char full_a[1024], full_b[1024], a[256], b[256];
        value_text(json_object_get(r, "a"), full_a, sizeof full_a);
        value_text(json_object_get(r, "b"), full_b, sizeof full_b);
        size_t from = where_to_start(full_a, full_b);
        fit(full_a, from, a, sizeof a);
        fit(full_b, from, b, sizeof b);
        printf("%c %-*s %-*s %s\n", mark(!json_is_true(json_object_get(r, "same"))), FIELD_WIDTH,
               json_string_value(json_object_get(r, "field")), VALUE_WIDTH, a, b);
    }
}

static void print_count_row(const char *name, json_t *c) {
    long long a = json_integer_value(json_object_get(c, "a")), b = json_integer_value(json_object_get(c, "b"));
    printf("%c %-*s %10lld %10lld", mark(a != b), FIELD_WIDTH, name, a, b);
    if (a != b) printf(" %+10lld", b - a);
    printf("\n");
}

static void print_compare_text(json_t *doc) {
    printf("A: %s\nB: %s\n\n", json_string_value(json_object_get(json_object_get(doc, "a"), "package")),
           json_string_value(json_object_get(json_object_get(doc, "b"), "package")));
    print_contract_rows(json_object_get(doc, "contract"));
    printf("\n  %-*s %10s %10s %10s\n", FIELD_WIDTH, "op histogram (nested blocks too)", "A", "B", "B-A");
    const char *op;
    json_t *c;
    json_object_foreach(json_object_get(doc, "op_histogram"), op, c) print_count_row(op, c);
    print_count_row("all ops", json_object_get(doc, "op_count"));
    size_t fields = json_array_size(json_object_get(doc, "contract_differences"));
    size_t ops = json_array_size(json_object_get(doc, "op_types_differing"));
    if (fields || ops)
        printf("\ndifferent (marked *): %zu contract field%s, %zu op type%s\n", fields, fields == 1 ? "" : "s", ops,
               ops == 1 ? "" : "s");
    else
        printf("\nsame contract and op histogram\n");
}

typedef struct inspect_args {
    const char *package, *other; /* the positional; --compare's value */
    bool other_first;            /* --compare came before the positional: its value is package A */
    bool json;
} inspect_args;

/* --compare OTHER: whichever way round it is written, A is the package named first. */
static int store_compare(const sdc_cli_command *cmd, void *state, const char *value) {
    inspect_args *a = state;
    if (a->other) return sdc_cli_usage_error(cmd, "--compare is given twice");
    a->other = value;
    a->other_first = !a->package;
    return 0;
}

static const sdc_cli_option INSPECT_OPTIONS[] = {
    {.name = "--json", .store = SDC_CLI_TRUE, .offset = offsetof(inspect_args, json),
     .help = "print the JSON document instead of text"},
    {.name = "--compare", .store = SDC_CLI_CALL, .call = store_compare, .metavar = "PACKAGE",
     .help = "compare two packages side by side (inspect --compare A B, or inspect A --compare B):\n"
             "contracts and op histograms, differences marked *; exit 0 same, 1 different"},
};

static const sdc_cli_command INSPECT = {
    .name = "inspect",
    .options = INSPECT_OPTIONS,
    .n_options = sizeof INSPECT_OPTIONS / sizeof INSPECT_OPTIONS[0],
    .positional = "PACKAGE",
    .positional_offset = offsetof(inspect_args, package),
    .help_head = "Usage: sdcoreml inspect PACKAGE.mlpackage [--json]\n"
                 "       sdcoreml inspect --compare A.mlpackage B.mlpackage [--json]\n"
                 "Prints the inputs, outputs, metadata, op histogram (ops in nested blocks included) and\n"
                 "weight bytes of a package, or of two side by side.\n\n",
    .help_tail = "\nExit status: 0 success; 1 an unreadable package. With --compare, as diff: 0 same contract\n"
                 "and op histogram, 1 different, 2 an unreadable package or a usage error.\n",
    .help_column = 19,
};

/* Exit status as diff's: 0 same, 1 different, 2 trouble (here, a package that cannot be read). */
enum { COMPARE_SAME = 0, COMPARE_DIFFERENT = 1, COMPARE_TROUBLE = 2 };

static int compare_packages(const char *a, const char *b, bool as_json) {
    char err[1024], *text = NULL;
    bool differ = false;
    if (sdc_inspect_compare_json(a, b, &text, &differ, err, sizeof err) != SDC_OK) {
        fprintf(stderr, "sdcoreml: error: %s\n", err);
        return COMPARE_TROUBLE;
    }
    if (as_json) {
        printf("%s\n", text);
    } else {
        json_t *doc = json_loads(text, 0, NULL);
        if (doc) print_compare_text(doc);
        json_decref(doc);
    }
    free(text);
    return differ ? COMPARE_DIFFERENT : COMPARE_SAME;
}

/* argv[0] is the program, argv[1] "inspect" */
static int cmd_inspect(int argc, char **argv) {
    inspect_args a = {0};
    int rc = sdc_cli_parse(&INSPECT, argc - 2, argv + 2, &a);
    if (rc != SDC_CLI_CONTINUE) return rc;
    if (a.other) return a.other_first ? compare_packages(a.other, a.package, a.json) : compare_packages(a.package, a.other, a.json);
    const char *pkg = a.package;
    bool as_json = a.json;
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

int sdc_cli_run(int argc, char **argv);      /* cli/run.c */
int sdc_cli_download(int argc, char **argv); /* cli/download.c */
int sdc_cli_pipeline(int argc, char **argv); /* cli/pipeline.c */

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "inspect")) return cmd_inspect(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "run")) return sdc_cli_run(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "download")) return sdc_cli_download(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "pipeline")) return sdc_cli_pipeline(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "help")) {
        sdc_cli_print_help(&CONVERT, stdout);
        return 0;
    }
    convert_args a;
    init_convert_args(&a);
    int rc = sdc_cli_parse(&CONVERT, argc - 1, argv + 1, &a);
    if (rc != SDC_CLI_CONTINUE) return rc;
    finish_job(&a);
    if (a.version) {
        printf("sdcoreml %s\nCore ML specification versions written: 7, 8, 9 (opsets CoreML6..CoreML8)\n", sdc_version());
        return 0;
    }
    if (!a.job.model_version) return sdc_cli_usage_error(&CONVERT, "the following arguments are required: --model-version");
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGHUP, on_signal);
    sdc_cli_ui u;
    sdc_cli_ui_init(&u, a.quiet);
    a.job.log = sdc_cli_on_log;
    a.job.progress = sdc_cli_on_progress;
    a.job.user = &u;
    char err[1024];
    sdc_status s = sdc_convert(&a.job, err, sizeof err);
    sdc_cli_end_progress(&u);
    if (s == SDC_OK) return 0;
    fprintf(stderr, "sdcoreml: error: %s\n", err);
    return s == SDC_E_ARG ? SDC_CLI_EXIT_USAGE : 1;
}
