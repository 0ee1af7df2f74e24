/*
 * test_source.c — model resolution (folders, the Hugging Face cache through each of its
 * environment variables), component weight choice (fp16 variant, shards, pickle-only
 * folders), typed config reads and the messages of every failure.
 */
#include "check.h"
#include "source/source.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmp[256];

/* ---- fixture helpers ------------------------------------------------------------------ */

static void die(const char *what) {
    perror(what);
    exit(2);
}

static void mkdir_p(const char *path) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) die(buf);
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) die(buf);
}

/* Writes a file under tmp, creating its folders. Returns the full path (static ring). */
static const char *put(const char *rel, const void *data, size_t n) {
    static char ring[16][1024];
    static int next;
    char *path = ring[next++ % 16];
    snprintf(path, 1024, "%s/%s", tmp, rel);
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", path);
    *strrchr(dir, '/') = '\0';
    mkdir_p(dir);
    FILE *fp = fopen(path, "wb");
    if (!fp || fwrite(data, 1, n, fp) != n) die(path);
    fclose(fp);
    return path;
}

static const char *put_text(const char *rel, const char *text) {
    return put(rel, text, strlen(text));
}

static const char *at(const char *rel) {
    static char ring[8][1024];
    static int next;
    char *path = ring[next++ % 8];
    snprintf(path, 1024, "%s/%s", tmp, rel);
    return path;
}

typedef struct spec {
    const char *name;
    const char *dtype; /* F32, F16, I64 */
    int rank;
    int64_t shape[4];
} spec;

/* Writes a valid safetensors file holding the given tensors, data filled with a pattern. */
static void put_safetensors(const char *rel, const spec *specs, int n) {
    char header[4096];
    size_t used = (size_t)snprintf(header, sizeof header, "{");
    uint64_t offset = 0;
    for (int i = 0; i < n; i++) {
        uint64_t numel = 1, size = strcmp(specs[i].dtype, "F32") == 0   ? 4
                                   : strcmp(specs[i].dtype, "I64") == 0 ? 8
                                                                        : 2;
        char shape[128] = "";
        size_t su = 0;
        for (int d = 0; d < specs[i].rank; d++) {
            numel *= (uint64_t)specs[i].shape[d];
            su += (size_t)snprintf(shape + su, sizeof shape - su, "%s%lld", d ? "," : "",
                                   (long long)specs[i].shape[d]);
        }
        used += (size_t)snprintf(header + used, sizeof header - used,
                                 "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[%s],"
                                 "\"data_offsets\":[%llu,%llu]}",
                                 i ? "," : "", specs[i].name, specs[i].dtype, shape,
                                 (unsigned long long)offset,
                                 (unsigned long long)(offset + numel * size));
        offset += numel * size;
    }
    used += (size_t)snprintf(header + used, sizeof header - used, "}");
    size_t total = 8 + used + (size_t)offset;
    uint8_t *buf = calloc(1, total);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)used >> (8 * i));
    memcpy(buf + 8, header, used);
    for (uint64_t i = 0; i < offset; i++) buf[8 + used + i] = (uint8_t)(i % 251);
    put(rel, buf, total);
    free(buf);
}

static void put_link(const char *target, const char *rel) {
    const char *path = at(rel);
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", path);
    *strrchr(dir, '/') = '\0';
    mkdir_p(dir);
    if (symlink(target, path) != 0) die(path);
}

static void clear_hub_env(void) {
    unsetenv("HF_HUB_CACHE");
    unsetenv("HUGGINGFACE_HUB_CACHE");
    unsetenv("HF_HOME");
    unsetenv("XDG_CACHE_HOME");
}

/* The message of a failed call: one line, containing each expected fragment (up to 3). */
static void check_msg(const sdc_err *err, const char *f1, const char *f2, const char *f3) {
    const char *frags[] = {f1, f2, f3};
    CHECK_MSG(err->code != SDC_OK, "expected an error");
    CHECK_MSG(strchr(err->msg, '\n') == NULL, "not one line: %s", err->msg);
    for (int i = 0; i < 3; i++)
        if (frags[i])
            CHECK_MSG(strstr(err->msg, frags[i]) != NULL, "missing '%s' in: %s", frags[i],
                      err->msg);
    if (getenv("CHECK_VERBOSE")) printf("    %s\n", err->msg);
}

static const spec unet_f32[] = {{"conv_in.weight", "F32", 4, {4, 4, 3, 3}},
                                {"conv_in.bias", "F32", 1, {4}}};
static const spec unet_f16[] = {{"conv_in.weight", "F16", 4, {4, 4, 3, 3}},
                                {"conv_in.bias", "F16", 1, {4}}};

static const char *model_index =
    "{\"_class_name\": \"StableDiffusionPipeline\", \"_diffusers_version\": \"0.30.0\",\n"
    " \"unet\": [\"diffusers\", \"UNet2DConditionModel\"],\n"
    " \"text_encoder\": [\"transformers\", \"CLIPTextModel\"],\n"
    " \"vae\": [\"diffusers\", \"AutoencoderKL\"],\n"
    " \"safety_checker\": [null, null],\n"
    " \"requires_safety_checker\": false}\n";

static const char *unet_config =
    "{\"_class_name\": \"UNet2DConditionModel\", \"sample_size\": 8, \"norm_eps\": 1e-05,\n"
    " \"act_fn\": \"silu\", \"center_input_sample\": false, \"cross_attention_norm\": null,\n"
    " \"block_out_channels\": [32, 64], \"in_channels\": 4, \"scale\": 2}\n";

/* ---- folders -------------------------------------------------------------------------- */

static void build_pipeline(const char *root) {
    char rel[512];
    snprintf(rel, sizeof rel, "%s/model_index.json", root);
    put_text(rel, model_index);
    snprintf(rel, sizeof rel, "%s/unet/config.json", root);
    put_text(rel, unet_config);
    snprintf(rel, sizeof rel, "%s/unet/diffusion_pytorch_model.safetensors", root);
    put_safetensors(rel, unet_f32, 2);
    snprintf(rel, sizeof rel, "%s/unet/diffusion_pytorch_model.fp16.safetensors", root);
    put_safetensors(rel, unet_f16, 2);
}

static void test_folder(void) {
    build_pipeline("pipe");
    sdc_source s;
    sdc_err err = {0};
    char given[1024];
    snprintf(given, sizeof given, "%s/pipe//", tmp);
    if (!CHECK_MSG(sdc_source_open(given, &s, &err) == SDC_OK, "%s", err.msg)) return;
    CHECK(strcmp(s.root, at("pipe")) == 0); /* trailing slashes dropped */
    CHECK(strcmp(s.id, given) == 0);
    CHECK(s.model_index != NULL);
    CHECK(sdc_source_has(&s, "unet"));
    CHECK(sdc_source_has(&s, "text_encoder")); /* listed, even though the folder is absent */
    CHECK(!sdc_source_has(&s, "safety_checker"));
    CHECK(!sdc_source_has(&s, "_class_name"));
    CHECK(!sdc_source_has(&s, "requires_safety_checker"));
    CHECK(!sdc_source_has(&s, "controlnet"));
    CHECK(!sdc_source_has(&s, "../pipe"));
    sdc_source_close(&s);

    /* no model_index.json, but a component folder */
    put_text("bare/vae/config.json", "{}");
    snprintf(given, sizeof given, "%s/bare", tmp);
    if (CHECK_MSG(sdc_source_open(given, &s, &err) == SDC_OK, "%s", err.msg)) {
        CHECK(s.model_index == NULL);
        CHECK(sdc_source_has(&s, "vae"));
        CHECK(!sdc_source_has(&s, "unet"));
        CHECK(!sdc_source_has(&s, ""));
        sdc_source_close(&s);
    }

    /* a single-model repository: config.json at the root, opened as component "" */
    put_text("cnet/config.json", "{\"_class_name\": \"ControlNetModel\"}");
    put_safetensors("cnet/diffusion_pytorch_model.safetensors", unet_f32, 1);
    snprintf(given, sizeof given, "%s/cnet", tmp);
    if (CHECK_MSG(sdc_source_open(given, &s, &err) == SDC_OK, "%s", err.msg)) {
        CHECK(sdc_source_has(&s, ""));
        sdc_component c;
        if (CHECK_MSG(sdc_component_open(&s, "", &c, &err) == SDC_OK, "%s", err.msg)) {
            CHECK(strcmp(c.dir, at("cnet")) == 0);
            CHECK(sdc_weights_count(c.weights) == 1);
            sdc_component_close(&c);
        }
        sdc_source_close(&s);
    }

    /* a folder with nothing in it */
    put_text("empty/readme.txt", "hi");
    snprintf(given, sizeof given, "%s/empty", tmp);
    sdc_err e2 = {0};
    CHECK(sdc_source_open(given, &s, &e2) == SDC_E_NOTFOUND);
    check_msg(&e2, given, "model_index.json", NULL);

    /* a model_index.json that is not an object, and one with a duplicate key */
    put_text("badindex/model_index.json", "[]");
    snprintf(given, sizeof given, "%s/badindex", tmp);
    sdc_err e3 = {0};
    CHECK(sdc_source_open(given, &s, &e3) == SDC_E_FORMAT);
    check_msg(&e3, "badindex/model_index.json", "not a JSON object", NULL);
    put_text("dupindex/model_index.json", "{\"unet\": 1,\n \"unet\": 2}");
    snprintf(given, sizeof given, "%s/dupindex", tmp);
    sdc_err e4 = {0};
    CHECK(sdc_source_open(given, &s, &e4) == SDC_E_FORMAT);
    check_msg(&e4, "dupindex/model_index.json", "duplicate key", "line 2");
}

/* ---- components and weights ----------------------------------------------------------- */

static void test_component_and_config(void) {
    sdc_source s;
    sdc_err err = {0};
    if (!CHECK_MSG(sdc_source_open(at("pipe"), &s, &err) == SDC_OK, "%s", err.msg)) return;
    sdc_component c;
    if (!CHECK_MSG(sdc_component_open(&s, "unet", &c, &err) == SDC_OK, "%s", err.msg)) {
        sdc_source_close(&s);
        return;
    }
    CHECK(strcmp(c.name, "unet") == 0);
    CHECK(strcmp(c.dir, at("pipe/unet")) == 0);
    CHECK(strcmp(c.config_path, at("pipe/unet/config.json")) == 0);
    /* the fp16 variant wins over the default file */
    CHECK(strcmp(sdc_weights_describe(c.weights),
                 at("pipe/unet/diffusion_pytorch_model.fp16.safetensors")) == 0);
    CHECK(sdc_weights_count(c.weights) == 2);
    CHECK(sdc_weights_total_bytes(c.weights) == (4 * 4 * 3 * 3 + 4) * 2);
    const sdc_tensor *t = sdc_weights_find(c.weights, "conv_in.bias");
    CHECK(t && t->dtype == SDC_DT_F16);
    CHECK(sdc_weights_find(c.weights, "conv_out.bias") == NULL);

    const int64_t shape[4] = {4, 4, 3, 3}, wrong[4] = {4, 4, 1, 1};
    CHECK(sdc_weights_get(c.weights, "conv_in.weight", 4, shape, &t, &err) == SDC_OK);
    CHECK(t && t->numel == 144);
    sdc_err e1 = {0};
    CHECK(sdc_weights_get(c.weights, "conv_in.weight", 4, wrong, &t, &e1) == SDC_E_FORMAT);
    CHECK(t == NULL);
    check_msg(&e1, "unet/diffusion_pytorch_model.fp16.safetensors", "'conv_in.weight'",
              "shape [4, 4, 3, 3] but [4, 4, 1, 1]");
    sdc_err e2 = {0};
    CHECK(sdc_weights_get(c.weights, "conv_in.weight", 2, shape, &t, &e2) == SDC_E_FORMAT);
    check_msg(&e2, "[4, 4, 3, 3] but [4, 4]", NULL, NULL);
    sdc_err e3 = {0};
    CHECK(sdc_weights_get(c.weights, "mid_block.x", 1, shape, &t, &e3) == SDC_E_NOTFOUND);
    check_msg(&e3, "tensor 'mid_block.x' not found in ",
              "unet/diffusion_pytorch_model.fp16.safetensors", NULL);

    /* typed config reads */
    int64_t i64;
    double d;
    const char *str;
    bool b;
    int64_t list[4];
    size_t n;
    CHECK(sdc_config_int(&c, "sample_size", 0, &i64, &err) == SDC_OK && i64 == 8);
    CHECK(sdc_config_int(&c, "absent", 77, &i64, &err) == SDC_OK && i64 == 77);
    CHECK(sdc_config_int(&c, "cross_attention_norm", 5, &i64, &err) == SDC_OK && i64 == 5);
    CHECK(sdc_config_double(&c, "norm_eps", 0, &d, &err) == SDC_OK && d == 1e-5);
    CHECK(sdc_config_double(&c, "scale", 0, &d, &err) == SDC_OK && d == 2.0);
    CHECK(sdc_config_double(&c, "absent", 0.5, &d, &err) == SDC_OK && d == 0.5);
    CHECK(sdc_config_string(&c, "act_fn", NULL, &str, &err) == SDC_OK && !strcmp(str, "silu"));
    CHECK(sdc_config_string(&c, "absent", "gelu", &str, &err) == SDC_OK && !strcmp(str, "gelu"));
    CHECK(sdc_config_bool(&c, "center_input_sample", true, &b, &err) == SDC_OK && !b);
    CHECK(sdc_config_int_list(&c, "block_out_channels", 4, list, &n, &err) == SDC_OK);
    CHECK(n == 2 && list[0] == 32 && list[1] == 64);
    CHECK(sdc_config_int_list(&c, "absent", 4, list, &n, &err) == SDC_OK && n == 0);
    CHECK(err.code == SDC_OK);
    sdc_err e4 = {0};
    CHECK(sdc_config_int(&c, "act_fn", 0, &i64, &e4) == SDC_E_FORMAT);
    check_msg(&e4, "pipe/unet/config.json", "'act_fn'", "must be an integer, not a string");
    sdc_err e5 = {0};
    CHECK(sdc_config_int(&c, "norm_eps", 0, &i64, &e5) == SDC_E_FORMAT);
    check_msg(&e5, "pipe/unet/config.json", "'norm_eps'", NULL);
    sdc_err e6 = {0};
    CHECK(sdc_config_string(&c, "sample_size", NULL, &str, &e6) == SDC_E_FORMAT);
    check_msg(&e6, "config.json", "'sample_size'", "a string");
    sdc_err e7 = {0};
    CHECK(sdc_config_double(&c, "act_fn", 0, &d, &e7) == SDC_E_FORMAT);
    check_msg(&e7, "config.json", "'act_fn'", NULL);
    sdc_err e8 = {0};
    CHECK(sdc_config_int_list(&c, "block_out_channels", 1, list, &n, &e8) != SDC_OK);
    check_msg(&e8, "config.json", "'block_out_channels'", NULL);
    sdc_err e9 = {0};
    CHECK(sdc_config_bool(&c, "sample_size", false, &b, &e9) == SDC_E_FORMAT);
    check_msg(&e9, "config.json", "'sample_size'", "a boolean");
    sdc_component_close(&c);
    sdc_component_close(&c); /* idempotent */

    /* errors at component level */
    sdc_err e10 = {0};
    CHECK(sdc_component_open(&s, "text_encoder", &c, &e10) == SDC_E_NOTFOUND);
    check_msg(&e10, "pipe/text_encoder", NULL, NULL);
    sdc_err e11 = {0};
    CHECK(sdc_component_open(&s, "../pipe", &c, &e11) == SDC_E_ARG);
    check_msg(&e11, "invalid component name", NULL, NULL);
    sdc_source_close(&s);
}

static sdc_status open_component(const char *root, const char *name, sdc_component *c,
                                 sdc_err *err) {
    sdc_source s;
    sdc_status st = sdc_source_open(at(root), &s, err);
    if (st) return st;
    st = sdc_component_open(&s, name, c, err);
    sdc_source_close(&s);
    return st;
}

static void test_weight_choice(void) {
    sdc_component c;
    sdc_err err = {0};
    /* transformers-style stem, no variant */
    put_text("m/text_encoder/config.json", "{\"hidden_size\": 32}");
    put_safetensors("m/text_encoder/model.safetensors", unet_f32, 2);
    if (CHECK_MSG(open_component("m", "text_encoder", &c, &err) == SDC_OK, "%s", err.msg)) {
        CHECK(strcmp(sdc_weights_describe(c.weights), at("m/text_encoder/model.safetensors")) ==
              0);
        sdc_component_close(&c);
    }

    /* sharded, two shards */
    const spec shard1[] = {{"a.weight", "F32", 2, {2, 3}}, {"a.bias", "F32", 1, {2}}};
    const spec shard2[] = {{"b.weight", "F16", 2, {3, 3}}};
    put_text("m/vae/config.json", "{}");
    put_safetensors("m/vae/diffusion_pytorch_model-00001-of-00002.safetensors", shard1, 2);
    put_safetensors("m/vae/diffusion_pytorch_model-00002-of-00002.safetensors", shard2, 1);
    put_text("m/vae/diffusion_pytorch_model.safetensors.index.json",
             "{\"metadata\": {\"total_size\": 50}, \"weight_map\": {"
             "\"a.weight\": \"diffusion_pytorch_model-00001-of-00002.safetensors\","
             "\"b.weight\": \"diffusion_pytorch_model-00002-of-00002.safetensors\","
             "\"a.bias\": \"diffusion_pytorch_model-00001-of-00002.safetensors\"}}");
    if (CHECK_MSG(open_component("m", "vae", &c, &err) == SDC_OK, "%s", err.msg)) {
        CHECK(sdc_weights_count(c.weights) == 3);
        CHECK(sdc_weights_total_bytes(c.weights) == 24 + 8 + 18);
        CHECK(strstr(sdc_weights_describe(c.weights),
                     "m/vae/diffusion_pytorch_model.safetensors.index.json") != NULL);
        const sdc_tensor *a = sdc_weights_find(c.weights, "a.bias");
        const sdc_tensor *b = sdc_weights_find(c.weights, "b.weight");
        CHECK(a && b && a->file != b->file);
        CHECK(b && strstr(sdc_st_path(b->file), "00002-of-00002") != NULL);
        const int64_t want[2] = {3, 4};
        const sdc_tensor *t;
        sdc_err e1 = {0};
        CHECK(sdc_weights_get(c.weights, "b.weight", 2, want, &t, &e1) == SDC_E_FORMAT);
        check_msg(&e1, "diffusion_pytorch_model-00002-of-00002.safetensors", "'b.weight'",
                  "[3, 3] but [3, 4]");
        sdc_err e2 = {0};
        CHECK(sdc_weights_get(c.weights, "c.weight", 2, want, &t, &e2) == SDC_E_NOTFOUND);
        check_msg(&e2, "tensor 'c.weight' not found in", "index.json", NULL);
        sdc_component_close(&c);
    }

    /* the fp16 sharded index is preferred over the default single file */
    put_text("m/vae2/config.json", "{}");
    put_safetensors("m/vae2/diffusion_pytorch_model.safetensors", unet_f32, 2);
    put_safetensors("m/vae2/diffusion_pytorch_model.fp16-00001-of-00001.safetensors", unet_f16,
                    2);
    put_text("m/vae2/diffusion_pytorch_model.safetensors.index.fp16.json",
             "{\"weight_map\": {"
             "\"conv_in.weight\": \"diffusion_pytorch_model.fp16-00001-of-00001.safetensors\","
             "\"conv_in.bias\": \"diffusion_pytorch_model.fp16-00001-of-00001.safetensors\"}}");
    if (CHECK_MSG(open_component("m", "vae2", &c, &err) == SDC_OK, "%s", err.msg)) {
        CHECK(strstr(sdc_weights_describe(c.weights), "index.fp16.json (1 shard)") != NULL);
        CHECK(sdc_weights_find(c.weights, "conv_in.bias")->dtype == SDC_DT_F16);
        sdc_component_close(&c);
    }

    /* a weight with a non-float dtype */
    const spec ints[] = {{"position_ids", "I64", 2, {1, 4}}};
    put_text("m/ints/config.json", "{}");
    put_safetensors("m/ints/model.safetensors", ints, 1);
    if (CHECK_MSG(open_component("m", "ints", &c, &err) == SDC_OK, "%s", err.msg)) {
        const int64_t shape[2] = {1, 4};
        const sdc_tensor *t;
        sdc_err e = {0};
        CHECK(sdc_weights_get(c.weights, "position_ids", 2, shape, &t, &e) != SDC_OK);
        check_msg(&e, "m/ints/model.safetensors", "'position_ids'", "dtype I64");
        CHECK(sdc_weights_find(c.weights, "position_ids") != NULL);
        sdc_component_close(&c);
    }
}

static void test_weight_errors(void) {
    sdc_component c;
    /* missing config.json */
    put_safetensors("bad/noconfig/model.safetensors", unet_f32, 1);
    put_text("bad/model_index.json", "{}");
    sdc_err e1 = {0};
    CHECK(open_component("bad", "noconfig", &c, &e1) == SDC_E_NOTFOUND);
    check_msg(&e1, at("bad/noconfig/config.json"), "missing", NULL);
    CHECK(c.config == NULL && c.weights == NULL);

    /* only pickle weights */
    put_text("bad/pickle/config.json", "{}");
    put_text("bad/pickle/pytorch_model.bin", "PK");
    sdc_err e2 = {0};
    CHECK(open_component("bad", "pickle", &c, &e2) == SDC_E_UNSUPPORTED);
    check_msg(&e2, "only PyTorch pickle weights", at("bad/pickle/pytorch_model.bin"),
              "sdcoreml reads .safetensors");

    /* nothing at all */
    put_text("bad/noweights/config.json", "{}");
    sdc_err e3 = {0};
    CHECK(open_component("bad", "noweights", &c, &e3) == SDC_E_NOTFOUND);
    check_msg(&e3, at("bad/noweights"), "no weights", "model.safetensors.index.json");

    /* a broken config.json */
    put_text("bad/badconfig/config.json", "{\"a\": 1,\n\"b\": }");
    put_safetensors("bad/badconfig/model.safetensors", unet_f32, 1);
    sdc_err e4 = {0};
    CHECK(open_component("bad", "badconfig", &c, &e4) == SDC_E_FORMAT);
    check_msg(&e4, at("bad/badconfig/config.json"), "line 2", NULL);

    /* a broken weight file: the safetensors error comes through */
    put_text("bad/badweights/config.json", "{}");
    put_text("bad/badweights/diffusion_pytorch_model.safetensors", "xx");
    sdc_err e5 = {0};
    CHECK(open_component("bad", "badweights", &c, &e5) == SDC_E_FORMAT);
    check_msg(&e5, "badweights/diffusion_pytorch_model.safetensors", "too short", NULL);

    /* shard indexes: escaping name, missing tensor, missing shard, not an object */
    const struct {
        const char *dir, *index, *frag;
        sdc_status code;
    } cases[] = {
        {"escape", "{\"weight_map\": {\"x\": \"../model.safetensors\"}}", "'x'", SDC_E_FORMAT},
        {"slash", "{\"weight_map\": {\"x\": \"sub/model.safetensors\"}}", "'x'", SDC_E_FORMAT},
        {"binshard", "{\"weight_map\": {\"x\": \"pytorch_model-1.bin\"}}", ".safetensors",
         SDC_E_UNSUPPORTED},
        {"absent", "{\"weight_map\": {\"conv_in.bias\": \"s1.safetensors\", \"zz\": "
                   "\"s1.safetensors\"}}",
         "tensor 'zz' in 's1.safetensors', but that file has no such tensor", SDC_E_FORMAT},
        {"noshard", "{\"weight_map\": {\"x\": \"s2.safetensors\"}}", "s2.safetensors",
         SDC_E_NOTFOUND},
        {"nomap", "{\"metadata\": {}}", "'weight_map'", SDC_E_FORMAT},
        {"emptymap", "{\"weight_map\": {}}", "empty", SDC_E_FORMAT},
    };
    for (size_t i = 0; i < SDC_COUNT_OF(cases); i++) {
        char rel[256];
        snprintf(rel, sizeof rel, "bad/%s/config.json", cases[i].dir);
        put_text(rel, "{}");
        snprintf(rel, sizeof rel, "bad/%s/s1.safetensors", cases[i].dir);
        put_safetensors(rel, unet_f32, 2);
        snprintf(rel, sizeof rel, "bad/%s/model.safetensors.index.json", cases[i].dir);
        const char *index = put_text(rel, cases[i].index);
        sdc_err e = {0};
        CHECK_MSG(open_component("bad", cases[i].dir, &c, &e) == cases[i].code, "case %s: %s",
                  cases[i].dir, e.msg);
        check_msg(&e, cases[i].code == SDC_E_NOTFOUND ? cases[i].dir : index, cases[i].frag,
                  NULL);
    }

    /* the same tensor in two shards */
    put_text("bad/twice/config.json", "{}");
    put_safetensors("bad/twice/s1.safetensors", unet_f32, 2);
    put_safetensors("bad/twice/s2.safetensors", unet_f32, 1);
    put_text("bad/twice/model.safetensors.index.json",
             "{\"weight_map\": {\"conv_in.weight\": \"s2.safetensors\", "
             "\"conv_in.bias\": \"s1.safetensors\"}}");
    sdc_err e6 = {0};
    CHECK(open_component("bad", "twice", &c, &e6) == SDC_E_FORMAT);
    check_msg(&e6, "'conv_in.weight'", "s1.safetensors", "s2.safetensors");
}

/* ---- Hugging Face cache --------------------------------------------------------------- */

/* A cache entry laid out as huggingface_hub writes it: blobs, refs/main, snapshot symlinks. */
static void build_cache_entry(const char *hub_rel, const char *repo_dir, const char *rev) {
    char rel[512], target[512];
    snprintf(rel, sizeof rel, "%s/%s/blobs/1111", hub_rel, repo_dir);
    put_text(rel, model_index);
    snprintf(rel, sizeof rel, "%s/%s/blobs/2222", hub_rel, repo_dir);
    put_text(rel, unet_config);
    snprintf(rel, sizeof rel, "%s/%s/blobs/3333", hub_rel, repo_dir);
    put_safetensors(rel, unet_f16, 2);
    snprintf(rel, sizeof rel, "%s/%s/refs/main", hub_rel, repo_dir);
    char ref[128];
    snprintf(ref, sizeof ref, "%s\n", rev);
    put_text(rel, ref);
    snprintf(rel, sizeof rel, "%s/%s/snapshots/%s/model_index.json", hub_rel, repo_dir, rev);
    put_link("../../blobs/1111", rel);
    snprintf(rel, sizeof rel, "%s/%s/snapshots/%s/unet/config.json", hub_rel, repo_dir, rev);
    put_link("../../../blobs/2222", rel);
    snprintf(rel, sizeof rel, "%s/%s/snapshots/%s/unet/diffusion_pytorch_model.fp16.safetensors",
             hub_rel, repo_dir, rev);
    snprintf(target, sizeof target, "../../../blobs/3333");
    put_link(target, rel);
}

static void expect_cache_hit(const char *id, const char *expected_root_rel) {
    sdc_source s;
    sdc_err err = {0};
    if (!CHECK_MSG(sdc_source_open(id, &s, &err) == SDC_OK, "%s: %s", id, err.msg)) return;
    CHECK_MSG(strcmp(s.root, at(expected_root_rel)) == 0, "root %s", s.root);
    CHECK(strcmp(s.id, id) == 0);
    CHECK(s.model_index != NULL && sdc_source_has(&s, "unet"));
    sdc_component c;
    if (CHECK_MSG(sdc_component_open(&s, "unet", &c, &err) == SDC_OK, "%s", err.msg)) {
        CHECK(sdc_weights_count(c.weights) == 2);
        int64_t size = 0;
        CHECK(sdc_config_int(&c, "sample_size", 0, &size, &err) == SDC_OK && size == 8);
        sdc_component_close(&c);
    }
    sdc_source_close(&s);
}

static void test_hub_cache(void) {
    const char *rev = "0123456789abcdef0123456789abcdef01234567";
    char root[512];
    /* chdir into an empty folder, so "org/name" is not also a local folder */
    put_text("cwd/.keep", "");
    if (chdir(at("cwd")) != 0) die("chdir");

    clear_hub_env();
    build_cache_entry("hubcache", "models--org--name", rev);
    setenv("HF_HUB_CACHE", at("hubcache"), 1);
    snprintf(root, sizeof root, "hubcache/models--org--name/snapshots/%s", rev);
    expect_cache_hit("org/name", root);

    clear_hub_env();
    build_cache_entry("hfhome/hub", "models--org--name", rev);
    setenv("HF_HOME", at("hfhome"), 1);
    snprintf(root, sizeof root, "hfhome/hub/models--org--name/snapshots/%s", rev);
    expect_cache_hit("org/name", root);

    clear_hub_env(); /* HF_HUB_CACHE beats HF_HOME */
    setenv("HF_HOME", at("hfhome"), 1);
    setenv("HF_HUB_CACHE", at("hubcache"), 1);
    snprintf(root, sizeof root, "hubcache/models--org--name/snapshots/%s", rev);
    expect_cache_hit("org/name", root);

    clear_hub_env();
    build_cache_entry("xdg/huggingface/hub", "models--Org-2--my.model_v1", "abc");
    setenv("XDG_CACHE_HOME", at("xdg"), 1);
    expect_cache_hit("Org-2/my.model_v1", "xdg/huggingface/hub/models--Org-2--my.model_v1/"
                                          "snapshots/abc");

    clear_hub_env();
    const char *old_home = getenv("HOME");
    char saved_home[1024] = "";
    if (old_home) snprintf(saved_home, sizeof saved_home, "%s", old_home);
    build_cache_entry("home/.cache/huggingface/hub", "models--org--name", rev);
    setenv("HOME", at("home"), 1);
    snprintf(root, sizeof root, "home/.cache/huggingface/hub/models--org--name/snapshots/%s",
             rev);
    expect_cache_hit("org/name", root);

    /* not found: the message lists the folder and the cache entry tried, and why there */
    sdc_source s;
    sdc_err e1 = {0};
    CHECK(sdc_source_open("org/none", &s, &e1) == SDC_E_NOTFOUND);
    char want[1024];
    snprintf(want, sizeof want,
             "model 'org/none' not found: not a folder './org/none'; no cache entry "
             "'%s/models--org--none' (HF_HUB_CACHE unset, HF_HOME unset)",
             at("home/.cache/huggingface/hub"));
    CHECK_MSG(strcmp(e1.msg, want) == 0, "got:  %s\n    want: %s", e1.msg, want);
    if (getenv("CHECK_VERBOSE")) printf("    %s\n", e1.msg);

    setenv("HF_HUB_CACHE", at("hubcache"), 1);
    sdc_err e2 = {0};
    CHECK(sdc_source_open("org/none", &s, &e2) == SDC_E_NOTFOUND);
    check_msg(&e2, "not a folder './org/none'", at("hubcache/models--org--none"),
              "from HF_HUB_CACHE");

    /* an entry without refs/main, a bad ref, a ref to a missing snapshot */
    put_text("hubcache/models--org--noref/blobs/1", "x");
    sdc_err e3 = {0};
    CHECK(sdc_source_open("org/noref", &s, &e3) == SDC_E_NOTFOUND);
    check_msg(&e3, "not a folder", "models--org--noref' has no refs/main", NULL);
    put_text("hubcache/models--org--badref/refs/main", "../../../etc\n");
    sdc_err e4 = {0};
    CHECK(sdc_source_open("org/badref", &s, &e4) == SDC_E_FORMAT);
    check_msg(&e4, "models--org--badref/refs/main", "not a commit hash", NULL);
    put_text("hubcache/models--org--gone/refs/main", "  feedface \n");
    sdc_err e5 = {0};
    CHECK(sdc_source_open("org/gone", &s, &e5) == SDC_E_NOTFOUND);
    check_msg(&e5, "not a folder", "models--org--gone/snapshots/feedface'", "refs/main");

    /* an incomplete download: the snapshot's weight link points at a missing blob */
    build_cache_entry("hubcache", "models--org--partial", rev);
    snprintf(want, sizeof want, "hubcache/models--org--partial/blobs/3333");
    if (unlink(at(want)) != 0) die("unlink");
    sdc_err e6 = {0};
    if (CHECK(sdc_source_open("org/partial", &s, &e6) == SDC_OK)) {
        sdc_component c;
        CHECK(sdc_component_open(&s, "unet", &c, &e6) == SDC_E_NOTFOUND);
        check_msg(&e6, "diffusion_pytorch_model.fp16.safetensors", "cannot open", NULL);
        sdc_source_close(&s);
    }

    /* not even a Hub id */
    sdc_err e7 = {0};
    CHECK(sdc_source_open("../a/b", &s, &e7) == SDC_E_NOTFOUND);
    check_msg(&e7, "not a folder '../a/b'", "not a Hub id", NULL);
    sdc_err e8 = {0};
    CHECK(sdc_source_open("", &s, &e8) == SDC_E_ARG);

    /* a local folder of the same name wins over the cache */
    build_pipeline("cwd/org/name");
    sdc_err e9 = {0};
    if (CHECK_MSG(sdc_source_open("org/name", &s, &e9) == SDC_OK, "%s", e9.msg)) {
        CHECK(strcmp(s.root, "org/name") == 0);
        sdc_source_close(&s);
    }

    if (saved_home[0]) setenv("HOME", saved_home, 1);
    clear_hub_env();
    if (chdir("/") != 0) die("chdir");
}

static void test_json_load(void) {
    json_t *j;
    sdc_err e1 = {0};
    const char *p = put_text("json/dup.json", "{\n  \"a\": 1,\n  \"a\": 2\n}");
    CHECK(sdc_json_load(p, &j, &e1) == SDC_E_FORMAT && j == NULL);
    check_msg(&e1, p, "duplicate key", "line 3");
    sdc_err e2 = {0};
    p = put_text("json/bad.json", "{\"a\": [1, 2,]}");
    CHECK(sdc_json_load(p, &j, &e2) == SDC_E_FORMAT);
    check_msg(&e2, p, "line 1, column", NULL);
    sdc_err e3 = {0};
    CHECK(sdc_json_load(at("json/absent.json"), &j, &e3) == SDC_E_NOTFOUND);
    check_msg(&e3, at("json/absent.json"), "cannot open", NULL);
    sdc_err e4 = {0};
    CHECK(sdc_json_load(at("json"), &j, &e4) == SDC_E_IO);
    check_msg(&e4, "not a regular file", NULL, NULL);
    sdc_err e5 = {0};
    p = put_text("json/ok.json", "[1, \"x\"]");
    CHECK(sdc_json_load(p, &j, &e5) == SDC_OK && json_is_array(j));
    json_decref(j);
}

int main(void) {
    snprintf(tmp, sizeof tmp, "/tmp/sdc_test_source_XXXXXX");
    if (!mkdtemp(tmp)) die("mkdtemp");
    clear_hub_env();
    test_folder();
    test_component_and_config();
    test_weight_choice();
    test_weight_errors();
    test_hub_cache();
    test_json_load();
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmp);
    return CHECK_DONE("test_source");
}
