"""Progress of the interpreter's runs on a terminal (issue 14): `--check-output-correctness`,
with and without --chunk-unet, and `sdcoreml run` on a chunk draw one progress line per model
they evaluate ("<name>: op done/total pct, elapsed, ETA") on stderr when stderr is a terminal
(a pseudo-terminal here), and nothing of it when stderr is a pipe or --quiet is given. Each
model's line must reach its op total: the check runs every model to the end. The names come
from the anchor's file naming (package_name), not from our output."""

import os
import re
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import check_ok, package_name

OP_LINE = re.compile(r"sdcoreml: (?:\.\.\.)?([^\r\n]+?): op (\d+)/(\d+) +(\d+)%, \d+:\d\d, ETA (?:\d+:\d\d|--:--)")


def on_terminal(sdcoreml, args, cwd=None):
    """(returncode, stdout bytes, stderr text) of the binary with stderr on a pseudo-terminal."""
    import pty

    master, slave = pty.openpty()
    chunks = []

    def drain():  # read while it runs: a full pty buffer would block the child
        while True:
            try:
                b = os.read(master, 65536)
            except OSError:  # EIO once the child closed its end
                return
            if not b:
                return
            chunks.append(b)

    reader = threading.Thread(target=drain)
    reader.start()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    p = subprocess.run([str(sdcoreml.exe), *map(str, args)], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=slave, timeout=600)
    os.close(slave)
    reader.join(timeout=60)
    os.close(master)
    return p.returncode, p.stdout, b"".join(chunks).decode(errors="replace")


def finished_runs(text):
    """{shown model name: op total} of every progress line that reached its total."""
    done = {}
    for name, k, n, pct in OP_LINE.findall(text):
        assert int(k) <= int(n), text
        if int(k) == int(n):
            assert pct == "100", text
            done[name] = int(n)
    return done


def shown(name, done):
    """The op total shown for the model `name` (the line keeps a long name's last 50 bytes)."""
    key = name if len(name) <= 50 else name[-50:]
    assert key in done, (name, done)
    return done[key]


@pytest.fixture(scope="module")
def model(pipelines):
    return Path(pipelines["sd1"])


def unet_names(model):
    unet = package_name(model.name, "unet")
    return unet, unet.replace(".mlpackage", "_chunk1.mlpackage"), unet.replace(".mlpackage", "_chunk2.mlpackage")


def test_chunked_check_shows_progress_of_each_model(sdcoreml, model, tmp_path):
    """The chunk check runs the UNet, chunk 1 and chunk 2: a finished progress line for each;
    the two chunks together run at least as many ops as the UNet (the cut adds outputs, never
    removes work)."""
    rc, out, err = on_terminal(sdcoreml, ["--convert-unet", "--chunk-unet", "--check-output-correctness",
                                          "--model-version", model.name, "-o", tmp_path / "out"], cwd=model.parent)
    assert rc == 0 and out == b"", err
    done = finished_runs(err)
    unet, c1, c2 = unet_names(model)
    n_unet, n1, n2 = shown(unet, done), shown(c1, done), shown(c2, done)
    assert n1 > 0 and n2 > 0 and n1 + n2 >= n_unet, done
    assert "check " in err and "PSNR" in err, err


def test_unchunked_check_shows_progress_of_package_and_reference(sdcoreml, model, tmp_path):
    rc, out, err = on_terminal(sdcoreml, ["--convert-unet", "--check-output-correctness", "--model-version",
                                          model.name, "-o", tmp_path / "out"], cwd=model.parent)
    assert rc == 0 and out == b"", err
    done = finished_runs(err)
    unet = unet_names(model)[0]
    assert shown(unet, done) > 0
    assert shown(f"the float32 reference of {unet}", done) > 0
    rc, _, err = on_terminal(sdcoreml, ["--quiet", "--convert-unet", "--check-output-correctness", "--model-version",
                                        model.name, "-o", tmp_path / "out"], cwd=model.parent)
    assert rc == 0 and " op " not in err, err


def test_run_on_a_chunk_shows_progress(sdcoreml, model, tmp_path):
    """`sdcoreml run` on chunk 1 with inputs shaped as coremltools reads the chunk's
    description; a terminal gets the progress line, a pipe does not."""
    import coremltools as ct
    import numpy as np

    out = tmp_path / "out"
    check_ok(sdcoreml("--convert-unet", "--chunk-unet", "--model-version", model.name, "-o", out, cwd=model.parent))
    c1 = out / unet_names(model)[1]
    args = ["run", c1, "-o", tmp_path / "o"]
    for i, d in enumerate(ct.utils.load_spec(str(c1)).description.input):
        f = tmp_path / f"in{i}.npy"
        shape = [int(x) for x in d.type.multiArrayType.shape]
        np.save(f, np.random.default_rng(i).standard_normal(shape).astype(np.float32))
        args += ["--input", f"{d.name}={f}"]
    rc, _, err = on_terminal(sdcoreml, args)
    assert rc == 0, err
    assert shown(c1.name, finished_runs(err)) > 0
    r = check_ok(sdcoreml(*args))  # stderr is a pipe
    assert " op " not in r.stderr and "\r" not in r.stderr, r.stderr
