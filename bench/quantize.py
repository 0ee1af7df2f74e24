#!/usr/bin/env python3
"""--quantize-nbits benchmark: palettizing full-size random-weight UNets (the real configs).

For each model (default: SD 1.5) and each of float16 (no palettization), 8, 6 and 4 bits, one
run converts the UNet with `sdcoreml --convert-unet [--quantize-nbits N]` and prints the median
wall time, the largest peak RSS (wait4 on the child alone), how many weights were palettized,
and the size of weight.bin. Palettization is streamed — a histogram pass and an index pass over
each tensor, the k-means on at most 65 536 distinct float16 values — so peak RSS should stay
at the unquantized conversion's.

The models are the ones bench/unet.py generates (random init, fp16 variant) and caches under
$SDCOREML_CACHE/bench (default ~/.cache/sdcoreml/bench). Needs the test venv (tests/run.sh
makes it): run it with that venv's python.

    python bench/quantize.py [--models sd15,sdxl] [--bits 8,6,4] [--repeat 3]
"""

import argparse
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import run_child  # noqa: E402
from unet import CACHE, CONFIGS, SDCOREML, ensure_model  # noqa: E402


def convert(root, flags, out_dir):
    """(seconds, peak RSS bytes, weight.bin bytes, weights palettized) of one conversion."""
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = [str(SDCOREML), "--convert-unet", "--model-version", str(root), "-o", str(out_dir), *flags]
    dt, rss, rc, err = run_child(cmd)
    if rc != 0:
        raise SystemExit(f"conversion failed: {' '.join(cmd)}\n{err}")
    m = re.search(r"palettizing (\d+) weights", err)
    wbin = next(out_dir.rglob("weight.bin"))
    return dt, rss, wbin.stat().st_size, int(m.group(1)) if m else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="sd15")
    ap.add_argument("--bits", default="8,6,4")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if not SDCOREML.exists():
        raise SystemExit(f"{SDCOREML} is not built")
    bits = [None] + [int(b) for b in args.bits.split(",")]
    rows = []
    for name in args.models.split(","):
        root = ensure_model(name)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            tmp = Path(tmp)
            runs = {b: [] for b in bits}
            for _ in range(args.repeat):  # interleaved, so every setting sees the same machine state
                for b in bits:
                    flags = list(CONFIGS[name]["flags"]) + (["--quantize-nbits", str(b)] if b else [])
                    runs[b].append(convert(root, flags, tmp / "out"))
        base = statistics.median(r[0] for r in runs[None])
        dense_size = runs[None][0][2]
        for b in bits:
            times = [r[0] for r in runs[b]]
            t = statistics.median(times)
            rows.append((name, f"{b}-bit" if b else "float16", runs[b][0][3], t, t - base, max(r[1] for r in runs[b]),
                         runs[b][0][2], dense_size / runs[b][0][2]))
    print(f"{'model':6} {'weights':8} {'palettized':>10} {'convert s':>9} {'+ s':>6} {'peak RSS MB':>11} "
          f"{'weight.bin MB':>13} {'x smaller':>9}")
    for name, what, n, t, extra, rss, size, ratio in rows:
        print(f"{name:6} {what:8} {n:10d} {t:9.2f} {extra:6.2f} {rss / 1e6:11.0f} {size / 1e6:13.1f} {ratio:9.2f}")
    print(f"(medians of {args.repeat} interleaved runs; '+ s' = over the float16 conversion; "
          f"peak RSS is the largest of the runs)")


if __name__ == "__main__":
    main()
