"""What the bench scripts share: where models are cached, the generated full-size SD 1.5 text
encoder, measuring one child process (wall time, and peak RSS from wait4 on that child alone),
sizes, the anchor's PSNR, and the table of runs. Imported by the scripts beside it."""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GENERATOR = REPO / "tests" / "fixtures" / "make_tiny_pipelines.py"
TEXT_ENCODER_KIND = "sd15-text-encoder-full"


def cache_root():
    return Path(os.environ.get("SDCOREML_CACHE") or Path.home() / ".cache" / "sdcoreml")


def text_encoder_dir():
    import hashlib

    h = hashlib.sha256(GENERATOR.read_bytes()).hexdigest()[:12]
    return cache_root() / "bench" / f"{TEXT_ENCODER_KIND}-{h}" / TEXT_ENCODER_KIND


def ensure_text_encoder():
    """The full-size random-weight SD 1.5 text encoder (fp16 variant), generated once by the
    fixture script into a temporary folder renamed into place. Returns (dir, generated now)."""
    d = text_encoder_dir()
    if (d / "model_index.json").exists():
        return d, False
    import importlib.util

    if not (importlib.util.find_spec("torch") and importlib.util.find_spec("transformers")):
        sys.exit(f"bench: {d} does not exist yet and this python ({sys.executable}) cannot make it "
                 "(needs torch + transformers): run with the test venv's python, e.g. "
                 "~/.cache/sdcoreml/venv-*/bin/python")
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".gen-", dir=d.parent))
    t = time.perf_counter()
    try:
        subprocess.run([sys.executable, str(GENERATOR), "--kind", TEXT_ENCODER_KIND, "--out", str(tmp / "m")],
                       check=True, stdout=subprocess.DEVNULL)
        os.rename(tmp / "m", d)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"generated {d} in {time.perf_counter() - t:.1f} s")
    return d, True


def run_child(cmd, cwd=None):
    """(wall seconds, peak RSS bytes, returncode, stderr) of one child process."""
    t = time.perf_counter()
    p = subprocess.Popen([str(c) for c in cmd], cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    return wall, ru.ru_maxrss * 1024, os.waitstatus_to_exitcode(status), err.decode(errors="replace")


def tree_size(p):
    return sum(f.stat().st_size for f in Path(p).rglob("*") if f.is_file())


def mb(n):
    return f"{n / 1e6:,.1f} MB"


def psnr(a, b):
    """The anchor's compute_psnr: a = reference, b = candidate."""
    import numpy as np

    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    return float(20 * np.log10((np.abs(b).max() + 1e-5) / (np.sqrt(np.mean((a - b) ** 2)) + 1e-10)))


def print_runs(rows):
    """rows: (run number, wall seconds, peak RSS bytes); prints each run, the median wall time
    and the largest peak RSS."""
    print(f"  {'run':>4}  {'wall':>9}  {'peak RSS':>12}")
    for i, wall, rss in rows:
        print(f"  {i:>4}  {wall:>8.2f}s  {mb(rss):>12}")
    print(f"  {'med':>4}  {statistics.median(r[1] for r in rows):>8.2f}s  {mb(max(r[2] for r in rows)):>12} (max)")
