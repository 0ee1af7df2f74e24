/*
 * fuzz_source.c — the model-source reader (src/source/): sdc_json_load's strict JSON,
 * model_index.json, a component's config.json and its sharded weight index, the scheduler
 * and tokenizer configs, the model card's front matter and a Hub cache refs/main.
 *
 * Input: up to 7 parts cut at SDC_FUZZ_SEPARATOR, each written to its place in a model folder
 * (an empty part leaves the file out):
 *   0 model_index.json                 4 tokenizer/tokenizer_config.json
 *   1 unet/config.json                 5 README.md
 *   2 unet/diffusion_pytorch_model.safetensors.index.json
 *   3 scheduler/scheduler_config.json  6 refs/main of the Hub cache entry fuzz/model
 * Two valid shards, unet/a.safetensors and unet/b.safetensors, are always there, so an index
 * that names them gets as far as the tensor-to-shard checks.
 */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "source/source.h"

enum { N_PARTS = 7 };

static const char *const part_files[N_PARTS] = {
    "model/model_index.json",
    "model/unet/config.json",
    "model/unet/diffusion_pytorch_model.safetensors.index.json",
    "model/scheduler/scheduler_config.json",
    "model/tokenizer/tokenizer_config.json",
    "model/README.md",
    "hub/models--fuzz--model/refs/main",
};
static char part_paths[N_PARTS][4096], model_dir[4096];

/* A valid one-tensor safetensors file: [u64 header length][header][data]. */
static void write_shard(const char *rel, const char *header, size_t data_bytes) {
    uint8_t buf[512] = {0};
    size_t n = strlen(header);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)n >> (8 * i));
    memcpy(buf + 8, header, n);
    char path[4096];
    sdc_fuzz_write(sdc_fuzz_path(path, sizeof path, rel), buf, 8 + n + data_bytes);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    static const char *const dirs[] = {"model/unet", "model/scheduler", "model/tokenizer",
                                       "hub/models--fuzz--model/refs", "hub/models--fuzz--model/snapshots/0123abcd"};
    for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) sdc_fuzz_mkdirs(dirs[i]);
    for (int i = 0; i < N_PARTS; i++) sdc_fuzz_path(part_paths[i], sizeof part_paths[i], part_files[i]);
    sdc_fuzz_path(model_dir, sizeof model_dir, "model");
    write_shard("model/unet/a.safetensors", "{\"conv_in.weight\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
    write_shard("model/unet/b.safetensors", "{\"conv_in.bias\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,2]}}", 2);
    char snap[4096];
    sdc_fuzz_write(sdc_fuzz_path(snap, sizeof snap, "hub/models--fuzz--model/snapshots/0123abcd/model_index.json"), "{}", 2);
    char hub[4096];
    setenv("HF_HUB_CACHE", sdc_fuzz_path(hub, sizeof hub, "hub"), 1);
    return 0;
}

static void check_error(sdc_status st, const sdc_err *err) {
    if (st && (!err->msg[0] || strchr(err->msg, '\n')))
        sdc_fuzz_die("an error must be one non-empty line: '%s'", err->msg);
}

/* Every question a converter asks of the whole pipeline. */
static void ask_pipeline(const sdc_source *s) {
    static const char *const components[] = {"unet", "vae", "text_encoder", "text_encoder_2", "", "_class_name", "../x"};
    for (size_t i = 0; i < sizeof components / sizeof *components; i++) sdc_source_has(s, components[i]);
    sdc_pipeline_is_xl(s);
    sdc_pipeline_requires_aesthetics_score(s);
    int64_t v, h, w;
    float t;
    int n;
    char buf[256];
    sdc_err err = {0};
    check_error(sdc_pipeline_int(s, "unet", "in_channels", 4, &v, &err), &err);
    err = (sdc_err){0};
    check_error(sdc_pipeline_sample_size(s, 64, &h, &w, &err), &err);
    err = (sdc_err){0};
    check_error(sdc_pipeline_first_timestep(s, &t, &err), &err);
    err = (sdc_err){0};
    check_error(sdc_pipeline_token_count(s, "tokenizer", &n, &err), &err);
    sdc_pipeline_tokenizer_file(s, "vocab.json", buf, sizeof buf);
    sdc_pipeline_card_base_model(s, buf, sizeof buf);
}

/* Every typed config read and weight lookup a converter makes of a component. */
static void read_component(const sdc_component *c) {
    sdc_err err = {0};
    int64_t i, list[8];
    double d;
    const char *str;
    bool b;
    size_t n;
    check_error(sdc_config_int(c, "in_channels", 4, &i, &err), &err);
    err = (sdc_err){0};
    check_error(sdc_config_double(c, "scaling_factor", 0.18215, &d, &err), &err);
    err = (sdc_err){0};
    check_error(sdc_config_string(c, "act_fn", "silu", &str, &err), &err);
    err = (sdc_err){0};
    check_error(sdc_config_bool(c, "center_input_sample", false, &b, &err), &err);
    err = (sdc_err){0};
    check_error(sdc_config_int_list(c, "block_out_channels", 8, list, &n, &err), &err);
    const sdc_tensor *t;
    err = (sdc_err){0};
    check_error(sdc_weights_get(c->weights, "conv_in.weight", 1, (const int64_t[]){2}, &t, &err), &err);
    sdc_weights_find(c->weights, "conv_in.bias");
    sdc_weights_count(c->weights);
    sdc_weights_total_bytes(c->weights);
    sdc_weights_describe(c->weights);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sdc_fuzz_part parts[N_PARTS];
    sdc_fuzz_split(data, size, parts, N_PARTS);
    for (int i = 0; i < N_PARTS; i++) sdc_fuzz_write_part(part_paths[i], parts[i]);

    sdc_source s;
    sdc_err err = {0};
    sdc_status st = sdc_source_open(model_dir, &s, &err);
    check_error(st, &err);
    if (st == SDC_OK) {
        ask_pipeline(&s);
        sdc_component c;
        err = (sdc_err){0};
        st = sdc_component_open(&s, "unet", &c, &err);
        check_error(st, &err);
        if (st == SDC_OK) {
            read_component(&c);
            sdc_component_close(&c);
        }
        sdc_source_close(&s);
    }
    err = (sdc_err){0};
    st = sdc_source_open("fuzz/model", &s, &err); /* through HF_HUB_CACHE and refs/main */
    check_error(st, &err);
    if (st == SDC_OK) sdc_source_close(&s);
    return 0;
}
