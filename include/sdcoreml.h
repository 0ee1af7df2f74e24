/*
 * sdcoreml.h — the whole public API of libsdcoreml.
 *
 * libsdcoreml turns Stable Diffusion weights (a diffusers folder, or a Hugging Face cache
 * entry) into Core ML ML Program packages (.mlpackage) with the file names and the model
 * inputs and outputs of Apple's ml-stable-diffusion converter, so the Swift package and the
 * Python pipeline take them unchanged.
 *
 * Contract, as in SQLite and zstd:
 *   - the library never prints and never exits; every call returns an sdc_status and, on
 *     failure, writes a one-line message naming the file (and tensor or field) at fault into
 *     the caller's buffer;
 *   - logging and progress leave the library only through the callbacks in sdc_job;
 *   - outputs are built in a temporary directory beside the target and renamed into place,
 *     so a failed run leaves no partial package;
 *   - what is not declared in this header is not API.
 */
#ifndef SDCOREML_H
#define SDCOREML_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SDC_VERSION_MAJOR 0
#define SDC_VERSION_MINOR 1
#define SDC_VERSION_PATCH 0

/* Status codes. Numbers are stable: new codes are appended, none is reused. */
typedef enum sdc_status {
    SDC_OK = 0,
    SDC_E_IO = 1,          /* a file could not be opened, read, written or renamed */
    SDC_E_FORMAT = 2,      /* a file's contents are malformed (bad JSON, bad header, ...) */
    SDC_E_NOMEM = 3,       /* an allocation failed */
    SDC_E_UNSUPPORTED = 4, /* valid input that this version cannot handle yet */
    SDC_E_NOTFOUND = 5,    /* a model, component, file or tensor does not exist */
    SDC_E_ARG = 6,         /* invalid option or argument */
    SDC_E_CHECK = 7,       /* a correctness check failed */
    SDC_E_INTERNAL = 8,    /* a bug in sdcoreml */
} sdc_status;

const char *sdc_status_str(sdc_status s);
const char *sdc_version(void); /* "0.1.0" */

typedef enum sdc_attention {
    SDC_ATTN_ORIGINAL = 0,
    SDC_ATTN_SPLIT_EINSUM = 1, /* the anchor's default */
    SDC_ATTN_SPLIT_EINSUM_V2 = 2,
} sdc_attention;

typedef enum sdc_precision {
    SDC_PRECISION_FLOAT16 = 0, /* the anchor's default: fp16 weights and compute */
    SDC_PRECISION_FLOAT32 = 1,
} sdc_precision;

typedef enum sdc_log_level { SDC_LOG_INFO = 0, SDC_LOG_NOTICE = 1, SDC_LOG_WARNING = 2 } sdc_log_level;

/* Called with one line of text, without a trailing newline. */
typedef void (*sdc_log_fn)(void *user, sdc_log_level level, const char *line);
/* Progress of one long task: `done` of `total` units (bytes) of the task named `what`. A
   download from the Hub reports as what = "download <org/name>/<file>" (done counts bytes
   already in a resumed file too). */
typedef void (*sdc_progress_fn)(void *user, const char *what, uint64_t done, uint64_t total);

/* A LoRA merged into the UNet and text-encoder weights: W + scale·(alpha/rank)·up·down. */
typedef struct sdc_lora {
    const char *path; /* a kohya or diffusers/PEFT file: .safetensors, or .ckpt/.pt/.pth/.bin */
    float scale;      /* --lora FILE:SCALE (1.0 when not given) */
} sdc_lora;

/*
 * One conversion run: the options of torch2coreml with the same meaning. Fill it with
 * sdc_job_init() and change what you need. Strings are borrowed for the duration of the call.
 */
typedef struct sdc_job {
    /* --model-version: diffusers folder, Hub id "org/name[@revision]", or a single checkpoint
       file in the original LDM/SGM layout (.safetensors; .ckpt, .pt, .pth) (required). A Hub id
       (here and in refiner_version, custom_vae_version, controlnet) that is not complete in the
       Hugging Face cache is downloaded into it first, only the files the job reads, unless
       HF_HUB_OFFLINE is set (see sdc_download). */
    const char *model_version;
    const char *output_dir;         /* -o (default ".") */
    const char *refiner_version;    /* --refiner-version */
    const char *custom_vae_version; /* --custom-vae-version */
    /* --config: a diffusers folder or cached Hub id whose configs describe a single-file
       model_version (a .safetensors/.ckpt checkpoint) instead of the configs inferred from it */
    const char *config;
    const char *const *controlnet;  /* --convert-controlnet ids */
    int n_controlnet;
    const sdc_lora *loras; /* --lora, in the order given (each adds its delta) */
    int n_loras;

    bool convert_text_encoder;
    bool convert_vae_decoder;
    bool convert_vae_encoder;
    bool convert_unet;
    bool convert_mmdit;
    bool convert_safety_checker;
    bool convert_controlnet; /* the flag was given (even with no ids) */

    int latent_h, latent_w;          /* 0: from the UNet config's sample_size */
    int text_token_sequence_length;  /* 0: from the text encoder config */
    int text_encoder_hidden_size;    /* 0: from the UNet config */
    sdc_attention attention;         /* --attention-implementation */
    sdc_precision precision;         /* --compute-precision */
    const char *compute_unit;        /* --compute-unit (recorded only; a load-time option) */
    const char *min_deployment_target; /* --min-deployment-target (default macOS13) */

    bool check_output_correctness;
    bool chunk_unet;
    int quantize_nbits; /* 0: off */
    bool unet_support_controlnet;
    bool unet_batch_one;
    bool include_t5;
    bool bundle_resources_for_swift_cli;
    bool xl_version;
    bool sd3_version;
    const char *text_encoder_vocabulary_url; /* a local file, file:// or an http(s) URL (downloaded) */
    const char *text_encoder_merges_url;
    const char *text_encoder_t5_url;
    const char *text_encoder_t5_config_url;
    const char *text_encoder_t5_data_url;

    /* Recorded in each package's metadata as the options used. NULL (the CLI's choice):
       the effective options, normalised, so equivalent command lines give identical packages. */
    const char *options_summary;

    sdc_log_fn log;
    sdc_progress_fn progress;
    void *user;
} sdc_job;

void sdc_job_init(sdc_job *job);

/* Runs every conversion the job asks for. On failure `err` holds one line (no newline). */
sdc_status sdc_convert(const sdc_job *job, char *err, size_t err_size);

/*
 * Fills the Hugging Face cache (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)
 * from the Hub (HF_ENDPOINT, default https://huggingface.co) as huggingface_hub does: blobs
 * named by ETag, snapshots/<commit>/<path> as relative symlinks, refs/<revision>. Files are
 * downloaded through blobs/<etag>.incomplete, resumed with Range requests after a lost
 * connection (also in a later run), LFS files verified by SHA-256 before they are renamed into
 * place. The token is HF_TOKEN, else the file HF_HOME/token. Needs libcurl at build time
 * (else SDC_E_UNSUPPORTED); refused when HF_HUB_OFFLINE is set.
 */
typedef struct sdc_download_job {
    const char *model;    /* Hub id "org/name" or "org/name@revision" */
    const char *revision; /* NULL: the id's @revision, else "main" */
    /* Component folders whose weights to fetch ("" is the repository root); every component's
       config is always fetched. all_components: the weights of every folder with a config.json. */
    const char *const *components;
    int n_components;
    bool all_components;
    bool tokenizer_files; /* tokenizer/vocab.json and merges.txt (else tokenizer_2/'s) */
    bool model_card;      /* README.md */
    sdc_log_fn log;
    sdc_progress_fn progress;
    void *user;
} sdc_download_job;

sdc_status sdc_download(const sdc_download_job *job, char *err, size_t err_size);

/*
 * Removes the package currently being written, if any. Async-signal-safe: a program's SIGINT /
 * SIGTERM handler calls it so that an interrupted run leaves no partial output behind.
 */
void sdc_remove_partial_output(void);

/*
 * Describes an existing .mlpackage as a JSON document (inputs, outputs, metadata, op
 * histogram and op count of function main, ops in nested blocks included, weight bytes).
 * *json_out is malloc'd; free() it.
 */
sdc_status sdc_inspect_json(const char *package_path, char **json_out, char *err, size_t err_size);

/*
 * Two packages side by side (e.g. one of sdcoreml's and the anchor's): a JSON document with
 * "a" and "b" (each package's inspect document plus its "package" path), "contract" (rows
 * {field, a, b, same}: specification version, opset, inputs by name, outputs by position,
 * the metadata author, license, version and short_description, weight bytes),
 * "contract_differences" (the rows that differ, {field, a, b}), "op_histogram" ({op type:
 * {a, b, difference = b - a}} over both packages' op types, nested blocks counted),
 * "op_types_differing", "op_count" and "same". *differ is true when a contract field or an
 * op count differs. Errors name the package file at fault. *json_out is malloc'd; free() it.
 */
sdc_status sdc_inspect_compare_json(const char *package_a, const char *package_b, char **json_out, bool *differ,
                                    char *err, size_t err_size);

/* ================================================================ interpreter
 *
 * A reference interpreter that runs function `main` of any ML Program package (.mlpackage,
 * ours or another tool's) on the CPU, by the MIL op semantics. Every op accumulates in fp32
 * and rounds its result to the dtype the package declares for it (fp16 results are rounded
 * to fp16 by RNE), so an fp16 program gives what a device computing in fp16 would give, not
 * better. Weights stay in their stored form (mapped weight.bin, palettized or quantized) and
 * are expanded per op, so memory stays near the package size plus the live activations.
 * Everything read from the package is validated; an op type it does not know fails the load,
 * naming the op.
 *
 *     sdc_model *m;
 *     if (sdc_model_load("TextEncoder.mlpackage", NULL, &m, err, sizeof err)) ...
 *     float ids[77] = {...};
 *     sdc_ndarray in = {.name = "input_ids", .dtype = SDC_ND_F32, .rank = 2, .shape = {1, 77}, .data = ids};
 *     sdc_ndarray *out; int n_out;
 *     if (sdc_model_predict(m, &in, 1, &out, &n_out, err, sizeof err)) ...
 *     ... out[i].name, out[i].shape, out[i].data ...
 *     sdc_ndarrays_free(out, n_out);
 *     sdc_model_free(m);
 *
 * A model runs one prediction at a time (predict is not reentrant on the same model); two
 * models are independent. Each model has its own worker threads; when sdcoreml is built with
 * OpenBLAS, loading a model sets OpenBLAS to one thread per call (process-wide), since the
 * interpreter splits products across its own threads.
 */

typedef enum sdc_nd_dtype {
    SDC_ND_F32 = 0, /* float */
    SDC_ND_F16 = 1, /* IEEE binary16 bit patterns (uint16_t) */
    SDC_ND_I32 = 2, /* int32_t */
} sdc_nd_dtype;

#define SDC_ND_MAX_RANK 8

/* A dense row-major array in host byte order. */
typedef struct sdc_ndarray {
    const char *name;
    sdc_nd_dtype dtype;
    int rank;
    int64_t shape[SDC_ND_MAX_RANK]; /* in a model's description, -1 marks a flexible dim */
    void *data;
} sdc_ndarray;

const char *sdc_nd_dtype_name(sdc_nd_dtype t); /* "float32", "float16", "int32" (NumPy names) */
size_t sdc_ndarray_numel(const sdc_ndarray *a); /* product of the shape (1 for rank 0) */
/* How many elements are NaN or ±inf (0 for int32): what a float16 overflow leaves behind. */
size_t sdc_ndarray_count_nonfinite(const sdc_ndarray *a);

typedef struct sdc_model sdc_model;

typedef struct sdc_model_options {
    int n_threads;        /* worker threads; 0: one per online CPU */
    bool no_fp16_rounding; /* evaluate fp16 programs without rounding results to fp16 (a float32
                              evaluation of the same program; for diagnostics) */
    /* Progress of each prediction, called after every op: what = "run <package path>", done
       of total ops (total counts the ops that compute, not constants). NULL: none. */
    sdc_progress_fn progress;
    void *progress_user;
} sdc_model_options;

/* Opens and validates a package (NULL options: defaults). Free with sdc_model_free. */
sdc_status sdc_model_load(const char *package_path, const sdc_model_options *options, sdc_model **out,
                          char *err, size_t err_size);
void sdc_model_free(sdc_model *m); /* NULL is a no-op */

/* The model's inputs and outputs in the package's order. The returned arrays describe name,
   dtype, rank and shape (data is NULL) and live as long as the model. */
int sdc_model_n_inputs(const sdc_model *m);
int sdc_model_n_outputs(const sdc_model *m);
const sdc_ndarray *sdc_model_input(const sdc_model *m, int i);
const sdc_ndarray *sdc_model_output(const sdc_model *m, int i);

/*
 * Runs `main`. Every declared input must be given exactly once, by name, with the declared
 * shape (a flexible dim takes any size >= 1). An input given as F32 where F16 or I32 is
 * declared is converted (F16 by RNE; I32 only from integral values); other dtype mismatches
 * are errors naming the input. *outputs receives n_outputs arrays in the package's order, in
 * the dtypes the package declares; free them with sdc_ndarrays_free.
 */
sdc_status sdc_model_predict(sdc_model *m, const sdc_ndarray *inputs, int n_inputs, sdc_ndarray **outputs,
                             int *n_outputs, char *err, size_t err_size);
void sdc_ndarrays_free(sdc_ndarray *arrays, int n); /* frees names, data and the array */

/* Where a model's predictions spent their time, per op type: wall seconds of its ops (each
   including the decoding of the weights it reads), the floating-point operations of its matrix
   products (2·M·N·K for conv, matmul, linear, einsum and attention; 0 for other ops; a conv's
   are the direct sum's whatever the algorithm: a 3×3 convolution of 64×64 outputs and more runs
   by Winograd's F(2×2, 3×3), with 4/9 of those multiplications) and the number of ops run. "attention (fused)" is attention's product → softmax → product run as one.
   SDC_PROFILE_DROPS is not an op: the drops of the pages of weights already read, made for
   several ops' weights at once (calls: how many). Summed over every prediction since the model
   was loaded, in order of first appearance. */
#define SDC_PROFILE_DROPS "(drop of weights read)"
typedef struct sdc_op_profile {
    const char *op_type;
    double seconds, flops;
    long long calls;
} sdc_op_profile;
/* The rows (valid until the next predict or sdc_model_free); returns how many. */
int sdc_model_profile(const sdc_model *m, const sdc_op_profile **rows);

/* Copies any array's values into a new malloc'd float buffer (NULL when out of memory). */
float *sdc_ndarray_to_f32(const sdc_ndarray *a);

/* NumPy .npy files (format versions 1.0, 2.0 and 3.0; dtypes <f4, <f2, <i4; C order).
   sdc_npy_read fills name = NULL and malloc'd data (free with free()); float64 (<f8, NumPy's
   default) is read as float32, as Core ML casts a Double input, and on success `err` then holds
   a note saying so (else ""); other dtypes, Fortran order and malformed headers are errors
   naming the file. sdc_npy_write writes atomically
   (a temporary file renamed into place). */
sdc_status sdc_npy_read(const char *path, sdc_ndarray *out, char *err, size_t err_size);
sdc_status sdc_npy_write(const char *path, const sdc_ndarray *a, char *err, size_t err_size);

/* ================================================================ generation
 *
 * The anchor's python_coreml_stable_diffusion.pipeline on the interpreter: a prompt and the
 * packages of a conversion (-o of sdc_convert) make one PNG. The packages are found in
 * packages_dir by the anchor's names, Stable_Diffusion_version_<model_version with / as _>_<name>
 * .mlpackage (else the one file of that directory ending in _<name>.mlpackage); the model
 * version gives the scheduler config and the tokenizers (a folder or a Hub id in the cache,
 * as for sdc_convert). Each package runs at the precision it was converted with. An SDXL
 * base's refiner package (<model>_refiner) takes over at 0.8 of the steps, as in the Swift
 * pipeline.
 */

typedef struct sdc_generate_job {
    const char *prompt;          /* --prompt (required) */
    const char *negative_prompt; /* NULL: "" (or zeros where the SDXL config forces them) */
    const char *packages_dir;    /* -i (required) */
    const char *output_dir;      /* -o (required): the PNG goes to <o>/<prompt>/<anchor's name>.png */
    const char *model_version;   /* default "CompVis/stable-diffusion-v1-4" */
    const char *scheduler;       /* DDIM, DPMSolverMultistep, ..., or NULL: the model's own */
    const char *compute_unit;    /* only named in the file name (default "ALL") */
    uint32_t seed;               /* NumPy RandomState seed of the latents (default 93) */
    int num_inference_steps;     /* default 50 */
    double guidance_scale;       /* default 7.5; <= 1 turns classifier-free guidance off */
    bool unet_batch_one;         /* the UNet package takes batch 1: two calls per step */
    bool disable_safety;         /* skip the safety checker (the Swift CLI's --disable-safety) */
    const char *const *controlnet; /* ControlNet ids (ControlNet_<id>.mlpackage, with control-unet) */
    int n_controlnet;
    const char *const *controlnet_inputs; /* one PNG per ControlNet, of the output's size */
    int n_controlnet_inputs;
    const char *image;           /* image-to-image: a PNG of the output's size (vae_encoder) */
    double strength;             /* image-to-image strength in [0, 1] (default 0.5) */
    const char *float_image_npy; /* debug: also write the float image (1, H, W, 3) in [0, 1] here */
    int n_threads;               /* interpreter threads; 0: one per CPU */
    sdc_log_fn log;
    sdc_progress_fn progress;    /* what = "denoise", done = steps taken of total, from 0 */
    void *user;
} sdc_generate_job;

typedef struct sdc_generate_result {
    char image_path[4096];
    char scheduler[64]; /* the class that ran, "PNDMScheduler" */
    int width, height, steps;
    bool safety_checked, nsfw;
    double seconds_load, seconds_text, seconds_denoise, seconds_decode, seconds_safety, seconds_total;
} sdc_generate_result;

void sdc_generate_job_init(sdc_generate_job *job);
/* Generates one image; on failure `err` holds one line and no PNG is left behind. */
sdc_status sdc_generate(const sdc_generate_job *job, sdc_generate_result *result, char *err, size_t err_size);

#ifdef __cplusplus
}
#endif
#endif /* SDCOREML_H */
