"""Download throughput of `sdcoreml download` against the fake Hub (tests/python/fake_hub.py) on
loopback, compared with `curl` fetching the same file from the same server in the same run.

One repository with one LFS weight file of --mb megabytes of random bytes (plus its config);
each run downloads it into a fresh cache (sdcoreml: HEAD, 302 to the "CDN" port, GET, SHA-256
verification, fsync, rename, symlink) or to a file (curl -L: the 302 and the GET; then also with
sha256sum and an fsync, the work sdcoreml adds). Medians of
--runs runs; MB/s = 10^6 bytes per second of wall time, process start included.

    ~/.cache/sdcoreml/venv-*/bin/python bench/download.py [--mb 256] [--runs 3]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "python"))
from fake_hub import FakeHub  # noqa: E402

MODEL = "bench/one-file"
FILE = "unet/diffusion_pytorch_model.safetensors"


def timed(cmd, env):
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sdcoreml", default=os.environ.get("SDCOREML_BIN", str(REPO / "build" / "sdcoreml")))
    a = ap.parse_args()
    if not shutil.which("curl"):
        sys.exit("bench/download.py: curl is not installed (apt-get install curl)")
    size = a.mb * 1_000_000
    data = os.urandom(size)
    work = Path(tempfile.mkdtemp(prefix="sdcoreml-bench-download-"))
    rows = {"sdcoreml download": [], "curl -L": [], "curl -L + sha256sum": []}
    try:
        with FakeHub(lifetime=1800) as hub:
            hub.add_repo(MODEL, files={"unet/config.json": b"{}", FILE: data})
            base = dict(os.environ, HF_ENDPOINT=hub.endpoint, HF_TOKEN="")
            base.pop("HF_HUB_OFFLINE", None)
            url = f"{hub.endpoint}/{MODEL}/resolve/main/{FILE}"
            for i in range(a.runs):
                home = work / f"hf{i}"
                env = dict(base, HF_HOME=str(home))
                rows["sdcoreml download"].append(timed([a.sdcoreml, "download", MODEL, "--quiet"], env))
                shutil.rmtree(home)
                out = work / "curl.bin"
                rows["curl -L"].append(timed(["curl", "-sfL", "-o", str(out), url], base))
                assert out.stat().st_size == size
                out.unlink()
                # what sdcoreml does beyond curl: verify the bytes (and fsync them)
                rows["curl -L + sha256sum"].append(
                    timed(["sh", "-c", f"curl -sfL -o '{out}' '{url}' && sha256sum '{out}' && sync -d '{out}'"], base))
                out.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"one {a.mb} MB LFS file from the fake Hub on 127.0.0.1, medians of {a.runs} runs")
    print(f"{'tool':<20} {'median s':>9} {'MB/s':>8}   runs (s)")
    medians = {}
    for tool, ts in rows.items():
        m = statistics.median(ts)
        medians[tool] = m
        print(f"{tool:<20} {m:9.3f} {size / m / 1e6:8.1f}   {', '.join(f'{t:.3f}' for t in ts)}")
    print(f"sdcoreml / curl throughput: {medians['curl -L'] / medians['sdcoreml download']:.2f}")


if __name__ == "__main__":
    main()
