#!/usr/bin/env python3
"""Benchmark of --check-output-correctness and the interpreter at full size (issue 14): the
full-size random-weight SD 1.5 UNet (bench/unet.py makes it once), in one invocation:

  - the machine's sgemm peak, measured with the BLAS sdcoreml links (cblas_sgemm of that very
    libopenblas through ctypes, 2048^3, best of 3) at the interpreter's thread count;
  - `sdcoreml --convert-unet --check-output-correctness` on an already converted package (so
    only the check runs): wall time, peak RSS and bytes it wrote (GNU time's %M and %O, file
    system outputs; the package exists, so every byte is written outside it);
  - one interpreter UNet evaluation (`sdcoreml run --json`, its predict time) and one PyTorch
    CPU float32 forward of diffusers' UNet2DConditionModel on the same input, with
    torch.set_num_threads equal to the interpreter's thread count; the check's wall time is set
    against PyTorch's time for two forward passes (the check evaluates the package and the
    reference);
  - the UNet's GEMM FLOPs (convolutions, linears and attention products, counted with forward
    hooks) over the interpreter's predict time, against the sgemm peak.

Runs are interleaved --repeat times and medians printed. Nothing is asserted. Needs the test
venv's python (torch, diffusers):

    <venv>/bin/python bench/check.py [--repeat 3] [--threads N] [--precision FLOAT16]
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
from benchlib import REPO, cache_root, psnr  # noqa: E402
from unet import ensure_model  # noqa: E402


def linked_blas(exe):
    """The libopenblas the binary is linked with (ldd), or None."""
    out = subprocess.run(["ldd", str(exe)], capture_output=True, text=True).stdout
    m = re.search(r"(\S*libopenblas\S*) => (\S+)", out)
    return m.group(2) if m else None


def sgemm_peak(lib_path, threads, n=2048, reps=3):
    """GFLOP/s of the best of `reps` n^3 sgemms through the given libopenblas."""
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
    return 2.0 * n ** 3 / best / 1e9


def run_child_io(cmd, log):
    """(wall s, peak RSS bytes, bytes written, returncode) of one child, stdout and stderr to
    `log`. Measured by /usr/bin/time -f (GNU time, wait4 on the child it starts): the child's
    own rusage would not do here, since Linux counts the RSS of the process that forked it (this
    one, holding torch and the model) in a child's peak until exec."""
    stats = Path(str(log) + ".time")
    with open(log, "wb") as f:
        t = time.perf_counter()
        rc = subprocess.run(["/usr/bin/time", "-f", "%M %O", "-o", str(stats), *[str(c) for c in cmd]],
                            stdin=subprocess.DEVNULL, stdout=f, stderr=f).returncode
        wall = time.perf_counter() - t
    maxrss_kb, out_blocks = (int(x) for x in stats.read_text().split()[-2:])
    return wall, maxrss_kb * 1024, out_blocks * 512, rc


def gemm_flops(model, inputs):
    """FLOPs of convolutions, linears and attention products in one forward (forward hooks)."""
    import torch

    total = [0]

    def conv(m, i, o):
        k = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        total[0] += 2 * o.numel() * k

    def linear(m, i, o):
        total[0] += 2 * o.numel() * m.in_features

    def attn(m, i, o):
        x = i[0]
        ctx = i[1] if len(i) > 1 and i[1] is not None else x
        b, sq, _ = x.shape
        sk = ctx.shape[1]
        inner = m.to_q.out_features
        total[0] += 2 * 2 * b * sq * sk * inner  # q·kᵀ and p·v over all heads

    hooks = []
    from diffusers.models.attention_processor import Attention

    for mod in model.modules():
        if isinstance(mod, torch.nn.Conv2d):
            hooks.append(mod.register_forward_hook(conv))
        elif isinstance(mod, torch.nn.Linear):
            hooks.append(mod.register_forward_hook(linear))
        elif isinstance(mod, Attention):
            hooks.append(mod.register_forward_hook(attn))
    with torch.no_grad():
        model(*inputs)
    for h in hooks:
        h.remove()
    return total[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="interpreter and PyTorch threads [one per CPU]")
    ap.add_argument("--precision", default="FLOAT16", choices=["FLOAT16", "FLOAT32"])
    ap.add_argument("--sdcoreml", default=os.environ.get("SDCOREML_BIN", str(REPO / "build" / "sdcoreml")))
    args = ap.parse_args()
    exe = Path(args.sdcoreml)
    if not exe.is_file():
        sys.exit(f"bench: {exe} is not built")
    threads = args.threads or os.cpu_count() or 1

    import torch
    from diffusers import UNet2DConditionModel

    torch.set_num_threads(threads)
    root = ensure_model("sd15")
    blas = linked_blas(exe)
    peak = sgemm_peak(blas, threads) if blas else float("nan")
    print(f"sgemm peak ({blas}, {threads} threads, 2048^3): {peak:.1f} GFLOP/s", flush=True)

    work = Path(tempfile.mkdtemp(prefix="sdcoreml-bench-check-", dir=cache_root() / "bench"))
    try:
        out = work / "pkg"
        conv = [exe, "--quiet", "--convert-unet", "--model-version", root, "-o", out, "--compute-precision",
                args.precision]
        if subprocess.run([str(c) for c in conv]).returncode:
            sys.exit("bench: conversion failed")
        pkg = next(out.glob("*.mlpackage"))
        pkg_bytes = sum(f.stat().st_size for f in pkg.rglob("*") if f.is_file())

        rng = np.random.default_rng(0)
        sample = rng.standard_normal((2, 4, 64, 64)).astype(np.float32)
        timestep = np.array([981.0, 981.0], np.float32)
        hidden = rng.standard_normal((2, 77, 768)).astype(np.float32)
        np.save(work / "sample.npy", sample)
        np.save(work / "timestep.npy", timestep)
        np.save(work / "ehs.npy", np.ascontiguousarray(hidden.transpose(0, 2, 1)[:, :, None, :]))  # (2, 768, 1, 77)
        run = [exe, "run", pkg, "--input", f"sample={work / 'sample.npy'}", "--input",
               f"timestep={work / 'timestep.npy'}", "--input", f"encoder_hidden_states={work / 'ehs.npy'}",
               "-o", work / "out", "--json", "--profile", "--threads", str(threads)]

        model = UNet2DConditionModel.from_pretrained(root / "unet", variant="fp16", torch_dtype=torch.float32).eval()
        tin = (torch.from_numpy(sample), torch.from_numpy(timestep), torch.from_numpy(hidden))
        flops = gemm_flops(model, tin)

        def torch_once():
            with torch.no_grad():
                t = time.perf_counter()
                o = model(*tin).sample
                return o.numpy(), time.perf_counter() - t

        check = [exe, "--convert-unet", "--model-version", root, "-o", out, "--compute-precision", args.precision,
                 "--check-output-correctness"]
        rows = {k: [] for k in ("check_wall", "check_rss", "check_written", "interp", "torch", "gemm_heavy")}
        psnr_text = ""
        for i in range(args.repeat):  # interleaved, so a change in the machine's load hits all alike
            wall, rss, written, rc = run_child_io(check, work / "check.log")
            log = (work / "check.log").read_text()
            if rc:
                sys.exit(f"bench: the check exited {rc}:\n{log}")
            psnr_text = "; ".join(m.group(0) for m in re.finditer(r"output \S+: PSNR [0-9.]+ dB", log))
            rows["check_wall"].append(wall)
            rows["check_rss"].append(rss)
            rows["check_written"].append(written)
            r = subprocess.run([str(c) for c in run], capture_output=True, text=True)
            if r.returncode:
                sys.exit(f"bench: sdcoreml run exited {r.returncode}:\n{r.stderr}")
            doc = json.loads(r.stdout)
            rows["interp"].append(doc["predict_seconds"])
            heavy = [v for v in doc["profile"].values() if v["flops"] > 0]  # conv, matmul, linear, einsum, attention
            rows["gemm_heavy"].append(sum(v["flops"] for v in heavy) / sum(v["seconds"] for v in heavy) / 1e9)
            ref, dt = torch_once()
            rows["torch"].append(dt)
            print(f"  run {i + 1}: check {wall:.1f} s, {rss / 1e6:.0f} MB peak RSS, {written / 1e6:.1f} MB written; "
                  f"interpreter {doc['predict_seconds']:.1f} s; PyTorch {dt:.1f} s", flush=True)
        got = np.load(doc["outputs"][0]["file"])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"\nSD 1.5 UNet (random weights), latent 64x64, batch 2; package --compute-precision {args.precision} "
          f"({pkg_bytes / 1e6:.0f} MB); {threads} thread(s) for the interpreter and PyTorch "
          f"(torch {torch.__version__}, get_num_threads() = {torch.get_num_threads()}); medians of {args.repeat}")
    print(f"  {'check: wall':32} {med['check_wall']:8.1f} s   vs PyTorch's two forwards {2 * med['torch']:.1f} s "
          f"({med['check_wall'] / (2 * med['torch']):.2f}x)")
    print(f"  {'check: peak RSS':32} {max(rows['check_rss']) / 1e6:8.0f} MB (largest of the runs)")
    print(f"  {'check: bytes written':32} {max(rows['check_written']) / 1e6:8.1f} MB (largest; the package exists)")
    print(f"  {'check: result':32} {psnr_text}")
    print(f"  {'interpreter: one UNet predict':32} {med['interp']:8.1f} s   vs PyTorch {med['torch']:.1f} s "
          f"({med['interp'] / med['torch']:.2f}x)")
    print(f"  {'GEMM work':32} {flops / 1e9:8.0f} GFLOP: interpreter {flops / med['interp'] / 1e9:.1f} GFLOP/s "
          f"({flops / med['interp'] / 1e9 / peak:.0%} of the sgemm peak {peak:.1f}), PyTorch "
          f"{flops / med['torch'] / 1e9:.1f} GFLOP/s ({flops / med['torch'] / 1e9 / peak:.0%})")
    print(f"  {'GEMM-heavy ops':32} {med['gemm_heavy']:8.1f} GFLOP/s = {med['gemm_heavy'] / peak:.0%} of peak "
          f"(their FLOPs over their own time, run --profile)")
    print(f"  {'interpreter vs PyTorch':32} PSNR {psnr(ref, got):.1f} dB (noise_pred)")


if __name__ == "__main__":
    main()
