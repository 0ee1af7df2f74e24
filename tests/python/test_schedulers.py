"""The six schedulers of `sdcoreml pipeline` against diffusers 0.30.2: timesteps,
init_noise_sigma and whole denoising loops (every step's sample) on random inputs, with a fake
model output that is a fixed random linear function of the scaled sample and the timestep.

The reference runs in float64 (diffusers' own float32 tables, sample and model output as
float64 tensors); sdcoreml keeps the samples in float32 and computes in double. Euler
ancestral draws its noise from RandomState(seed) on both sides (diffusers' randn_tensor is
replaced by it)."""

import json

import numpy as np
import pytest
import torch
import diffusers
import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_a_module

CLASSES = {
    "DDIM": diffusers.DDIMScheduler,
    "DPMSolverMultistep": diffusers.DPMSolverMultistepScheduler,
    "EulerAncestralDiscrete": diffusers.EulerAncestralDiscreteScheduler,
    "EulerDiscrete": diffusers.EulerDiscreteScheduler,
    "LMSDiscrete": diffusers.LMSDiscreteScheduler,
    "PNDM": diffusers.PNDMScheduler,
}

# The scheduler configs real models ship (values as in their scheduler_config.json)
SD15 = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
        "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
        "clip_sample": False}
SD21 = {"_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
        "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": False,
        "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None}
SDXL = {"_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.19.0.dev0", "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
        "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
        "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
        "timestep_spacing": "leading", "trained_betas": None, "use_karras_sigmas": False}


def variant(base, **kw):
    c = dict(base)
    c.update(kw)
    return c


# (name, kind or None for the config's class, config, steps)
CASES = []
for kind in CLASSES:
    for cname, cfg in (("sd15", SD15), ("sd21", SD21), ("sdxl", SDXL)):
        CASES.append((f"{kind}-{cname}", kind, cfg, 20))
CASES += [
    ("own-sd15-50", None, SD15, 50),
    ("own-sd21-50", None, SD21, 50),
    ("own-sdxl-30", None, SDXL, 30),
    ("pndm-prk", None, variant(SD15, skip_prk_steps=False), 10),
    ("pndm-v-trailing", None, variant(SD15, prediction_type="v_prediction", timestep_spacing="trailing"), 7),
    ("pndm-linspace-1", None, variant(SD15, timestep_spacing="linspace"), 1),
    ("pndm-2", None, SD15, 2),
    ("ddim-trailing-v", None, variant(SD21, timestep_spacing="trailing"), 13),
    ("ddim-linspace-clip", None, variant(SD21, timestep_spacing="linspace", clip_sample=True,
                                         prediction_type="epsilon", set_alpha_to_one=True), 9),
    ("ddim-sample", None, variant(SD21, prediction_type="sample", clip_sample=True, clip_sample_range=0.5), 6),
    ("ddim-linear-betas", None, variant(SD21, beta_schedule="linear", beta_start=0.0001, beta_end=0.02), 25),
    ("ddim-cosine", None, variant(SD21, beta_schedule="squaredcos_cap_v2"), 10),
    ("euler-linspace", None, variant(SDXL, timestep_spacing="linspace"), 11),
    ("euler-trailing-v", None, variant(SDXL, timestep_spacing="trailing", prediction_type="v_prediction"), 8),
    ("euler-sigma-min", None, variant(SDXL, final_sigmas_type="sigma_min"), 5),
    ("euler-sample-1", None, variant(SDXL, prediction_type="sample"), 1),
    ("euler-a-linspace-v", "EulerAncestralDiscrete", variant(SDXL, timestep_spacing="linspace",
                                                              prediction_type="v_prediction"), 12),
    ("lms-linspace", "LMSDiscrete", variant(SDXL, timestep_spacing="linspace"), 15),
    ("lms-trailing-v", "LMSDiscrete", variant(SDXL, timestep_spacing="trailing", prediction_type="v_prediction"), 6),
    ("dpm-order1", "DPMSolverMultistep", variant(SD15, solver_order=1), 10),
    ("dpm-order3-leading", "DPMSolverMultistep", variant(SD15, solver_order=3, timestep_spacing="leading"), 25),
    ("dpm-order3-short", "DPMSolverMultistep", variant(SD15, solver_order=3), 6),
    ("dpm-heun-v", "DPMSolverMultistep", variant(SD21, solver_type="heun", timestep_spacing="trailing"), 20),
    ("dpm-dpmsolver-sigma-min", "DPMSolverMultistep", variant(SD15, algorithm_type="dpmsolver",
                                                              final_sigmas_type="sigma_min", solver_order=3), 16),
    ("dpm-euler-at-final", "DPMSolverMultistep", variant(SD15, euler_at_final=True, lower_order_final=False,
                                                         final_sigmas_type="sigma_min"), 20),
    ("dpm-lambda-clipped", "DPMSolverMultistep", variant(SD15, lambda_min_clipped=-5.1), 12),
    ("dpm-sample-heun", "DPMSolverMultistep", variant(SD15, prediction_type="sample", solver_type="heun"), 9),
    ("dpm-deis-bh2", "DPMSolverMultistep", variant(SD15, algorithm_type="deis", solver_type="bh2",
                                                                  final_sigmas_type="sigma_min"), 9),
]

SHAPE = (1, 4, 8, 8)
MAX_ERR = [0.0]
TOL = 2e-5


def diffusers_loop(kind, config, steps, x, w, b, noise_seed, monkeypatch, strength=None, noise=None):
    cls = CLASSES[kind] if kind else getattr(diffusers, config["_class_name"])
    sched = cls.from_config(config)
    sched.set_timesteps(steps)
    timesteps = sched.timesteps
    rs = np.random.RandomState(noise_seed)
    monkeypatch.setattr(euler_a_module, "randn_tensor",
                        lambda shape, generator=None, device=None, dtype=None, layout=None:
                        torch.from_numpy(rs.randn(*shape).astype(np.float32)).to(dtype))
    x = torch.from_numpy(x.astype(np.float64))
    w, b = torch.from_numpy(w.astype(np.float64)), torch.from_numpy(b.astype(np.float64))
    start = 0
    if strength is not None:  # StableDiffusionImg2ImgPipeline.get_timesteps + prepare_latents
        init = min(int(steps * strength), steps)
        start = max(steps - init, 0) * sched.order
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(start)
        if start < len(timesteps):
            x = sched.add_noise(x, torch.from_numpy(noise.astype(np.float64)), timesteps[start:start + 1])
    trace = [x.numpy().copy()]
    for t in timesteps[start:]:
        xin = sched.scale_model_input(x, t)
        eps = w * xin + b * float(np.float32(float(t) / 1000.0))
        x = sched.step(eps, t, x).prev_sample.to(torch.float64)
        trace.append(x.numpy().copy())
    return sched, timesteps, start, np.stack(trace).reshape(len(trace), -1)


def run_case(testkit, tmp_path, kind, config, steps, monkeypatch, seed, strength=None):
    rng = np.random.RandomState(seed)
    x = rng.randn(*SHAPE).astype(np.float32)
    w = rng.uniform(-1.0, 1.5, size=SHAPE).astype(np.float32)
    b = rng.randn(*SHAPE).astype(np.float32)
    noise = rng.randn(*SHAPE).astype(np.float32)
    cfg_path = tmp_path / "scheduler_config.json"
    cfg_path.write_text(json.dumps(config))
    for name, a in (("x", x), ("w", w), ("b", b), ("noise", noise)):
        np.save(tmp_path / f"{name}.npy", a)
    sched, timesteps, start, want = diffusers_loop(kind, config, steps, x, w, b, seed + 1, monkeypatch,
                                                   strength, noise)
    args = ["schedule", kind or "-", cfg_path, steps, "--noise-seed", seed + 1,
            "--run", tmp_path / "x.npy", tmp_path / "w.npy", tmp_path / "b.npy", tmp_path / "out.npy"]
    if strength is not None:
        args += ["--strength", strength, tmp_path / "noise.npy"]
    got = json.loads(testkit(*args).stdout)
    assert got["name"] == type(sched).__name__
    assert got["timesteps"] == [float(t) for t in timesteps]
    assert got["start"] == start
    assert got["init_noise_sigma"] == pytest.approx(float(sched.init_noise_sigma), rel=3e-7)
    trace = np.load(tmp_path / "out.npy").astype(np.float64)
    assert trace.shape == want.shape
    err = np.abs(trace - want) / np.maximum(1.0, np.abs(want))
    return float(err.max())


@pytest.mark.parametrize("name,kind,config,steps", CASES, ids=[c[0] for c in CASES])
def test_loop_matches_diffusers(testkit, tmp_path, monkeypatch, name, kind, config, steps):
    err = run_case(testkit, tmp_path, kind, config, steps, monkeypatch, seed=len(name))
    MAX_ERR[0] = max(MAX_ERR[0], err)
    print(f"{name}: max error {err:.3g} (largest so far {MAX_ERR[0]:.3g})")
    assert err < TOL, f"{name}: max error {err:.3g} (relative to max(1, |x|))"


IMG2IMG = [
    ("PNDM", SD15, 20, 0.75),
    ("DDIM", SD21, 20, 0.6),
    ("EulerDiscrete", SDXL, 30, 0.3),
    ("EulerAncestralDiscrete", SDXL, 10, 0.5),
    ("LMSDiscrete", SD15, 16, 0.8),
    ("DPMSolverMultistep", SD15, 25, 0.55),
    ("EulerDiscrete", SDXL, 10, 1.0),
    ("DDIM", SD15, 10, 0.05),  # int(0.5) steps: nothing to denoise
]


@pytest.mark.parametrize("kind,config,steps,strength", IMG2IMG, ids=[f"{k}-{s}" for k, _, _, s in IMG2IMG])
def test_img2img_matches_diffusers(testkit, tmp_path, monkeypatch, kind, config, steps, strength):
    err = run_case(testkit, tmp_path, kind, config, steps, monkeypatch, seed=steps, strength=strength)
    assert err < TOL, f"max error {err:.3g}"


REFUSED = [
    (variant(SDXL, use_karras_sigmas=True), "EulerDiscrete", "use_karras_sigmas"),
    (variant(SD21, thresholding=True), "DDIM", "thresholding"),
    (variant(SD15, trained_betas=[0.1] * 1000), None, "trained_betas"),
    (variant(SDXL, interpolation_type="log_linear"), None, "interpolation_type"),
    (variant(SDXL, timestep_type="continuous"), None, "timestep_type"),
    (variant(SD15, algorithm_type="sde-dpmsolver++"), "DPMSolverMultistep", "algorithm_type"),
    (variant(SD15, timestep_spacing="karras"), None, "timestep_spacing"),
    (variant(SD15, beta_schedule="sigmoid"), None, "beta_schedule"),
    (variant(SD15, prediction_type="sample"), None, "sample"),
    (variant(SD15, prediction_type="sample"), "EulerAncestralDiscrete", "sample"),
    (variant(SD15, rescale_betas_zero_snr=True), "DDIM", "rescale_betas_zero_snr"),
    (variant(SD15, _class_name="FlowMatchEulerDiscreteScheduler"), None, "FlowMatchEulerDiscreteScheduler"),
    (variant(SD15, num_train_timesteps="1000"), None, "num_train_timesteps"),
    (variant(SD15, steps_offset=5000), None, "steps_offset"),
    (variant(SD15, solver_order=4), "DPMSolverMultistep", "solver_order"),
    (variant(SD15, algorithm_type="dpmsolver"), "DPMSolverMultistep", "final_sigmas_type"),
    (variant(SD15, algorithm_type="deis"), "DPMSolverMultistep", "final_sigmas_type"),
]


@pytest.mark.parametrize("config,kind,word", REFUSED, ids=[w + "-" + str(k) for _, k, w in REFUSED])
def test_unsupported_configs_are_refused_by_name(testkit, tmp_path, config, kind, word):
    p = tmp_path / "scheduler_config.json"
    p.write_text(json.dumps(config))
    r = testkit("schedule", kind or "-", p, 20, check=False)
    assert r.returncode == 1
    assert word in r.stderr and str(p) in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_keys_of_other_classes_are_ignored_as_from_config_does(testkit, tmp_path):
    # use_karras_sigmas is not a DDIM or PNDM parameter: diffusers ignores it there, so do we
    p = tmp_path / "c.json"
    p.write_text(json.dumps(variant(SD15, use_karras_sigmas=True, thresholding=True, something_new=3)))
    got = json.loads(testkit("schedule", "PNDM", p, 10).stdout)
    sched = diffusers.PNDMScheduler.from_config(json.loads(p.read_text()))
    sched.set_timesteps(10)
    assert got["timesteps"] == [float(t) for t in sched.timesteps]


@pytest.mark.parametrize("steps", [0, -3, 1001])
def test_bad_step_counts(testkit, tmp_path, steps):
    p = tmp_path / "c.json"
    p.write_text(json.dumps(SD15))
    r = testkit("schedule", "-", p, steps, check=False)
    assert r.returncode == 1 and "steps" in r.stderr
