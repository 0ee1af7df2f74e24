/*
 * lora.c — LoRA files parsed into modules, resolved against a component's weights, and the
 * addend that merges them while the weights stream (the design is in lora.h).
 */
#include "source/lora.h"

#include <math.h>

#include "io/ckpt.h"
#include "io/fp16.h"
#include "source/ldm_names.h"
#include "source/source.h"
#include "strmap.h"

/* ---------------------------------------------------------------- key formats (tables) */

enum { COMP_UNET, COMP_TE, COMP_TE2, N_COMPONENTS };
static const char *const COMPONENT_NAMES[N_COMPONENTS] = {"unet", "text_encoder", "text_encoder_2"};

typedef enum { STYLE_KOHYA, STYLE_DOTTED } key_style;

/* Key prefixes: which component, and how the module path is spelled. Longest first where one
   prefixes another. */
static const struct {
    const char *prefix;
    int component;
    key_style style;
} PREFIXES[] = {
    {"lora_unet_", COMP_UNET, STYLE_KOHYA},       {"lora_te1_", COMP_TE, STYLE_KOHYA},
    {"lora_te2_", COMP_TE2, STYLE_KOHYA},         {"lora_te_", COMP_TE, STYLE_KOHYA},
    {"unet.", COMP_UNET, STYLE_DOTTED},           {"text_encoder_2.", COMP_TE2, STYLE_DOTTED},
    {"text_encoder.", COMP_TE, STYLE_DOTTED},
};

typedef enum { ROLE_DOWN, ROLE_UP, ROLE_ALPHA } key_role;

/* Key suffixes after the module path. */
static const struct {
    const char *suffix;
    key_role role;
} SUFFIXES[] = {
    {".lora_down.weight", ROLE_DOWN}, {".lora_up.weight", ROLE_UP}, /* kohya */
    {".lora_A.weight", ROLE_DOWN},    {".lora_B.weight", ROLE_UP},  /* PEFT */
    {".lora.down.weight", ROLE_DOWN}, {".lora.up.weight", ROLE_UP}, /* diffusers before PEFT */
    {".alpha", ROLE_ALPHA},
};

/* Other adapters' keys, refused by name (LyCORIS and PEFT spellings). */
static const struct {
    const char *marker;
    bool at_end; /* the key ends with it (else: contains it) */
    const char *what;
} REFUSED[] = {
    {".hada_", false, "LoHa"},
    {".lokr_", false, "LoKr"},
    {".lora_mid.", false, "LoCon with a Tucker mid weight"},
    {".dora_scale", false, "DoRA"},
    {"lora_magnitude_vector", false, "DoRA"},
    {".diff", true, "full weight difference"},
    {".diff_b", true, "full weight difference"},
};

/* kohya's LDM-style module paths (the original UNet's names): they go through the LDM → diffusers
   name map (ldm_names.h), which needs the UNet's resnets per block. */
static const char *const LDM_UNET_MODULES[] = {"input_blocks_", "middle_block_", "output_blocks_", "time_embed_",
                                               "label_emb_", "out_0", "out_2"};

static bool starts_with(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

static const char *ldm_style_module(int component, const char *module) {
    if (component != COMP_UNET) return NULL;
    for (size_t i = 0; i < SDC_COUNT_OF(LDM_UNET_MODULES); i++)
        if (starts_with(module, LDM_UNET_MODULES[i])) return LDM_UNET_MODULES[i];
    return NULL;
}

/* ---------------------------------------------------------------- parsed files */

/* One LoRA module of a file: the factors of one weight. */
typedef struct lora_module {
    int component;
    key_style style;
    char *path;      /* module path as the key spells it, after the prefix */
    const char *key; /* the down key, for messages */
    const sdc_tensor *down, *up, *alpha;
} lora_module;

typedef struct lora_file {
    const char *path;
    float scale;
    sdc_st_file *st;
    lora_module *modules;
    size_t n_modules;
    bool has[N_COMPONENTS];
} lora_file;

struct sdc_lora_set {
    lora_file *files;
    size_t n_files;
};

static void file_free(lora_file *f) {
    for (size_t i = 0; i < f->n_modules; i++) sdc_free(f->modules[i].path);
    sdc_free(f->modules);
    sdc_st_close(f->st);
}

void sdc_lora_set_close(sdc_lora_set *set) {
    if (!set) return;
    for (size_t i = 0; i < set->n_files; i++) file_free(&set->files[i]);
    sdc_free(set->files);
    sdc_free(set);
}

static sdc_status refuse_other_adapters(const lora_file *f, const char *key, sdc_err *err) {
    for (size_t i = 0; i < SDC_COUNT_OF(REFUSED); i++)
        if (REFUSED[i].at_end ? ends_with(key, REFUSED[i].marker) : strstr(key, REFUSED[i].marker) != NULL)
            return sdc_fail(err, SDC_E_UNSUPPORTED,
                            "%s: key '%s' belongs to a %s adapter; only LoRA (down/up or lora_A/lora_B) is supported", f->path,
                            key, REFUSED[i].what);
    return SDC_OK;
}

static sdc_status unknown_key(const lora_file *f, const char *key, sdc_err *err) {
    return sdc_fail(err, SDC_E_FORMAT,
                    "%s: key '%s' is not a LoRA key (kohya lora_unet_/lora_te_/lora_te1_/lora_te2_… with "
                    ".lora_down/.lora_up/.alpha, or diffusers unet./text_encoder./text_encoder_2.… with .lora_A/.lora_B)",
                    f->path, key);
}

/* The module of `path` in component c, added if new. */
static lora_module *module_for(lora_file *f, sdc_strmap *index, int c, key_style style, const char *path, size_t len,
                               sdc_err *err) {
    char *name = sdc_malloc(len + 3);
    if (!name) return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", f->path), NULL;
    snprintf(name, len + 3, "%d:%.*s", c, (int)len, path); /* the index's key: component and path */
    int at = sdc_strmap_get(index, name);
    if (at >= 0) {
        sdc_free(name);
        return &f->modules[at];
    }
    lora_module *m = &f->modules[f->n_modules++]; /* from here on, file_free frees the name */
    *m = (lora_module){.component = c, .style = style, .path = name};
    if (!sdc_strmap_put(index, name, (int)f->n_modules - 1)) return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", f->path), NULL;
    return m;
}

static sdc_status add_key(lora_file *f, sdc_strmap *index, const sdc_tensor *t, sdc_err *err) {
    const char *key = t->name;
    sdc_status st = refuse_other_adapters(f, key, err);
    if (st) return st;
    size_t p = 0, s = 0;
    while (p < SDC_COUNT_OF(PREFIXES) && !starts_with(key, PREFIXES[p].prefix)) p++;
    while (s < SDC_COUNT_OF(SUFFIXES) && !ends_with(key, SUFFIXES[s].suffix)) s++;
    if (p == SDC_COUNT_OF(PREFIXES) || s == SDC_COUNT_OF(SUFFIXES)) return unknown_key(f, key, err);
    const char *path = key + strlen(PREFIXES[p].prefix);
    size_t klen = strlen(key), used = strlen(PREFIXES[p].prefix) + strlen(SUFFIXES[s].suffix);
    if (klen <= used) return unknown_key(f, key, err);
    lora_module *m = module_for(f, index, PREFIXES[p].component, PREFIXES[p].style, path, klen - used, err);
    if (!m) return SDC_E_NOMEM;
    const sdc_tensor **slot = SUFFIXES[s].role == ROLE_DOWN ? &m->down : SUFFIXES[s].role == ROLE_UP ? &m->up : &m->alpha;
    if (*slot) return sdc_fail(err, SDC_E_FORMAT, "%s: key '%s' repeats the %s of module '%s'", f->path, key, SUFFIXES[s].suffix, m->path + 2);
    *slot = t;
    if (SUFFIXES[s].role == ROLE_DOWN) m->key = key;
    f->has[m->component] = true;
    return SDC_OK;
}

static bool is_float(sdc_dtype d) { return d == SDC_DT_F32 || d == SDC_DT_F16 || d == SDC_DT_BF16; }

/* down [r, K…], up [out, r] or [out, r, 1, 1], alpha one float. */
static sdc_status check_module(const lora_file *f, const lora_module *m, sdc_err *err) {
    const char *name = m->path + 2;
    if (!m->down && !m->up)
        return sdc_fail(err, SDC_E_FORMAT, "%s: module '%s' has an alpha but neither a down nor an up weight", f->path,
                        name);
    if (!m->down || !m->up)
        return sdc_fail(err, SDC_E_FORMAT, "%s: module '%s' has %s weight but no %s weight", f->path, name,
                        m->down ? "a down" : "an up", m->down ? "up" : "down");
    char a[128], b[128];
    const sdc_tensor *d = m->down, *u = m->up;
    bool up_ok = (u->rank == 2 || (u->rank == 4 && u->shape[2] == 1 && u->shape[3] == 1)) && u->shape[0] > 0;
    bool down_ok = (d->rank == 2 || d->rank == 4) && d->shape[0] > 0 && d->numel > 0;
    if (!up_ok || !down_ok || u->shape[1] != d->shape[0])
        return sdc_fail(err, SDC_E_FORMAT, "%s: module '%s': down %s and up %s are not LoRA factors ([r, in(, kh, kw)] and [out, r(, 1, 1)])",
                        f->path, name, sdc_shape_str(d->shape, d->rank, a, sizeof a), sdc_shape_str(u->shape, u->rank, b, sizeof b));
    if (!is_float(d->dtype) || !is_float(u->dtype))
        return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: module '%s': factors must be F32, F16 or BF16", f->path, name);
    bool alpha_float = m->alpha && (is_float(m->alpha->dtype) || m->alpha->dtype == SDC_DT_F64);
    if (m->alpha && (m->alpha->numel != 1 || !alpha_float || !isfinite(sdc_tensor_get_f32(m->alpha, 0))))
        return sdc_fail(err, SDC_E_FORMAT, "%s: '%s.alpha' must be one finite float", f->path, name);
    return SDC_OK;
}

/* What torch.save wrote (.ckpt, .pt, .pth, and diffusers' older pytorch_lora_weights.bin) is
   read by the pickle-free checkpoint reader; everything else as safetensors. */
static bool is_torch_save(const char *path) { return sdc_ckpt_is_ckpt_path(path) || ends_with(path, ".bin"); }

static sdc_status parse_file(lora_file *f, sdc_err *err) {
    if (!isfinite(f->scale)) return sdc_fail(err, SDC_E_ARG, "--lora %s: the scale must be a finite number", f->path);
    sdc_status st = is_torch_save(f->path) ? sdc_ckpt_open(f->path, &f->st, err) : sdc_st_open(f->path, &f->st, err);
    if (st) return st;
    size_t n = sdc_st_count(f->st);
    if (!n) return sdc_fail(err, SDC_E_FORMAT, "%s: no tensors: not a LoRA", f->path);
    f->modules = sdc_calloc(n, sizeof *f->modules);
    sdc_strmap index = {0};
    if (!f->modules) st = sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", f->path);
    for (size_t i = 0; !st && i < n; i++) st = add_key(f, &index, sdc_st_at(f->st, i), err);
    for (size_t i = 0; !st && i < f->n_modules; i++) st = check_module(f, &f->modules[i], err);
    sdc_strmap_clear(&index);
    return st;
}

sdc_status sdc_lora_set_open(const sdc_lora *loras, size_t n, sdc_lora_set **out, sdc_err *err) {
    *out = NULL;
    sdc_lora_set *set = sdc_calloc(1, sizeof *set);
    if (set) set->files = sdc_calloc(n ? n : 1, sizeof *set->files);
    if (!set || !set->files) {
        sdc_lora_set_close(set);
        return sdc_fail(err, SDC_E_NOMEM, "--lora: out of memory");
    }
    sdc_status st = SDC_OK;
    for (size_t i = 0; !st && i < n; i++) {
        set->files[i] = (lora_file){.path = loras[i].path, .scale = loras[i].scale};
        set->n_files++;
        st = parse_file(&set->files[i], err);
    }
    if (st) {
        sdc_lora_set_close(set);
        return st;
    }
    *out = set;
    return SDC_OK;
}

static int component_index(const char *component) {
    for (int c = 0; c < N_COMPONENTS; c++)
        if (!strcmp(component, COMPONENT_NAMES[c])) return c;
    return -1;
}

const char *sdc_lora_set_file_for(const sdc_lora_set *set, const char *component) {
    int c = component_index(component);
    for (size_t i = 0; set && c >= 0 && i < set->n_files; i++)
        if (set->files[i].has[c]) return set->files[i].path;
    return NULL;
}

/* ---------------------------------------------------------------- merging */

typedef struct lora_term {
    size_t target;
    size_t order; /* keeps the LoRAs' order within a target (qsort is not stable) */
    const sdc_tensor *down, *up;
    float factor; /* scale·alpha/rank */
    int64_t rank;
} lora_term;

typedef struct lora_target {
    sdc_tensor_addend addend; /* first: the callback gets back to its target from it */
    sdc_tensor merged;
    struct sdc_lora_merge *merge;
    size_t first_term, n_terms;
    uint64_t rows, cols; /* W viewed as [out, in·kh·kw] */
} lora_target;

struct sdc_lora_merge {
    lora_target *targets;
    size_t n_targets;
    lora_term *terms;
    size_t n_terms;
    float *factors;             /* the float32 factors of one target: per term up' [rows, r], down [r, cols] */
    const lora_target *decoded; /* whose factors are in `factors` */
};

void sdc_lora_merge_close(sdc_lora_merge *m) {
    if (!m) return;
    sdc_free(m->targets);
    sdc_free(m->terms);
    sdc_free(m->factors);
    sdc_free(m);
}

size_t sdc_lora_merge_count(const sdc_lora_merge *m) { return m->n_targets; }
const sdc_tensor *sdc_lora_merge_tensor(const sdc_lora_merge *m, size_t i) { return &m->targets[i].merged; }

static void decode_f32(const sdc_tensor *t, float *out) {
    switch (t->dtype) {
    case SDC_DT_F32: memcpy(out, t->data, t->numel * 4); break;
    case SDC_DT_F16: sdc_f16_to_f32_n(t->data, (uint8_t *)out, t->numel); break;
    case SDC_DT_BF16: sdc_bf16_to_f32_n(t->data, (uint8_t *)out, t->numel); break;
    default:
        for (uint64_t i = 0; i < t->numel; i++) out[i] = sdc_tensor_get_f32(t, i);
    }
}

static uint64_t term_floats(const lora_term *t, const lora_target *g) { return (uint64_t)t->rank * (g->rows + g->cols); }

/* The factors of target g into m->factors (sized for the largest target at open). */
static void decode_factors(sdc_lora_merge *m, const lora_target *g) {
    float *f = m->factors;
    for (size_t i = 0; i < g->n_terms; i++) {
        const lora_term *t = &m->terms[g->first_term + i];
        decode_f32(t->up, f); /* up' [rows, r] */
        for (uint64_t k = 0; k < g->rows * (uint64_t)t->rank; k++) f[k] *= t->factor;
        decode_f32(t->down, f + g->rows * (uint64_t)t->rank); /* down [r, cols] */
        f += term_floats(t, g);
    }
    m->decoded = g;
}

/* The merge's whole cost is here (r multiply-adds per weight element), so these loops are
   compiled to vectorise (as mil/values.c's counts: -O2's "very cheap" cost model alone leaves
   them scalar), and on x86-64 twice, for AVX2 and the baseline, picked at load time. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define VEC_DELTA __attribute__((optimize("vect-cost-model=dynamic", "no-trapping-math"), target_clones("avx2", "default")))
#elif defined(__GNUC__) && !defined(__clang__)
#define VEC_DELTA __attribute__((optimize("vect-cost-model=dynamic", "no-trapping-math")))
#else
#define VEC_DELTA
#endif

/* y += Σ_k u[k]·x_k over n elements, x_k = x + k·ld, four ranks a pass (a quarter of the loads
   and stores of y that one rank a pass would take). */
VEC_DELTA static void add_ranks(float *restrict y, const float *restrict u, const float *restrict x, uint64_t ld,
                                int64_t r, size_t n) {
    int64_t k = 0;
    for (; k + 4 <= r; k += 4) {
        const float *x0 = x + (uint64_t)k * ld, *x1 = x0 + ld, *x2 = x1 + ld, *x3 = x2 + ld;
        float u0 = u[k], u1 = u[k + 1], u2 = u[k + 2], u3 = u[k + 3];
        for (size_t i = 0; i < n; i++) y[i] += u0 * x0[i] + u1 * x1[i] + u2 * x2[i] + u3 * x3[i];
    }
    for (; k < r; k++) {
        const float *xk = x + (uint64_t)k * ld;
        float uk = u[k];
        for (size_t i = 0; i < n; i++) y[i] += uk * xk[i];
    }
}

/* acc[0, n) += ΔW elements [first, first + n): per row of the chunk, Σ_k up'[o, k]·down[k, cols]. */
static void add_delta(const sdc_tensor_addend *a, uint64_t first, size_t n, float *acc) {
    const lora_target *g = (const lora_target *)(const void *)a;
    sdc_lora_merge *m = g->merge;
    if (m->decoded != g) decode_factors(m, g);
    uint64_t row = first / g->cols, col = first % g->cols;
    for (size_t done = 0; done < n; row++, col = 0) {
        size_t len = (size_t)(g->cols - col < n - done ? g->cols - col : n - done);
        const float *f = m->factors;
        for (size_t i = 0; i < g->n_terms; i++) {
            const lora_term *t = &m->terms[g->first_term + i];
            const float *up = f + row * (uint64_t)t->rank, *down = f + g->rows * (uint64_t)t->rank;
            add_ranks(acc + done, up, down + col, g->cols, t->rank, len);
            f += term_floats(t, g);
        }
        done += len;
    }
}

/* The weight names of w spelled as kohya spells module paths ('.' → '_', without ".weight"),
   mapped to their index in w; `twice` holds the spellings two weights share (ambiguous).
   layers_per_block: the UNet's resnets per down block (one more per up block), which LDM-style
   paths are numbered by; 0 when the blocks differ (or w has none), where LDM numbering is not
   the one ldm_names knows. */
typedef struct kohya_names {
    sdc_strmap map, twice;
    char *text;
    int layers_per_block;
} kohya_names;

enum { MAX_BLOCKS = 16 };

/* Counts resnets per block: name "<kind>B.resnets.R.…" raises counts[B] to R + 1. */
static void count_resnets(const char *name, const char *kind, int counts[MAX_BLOCKS]) {
    if (!starts_with(name, kind)) return;
    char *end;
    long b = strtol(name + strlen(kind), &end, 10);
    if (end == name + strlen(kind) || b < 0 || b >= MAX_BLOCKS || !starts_with(end, ".resnets.")) return;
    long r = strtol(end + strlen(".resnets."), NULL, 10);
    if (r >= 0 && r < 1000 && r + 1 > counts[b]) counts[b] = (int)r + 1;
}

static int uniform_layers_per_block(const sdc_weights *w) {
    int down[MAX_BLOCKS] = {0}, up[MAX_BLOCKS] = {0};
    for (size_t i = 0; i < sdc_weights_count(w); i++) {
        count_resnets(sdc_weights_at(w, i)->name, "down_blocks.", down);
        count_resnets(sdc_weights_at(w, i)->name, "up_blocks.", up);
    }
    int layers = down[0];
    for (int b = 0; b < MAX_BLOCKS; b++)
        if ((down[b] || up[b]) && (down[b] != layers || (up[b] && up[b] != layers + 1))) return 0;
    return layers;
}

static sdc_status kohya_names_build(const sdc_weights *w, kohya_names *k, sdc_err *err) {
    size_t n = sdc_weights_count(w), bytes = 0;
    for (size_t i = 0; i < n; i++) bytes += strlen(sdc_weights_at(w, i)->name) + 1;
    k->layers_per_block = uniform_layers_per_block(w);
    k->text = sdc_malloc(bytes ? bytes : 1);
    if (!k->text) return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", sdc_weights_describe(w));
    char *p = k->text;
    for (size_t i = 0; i < n; i++) {
        const char *name = sdc_weights_at(w, i)->name;
        if (!ends_with(name, ".weight")) continue;
        size_t len = strlen(name) - strlen(".weight");
        for (size_t j = 0; j < len; j++) p[j] = name[j] == '.' ? '_' : name[j];
        p[len] = '\0';
        bool ok = sdc_strmap_get(&k->map, p) < 0                ? sdc_strmap_put(&k->map, p, (int)i)
                  : sdc_strmap_get(&k->twice, p) < 0 ? sdc_strmap_put(&k->twice, p, 0)
                                                              : true;
        if (!ok) return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", sdc_weights_describe(w));
        p += len + 1;
    }
    return SDC_OK;
}

static void kohya_names_free(kohya_names *k) {
    sdc_strmap_clear(&k->map);
    sdc_strmap_clear(&k->twice);
    sdc_free(k->text);
}

/* The weight whose kohya spelling is `path`, or NULL; an error when two weights share it. */
static const sdc_tensor *by_kohya_name(const lora_file *f, const lora_module *m, const sdc_weights *w,
                                       const kohya_names *k, const char *path, sdc_err *err, sdc_status *st) {
    if (sdc_strmap_get(&k->twice, path) >= 0) {
        *st = sdc_fail(err, SDC_E_FORMAT, "%s: key '%s' may name several weights of %s", f->path, m->key, sdc_weights_describe(w));
        return NULL;
    }
    int at = sdc_strmap_get(&k->map, path);
    return at >= 0 ? sdc_weights_at(w, (size_t)at) : NULL;
}

/* An LDM-style UNet path: its block structure mapped by ldm_names' table, the rest resolved
   like a diffusers-style path. */
static const sdc_tensor *by_ldm_name(const lora_file *f, const lora_module *m, const sdc_weights *w,
                                     const kohya_names *k, const char *path, sdc_err *err, sdc_status *st) {
    const char *ldm = ldm_style_module(m->component, path);
    if (!ldm) return NULL;
    if (!k->layers_per_block) {
        *st = sdc_fail(err, SDC_E_UNSUPPORTED,
                       "%s: key '%s' uses LDM-style module names (%s…), numbered by resnets per block, but the blocks "
                       "of %s differ in resnets: use a LoRA with diffusers-style names (down_blocks_…)",
                       f->path, m->key, ldm, sdc_weights_describe(w));
        return NULL;
    }
    char diffusers[1024];
    if (!sdc_ldm_kohya_to_diffusers(path, k->layers_per_block, diffusers, sizeof diffusers)) return NULL;
    return by_kohya_name(f, m, w, k, diffusers, err, st);
}

/* The weight a module updates, or NULL. */
static const sdc_tensor *resolve(const lora_file *f, const lora_module *m, const sdc_weights *w, const kohya_names *k,
                                 sdc_err *err, sdc_status *st) {
    const char *path = m->path + 2;
    if (m->style == STYLE_DOTTED) {
        char name[1024];
        if (!sdc_fmt(name, sizeof name, "%s.weight", path)) return NULL;
        return sdc_weights_find(w, name);
    }
    const sdc_tensor *t = by_kohya_name(f, m, w, k, path, err, st);
    return t || *st ? t : by_ldm_name(f, m, w, k, path, err, st);
}

/* A 1x1 kernel, or no kernel: [out, in] and [out, in, 1, 1] hold the same matrix. */
static bool kernel_is_1x1(const sdc_tensor *t) { return t->rank == 2 || (t->shape[2] == 1 && t->shape[3] == 1); }

/* ΔW = up·down fits W: W [out, K…] with up [out, r], down [r, K…] (same element count, and the
   same kernel, a linear layer's counting as 1x1). */
static sdc_status check_fit(const lora_file *f, const lora_module *m, const sdc_tensor *w, sdc_err *err) {
    const sdc_tensor *d = m->down, *u = m->up;
    bool same_kernel = d->rank == 4 && w->rank == 4 ? d->shape[2] == w->shape[2] && d->shape[3] == w->shape[3]
                                                    : kernel_is_1x1(d) && kernel_is_1x1(w);
    bool fits = (w->rank == 2 || w->rank == 4) && is_float(w->dtype) && u->shape[0] == w->shape[0] && same_kernel &&
                d->numel / (uint64_t)d->shape[0] == w->numel / (uint64_t)w->shape[0];
    if (fits) return SDC_OK;
    char a[128], b[128], c[128];
    return sdc_fail(err, SDC_E_FORMAT, "%s: key '%s': down %s and up %s do not fit weight '%s' %s", f->path, m->key,
                    sdc_shape_str(d->shape, d->rank, a, sizeof a), sdc_shape_str(u->shape, u->rank, b, sizeof b), w->name,
                    sdc_shape_str(w->shape, w->rank, c, sizeof c));
}

static int cmp_term(const void *a, const void *b) {
    const lora_term *x = a, *y = b;
    if (x->target != y->target) return x->target < y->target ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order;
}

/* Every module of component c matched to its weight, as terms (target indices into targets). */
static sdc_status collect_terms(const sdc_lora_set *set, int c, const sdc_weights *w, const kohya_names *k,
                                sdc_lora_merge *m, sdc_strmap *by_weight, sdc_err *err) {
    sdc_status st = SDC_OK;
    for (size_t fi = 0; !st && fi < set->n_files; fi++) {
        const lora_file *f = &set->files[fi];
        char missing[600] = "";
        size_t n_missing = 0;
        for (size_t i = 0; !st && i < f->n_modules; i++) {
            const lora_module *mod = &f->modules[i];
            if (mod->component != c) continue;
            const sdc_tensor *t = resolve(f, mod, w, k, err, &st);
            if (st) break;
            if (!t) {
                if (n_missing++ < 3) {
                    size_t used = strlen(missing);
                    snprintf(missing + used, sizeof missing - used, "%s%s", used ? ", " : "", mod->key);
                }
                continue;
            }
            if ((st = check_fit(f, mod, t, err))) break;
            int at = sdc_strmap_get(by_weight, t->name);
            if (at < 0) {
                at = (int)m->n_targets++;
                m->targets[at] = (lora_target){.merged = *t, .merge = m, .rows = (uint64_t)t->shape[0],
                                               .cols = t->numel / (uint64_t)t->shape[0]};
                if (!sdc_strmap_put(by_weight, t->name, at)) st = sdc_fail(err, SDC_E_NOMEM, "--lora: out of memory");
            }
            float alpha = mod->alpha ? sdc_tensor_get_f32(mod->alpha, 0) : (float)mod->down->shape[0];
            m->terms[m->n_terms] = (lora_term){.target = (size_t)at, .order = m->n_terms, .down = mod->down, .up = mod->up,
                                               .factor = f->scale * alpha / (float)mod->down->shape[0],
                                               .rank = mod->down->shape[0]};
            m->n_terms++;
        }
        if (!st && n_missing)
            st = sdc_fail(err, SDC_E_NOTFOUND, "%s: %zu LoRA modules match no weight of %s (%s): %s%s", f->path, n_missing,
                          COMPONENT_NAMES[c], sdc_weights_describe(w), missing, n_missing > 3 ? ", …" : "");
    }
    return st;
}

/* Terms grouped per target, the addends wired, and room for the largest target's factors. */
static sdc_status finish_merge(sdc_lora_merge *m, sdc_err *err) {
    qsort(m->terms, m->n_terms, sizeof *m->terms, cmp_term);
    for (size_t i = 0; i < m->n_terms; i++) {
        lora_target *g = &m->targets[m->terms[i].target];
        if (!g->n_terms) g->first_term = i;
        g->n_terms++;
    }
    uint64_t most = 0;
    for (size_t i = 0; i < m->n_targets; i++) {
        lora_target *g = &m->targets[i];
        g->addend.add = add_delta;
        g->merged.addend = &g->addend;
        uint64_t floats = 0;
        for (size_t j = 0; j < g->n_terms; j++) floats += term_floats(&m->terms[g->first_term + j], g);
        if (floats > most) most = floats;
    }
    m->factors = sdc_malloc((size_t)most * sizeof(float));
    return m->factors ? SDC_OK : sdc_fail(err, SDC_E_NOMEM, "--lora: out of memory for %llu factor values", (unsigned long long)most);
}

sdc_status sdc_lora_merge_open(const sdc_lora_set *set, const char *component, const sdc_weights *w, sdc_lora_merge **out,
                               sdc_err *err) {
    *out = NULL;
    int c = component_index(component);
    if (c < 0 || !sdc_lora_set_file_for(set, component)) return SDC_OK;
    size_t n = 0;
    for (size_t i = 0; i < set->n_files; i++) n += set->files[i].n_modules;
    sdc_lora_merge *m = sdc_calloc(1, sizeof *m);
    if (m) m->targets = sdc_calloc(n, sizeof *m->targets);
    if (m) m->terms = sdc_calloc(n, sizeof *m->terms);
    kohya_names k = {0};
    sdc_strmap by_weight = {0};
    sdc_status st = m && m->targets && m->terms ? SDC_OK : sdc_fail(err, SDC_E_NOMEM, "--lora: out of memory");
    if (!st) st = kohya_names_build(w, &k, err);
    if (!st) st = collect_terms(set, c, w, &k, m, &by_weight, err);
    if (!st) st = finish_merge(m, err);
    kohya_names_free(&k);
    sdc_strmap_clear(&by_weight);
    if (st) {
        sdc_lora_merge_close(m);
        return st;
    }
    *out = m;
    return SDC_OK;
}
