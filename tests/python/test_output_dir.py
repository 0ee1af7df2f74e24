"""What a run leaves in -o besides its packages (issue 9): temporaries of runs that died
(SIGKILL, the out-of-memory killer) are removed by the next run into the same -o, and two runs
converting the same model into the same -o at once both succeed with one package each."""

import filecmp
import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import check_ok, package_name, sdcoreml_path


def dead_pid():
    """A pid whose process has exited (and been reaped), so nothing runs under it."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def fake_partial_package(path):
    (path / "Data" / "com.apple.CoreML" / "weights").mkdir(parents=True)
    (path / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").write_bytes(b"\0" * 4096)
    (path / "Manifest.json").write_text("{}")


def test_a_killed_runs_temporaries_are_removed_by_the_next_run(sdcoreml, pipelines, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    gone, alive = dead_pid(), os.getpid()
    stale = [out / f".{package_name('tiny-sd', 'unet')}.partial-{gone}",
             out / f".sdcoreml-reference-{gone}-unet.mlpackage",
             out / f".Resources.partial-{gone}"]
    for p in stale:
        fake_partial_package(p)
    live = out / f".{package_name('tiny-sd', 'vae_decoder')}.partial-{alive}"  # a run still going
    fake_partial_package(live)
    not_ours = [out / ".partial-1", out / f"notes.partial-{gone}", out / f".cache-{gone}"]
    for p in not_ours:
        p.write_text("keep")
    r = check_ok(sdcoreml("--convert-text-encoder", "--model-version", "tiny-sd", "-o", out,
                          cwd=pipelines["sd1"].parent))
    for p in stale:
        assert not p.exists(), p
        assert f"removed {p}, left by an interrupted run (process {gone} is gone)" in r.stderr, r.stderr
    assert live.exists() and all(p.exists() for p in not_ours)
    assert (out / package_name("tiny-sd", "text_encoder")).is_dir()


def test_a_sigkilled_conversion_is_cleaned_up_by_the_next(sdcoreml, pipelines, tmp_path):
    """The real thing: SIGKILL a conversion while it writes (no handler can run), then convert again."""
    out = tmp_path / "o"
    cmd = [str(sdcoreml_path()), "--convert-unet", "--convert-text-encoder", "--convert-vae-decoder",
           "--convert-vae-encoder", "--model-version", "tiny-sd", "-o", str(out)]
    left = []
    for delay in (0.02, 0.05, 0.1, 0.2, 0.4):
        if out.exists():
            subprocess.run(["rm", "-rf", str(out)], check=True)
        p = subprocess.Popen(cmd, cwd=pipelines["sd1"].parent, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        left = [q for q in out.iterdir() if q.name.startswith(".")] if out.exists() else []
        if left:
            break
    if not left:
        import pytest
        pytest.skip("the conversion never was caught mid-write on this machine")
    r = check_ok(sdcoreml(*cmd[1:], cwd=pipelines["sd1"].parent))
    assert not [q for q in out.iterdir() if q.name.startswith(".")]
    assert all(f"removed {q}" in r.stderr for q in left), r.stderr


def test_two_runs_into_the_same_output_both_succeed(sdcoreml, pipelines, tmp_path):
    flags = ["--convert-unet", "--convert-text-encoder", "--convert-vae-decoder", "--model-version", "tiny-sd"]
    ref = tmp_path / "ref"
    check_ok(sdcoreml(*flags, "-o", ref, cwd=pipelines["sd1"].parent))
    for round in range(4):
        out = tmp_path / f"o{round}"
        procs = [subprocess.Popen([str(sdcoreml_path()), *flags, "-o", str(out)], cwd=pipelines["sd1"].parent,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [(p.wait(), p.stderr.read()) for p in procs]
        for rc, err in results:
            assert rc == 0, err
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())
        for pkg in ref.iterdir():
            cmp = filecmp.dircmp(pkg, out / pkg.name)
            assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
            for sub in ("Data/com.apple.CoreML/weights/weight.bin", "Data/com.apple.CoreML/model.mlmodel",
                        "Manifest.json"):
                assert (pkg / sub).read_bytes() == (out / pkg.name / sub).read_bytes(), (pkg, sub)
