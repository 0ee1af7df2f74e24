/*
 * pipeline.c — `sdcoreml pipeline --prompt TEXT -i PACKAGES -o DIR [options]`: the anchor's
 * python -m python_coreml_stable_diffusion.pipeline, with its options and defaults, on the
 * interpreter; prints the step progress on a terminal and, with --json, what was done.
 *
 * Exit codes as the rest of the CLI: 0 success, 1 error in the inputs or the packages, 2 usage.
 */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "sdcoreml.h"

#include "options.h"
#include "progress.h"

int sdc_cli_pipeline(int argc, char **argv);

enum { MAX_CONTROLNETS = 16 };

typedef struct pipeline_args {
    sdc_generate_job job;
    sdc_cli_list controlnets, controlnet_inputs;
    const char *controlnet_ids[MAX_CONTROLNETS], *controlnet_files[MAX_CONTROLNETS];
    int compute_unit, scheduler; /* index in the choices, -1 when not given */
    bool json, quiet;
} pipeline_args;

/* The anchor's choices: coremltools' ComputeUnit names, diffusers' scheduler classes. */
static const char *const COMPUTE_UNITS[] = {"ALL", "CPU_AND_GPU", "CPU_ONLY", "CPU_AND_NE", NULL};
static const char *const SCHEDULERS[] = {"DDIM", "DPMSolverMultistep", "EulerAncestralDiscrete", "EulerDiscrete",
                                         "LMSDiscrete", "PNDM", NULL};

/* argparse's int for --seed, limited to what np.random.seed takes: 0 .. 2^32 - 1. */
static int store_seed(const sdc_cli_command *cmd, void *state, const char *value) {
    char *end;
    errno = 0;
    while (*value == ' ') value++;
    unsigned long long v = *value == '-' ? ~0ULL : strtoull(value, &end, 10);
    if (*value == '-' || errno || end == value || *end || v > 0xffffffffULL)
        return sdc_cli_usage_error(cmd, "--seed: '%s' is not an integer from 0 to 4294967295", value);
    ((pipeline_args *)state)->job.seed = (uint32_t)v;
    return 0;
}

/* argparse's float: a whole, finite number. */
static bool parse_double(const char *s, double *out) {
    char *end;
    *out = strtod(s, &end);
    return end != s && !*end && isfinite(*out);
}

static int store_guidance(const sdc_cli_command *cmd, void *state, const char *value) {
    if (!parse_double(value, &((pipeline_args *)state)->job.guidance_scale))
        return sdc_cli_usage_error(cmd, "--guidance-scale: '%s' is not a number", value);
    return 0;
}

static int store_strength(const sdc_cli_command *cmd, void *state, const char *value) {
    double *v = &((pipeline_args *)state)->job.strength;
    if (!parse_double(value, v) || *v < 0 || *v > 1)
        return sdc_cli_usage_error(cmd, "--strength: '%s' is not a number from 0 to 1", value);
    return 0;
}

#define ARG(field) offsetof(pipeline_args, field)
#define STRING(name_, field, metavar_, help_) \
    {.name = name_, .store = SDC_CLI_STRING, .offset = ARG(field), .metavar = metavar_, .help = help_}
#define CALL(name_, fn, metavar_, help_) {.name = name_, .store = SDC_CLI_CALL, .call = fn, .metavar = metavar_, .help = help_}

/* In the order of the anchor's --help, then ours. */
static const sdc_cli_option PIPELINE_OPTIONS[] = {
    STRING("--prompt", job.prompt, "TEXT", "the text prompt (required)"),
    STRING("-i", job.packages_dir, "DIR", "the packages: -o of a conversion (required)"),
    STRING("-o", job.output_dir, "DIR", "output folder: the image goes to DIR/<prompt>/randomSeed_....png\n(required)"),
    {.name = "--seed", .alias = "-s", .store = SDC_CLI_CALL, .call = store_seed, .metavar = "N",
     .help = "NumPy RandomState seed of the initial latents, 0 to\n"
             "4294967295 [93]"},
    STRING("--model-version", job.model_version, "ID",
           "the model converted (folder, or Hub id in the HF cache; for\n"
           "a single file, its --config): its scheduler config,\n"
           "tokenizers, package names\n"
           "[CompVis/stable-diffusion-v1-4]"),
    {.name = "--compute-unit", .store = SDC_CLI_CHOICE, .offset = ARG(compute_unit), .metavar = "UNIT",
     .choices = COMPUTE_UNITS, .help = "ALL, CPU_AND_GPU, CPU_ONLY or CPU_AND_NE: accepted, no\n"
                                       "effect (the CPU interpreter runs everything); named in\n"
                                       "the file name [ALL]"},
    {.name = "--scheduler", .store = SDC_CLI_CHOICE, .offset = ARG(scheduler), .metavar = "NAME", .choices = SCHEDULERS,
     .help = "DDIM, DPMSolverMultistep, EulerAncestralDiscrete,\n"
             "EulerDiscrete, LMSDiscrete or PNDM, configured from the\n"
             "model's scheduler config [the model's own]"},
    {.name = "--num-inference-steps", .store = SDC_CLI_INT, .offset = ARG(job.num_inference_steps), .metavar = "N",
     .int_min = 1, .int_max = 1000, .help = "denoising steps [50]; PNDM runs N+1, as diffusers does"},
    CALL("--guidance-scale", store_guidance, "G", "classifier-free guidance; 1 or less turns it off [7.5]"),
    {.name = "--controlnet", .store = SDC_CLI_LIST, .offset = ARG(controlnets), .metavar = "ID",
     .help = "use ControlNet_<ID>.mlpackage from -i with the control-unet package"},
    {.name = "--controlnet-inputs", .store = SDC_CLI_LIST, .offset = ARG(controlnet_inputs), .metavar = "PNG",
     .help = "one image per --controlnet, in the same order, of the output's size"},
    STRING("--negative-prompt", job.negative_prompt, "TEXT", "the negative prompt [\"\"; zeros where an SDXL config asks]"),
    {.name = "--unet-batch-one", .store = SDC_CLI_TRUE, .offset = ARG(job.unet_batch_one),
     .help = "the UNet was converted with --unet-batch-one: two calls per step"},
    {.name = "--disable-safety", .store = SDC_CLI_TRUE, .offset = ARG(job.disable_safety),
     .help = "do not run the safety checker (the Swift CLI's option)"},
    STRING("--image", job.image, "PNG", "image to image: start from this image of the output's\n"
           "size (needs the vae_encoder package)"),
    CALL("--strength", store_strength, "S", "image to image: how much of the schedule runs, 0 to 1 [0.5]"),
    {.name = "--json", .store = SDC_CLI_TRUE, .offset = ARG(json),
     .help = "print what was done as JSON: image path, size, scheduler,\n"
             "steps (UNet steps run), timings, NSFW flag"},
    {.name = "--threads", .store = SDC_CLI_INT, .offset = ARG(job.n_threads), .metavar = "N", .int_min = 1,
     .int_max = 1024, .help = "interpreter threads [one per CPU]"},
    STRING("--save-float-npy", job.float_image_npy, "FILE",
           "debugging: also save the float image (1, H, W, 3) in\n"
           "[0, 1] before its 8-bit rounding"),
    {.name = "--quiet", .store = SDC_CLI_TRUE, .offset = ARG(quiet), .help = "print errors and warnings only"},
};

#undef ARG
#undef STRING
#undef CALL

static const sdc_cli_command PIPELINE = {
    .name = "pipeline",
    .options = PIPELINE_OPTIONS,
    .n_options = sizeof PIPELINE_OPTIONS / sizeof PIPELINE_OPTIONS[0],
    .allow_abbrev = true, /* the anchor's argparse accepts unique prefixes */
    .help_head =
        "Usage: sdcoreml pipeline --prompt TEXT -i PACKAGES -o DIR [--seed N] [--model-version ID] [options]\n\n"
        "Generates an image from converted packages on the CPU, as Apple's\n"
        "python -m python_coreml_stable_diffusion.pipeline does on a Mac: text encoder(s), UNet (or its\n"
        "chunks, or control-unet with ControlNets; an SDXL refiner package from 0.8 of the steps on), VAE\n"
        "decoder and, when the model has one, the safety checker, each run by the interpreter at the\n"
        "precision it was converted with.\n\n",
    .help_tail =
        "\nThe image: DIR/<prompt, '/' and ' ' as '_'>/randomSeed_<N>_computeUnit_<UNIT>_modelVersion_<ID, '/'\n"
        "as '_'>[_customScheduler_<NAME>_numInferenceSteps<N>].png, the anchor's name (a prompt of . or ..\n"
        "makes the folder _ or __, inside DIR). SDXL latents are decoded with 1/0.18215 as the anchor's\n"
        "Python pipeline does (not SDXL's 0.13025), and an --image is encoded with 0.18215 to match.\n",
    .help_column = 30,
};

/* ---------------------------------------------------------------- progress */

typedef struct step_ui {
    sdc_cli_ui ui;
    double started;
} step_ui;

/* "step 12/50, 1.23 s/step, ETA 0:47" on a terminal; nothing otherwise. */
static void on_step(void *user, const char *what, uint64_t done, uint64_t total) {
    step_ui *s = user;
    if (s->ui.quiet || !s->ui.tty) return;
    double t = sdc_cli_now();
    if (done == 0) {
        s->started = t;
        return;
    }
    double per = (t - s->started) / (double)done;
    long left = (long)(per * (double)(total - done) + 0.5);
    fprintf(stderr, "\r\033[Ksdcoreml: %s step %llu/%llu, %.2f s/step, ETA %ld:%02ld", what, (unsigned long long)done,
            (unsigned long long)total, per, left / 60, left % 60);
    s->ui.line_open = true;
    if (done >= total) sdc_cli_end_progress(&s->ui);
}

static void print_json(const pipeline_args *a, const sdc_generate_result *r) {
    json_t *doc = json_pack("{s:s, s:i, s:i, s:s, s:i, s:I, s:f}", "image", r->image_path, "width", r->width, "height",
                            r->height, "scheduler", r->scheduler, "steps", r->steps, "seed", (json_int_t)a->job.seed,
                            "guidance_scale", a->job.guidance_scale);
    json_object_set_new(doc, "nsfw", r->safety_checked ? json_boolean(r->nsfw) : json_null());
    json_object_set_new(doc, "safety_checked", json_boolean(r->safety_checked));
    json_t *secs = json_pack("{s:f, s:f, s:f, s:f, s:f, s:f}", "load", r->seconds_load, "text", r->seconds_text, "denoise",
                             r->seconds_denoise, "decode", r->seconds_decode, "safety", r->seconds_safety, "total",
                             r->seconds_total);
    json_object_set_new(doc, "seconds", secs);
    json_object_set_new(doc, "seconds_per_step", json_real(r->steps ? r->seconds_denoise / r->steps : 0.0));
    char *text = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (text) printf("%s\n", text);
    free(text);
    json_decref(doc);
}

/* argv[0] is the program, argv[1] "pipeline" */
int sdc_cli_pipeline(int argc, char **argv) {
    pipeline_args a;
    memset(&a, 0, sizeof a);
    sdc_generate_job_init(&a.job);
    a.controlnets = (sdc_cli_list){.items = a.controlnet_ids, .capacity = MAX_CONTROLNETS};
    a.controlnet_inputs = (sdc_cli_list){.items = a.controlnet_files, .capacity = MAX_CONTROLNETS};
    a.compute_unit = a.scheduler = -1;
    int rc = sdc_cli_parse(&PIPELINE, argc - 2, argv + 2, &a);
    if (rc != SDC_CLI_CONTINUE) return rc;
    if (!a.job.prompt) return sdc_cli_usage_error(&PIPELINE, "the following arguments are required: --prompt");
    if (!a.job.packages_dir) return sdc_cli_usage_error(&PIPELINE, "the following arguments are required: -i");
    if (!a.job.output_dir) return sdc_cli_usage_error(&PIPELINE, "the following arguments are required: -o");
    if (a.controlnets.n != a.controlnet_inputs.n)
        return sdc_cli_usage_error(&PIPELINE, "--controlnet-inputs: %d images for %d ControlNets", a.controlnet_inputs.n,
                                   a.controlnets.n);
    if (a.compute_unit >= 0) a.job.compute_unit = COMPUTE_UNITS[a.compute_unit];
    if (a.scheduler >= 0) a.job.scheduler = SCHEDULERS[a.scheduler];
    a.job.controlnet = a.controlnet_ids;
    a.job.n_controlnet = a.controlnets.n;
    a.job.controlnet_inputs = a.controlnet_files;
    a.job.n_controlnet_inputs = a.controlnet_inputs.n;

    step_ui u = {0};
    sdc_cli_ui_init(&u.ui, a.quiet);
    a.job.log = sdc_cli_on_log;
    a.job.progress = on_step;
    a.job.user = &u; /* the sdc_cli_ui is its first member, as sdc_cli_on_log expects */
    sdc_generate_result r;
    char err[1024];
    sdc_status s = sdc_generate(&a.job, &r, err, sizeof err);
    sdc_cli_end_progress(&u.ui);
    if (s != SDC_OK) {
        fprintf(stderr, "sdcoreml pipeline: error: %s\n", err);
        return s == SDC_E_ARG ? SDC_CLI_EXIT_USAGE : 1;
    }
    if (a.json)
        print_json(&a, &r);
    else if (!a.quiet)
        fprintf(stderr, "sdcoreml: %d steps in %.1f s (%.2f s/step); wrote %s\n", r.steps, r.seconds_denoise,
                r.steps ? r.seconds_denoise / r.steps : 0.0, r.image_path);
    return 0;
}
