#!/usr/bin/env python3
"""Benchmark of --check-output-correctness and the interpreter at full size (issue 14): one
table from one invocation, random-weight models at their real configs, every figure a median of
--repeat interleaved runs (a change in the machine's load hits all rows alike).

Header: the machine's sgemm peak, measured with the BLAS sdcoreml links (cblas_sgemm of that
very libopenblas through ctypes, 2048^3, best of 3) at the thread count the interpreter and
PyTorch both get (torch.set_num_threads; Debian's torch would otherwise take one).

Rows (pick them with --only; --precisions picks the packages):
  unet   SD 1.5 UNet, latent 64x64, batch 2 (bench/unet.py makes it):
           check  `sdcoreml --convert-unet --check-output-correctness` on an already converted
                  package (so only the check runs): wall time, peak RSS and bytes written (GNU
                  time's %M and %O; the package exists, so every byte is written outside it),
                  against PyTorch's time for the same two forward passes (package and
                  reference), from the eval row's PyTorch median;
           eval   one interpreter evaluation (`sdcoreml run --json`, its predict time) and one
                  PyTorch CPU float32 forward of diffusers' UNet2DConditionModel, same input;
  sdxl   SDXL base UNet, latent 128x128, batch 2 (bench/unet.py makes it, 5.1 GB of fp16
         weights): the check only (FLOAT16 package; --precisions adds FLOAT32). PyTorch's two
         forwards only with --sdxl-torch: float32 SDXL needs ~10 GB and minutes per forward
         on two cores;
  vae    SD 1.5 VAE decoder, one 64x64 latent (bench/vae_decoder.py makes it): eval rows;
  te     SD 1.5 text encoder, input_ids (1, 77) (benchlib.ensure_text_encoder): eval rows.

GEMM column: with a binary whose `run` has --profile (per op type: seconds, matrix-product
FLOPs, calls; a convolution's are the direct sum's, so where the interpreter runs it by
Winograd's F(2x2,3x3), with 4/9 of the multiplications, the rate is an effective one), the FLOPs
of the op types that do matrix products over their own seconds, against
the header's sgemm peak and against the peak measured again right before each run (the load
of a shared machine moves between runs; the median of those shares is the figure to read); without it, the convolutions', linears' and attention products' FLOPs of one
PyTorch forward (forward hooks) over the interpreter's whole predict time — a lower bound of the
GEMM kernels' own rate, since the predict time includes every other op. Each row says which.
The profile's "(drop of weights read)" row, the time spent dropping the pages of weights already
read (several ops' weights at a time), is no op's: it is printed beside the GEMM figure.

Needs the test venv's python (torch, diffusers, transformers); nothing is asserted:

    <venv>/bin/python bench/check.py [--repeat 3] [--only unet,sdxl,vae,te] [--precisions FLOAT16,FLOAT32]
"""

import argparse
import ctypes
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vae_decoder  # noqa: E402
from benchlib import REPO, cache_root, ensure_text_encoder, psnr  # noqa: E402
from unet import ensure_model  # noqa: E402

ROWS = ("unet", "sdxl", "vae", "te")


def linked_blas(exe):
    """The libopenblas the binary is linked with (ldd), or None."""
    out = subprocess.run(["ldd", str(exe)], capture_output=True, text=True).stdout
    m = re.search(r"(\S*libopenblas\S*) => (\S+)", out)
    return m.group(2) if m else None


# OpenBLAS's worker threads busy-wait for a while after a call before they sleep (its
# THREAD_TIMEOUT: 2^28 cycles, about 0.1 s here); a child started at once would share the cores
# with them (measured: the text encoder's linears 0.094-0.101 s right after, 0.075-0.078 s after
# this pause, medians of 5)
BLAS_SETTLE_S = 0.5


def sgemm_peak(lib_path, threads, n=2048, reps=3):
    """GFLOP/s of the best of `reps` n^3 sgemms through the given libopenblas, once its threads
    are idle again."""
    lib = ctypes.CDLL(lib_path)
    lib.openblas_set_num_threads(ctypes.c_int(threads))
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.copy()
    c = np.zeros((n, n), np.float32)
    p = lambda x: x.ctypes.data_as(ctypes.POINTER(ctypes.c_float))  # noqa: E731
    best = float("inf")
    for _ in range(reps + 1):  # the first warms up
        t = time.perf_counter()
        # cblas_sgemm(RowMajor=101, NoTrans=111, NoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
        lib.cblas_sgemm(101, 111, 111, n, n, n, ctypes.c_float(1.0), p(a), n, p(b), n, ctypes.c_float(0.0), p(c), n)
        best = min(best, time.perf_counter() - t)
    time.sleep(BLAS_SETTLE_S)
    return 2.0 * n ** 3 / best / 1e9


def run_child_io(cmd, log, cwd=None):
    """(wall s, peak RSS bytes, bytes written, returncode) of one child, stdout and stderr to
    `log`. Measured by /usr/bin/time -f (GNU time, wait4 on the child it starts): the child's
    own rusage would not do here, since Linux counts the RSS of the process that forked it (this
    one, holding torch and the models) in a child's peak until exec."""
    stats = Path(str(log) + ".time")
    with open(log, "wb") as f:
        t = time.perf_counter()
        rc = subprocess.run(["/usr/bin/time", "-f", "%M %O", "-o", str(stats), *[str(c) for c in cmd]], cwd=cwd,
                            stdin=subprocess.DEVNULL, stdout=f, stderr=f).returncode
        wall = time.perf_counter() - t
    maxrss_kb, out_blocks = (int(x) for x in stats.read_text().split()[-2:])
    return wall, maxrss_kb * 1024, out_blocks * 512, rc


def gemm_flops(model, call):
    """FLOPs of convolutions, linears and attention products in one forward `call()` (forward
    hooks). An attention's products are counted from its query and key projections' outputs
    (b, sq, inner) and (b, sk, inner): 2·2·b·sq·sk·inner over all heads (q·kᵀ and p·v). The
    projections are hooked, not the attention's own arguments: diffusers passes the cross
    attention's context as a keyword, which torch 1.13's hooks do not see."""
    import torch

    total = [0]

    def conv(m, i, o):
        k = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        total[0] += 2 * o.numel() * k

    def linear(m, i, o):
        total[0] += 2 * o.numel() * m.in_features

    seen = {}

    def projection(key):
        def hook(m, i, o):
            seen[key] = o.shape

        return hook

    def attn(m, i, o):
        (b, sq, inner), (_, sk, _) = seen.pop((id(m), "q")), seen.pop((id(m), "k"))
        total[0] += 2 * 2 * b * sq * sk * inner

    hooks = []
    for mod in model.modules():
        if isinstance(mod, torch.nn.Conv2d):
            hooks.append(mod.register_forward_hook(conv))
        elif isinstance(mod, torch.nn.Linear):
            hooks.append(mod.register_forward_hook(linear))
        q, k = getattr(mod, "to_q", None) or getattr(mod, "q_proj", None), getattr(mod, "to_k", None) or getattr(
            mod, "k_proj", None)
        if isinstance(q, torch.nn.Linear) and isinstance(k, torch.nn.Linear):  # diffusers Attention, CLIPAttention
            hooks.append(q.register_forward_hook(projection((id(mod), "q"))))
            hooks.append(k.register_forward_hook(projection((id(mod), "k"))))
            hooks.append(mod.register_forward_hook(attn))
    with torch.no_grad():
        call()
    for h in hooks:
        h.remove()
    return total[0]


# ---------------------------------------------------------------- the models


class Model:
    """One network: its source folder, its convert flag, the inputs of one evaluation (saved as
    .npy for `sdcoreml run`) and a PyTorch forward on the same input."""

    def __init__(self, key, title, root, flags, inputs, run_inputs=None):
        self.key, self.title, self.root, self.flags = key, title, Path(root), flags
        self.inputs = inputs  # name -> float32 array, as the package takes them
        self.run_inputs = run_inputs or inputs
        self.torch_call = None  # () -> the output compared with the interpreter's first output
        self.flops = None

    def package(self, exe, work, precision):
        out = work / f"{self.key}-{precision}"
        if not out.exists():
            cmd = [exe, "--quiet", *self.flags, "--model-version", self.root.name, "-o", out, "--compute-precision",
                   precision]
            if subprocess.run([str(c) for c in cmd], cwd=self.root.parent).returncode:
                sys.exit(f"bench: converting {self.title} ({precision}) failed")
        return next(out.glob("*.mlpackage"))

    def run_cmd(self, exe, work, precision, threads, profile):
        args = [exe, "run", self.package(exe, work, precision), "-o", work / "out", "--json", "--threads", str(threads)]
        args += ["--profile"] if profile else []
        for name, a in self.run_inputs.items():
            f = work / f"{self.key}-{name}.npy"
            if not f.exists():
                np.save(f, a)
            args += ["--input", f"{name}={f}"]
        return [str(a) for a in args]

    def check_cmd(self, exe, work, precision):
        self.package(exe, work, precision)
        return [str(exe), *self.flags, "--model-version", self.root.name, "-o", str(work / f"{self.key}-{precision}"),
                "--compute-precision", precision, "--check-output-correctness"]


def unet_inputs(rng, latent, ctx_dim, xl):
    sample = rng.standard_normal((2, 4, latent, latent)).astype(np.float32)
    hidden = rng.standard_normal((2, 77, ctx_dim)).astype(np.float32)
    ins = {"sample": sample, "timestep": np.array([981.0, 981.0], np.float32),
           "encoder_hidden_states": np.ascontiguousarray(hidden.transpose(0, 2, 1)[:, :, None, :])}  # (2, C, 1, 77)
    if xl:
        ins["time_ids"] = np.tile(np.array([[1024, 1024, 0, 0, 1024, 1024]], np.float32), (2, 1))  # (2, 6)
        ins["text_embeds"] = rng.standard_normal((2, 1280)).astype(np.float32)  # (2, 1280)
    return ins, hidden


def make_unet(name, torch_needed):
    """name: sd15 or sdxl, as bench/unet.py makes them."""
    import torch

    xl = name == "sdxl"
    root = ensure_model(name)
    ins, hidden = unet_inputs(np.random.default_rng(0), 128 if xl else 64, 2048 if xl else 768, xl)
    m = Model(name, "SDXL UNet, latent 128x128, batch 2" if xl else "SD 1.5 UNet, latent 64x64, batch 2", root,
              ["--convert-unet"] + (["--xl-version"] if xl else []), ins)
    if torch_needed:
        from diffusers import UNet2DConditionModel

        net = UNet2DConditionModel.from_pretrained(root / "unet", variant="fp16", torch_dtype=torch.float32).eval()
        t = (torch.from_numpy(ins["sample"]), torch.from_numpy(ins["timestep"]), torch.from_numpy(hidden))
        extra = {"added_cond_kwargs": {"time_ids": torch.from_numpy(ins["time_ids"]),
                                       "text_embeds": torch.from_numpy(ins["text_embeds"])}} if xl else {}
        m.torch_call = lambda: net(*t, **extra).sample.numpy()
        m.flops = gemm_flops(net, m.torch_call)
    return m


def make_vae():
    import torch
    from diffusers import AutoencoderKL

    root = vae_decoder.ensure_model()
    z = np.random.default_rng(0).standard_normal((1, 4, 64, 64)).astype(np.float16).astype(np.float32)
    m = Model("vae", "SD 1.5 VAE decoder, latent 64x64", root, ["--convert-vae-decoder"], {"z": z})
    vae = AutoencoderKL.from_pretrained(root / "vae", variant="fp16", torch_dtype=torch.float32).eval()
    zt = torch.from_numpy(z)
    m.torch_call = lambda: vae.decoder(vae.post_quant_conv(zt)).numpy()
    m.flops = gemm_flops(vae, m.torch_call)
    return m


def make_te():
    import torch
    from transformers import CLIPTextModel

    root, _ = ensure_text_encoder()
    rng = np.random.default_rng(0)
    ids = np.full((1, 77), 49407, np.int64)  # <|startoftext|>, 12 word ids, <|endoftext|> padding
    ids[0, 0] = 49406
    ids[0, 1:13] = rng.integers(320, 49000, 12)
    m = Model("te", "SD 1.5 text encoder, input_ids (1, 77)", root, ["--convert-text-encoder"],
              {"input_ids": ids.astype(np.float32)})
    net = CLIPTextModel.from_pretrained(root / "text_encoder", variant="fp16", torch_dtype=torch.float32).eval()
    t = torch.from_numpy(ids)
    m.torch_call = lambda: net(t, return_dict=True).last_hidden_state.numpy()
    m.flops = gemm_flops(net, m.torch_call)
    return m


# ---------------------------------------------------------------- measuring


def torch_once(m):
    import torch

    with torch.no_grad():
        t = time.perf_counter()
        out = m.torch_call()
        return out, time.perf_counter() - t


def has_profile(exe):
    """Whether `sdcoreml run` takes --profile (its JSON then has "profile": {op type: {seconds,
    flops, calls}})."""
    r = subprocess.run([str(exe), "run", "--help"], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    return "--profile" in r.stdout


# the profile's row for the drops of weights already read (sdcoreml.h: SDC_PROFILE_DROPS)
DROPS_ROW = "(drop of weights read)"


def gemm_rate(doc):
    """(FLOPs, seconds, seconds of the weights' page drops) of the op types that did matrix
    products in the run's profile, or None."""
    prof = doc.get("profile", {})
    rows = [v for v in prof.values() if v.get("flops", 0) > 0]
    drops = prof.get(DROPS_ROW, {}).get("seconds", 0.0)
    return (sum(v["flops"] for v in rows), sum(v["seconds"] for v in rows), drops) if rows else None


def interp_once(m, exe, work, precision, threads, profile):
    r = subprocess.run(m.run_cmd(exe, work, precision, threads, profile), capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"bench: sdcoreml run ({m.title}, {precision}) exited {r.returncode}:\n{r.stderr}")
    doc = json.loads(r.stdout)
    return np.load(doc["outputs"][0]["file"]), doc["predict_seconds"], gemm_rate(doc)


def check_once(m, exe, work, precision):
    log = work / f"check-{m.key}-{precision}.log"
    wall, rss, written, rc = run_child_io(m.check_cmd(exe, work, precision), log, cwd=m.root.parent)
    text = log.read_text()
    if rc:
        sys.exit(f"bench: the check of {m.title} ({precision}) exited {rc}:\n{text}")
    result = "; ".join(f"{g.group(1)} {g.group(2)} dB" for g in re.finditer(r"output (\S+): PSNR ([0-9.]+) dB", text))
    return wall, rss, written, result


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="interpreter and PyTorch threads [one per CPU]")
    ap.add_argument("--only", default=",".join(ROWS), help=f"rows to measure, of {','.join(ROWS)} [all]")
    ap.add_argument("--precisions", default="FLOAT16,FLOAT32", help="packages' --compute-precision [both]")
    ap.add_argument("--sdxl-torch", action="store_true", help="also time PyTorch's SDXL forward (float32, slow)")
    ap.add_argument("--sdcoreml", default=os.environ.get("SDCOREML_BIN", str(REPO / "build" / "sdcoreml")))
    args = ap.parse_args()
    exe = Path(args.sdcoreml).resolve()
    if not exe.is_file():
        sys.exit(f"bench: {exe} is not built")
    only = args.only.split(",")
    precisions = args.precisions.split(",")
    if set(only) - set(ROWS) or set(precisions) - {"FLOAT16", "FLOAT32"}:
        sys.exit(f"bench: --only takes {','.join(ROWS)}; --precisions FLOAT16,FLOAT32")
    threads = args.threads or len(os.sched_getaffinity(0))
    profile = has_profile(exe)

    import torch

    torch.set_num_threads(threads)
    blas = linked_blas(exe)
    peak = sgemm_peak(blas, threads) if blas else float("nan")
    print(f"sgemm peak: {peak:.1f} GFLOP/s ({blas}, {threads} threads, 2048^3, best of 3); {threads} thread(s) for "
          f"the interpreter and PyTorch {torch.__version__} (get_num_threads() = {torch.get_num_threads()}); "
          f"medians of {args.repeat} interleaved runs", flush=True)

    models = {}
    if "unet" in only:
        models["unet"] = make_unet("sd15", True)
    if "sdxl" in only:
        models["sdxl"] = make_unet("sdxl", args.sdxl_torch)
    if "vae" in only:
        models["vae"] = make_vae()
    if "te" in only:
        models["te"] = make_te()
    checked = [k for k in ("unet", "sdxl") if k in models]
    sdxl_precisions = precisions if "FLOAT32" in precisions and len(precisions) > 1 else ["FLOAT16"]
    evaluated = [k for k in ("unet", "vae", "te") if k in models]

    work = Path(tempfile.mkdtemp(prefix="sdcoreml-bench-check-", dir=cache_root() / "bench"))
    res = {}  # (kind, model, precision) -> dict of lists
    last = {}
    try:
        # warm-up: the page cache holds each package (the checks, run first, read the UNet's;
        # PyTorch warmed up counting FLOPs)
        for k in [k for k in evaluated if k not in checked]:
            for p in precisions:
                interp_once(models[k], exe, work, p, threads, profile)
        for i in range(args.repeat):
            for k in checked:
                for p in (sdxl_precisions if k == "sdxl" else precisions):
                    wall, rss, written, result = check_once(models[k], exe, work, p)
                    r = res.setdefault(("check", k, p), {"wall": [], "rss": [], "written": [], "result": ""})
                    r["wall"].append(wall), r["rss"].append(rss), r["written"].append(written)
                    r["result"] = result
                    print(f"  run {i + 1}: check {k} {p}: {wall:.1f} s, {rss / 1e6:.0f} MB, {written / 1e6:.1f} MB "
                          f"written; {result}", flush=True)
            for k in [k for k in models if models[k].torch_call]:
                m = models[k]
                for p in (precisions if k in evaluated else []):
                    # the peak again right before the run: on a shared machine the load changes
                    # between runs, so each run's share is taken against its own moment's peak
                    near_peak = sgemm_peak(blas, threads) if blas else float("nan")
                    out, dt, gemm = interp_once(m, exe, work, p, threads, profile)
                    e = res.setdefault(("eval", k, p), {"interp": [], "gemm": [], "share": [], "drops": []})
                    e["interp"].append(dt)
                    if gemm:
                        e["gemm"].append(gemm[0] / gemm[1] / 1e9)
                        e["drops"].append(gemm[2])
                        e["share"].append(e["gemm"][-1] / near_peak)
                    last[(k, p)] = out
                    print(f"  run {i + 1}: {k} {p}: interpreter {dt:.2f} s", flush=True)
                ref, dt = torch_once(m)
                res.setdefault(("torch", k), {"torch": []})["torch"].append(dt)
                last[(k, "torch")] = ref
                print(f"  run {i + 1}: {k}: PyTorch {dt:.2f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{'row':54} {'sdcoreml':>9} {'PyTorch':>9} {'ratio':>6} {'peak RSS':>9} {'written':>8}  notes")
    for k in checked:
        m = models[k]
        tt = med(res.get(("torch", k), {}).get("torch", []))
        for p in (sdxl_precisions if k == "sdxl" else precisions):
            r = res[("check", k, p)]
            w = med(r["wall"])
            vs = f"{2 * tt:8.1f}s {w / (2 * tt):5.2f}x" if tt == tt else f"{'-':>9} {'-':>6}"
            print(f"{'check: ' + m.title + ', ' + p:54} {w:8.1f}s {vs} {max(r['rss']) / 1e6:6.0f} MB "
                  f"{max(r['written']) / 1e6:5.1f} MB  PSNR {r['result']}")
        if tt != tt:
            print(f"{'':54} (PyTorch: not measured; --sdxl-torch times its float32 forward, ~10 GB and minutes)")
    for k in evaluated:
        m = models[k]
        tt = med(res[("torch", k)]["torch"])
        for p in precisions:
            e = res[("eval", k, p)]
            it = med(e["interp"])
            if e["gemm"]:
                gf = med(e["gemm"])
                gemm = (f"GEMM ops (profile) {gf:.1f} GFLOP/s = {gf / peak:.0%} of the header's peak, "
                        f"{med(e['share']):.0%} of the peak measured just before each run (median); "
                        f"weights' page drops {med(e['drops']):.3f} s (not in the GEMM ops)")
            else:
                gf = m.flops / it / 1e9
                gemm = f"GEMM {m.flops / 1e9:.0f} GFLOP / whole predict = {gf:.1f} GFLOP/s = {gf / peak:.0%} of peak"
            print(f"{'eval: ' + m.title + ', ' + p:54} {it:8.2f}s {tt:8.2f}s {it / tt:5.2f}x {'':>9} {'':>8}  "
                  f"PSNR vs PyTorch {psnr(last[(k, 'torch')], last[(k, p)]):.1f} dB; {gemm} "
                  f"(PyTorch, whole forward: {m.flops / tt / 1e9 / peak:.0%})")
    print("(check: wall and bytes written of the median / largest run, peak RSS the largest; its PyTorch column is two "
          "float32 forwards; eval: predict time of `sdcoreml run --json`)")


if __name__ == "__main__":
    main()
