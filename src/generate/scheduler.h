/*
 * scheduler.h — the six noise schedulers of the anchor's pipeline (--scheduler), as diffusers
 * 0.30.2 computes them from a scheduler_config.json: DDIM, DPMSolverMultistep,
 * EulerAncestralDiscrete, EulerDiscrete, LMSDiscrete, PNDM.
 *
 * A config of another class is read as diffusers' SchedulerClass.from_config(config) reads
 * it (what the anchor does for --scheduler): the keys the chosen class has are used, the
 * others are ignored. Of the chosen class's keys, the ones implemented here are
 * num_train_timesteps, beta_start, beta_end, beta_schedule (linear, scaled_linear,
 * squaredcos_cap_v2), trained_betas (null), prediction_type (epsilon, v_prediction, sample),
 * timestep_spacing (leading, trailing, linspace), steps_offset, set_alpha_to_one,
 * skip_prk_steps, clip_sample, clip_sample_range, eta-free DDIM, algorithm_type (dpmsolver++,
 * dpmsolver), solver_order, solver_type (midpoint, heun), lower_order_final,
 * euler_at_final, final_sigmas_type (zero, sigma_min), interpolation_type (linear),
 * rescale_betas_zero_snr (false), timestep_type (discrete); any other key of the class
 * (use_karras_sigmas, thresholding, use_lu_lambdas, variance_type, …) is accepted only at its
 * default value and refused by name otherwise (SDC_E_UNSUPPORTED).
 *
 * Internally everything is double precision; the latents the caller holds are float32.
 *
 * A generation loop (text-to-image):
 *     sdc_scheduler_open(NULL, config, "scheduler_config.json", 50, &s, &err);
 *     latents = randn * sdc_scheduler_init_noise_sigma(s);
 *     for (int i = 0; i < sdc_scheduler_steps(s); i++) {
 *         x = latents; sdc_scheduler_scale_model_input(s, i, x, n);
 *         eps = unet(x, sdc_scheduler_timestep(s, i));     (with guidance)
 *         sdc_scheduler_step(s, i, eps, latents, n, rng, &err);
 *     }
 * Image-to-image (diffusers' StableDiffusionImg2ImgPipeline.get_timesteps + add_noise):
 *     int i0 = sdc_scheduler_img2img_start(s, strength);   (also sets the begin index)
 *     if (i0 == sdc_scheduler_steps(s)) nothing to denoise (diffusers' pipeline refuses this:
 *         "the number of pipeline steps is 0 which is < 1")
 *     sdc_scheduler_add_noise(s, i0, noise, latents, n);
 *     for (int i = i0; i < sdc_scheduler_steps(s); i++) ...
 * Steps must be taken in order, i = begin, begin + 1, … (the multistep solvers keep history).
 */
#ifndef SDC_GENERATE_SCHEDULER_H
#define SDC_GENERATE_SCHEDULER_H

#include "common.h"
#include "generate/rng.h"

#include <jansson.h>

typedef struct sdc_scheduler sdc_scheduler;

/* `kind`: "DDIM", "DPMSolverMultistep", "EulerAncestralDiscrete", "EulerDiscrete",
   "LMSDiscrete" or "PNDM" (the anchor's --scheduler names; the class names with "Scheduler"
   are accepted too), or NULL for the config's _class_name. `config_name` names the file in
   messages. num_inference_steps in 1..num_train_timesteps. */
sdc_status sdc_scheduler_open(const char *kind, const json_t *config, const char *config_name, int num_inference_steps,
                              sdc_scheduler **out, sdc_err *err);
void sdc_scheduler_free(sdc_scheduler *s);

/* The class name, e.g. "EulerDiscreteScheduler". */
const char *sdc_scheduler_name(const sdc_scheduler *s);
/* How many entries `timesteps` has: the loop's length (PNDM without skip_prk_steps has more
   than num_inference_steps). */
int sdc_scheduler_steps(const sdc_scheduler *s);
/* The UNet's timestep at loop index i (diffusers' scheduler.timesteps[i]; not always an integer
   for the Euler and LMS schedulers with linspace spacing). */
double sdc_scheduler_timestep(const sdc_scheduler *s, int i);
/* The factor of the initial latents (1 for DDIM, DPM, PNDM; the largest sigma, or
   sqrt(sigma_max^2 + 1) with leading spacing, for the Euler and LMS schedulers). */
double sdc_scheduler_init_noise_sigma(const sdc_scheduler *s);
/* The scheduler's `order` attribute (1 for all six in diffusers 0.30.2). */
int sdc_scheduler_order(const sdc_scheduler *s);

/* The UNet's input from the latents at loop index i, in place: divides by sqrt(sigma^2 + 1)
   for the Euler and LMS schedulers, nothing for the others. */
void sdc_scheduler_scale_model_input(const sdc_scheduler *s, int i, float *latents, size_t n);

/* One denoising step at loop index i: sample (in-out, n floats) from x_t to x_t-1 given the
   (guided) model output. EulerAncestral draws its noise from `noise_rng` (n values of
   sdc_rng_randn, float32; the anchor's pipeline draws it from torch's unseeded global generator
   instead, which no seed reproduces); the others ignore it (may be NULL). Fails (SDC_E_ARG)
   when i is not the next step or n changed since the first step. */
sdc_status sdc_scheduler_step(sdc_scheduler *s, int i, const float *model_output, float *sample, size_t n,
                              sdc_rng *noise_rng, sdc_err *err);

/* Image-to-image: diffusers' get_timesteps(num_inference_steps, strength) — the loop starts at
   t_start * order with t_start = steps - min(int(steps * strength), steps), which this also sets
   as the begin index (set_begin_index). Returns that start index; strength in [0, 1]. */
int sdc_scheduler_img2img_start(sdc_scheduler *s, double strength);
/* Sets the index of the first step (set_begin_index). */
void sdc_scheduler_set_begin_index(sdc_scheduler *s, int begin);
/* add_noise at loop index i, in place: latents = alpha_i * latents + sigma_i * noise with the
   scheduler's own alpha/sigma (sqrt(alphas_cumprod[t]) and sqrt(1 - alphas_cumprod[t]) for
   DDIM and PNDM, 1 and sigma_i for Euler and LMS, alpha_t and sigma_t for DPM). */
void sdc_scheduler_add_noise(const sdc_scheduler *s, int i, const float *noise, float *latents, size_t n);

#endif
