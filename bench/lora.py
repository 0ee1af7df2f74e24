#!/usr/bin/env python3
"""--lora benchmark: the full-size random-weight SD 1.5 UNet of bench/unet.py converted with and
without a LoRA, in the same invocation (interleaved runs, medians).

Prints the median wall and CPU time and the peak RSS of `sdcoreml --convert-unet` without a LoRA (the
baseline) and with a kohya LoRA of rank RANK on every attention projection, proj_in/proj_out,
feed-forward layer, resnet conv1 (3x3) and time_emb_proj (float16, as kohya saves them), and
their ratios. The merge happens while the weights stream, so the peak RSS should stay near the
baseline's plus the LoRA file's pages (it is mapped) and one weight's float32 factors.

The LoRA is generated once from the UNet's tensor shapes (random factors, fixed seed) under
$SDCOREML_CACHE/bench and never committed. Run it with the test venv's python:

    python bench/lora.py [--rank 64] [--repeat 3]
"""

import argparse
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
from unet import CACHE, SDCOREML, ensure_model, weight_files  # noqa: E402

MODULES = [r"attn[12]\.to_(q|k|v|out\.0)$", r"\.proj_(in|out)$", r"ff\.net\.(0\.proj|2)$", r"resnets\.\d+\.conv1$",
           r"resnets\.\d+\.time_emb_proj$"]


def ensure_lora(root, rank):
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = CACHE / f"sd15-lora-r{rank}.safetensors"
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    tensors = {}
    with safe_open(str(weight_files(root)[0]), "pt") as f:
        for name in sorted(f.keys()):
            module = name[: -len(".weight")]
            shape = tuple(f.get_slice(name).get_shape())
            if not name.endswith(".weight") or len(shape) not in (2, 4) or not any(re.search(p, module) for p in MODULES):
                continue
            base = "lora_unet_" + module.replace(".", "_")
            down = rng.standard_normal((rank,) + shape[1:], dtype=np.float32) * 0.01
            up = rng.standard_normal((shape[0], rank) + (1, 1) * (len(shape) == 4), dtype=np.float32) * 0.01
            tensors[base + ".lora_down.weight"] = torch.from_numpy(down).half()
            tensors[base + ".lora_up.weight"] = torch.from_numpy(up).half()
            tensors[base + ".alpha"] = torch.tensor(float(rank))
    save_file(tensors, str(path))
    return path


def convert(root, flags, out_dir):
    """(wall s, CPU s, peak RSS bytes) of one conversion: wall time swings with the machine's
    load, CPU time (user + system of the child alone) much less."""
    cmd = [str(c) for c in (SDCOREML, "--quiet", "--convert-unet", "--model-version", root, "-o", out_dir, *flags)]
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"conversion failed: {' '.join(cmd)}\n{err.decode(errors='replace')}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    root = ensure_model("sd15")
    lora = ensure_lora(root, args.rank)
    runs = {"baseline": [], "lora": []}
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        for i in range(args.repeat):  # interleaved, so both see the same machine state
            for name, flags in (("baseline", []), ("lora", ["--lora", str(lora)])):
                runs[name].append(convert(root, flags, Path(tmp) / f"{name}-{i}"))
                shutil.rmtree(Path(tmp) / f"{name}-{i}")
    (bw, bc, brss), (lw, lc, lrss) = [(statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs),
                                       max(r[2] for r in rs)) for rs in runs.values()]
    print(f"SD 1.5 UNet, LoRA rank {args.rank} ({lora.stat().st_size / 1e6:.0f} MB), median of {args.repeat}")
    print(f"{'run':9} {'wall s':>7} {'CPU s':>7} {'peak RSS MB':>11}")
    print(f"{'baseline':9} {bw:7.2f} {bc:7.2f} {brss / 1e6:11.0f}")
    print(f"{'--lora':9} {lw:7.2f} {lc:7.2f} {lrss / 1e6:11.0f}")
    print(f"{'ratio':9} {lw / bw:7.2f} {lc / bc:7.2f} {lrss / brss:11.2f}")


if __name__ == "__main__":
    main()
