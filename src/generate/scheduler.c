/*
 * scheduler.c — diffusers 0.30.2's DDIM, DPMSolverMultistep, EulerAncestralDiscrete,
 * EulerDiscrete, LMSDiscrete and PNDM schedulers (see scheduler.h).
 *
 * Precision: diffusers keeps betas, alphas_cumprod and sigmas as float32 tensors and does the
 * rest in the sample's dtype. The tables here are rounded to float at the same points (so the
 * timesteps and sigmas are diffusers' float32 values), and every update is computed in double.
 */
#include "generate/scheduler.h"

#include <math.h>

/* ---------------------------------------------------------------------------- classes */

typedef enum kind { K_DDIM, K_DPM, K_EULER_A, K_EULER, K_LMS, K_PNDM, K_COUNT } kind;

enum {
    C_DDIM = 1 << K_DDIM,
    C_DPM = 1 << K_DPM,
    C_EULER_A = 1 << K_EULER_A,
    C_EULER = 1 << K_EULER,
    C_LMS = 1 << K_LMS,
    C_PNDM = 1 << K_PNDM,
    C_ALL = (1 << K_COUNT) - 1,
};

static const struct {
    const char *name;  /* the anchor's --scheduler name */
    const char *klass; /* diffusers' class, the config's _class_name */
} KINDS[K_COUNT] = {
    [K_DDIM] = {"DDIM", "DDIMScheduler"},
    [K_DPM] = {"DPMSolverMultistep", "DPMSolverMultistepScheduler"},
    [K_EULER_A] = {"EulerAncestralDiscrete", "EulerAncestralDiscreteScheduler"},
    [K_EULER] = {"EulerDiscrete", "EulerDiscreteScheduler"},
    [K_LMS] = {"LMSDiscrete", "LMSDiscreteScheduler"},
    [K_PNDM] = {"PNDM", "PNDMScheduler"},
};

/* ----------------------------------------------------------------------------- config */

enum { STR_MAX = 24 };

typedef struct cfg {
    long long num_train_timesteps, steps_offset, solver_order;
    double beta_start, beta_end, clip_sample_range, lambda_min_clipped;
    bool set_alpha_to_one, skip_prk_steps, clip_sample, lower_order_final, euler_at_final;
    char beta_schedule[STR_MAX], prediction_type[STR_MAX], timestep_spacing[STR_MAX], algorithm_type[STR_MAX],
        solver_type[STR_MAX], final_sigmas_type[STR_MAX], interpolation_type[STR_MAX], timestep_type[STR_MAX];
} cfg;

/* Each class's constructor defaults (diffusers 0.30.2's __init__ signatures). */
static void set_defaults(kind k, cfg *c) {
    *c = (cfg){.num_train_timesteps = 1000, .beta_start = 0.0001, .beta_end = 0.02, .clip_sample_range = 1.0,
               .lambda_min_clipped = -INFINITY, .solver_order = 2, .lower_order_final = true};
    snprintf(c->beta_schedule, STR_MAX, "linear");
    snprintf(c->prediction_type, STR_MAX, "epsilon");
    snprintf(c->timestep_spacing, STR_MAX, k == K_DDIM || k == K_PNDM ? "leading" : "linspace");
    snprintf(c->algorithm_type, STR_MAX, "dpmsolver++");
    snprintf(c->solver_type, STR_MAX, "midpoint");
    snprintf(c->final_sigmas_type, STR_MAX, "zero");
    snprintf(c->interpolation_type, STR_MAX, "linear");
    snprintf(c->timestep_type, STR_MAX, "discrete");
    c->clip_sample = k == K_DDIM;
    c->set_alpha_to_one = k == K_DDIM;
}

typedef enum ktype { T_INT, T_NUM, T_BOOL, T_STR, T_DEFAULT_ONLY, T_ANY } ktype;

/*
 * The keys of the six constructors. `classes` are the classes whose constructor takes the key;
 * for the others it is ignored, as from_config ignores it. T_DEFAULT_ONLY keys switch on what
 * is not implemented here: only `allowed` (their default, as JSON) is accepted. T_ANY keys
 * only matter for a feature refused by another key (thresholding, Karras sigmas).
 */
typedef struct key_row {
    const char *name;
    unsigned classes;
    ktype type;
    size_t offset;
    const char *allowed; /* T_STR: accepted values, '|'-separated; T_DEFAULT_ONLY: the default */
} key_row;

#define F(x) offsetof(cfg, x)
static const key_row KEYS[] = {
    {"num_train_timesteps", C_ALL, T_INT, F(num_train_timesteps), NULL},
    {"beta_start", C_ALL, T_NUM, F(beta_start), NULL},
    {"beta_end", C_ALL, T_NUM, F(beta_end), NULL},
    {"beta_schedule", C_ALL, T_STR, F(beta_schedule), "linear|scaled_linear|squaredcos_cap_v2"},
    {"prediction_type", C_ALL, T_STR, F(prediction_type), "epsilon|v_prediction|sample"},
    {"timestep_spacing", C_ALL, T_STR, F(timestep_spacing), "linspace|leading|trailing"},
    {"steps_offset", C_ALL, T_INT, F(steps_offset), NULL},
    {"set_alpha_to_one", C_DDIM | C_PNDM, T_BOOL, F(set_alpha_to_one), NULL},
    {"skip_prk_steps", C_PNDM, T_BOOL, F(skip_prk_steps), NULL},
    {"clip_sample", C_DDIM, T_BOOL, F(clip_sample), NULL},
    {"clip_sample_range", C_DDIM, T_NUM, F(clip_sample_range), NULL},
    {"algorithm_type", C_DPM, T_STR, F(algorithm_type), "dpmsolver++|dpmsolver|deis"},
    {"solver_order", C_DPM, T_INT, F(solver_order), NULL},
    {"solver_type", C_DPM, T_STR, F(solver_type), "midpoint|heun|logrho|bh1|bh2"},
    {"lower_order_final", C_DPM, T_BOOL, F(lower_order_final), NULL},
    {"euler_at_final", C_DPM, T_BOOL, F(euler_at_final), NULL},
    {"final_sigmas_type", C_DPM | C_EULER, T_STR, F(final_sigmas_type), "zero|sigma_min"},
    {"lambda_min_clipped", C_DPM, T_NUM, F(lambda_min_clipped), NULL},
    {"interpolation_type", C_EULER, T_STR, F(interpolation_type), "linear"},
    {"timestep_type", C_EULER, T_STR, F(timestep_type), "discrete"},
    {"trained_betas", C_ALL, T_DEFAULT_ONLY, 0, "null"},
    {"rescale_betas_zero_snr", C_DDIM | C_DPM | C_EULER_A | C_EULER, T_DEFAULT_ONLY, 0, "false"},
    {"thresholding", C_DDIM | C_DPM, T_DEFAULT_ONLY, 0, "false"},
    {"use_karras_sigmas", C_DPM | C_EULER | C_LMS, T_DEFAULT_ONLY, 0, "false"},
    {"use_lu_lambdas", C_DPM, T_DEFAULT_ONLY, 0, "false"},
    {"variance_type", C_DPM, T_DEFAULT_ONLY, 0, "null"},
    {"dynamic_thresholding_ratio", C_DDIM | C_DPM, T_ANY, 0, NULL},
    {"sample_max_value", C_DDIM | C_DPM, T_ANY, 0, NULL},
    {"sigma_min", C_EULER, T_ANY, 0, NULL},
    {"sigma_max", C_EULER, T_ANY, 0, NULL},
};
#undef F

/* Whether `v` is one of the '|'-separated `list`. */
static bool in_list(const char *v, const char *list) {
    size_t n = strlen(v);
    for (const char *p = list; p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && !strncmp(p, v, n)) return true;
        p = bar ? bar + 1 : NULL;
    }
    return false;
}

static sdc_status read_key(const key_row *r, const json_t *v, cfg *c, const char *file, sdc_err *err) {
    char *field = (char *)c + r->offset;
    switch (r->type) {
    case T_INT:
        if (!json_is_integer(v)) return sdc_fail(err, SDC_E_FORMAT, "%s: %s must be an integer", file, r->name);
        *(long long *)field = json_integer_value(v);
        return SDC_OK;
    case T_NUM:
        if (!json_is_number(v)) return sdc_fail(err, SDC_E_FORMAT, "%s: %s must be a number", file, r->name);
        *(double *)field = json_number_value(v);
        return SDC_OK;
    case T_BOOL:
        if (!json_is_boolean(v)) return sdc_fail(err, SDC_E_FORMAT, "%s: %s must be true or false", file, r->name);
        *(bool *)field = json_is_true(v);
        return SDC_OK;
    case T_STR:
        if (!json_is_string(v)) return sdc_fail(err, SDC_E_FORMAT, "%s: %s must be a string", file, r->name);
        if (!in_list(json_string_value(v), r->allowed))
            return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: %s \"%.40s\" is not supported (supported: %s)", file, r->name,
                            json_string_value(v), r->allowed);
        snprintf(field, STR_MAX, "%s", json_string_value(v));
        return SDC_OK;
    case T_DEFAULT_ONLY: {
        json_t *d = json_loads(r->allowed, JSON_DECODE_ANY, NULL);
        bool ok = d && json_equal(d, (json_t *)v);
        json_decref(d);
        if (!ok) {
            char *text = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
            sdc_fail(err, SDC_E_UNSUPPORTED, "%s: %s = %.40s is not supported (only %s)", file, r->name,
                     text ? text : "?", r->allowed);
            free(text);
            return err->code;
        }
        return SDC_OK;
    }
    case T_ANY:
        return SDC_OK;
    }
    return SDC_OK;
}

/* diffusers' own renames: deis becomes dpmsolver++, the UniPC solver types midpoint. */
static void normalise(cfg *c) {
    if (!strcmp(c->algorithm_type, "deis")) snprintf(c->algorithm_type, STR_MAX, "dpmsolver++");
    if (strcmp(c->solver_type, "heun")) snprintf(c->solver_type, STR_MAX, "midpoint");
}

static sdc_status check_ranges(kind k, const cfg *c, int steps, const char *file, sdc_err *err) {
    if (c->num_train_timesteps < 2 || c->num_train_timesteps > 100000)
        return sdc_fail(err, SDC_E_FORMAT, "%s: num_train_timesteps %lld is out of range (2..100000)", file,
                        c->num_train_timesteps);
    if (!(c->beta_start >= 0 && c->beta_end < 1 && c->beta_start <= c->beta_end))
        return sdc_fail(err, SDC_E_FORMAT, "%s: beta_start %g and beta_end %g must satisfy 0 <= start <= end < 1", file,
                        c->beta_start, c->beta_end);
    if (c->steps_offset < 0 || c->steps_offset >= c->num_train_timesteps)
        return sdc_fail(err, SDC_E_FORMAT, "%s: steps_offset %lld is out of range", file, c->steps_offset);
    if (steps < 1 || steps > c->num_train_timesteps)
        return sdc_fail(err, SDC_E_ARG, "%s: %d inference steps: must be 1..num_train_timesteps (%lld)", file, steps,
                        c->num_train_timesteps);
    if (!strcmp(c->prediction_type, "sample") && (k == K_EULER_A || k == K_PNDM))
        return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: prediction_type \"sample\" is not supported by %s (as in diffusers)",
                        file, KINDS[k].klass);
    if (k == K_DPM) {
        if (c->solver_order < 1 || c->solver_order > 3)
            return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: solver_order %lld is not supported (1, 2 or 3)", file,
                            c->solver_order);
    }
    if (k == K_PNDM && !c->skip_prk_steps && steps < 4)
        return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: PNDM with Runge-Kutta warm-up steps needs at least 4 steps", file);
    return SDC_OK;
}

static sdc_status read_config(kind k, const json_t *config, const char *file, cfg *c, sdc_err *err) {
    set_defaults(k, c);
    if (!json_is_object(config)) return sdc_fail(err, SDC_E_FORMAT, "%s: not a JSON object", file);
    for (size_t i = 0; i < SDC_COUNT_OF(KEYS); i++) {
        const json_t *v = json_object_get(config, KEYS[i].name);
        if (!v || !(KEYS[i].classes & (1u << k))) continue;
        sdc_status s = read_key(&KEYS[i], v, c, file, err);
        if (s) return s;
    }
    /* checked on the name as written, before the renames (diffusers refuses "deis" too) */
    if (k == K_DPM && strcmp(c->algorithm_type, "dpmsolver++") && !strcmp(c->final_sigmas_type, "zero"))
        return sdc_fail(err, SDC_E_UNSUPPORTED,
                        "%s: final_sigmas_type \"zero\" is not supported with algorithm_type \"%s\" (as in diffusers)",
                        file, c->algorithm_type);
    normalise(c);
    return SDC_OK;
}

/* ----------------------------------------------------------------------------- state */

enum { MAX_HISTORY = 4 };

struct sdc_scheduler {
    kind k;
    cfg c;
    int num_inference_steps; /* as asked */
    int T;                   /* num_train_timesteps */
    float *acp;              /* alphas_cumprod [T] */
    double final_acp;        /* DDIM/PNDM: alpha_prod at prev_timestep < 0 */
    int steps;
    double *timesteps; /* [steps] */
    double *sigmas;    /* [steps + 1]: Euler, Euler ancestral, LMS, DPM */
    int n_prk;         /* PNDM: the first n_prk steps are Runge-Kutta steps */
    double init_noise_sigma;
    /* stepping */
    int begin, next;
    size_t n;
    double *hist[MAX_HISTORY]; /* LMS derivatives, DPM model outputs, PNDM ets; newest last */
    int n_hist;
    double *cur_sample, *cur_model_output, *work; /* PNDM */
    bool have_cur_sample;
    int counter, lower_order_nums;
};

/* -------------------------------------------------------------------- noise schedules */

/* The betas as torch float32 tensors: a linspace between the float32 ends, squared in float for
   scaled_linear; squaredcos_cap_v2 (betas_for_alpha_bar, cosine) in double. torch's own
   linspace rounds differently in its vectorised and scalar lanes (CPU-dependent): this may
   differ from it by one float32 ulp in some betas, which moves sigmas by ~1e-7 relative. */
static void make_betas(const cfg *c, int T, float *betas) {
    if (!strcmp(c->beta_schedule, "squaredcos_cap_v2")) {
        for (int i = 0; i < T; i++) {
            double t1 = (double)i / T, t2 = (double)(i + 1) / T;
            double a1 = cos((t1 + 0.008) / 1.008 * M_PI / 2), a2 = cos((t2 + 0.008) / 1.008 * M_PI / 2);
            double b = 1 - (a2 * a2) / (a1 * a1);
            betas[i] = (float)(b < 0.999 ? b : 0.999);
        }
        return;
    }
    bool scaled = !strcmp(c->beta_schedule, "scaled_linear");
    double start = (float)(scaled ? sqrt(c->beta_start) : c->beta_start);
    double end = (float)(scaled ? sqrt(c->beta_end) : c->beta_end);
    for (int i = 0; i < T; i++) {
        float v = (float)(start + (end - start) * i / (T - 1));
        betas[i] = scaled ? v * v : v;
    }
}

static void make_alphas_cumprod(const cfg *c, int T, float *acp) {
    make_betas(c, T, acp);
    double cum = 1.0; /* torch's CPU cumprod accumulates float in double */
    for (int i = 0; i < T; i++) {
        cum *= (double)(1.0f - acp[i]);
        acp[i] = (float)cum;
    }
}

/* sqrt((1 - acp) / acp) as diffusers computes it on float32 tensors. */
static float train_sigma(const float *acp, int t) { return sqrtf((1.0f - acp[t]) / acp[t]); }

/* np.interp(x, arange(T), train sigmas). */
static double interp_sigma(const float *acp, int T, double x) {
    if (!(x > 0)) return train_sigma(acp, 0);
    if (x >= T - 1) return train_sigma(acp, T - 1);
    int j = (int)floor(x);
    if (x == j) return train_sigma(acp, j);
    double y0 = train_sigma(acp, j), y1 = train_sigma(acp, j + 1);
    return (y1 - y0) * (x - j) + y0;
}

/* ----------------------------------------------------------------------- timesteps */

/* numpy's arange(start, stop, step) length for a negative step. */
static int arange_len(double start, double stop, double step) {
    double len = ceil((stop - start) / step);
    return len > 0 ? (int)len : 0;
}

/* The descending spacing every class but PNDM uses, before its own dtype: n values (fewer
   for DPM's trailing spacing with a clipped last timestep). `last` is the end of the range
   (T, or DPM's clipped last timestep), `extra` 1 for DPM (n + 1 points, the last dropped). */
static int spacing(const cfg *c, int T, int last, int n, int extra, bool round_linspace, double *out) {
    const char *sp = c->timestep_spacing;
    if (!strcmp(sp, "linspace")) {
        int m = n + extra;
        double step = m > 1 ? (double)(last - 1) / (m - 1) : 0;
        for (int i = 0; i < n; i++) {
            int j = m - 1 - i;
            double v = m > 1 && j == m - 1 ? (double)(last - 1) : j * step;
            out[i] = round_linspace ? nearbyint(v) : v;
        }
        return n;
    }
    if (!strcmp(sp, "leading")) {
        long ratio = last / (n + extra);
        for (int i = 0; i < n; i++) out[i] = (double)((long)(n + extra - 1 - i) * ratio + c->steps_offset);
        return n;
    }
    double ratio = (double)T / n; /* trailing */
    int len = arange_len(last, 0, -ratio);
    for (int i = 0; i < len; i++) out[i] = nearbyint(last + i * -ratio) - 1;
    return len;
}

/* PNDM's ascending _timesteps, then its PRK and PLMS lists. */
static int pndm_timesteps(sdc_scheduler *s, double *out) {
    const cfg *c = &s->c;
    int n = s->num_inference_steps, T = s->T;
    double *asc = sdc_malloc(sizeof(double) * (size_t)(n + 1));
    if (!asc) return -1;
    if (!strcmp(c->timestep_spacing, "trailing")) {
        int len = spacing(c, T, T, n, 0, true, asc); /* descending; reverse */
        for (int i = 0; i < len / 2; i++) {
            double t = asc[i];
            asc[i] = asc[len - 1 - i];
            asc[len - 1 - i] = t;
        }
        n = len;
    } else {
        double *desc = out;
        spacing(c, T, T, n, 0, true, desc);
        for (int i = 0; i < n; i++) asc[i] = desc[n - 1 - i];
    }
    int k = 0;
    if (c->skip_prk_steps) {
        /* concat(_t[:-1], _t[-2:-1], _t[-1:]) reversed: the second to last one twice */
        double tmp[2] = {n >= 2 ? asc[n - 2] : 0, asc[n - 1]};
        out[k++] = tmp[1];
        if (n >= 2) out[k++] = tmp[0];
        for (int i = n - 2; i >= 0; i--) out[k++] = asc[i];
        s->n_prk = 0;
    } else {
        /* the last 4 timesteps, each followed by itself + T // n // 2, repeated as diffusers
           builds prk_timesteps, then the rest (all but the last 3) in PLMS order */
        int half = T / s->num_inference_steps / 2;
        double base[8];
        for (int i = 0; i < 4; i++) base[2 * i] = asc[n - 4 + i], base[2 * i + 1] = asc[n - 4 + i] + half;
        double rep[14];
        for (int i = 0; i < 7; i++) rep[2 * i] = rep[2 * i + 1] = base[i];
        for (int i = 12; i >= 1; i--) out[k++] = rep[i];
        s->n_prk = 12;
        for (int i = n - 4; i >= 0; i--) out[k++] = asc[i];
    }
    sdc_free(asc);
    return k;
}

/* DPM's last timestep: lambda_min_clipped cuts the schedule's noisy end. */
static int dpm_last_timestep(const sdc_scheduler *s) {
    if (!(s->c.lambda_min_clipped > -INFINITY)) return s->T;
    int idx = 0; /* searchsorted(flip(lambda_t), v): the first flipped lambda >= v */
    for (int i = s->T - 1; i >= 0; i--, idx++) {
        float a = sqrtf(s->acp[i]), sg = sqrtf(1.0f - s->acp[i]);
        float lambda = logf(a) - logf(sg);
        if (lambda >= s->c.lambda_min_clipped) break;
    }
    return s->T - idx;
}

static sdc_status make_schedule(sdc_scheduler *s, const char *file, sdc_err *err) {
    int n = s->num_inference_steps, T = s->T;
    size_t cap = (size_t)n + 16;
    s->timesteps = sdc_calloc(cap, sizeof(double));
    s->sigmas = sdc_calloc(cap + 1, sizeof(double));
    if (!s->timesteps || !s->sigmas) return sdc_fail(err, SDC_E_NOMEM, "out of memory");
    switch (s->k) {
    case K_DDIM:
        s->steps = spacing(&s->c, T, T, n, 0, true, s->timesteps);
        break;
    case K_PNDM:
        s->steps = pndm_timesteps(s, s->timesteps);
        if (s->steps < 0) return sdc_fail(err, SDC_E_NOMEM, "out of memory");
        break;
    case K_DPM:
        s->steps = spacing(&s->c, T, dpm_last_timestep(s), n, 1, true, s->timesteps);
        break;
    default: /* the sigma schedulers keep float32 timesteps */
        s->steps = spacing(&s->c, T, T, n, 0, false, s->timesteps);
        for (int i = 0; i < s->steps; i++) s->timesteps[i] = (float)s->timesteps[i];
        break;
    }
    if (s->steps < 1) return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: the schedule has no timestep", file);
    if (s->k == K_DDIM || s->k == K_PNDM)
        for (int i = 0; i < s->steps; i++)
            if (s->timesteps[i] < 0 || s->timesteps[i] >= T)
                return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: timestep %.0f is outside 0..%d (steps_offset too large)",
                                file, s->timesteps[i], T - 1);
    for (int i = 0; i < s->steps; i++) s->sigmas[i] = (float)interp_sigma(s->acp, T, s->timesteps[i]);
    bool sigma_min = (s->k == K_EULER || s->k == K_DPM) && !strcmp(s->c.final_sigmas_type, "sigma_min");
    s->sigmas[s->steps] = sigma_min ? train_sigma(s->acp, 0) : 0.0;
    return SDC_OK;
}

static void set_init_noise_sigma(sdc_scheduler *s) {
    s->init_noise_sigma = 1.0;
    if (s->k != K_EULER && s->k != K_EULER_A && s->k != K_LMS) return;
    float mx = 0;
    for (int i = 0; i <= s->steps; i++) mx = fmaxf(mx, (float)s->sigmas[i]);
    bool plain = !strcmp(s->c.timestep_spacing, "linspace") || !strcmp(s->c.timestep_spacing, "trailing");
    s->init_noise_sigma = plain ? mx : sqrtf(mx * mx + 1.0f);
}

/* ----------------------------------------------------------------------------- API */

static int find_kind(const char *name) {
    for (int k = 0; k < K_COUNT; k++)
        if (!strcmp(name, KINDS[k].name) || !strcmp(name, KINDS[k].klass)) return k;
    return -1;
}

sdc_status sdc_scheduler_open(const char *kind_name, const json_t *config, const char *config_name,
                              int num_inference_steps, sdc_scheduler **out, sdc_err *err) {
    *out = NULL;
    const char *file = config_name ? config_name : "scheduler_config.json";
    if (!kind_name) {
        const json_t *cn = json_is_object(config) ? json_object_get(config, "_class_name") : NULL;
        if (!json_is_string(cn)) return sdc_fail(err, SDC_E_FORMAT, "%s: no _class_name string", file);
        kind_name = json_string_value(cn);
    }
    int k = find_kind(kind_name);
    if (k < 0)
        return sdc_fail(err, SDC_E_UNSUPPORTED,
                        "%s: scheduler '%.60s' is not supported (DDIM, DPMSolverMultistep, EulerAncestralDiscrete, "
                        "EulerDiscrete, LMSDiscrete, PNDM)",
                        file, kind_name);
    sdc_scheduler *s = sdc_calloc(1, sizeof *s);
    if (!s) return sdc_fail(err, SDC_E_NOMEM, "out of memory");
    s->k = (kind)k;
    s->num_inference_steps = num_inference_steps;
    sdc_status st = read_config(s->k, config, file, &s->c, err);
    if (!st) st = check_ranges(s->k, &s->c, num_inference_steps, file, err);
    if (!st) {
        s->T = (int)s->c.num_train_timesteps;
        s->acp = sdc_malloc(sizeof(float) * (size_t)s->T);
        if (!s->acp) st = sdc_fail(err, SDC_E_NOMEM, "out of memory");
    }
    if (!st) {
        make_alphas_cumprod(&s->c, s->T, s->acp);
        s->final_acp = s->c.set_alpha_to_one ? 1.0 : s->acp[0];
        st = make_schedule(s, file, err);
    }
    if (st) {
        sdc_scheduler_free(s);
        return st;
    }
    set_init_noise_sigma(s);
    *out = s;
    return SDC_OK;
}

void sdc_scheduler_free(sdc_scheduler *s) {
    if (!s) return;
    for (int i = 0; i < MAX_HISTORY; i++) sdc_free(s->hist[i]);
    sdc_free(s->cur_sample);
    sdc_free(s->cur_model_output);
    sdc_free(s->work);
    sdc_free(s->acp);
    sdc_free(s->timesteps);
    sdc_free(s->sigmas);
    sdc_free(s);
}

const char *sdc_scheduler_name(const sdc_scheduler *s) { return KINDS[s->k].klass; }
int sdc_scheduler_steps(const sdc_scheduler *s) { return s->steps; }
double sdc_scheduler_init_noise_sigma(const sdc_scheduler *s) { return s->init_noise_sigma; }
int sdc_scheduler_order(const sdc_scheduler *s) { return 1; }

double sdc_scheduler_timestep(const sdc_scheduler *s, int i) {
    SDC_ASSERT(i >= 0 && i < s->steps);
    return s->timesteps[i];
}

static bool uses_sigmas(const sdc_scheduler *s) { return s->k == K_EULER || s->k == K_EULER_A || s->k == K_LMS; }

void sdc_scheduler_scale_model_input(const sdc_scheduler *s, int i, float *latents, size_t n) {
    SDC_ASSERT(i >= 0 && i < s->steps);
    if (!uses_sigmas(s)) return;
    float sigma = (float)s->sigmas[i];
    float d = sqrtf(sigma * sigma + 1.0f); /* in float32, as torch divides */
    for (size_t j = 0; j < n; j++) latents[j] /= d;
}

void sdc_scheduler_set_begin_index(sdc_scheduler *s, int begin) {
    SDC_ASSERT(begin >= 0 && begin <= s->steps);
    s->begin = s->next = begin;
}

int sdc_scheduler_img2img_start(sdc_scheduler *s, double strength) {
    int n = s->num_inference_steps;
    int init = (int)(n * strength);
    if (init > n) init = n;
    if (init < 0) init = 0;
    int start = n - init;
    int begin = start * sdc_scheduler_order(s);
    if (begin > s->steps) begin = s->steps;
    sdc_scheduler_set_begin_index(s, begin);
    return begin;
}

void sdc_scheduler_add_noise(const sdc_scheduler *s, int i, const float *noise, float *latents, size_t n) {
    SDC_ASSERT(i >= 0 && i < s->steps);
    double a, sg;
    if (uses_sigmas(s)) {
        a = 1.0, sg = (float)s->sigmas[i];
    } else if (s->k == K_DPM) {
        double sigma = (float)s->sigmas[i];
        a = 1.0 / sqrt(sigma * sigma + 1.0), sg = sigma * a;
    } else {
        double acp = s->acp[(int)s->timesteps[i]];
        a = sqrt(acp), sg = sqrt(1.0 - acp);
    }
    for (size_t j = 0; j < n; j++) latents[j] = (float)(a * latents[j] + sg * noise[j]);
}

/* ------------------------------------------------------------------------------ steps */

static bool pred_is(const sdc_scheduler *s, const char *p) { return !strcmp(s->c.prediction_type, p); }

/* Pushes a history entry (newest last), dropping the oldest beyond `keep`. */
static double *push_history(sdc_scheduler *s, int keep) {
    SDC_ASSERT(keep >= 1 && keep <= MAX_HISTORY && s->n_hist <= keep);
    if (s->n_hist < keep && s->n_hist < MAX_HISTORY) return s->hist[s->n_hist++];
    double *old = s->hist[0];
    for (int i = 0; i + 1 < s->n_hist && i + 1 < MAX_HISTORY; i++) s->hist[i] = s->hist[i + 1];
    s->hist[s->n_hist - 1] = old;
    return old;
}

static void step_ddim(sdc_scheduler *s, int i, const float *mo, float *x, size_t n) {
    int t = (int)s->timesteps[i], prev = t - s->T / s->num_inference_steps;
    double at = s->acp[t], ap = prev >= 0 ? s->acp[prev] : s->final_acp, bt = 1 - at;
    double sa = sqrt(at), sb = sqrt(bt), r = s->c.clip_sample_range;
    for (size_t j = 0; j < n; j++) {
        double e = mo[j], xs = x[j], x0, pe;
        if (pred_is(s, "epsilon"))
            x0 = (xs - sb * e) / sa, pe = e;
        else if (pred_is(s, "v_prediction"))
            x0 = sa * xs - sb * e, pe = sa * e + sb * xs;
        else
            x0 = e, pe = (xs - sa * x0) / sb;
        if (s->c.clip_sample) x0 = fmin(fmax(x0, -r), r);
        x[j] = (float)(sqrt(ap) * x0 + sqrt(1 - ap) * pe);
    }
}

/* PNDM's _get_prev_sample, element by element into out. */
static void pndm_prev(const sdc_scheduler *s, const double *sample, int t, int prev, const double *mo, float *out,
                      size_t n) {
    double at = s->acp[t], ap = prev >= 0 ? s->acp[prev] : s->final_acp, bt = 1 - at, bp = 1 - ap;
    double coeff = sqrt(ap / at), denom = at * sqrt(bp) + sqrt(at * bt * ap);
    bool v = pred_is(s, "v_prediction");
    for (size_t j = 0; j < n; j++) {
        double m = v ? sqrt(at) * mo[j] + sqrt(bt) * sample[j] : mo[j];
        out[j] = (float)(coeff * sample[j] - (ap - at) * m / denom);
    }
}

static void step_pndm_prk(sdc_scheduler *s, int i, const float *mo, float *x, size_t n) {
    int t = (int)s->timesteps[i], c = s->counter;
    int diff = c % 2 ? 0 : s->T / s->num_inference_steps / 2;
    int prev = t - diff;
    t = (int)s->timesteps[c / 4 * 4];
    double *m = s->work, *sample = s->work + n;
    for (size_t j = 0; j < n; j++) m[j] = mo[j];
    if (c % 4 == 0) {
        for (size_t j = 0; j < n; j++) s->cur_model_output[j] += 1.0 / 6 * mo[j];
        memcpy(push_history(s, MAX_HISTORY), m, sizeof(double) * n);
        for (size_t j = 0; j < n; j++) s->cur_sample[j] = x[j];
        s->have_cur_sample = true;
    } else if (c % 4 == 1 || c % 4 == 2) {
        for (size_t j = 0; j < n; j++) s->cur_model_output[j] += 1.0 / 3 * mo[j];
    } else {
        for (size_t j = 0; j < n; j++) m[j] = s->cur_model_output[j] + 1.0 / 6 * mo[j], s->cur_model_output[j] = 0;
    }
    for (size_t j = 0; j < n; j++) sample[j] = s->have_cur_sample ? s->cur_sample[j] : x[j];
    pndm_prev(s, sample, t, prev, m, x, n);
    s->counter++;
}

static void step_pndm_plms(sdc_scheduler *s, int i, const float *mo, float *x, size_t n) {
    int ratio = s->T / s->num_inference_steps;
    int t = (int)s->timesteps[i], prev = t - ratio;
    double *m = s->work, *sample = s->work + n;
    if (s->counter != 1) {
        double *e = push_history(s, MAX_HISTORY); /* ets[-3:] + [model_output] */
        for (size_t j = 0; j < n; j++) e[j] = mo[j];
    } else {
        prev = t;
        t = t + ratio;
    }
    for (size_t j = 0; j < n; j++) sample[j] = x[j];
    double *const *e = s->hist + s->n_hist - 1; /* e[0] newest, e[-1] before it, ... */
    if (s->n_hist == 1 && s->counter == 0) {
        for (size_t j = 0; j < n; j++) m[j] = mo[j], s->cur_sample[j] = x[j];
        s->have_cur_sample = true;
    } else if (s->n_hist == 1 && s->counter == 1) {
        for (size_t j = 0; j < n; j++) m[j] = ((double)mo[j] + e[0][j]) / 2, sample[j] = s->cur_sample[j];
        s->have_cur_sample = false;
    } else if (s->n_hist == 2) {
        for (size_t j = 0; j < n; j++) m[j] = (3 * e[0][j] - e[-1][j]) / 2;
    } else if (s->n_hist == 3) {
        for (size_t j = 0; j < n; j++) m[j] = (23 * e[0][j] - 16 * e[-1][j] + 5 * e[-2][j]) / 12;
    } else {
        for (size_t j = 0; j < n; j++)
            m[j] = (1.0 / 24) * (55 * e[0][j] - 59 * e[-1][j] + 37 * e[-2][j] - 9 * e[-3][j]);
    }
    pndm_prev(s, sample, t, prev, m, x, n);
    s->counter++;
}

/* x0 (or, for the Euler family, the denoised sample) from the model output at sigma. */
static double sigma_x0(const sdc_scheduler *s, double sigma, double e, double x) {
    if (pred_is(s, "epsilon")) return x - sigma * e;
    if (pred_is(s, "v_prediction")) return e * (-sigma / sqrt(sigma * sigma + 1)) + x / (sigma * sigma + 1);
    return e;
}

static void step_euler(sdc_scheduler *s, int i, const float *mo, float *x, size_t n) {
    double sigma = s->sigmas[i], dt = s->sigmas[i + 1] - sigma;
    for (size_t j = 0; j < n; j++) {
        double xs = x[j], d = (xs - sigma_x0(s, sigma, mo[j], xs)) / sigma;
        x[j] = (float)(xs + d * dt);
    }
}

static void step_euler_ancestral(sdc_scheduler *s, int i, const float *mo, float *x, size_t n, sdc_rng *rng) {
    double from = s->sigmas[i], to = s->sigmas[i + 1];
    double up = sqrt(to * to * (from * from - to * to) / (from * from));
    double down = sqrt(fmax(to * to - up * up, 0)), dt = down - from;
    for (size_t j = 0; j < n; j++) {
        double xs = x[j], d = (xs - sigma_x0(s, from, mo[j], xs)) / from;
        x[j] = (float)(xs + d * dt);
    }
    for (size_t j = 0; j < n; j++) x[j] = (float)(x[j] + (double)(float)sdc_rng_gauss(rng) * up);
}

/* 4-point Gauss-Legendre: exact for the LMS integrands (polynomials of degree <= 3), where
   diffusers calls scipy's adaptive quad. */
static double lms_coefficient(const sdc_scheduler *s, int order, int t, int cur) {
    static const double X[4] = {-0.8611363115940526, -0.3399810435848563, 0.3399810435848563, 0.8611363115940526};
    static const double W[4] = {0.3478548451374538, 0.6521451548625461, 0.6521451548625461, 0.3478548451374538};
    const double *sg = s->sigmas;
    double a = sg[t], b = sg[t + 1], half = (b - a) / 2, mid = (a + b) / 2, sum = 0;
    for (int q = 0; q < 4; q++) {
        double tau = mid + half * X[q], prod = 1;
        for (int k = 0; k < order; k++)
            if (k != cur) prod *= (tau - sg[t - k]) / (sg[t - cur] - sg[t - k]);
        sum += W[q] * prod;
    }
    return sum * half;
}

static void step_lms(sdc_scheduler *s, int i, const float *mo, float *x, size_t n) {
    double sigma = s->sigmas[i];
    double *d = push_history(s, 4);
    for (size_t j = 0; j < n; j++) d[j] = (x[j] - sigma_x0(s, sigma, mo[j], x[j])) / sigma;
    int order = i + 1 < 4 ? i + 1 : 4, used = order < s->n_hist ? order : s->n_hist;
    double coeff[4];
    for (int c = 0; c < used; c++) coeff[c] = lms_coefficient(s, order, i, c);
    for (size_t j = 0; j < n; j++) {
        double acc = x[j];
        for (int c = 0; c < used; c++) acc += coeff[c] * s->hist[s->n_hist - 1 - c][j];
        x[j] = (float)acc;
    }
}

/* DPM-Solver's alpha_t, sigma_t and lambda_t of a sigma. */
typedef struct dpm_point {
    double alpha, sigma, lambda;
} dpm_point;

static dpm_point dpm_at(double sigma) {
    dpm_point p;
    p.alpha = 1.0 / sqrt(sigma * sigma + 1);
    p.sigma = sigma * p.alpha;
    p.lambda = log(p.alpha) - log(p.sigma);
    return p;
}

static void step_dpm(sdc_scheduler *s, int i, const float *mo, float *x, size_t n) {
    int last = s->steps - 1;
    bool small = s->c.lower_order_final && s->steps < 15;
    bool lower_final = i == last && (s->c.euler_at_final || small || !strcmp(s->c.final_sigmas_type, "zero"));
    bool lower_second = i == last - 1 && small;
    bool pp = !strcmp(s->c.algorithm_type, "dpmsolver++"), heun = !strcmp(s->c.solver_type, "heun");
    dpm_point cur = dpm_at(s->sigmas[i]), t = dpm_at(s->sigmas[i + 1]);
    /* the converted model output: x0 for dpmsolver++, epsilon for dpmsolver */
    double *m0 = push_history(s, (int)s->c.solver_order);
    for (size_t j = 0; j < n; j++) {
        double e = mo[j], xs = x[j];
        if (pp)
            m0[j] = pred_is(s, "epsilon") ? (xs - cur.sigma * e) / cur.alpha
                    : pred_is(s, "v_prediction") ? cur.alpha * xs - cur.sigma * e
                                                  : e;
        else
            m0[j] = pred_is(s, "epsilon") ? e
                    : pred_is(s, "v_prediction") ? cur.alpha * e + cur.sigma * xs
                                                  : (xs - cur.alpha * e) / cur.sigma;
    }
    int order = (s->c.solver_order == 1 || s->lower_order_nums < 1 || lower_final) ? 1
                : (s->c.solver_order == 2 || s->lower_order_nums < 2 || lower_second) ? 2
                                                                                       : 3;
    double h = t.lambda - cur.lambda;
    /* x_t = cs * x + c0 * D0 + c1 * D1 + c2 * D2 */
    double cs = pp ? t.sigma / cur.sigma : t.alpha / cur.alpha;
    double em1 = pp ? exp(-h) - 1.0 : exp(h) - 1.0, scale = pp ? t.alpha : t.sigma;
    double c0 = -scale * em1, c1 = 0, c2 = 0, r0 = 0, r1 = 0;
    const double *m1 = order >= 2 ? s->hist[s->n_hist - 2] : NULL, *m2 = order >= 3 ? s->hist[s->n_hist - 3] : NULL;
    if (order >= 2) {
        dpm_point s1 = dpm_at(s->sigmas[i - 1]);
        r0 = (cur.lambda - s1.lambda) / h;
        if (order == 3) {
            dpm_point s2 = dpm_at(s->sigmas[i - 2]);
            r1 = (s1.lambda - s2.lambda) / h;
        }
        if (order == 3 || heun)
            c1 = pp ? scale * (em1 / h + 1.0) : -scale * (em1 / h - 1.0);
        else
            c1 = -0.5 * scale * em1;
        if (order == 3) c2 = pp ? -scale * ((em1 + h) / (h * h) - 0.5) : -scale * ((em1 - h) / (h * h) - 0.5);
    }
    for (size_t j = 0; j < n; j++) {
        double d0 = m0[j], acc = cs * (double)x[j] + c0 * d0;
        if (order == 2) {
            acc += c1 * ((1.0 / r0) * (d0 - m1[j]));
        } else if (order == 3) {
            double d10 = (1.0 / r0) * (d0 - m1[j]), d11 = (1.0 / r1) * (m1[j] - m2[j]);
            acc += c1 * (d10 + (r0 / (r0 + r1)) * (d10 - d11)) + c2 * ((1.0 / (r0 + r1)) * (d10 - d11));
        }
        x[j] = (float)acc;
    }
    if (s->lower_order_nums < s->c.solver_order) s->lower_order_nums++;
}

/* The history buffers a scheduler needs, allocated at its first step. */
static sdc_status alloc_state(sdc_scheduler *s, size_t n, sdc_err *err) {
    int n_hist = s->k == K_LMS || s->k == K_PNDM ? MAX_HISTORY : s->k == K_DPM ? (int)s->c.solver_order : 0;
    for (int i = 0; i < n_hist; i++)
        if (!(s->hist[i] = sdc_malloc(sizeof(double) * (n ? n : 1)))) return sdc_fail(err, SDC_E_NOMEM, "out of memory");
    if (s->k == K_PNDM) {
        s->cur_sample = sdc_malloc(sizeof(double) * (n ? n : 1));
        s->cur_model_output = sdc_calloc(n ? n : 1, sizeof(double));
        s->work = sdc_malloc(sizeof(double) * 2 * (n ? n : 1));
        if (!s->cur_sample || !s->cur_model_output || !s->work) return sdc_fail(err, SDC_E_NOMEM, "out of memory");
    }
    s->n = n;
    return SDC_OK;
}

sdc_status sdc_scheduler_step(sdc_scheduler *s, int i, const float *model_output, float *sample, size_t n,
                              sdc_rng *noise_rng, sdc_err *err) {
    if (i != s->next || i >= s->steps)
        return sdc_fail(err, SDC_E_ARG, "%s: step %d out of order (expected %d of %d)", KINDS[s->k].klass, i, s->next,
                        s->steps);
    if (i == s->begin && !s->n) {
        sdc_status st = alloc_state(s, n, err);
        if (st) return st;
    } else if (n != s->n) {
        return sdc_fail(err, SDC_E_ARG, "%s: step %d has %zu values, the first step had %zu", KINDS[s->k].klass, i, n,
                        s->n);
    }
    if (s->k == K_EULER_A && !noise_rng)
        return sdc_fail(err, SDC_E_ARG, "%s: needs a noise generator", KINDS[s->k].klass);
    switch (s->k) {
    case K_DDIM: step_ddim(s, i, model_output, sample, n); break;
    case K_PNDM:
        if (s->counter < s->n_prk)
            step_pndm_prk(s, i, model_output, sample, n);
        else
            step_pndm_plms(s, i, model_output, sample, n);
        break;
    case K_EULER: step_euler(s, i, model_output, sample, n); break;
    case K_EULER_A: step_euler_ancestral(s, i, model_output, sample, n, noise_rng); break;
    case K_LMS: step_lms(s, i, model_output, sample, n); break;
    case K_DPM: step_dpm(s, i, model_output, sample, n); break;
    default: SDC_ASSERT(0);
    }
    s->next = i + 1;
    return SDC_OK;
}
