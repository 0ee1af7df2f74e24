"""Downloading Hub ids (issue 11) against the fake Hub of fake_hub.py on 127.0.0.1: the cache
sdcoreml fills is the one huggingface_hub fills (checked with the real client), only the files a
conversion reads are fetched, lost connections resume with Range, corrupt bytes never become a
blob, tokens come from HF_TOKEN or $HF_HOME/token, and the Hub's refusals give one line each."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import EXAMPLE_SD1, check_ok, package_name
from fake_hub import FakeHub
from test_bundle import fake_xcrun

REPO = "testorg/tiny-sd"
UNET = "unet/diffusion_pytorch_model.safetensors"
WEIGHT_BIN = "Data/com.apple.CoreML/weights/weight.bin"


@pytest.fixture
def hub():
    with FakeHub(lifetime=300) as h:
        h.add_repo(REPO, EXAMPLE_SD1)
        yield h


def online(hub, hf_home, **extra):
    """The environment of a run that may download: the fake Hub, a fresh cache, short backoff."""
    env = {"HF_HUB_OFFLINE": "", "HF_HOME": str(hf_home), "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "",
           "SDCOREML_HUB_BACKOFF_MS": "10"}
    env.update(extra)
    return env


def repo_dir(hf_home, repo=REPO):
    return Path(hf_home) / "hub" / ("models--" + repo.replace("/", "--"))


def snapshot_files(hf_home, repo=REPO):
    snaps = list((repo_dir(hf_home, repo) / "snapshots").iterdir())
    assert len(snaps) == 1
    return sorted(p.relative_to(snaps[0]).as_posix() for p in snaps[0].rglob("*") if not p.is_dir())


def convert(sdcoreml, hub, tmp_path, *flags, model=REPO, env=None, out="out"):
    e = online(hub, tmp_path / "hf") if hub is not None else {}
    e.update(env or {})
    work = tmp_path / "cwd"
    work.mkdir(exist_ok=True)
    return sdcoreml("--model-version", model, "-o", tmp_path / out, *flags, cwd=work, env=e, timeout=300)


def one_error_line(r):
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("sdcoreml: error:")]
    assert r.returncode == 1 and len(lines) == 1, (r.returncode, r.stderr)
    return lines[0]


def run_python(code, env):
    e = dict(os.environ)
    e.pop("HF_HUB_OFFLINE", None)
    e.update(env)
    r = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


# ---------------------------------------------------------------------------------------------
# the fake against huggingface_hub, and the cache against huggingface_hub's reader


def cache_tree(root):
    """{relative path: symlink target or file bytes' sha256}, without the lock files."""
    tree = {}
    for p in sorted(Path(root).rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            tree[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            tree[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return tree


def test_fake_hub_fills_cache_like_huggingface_hub(sdcoreml, hub, tmp_path):
    ours = tmp_path / "ours"
    r = sdcoreml("download", REPO, env=online(hub, ours), timeout=120)
    check_ok(r)
    assert r.stdout == ""
    files = snapshot_files(ours)
    # huggingface_hub's snapshot_download of the same files, from the same fake, into another cache
    theirs = tmp_path / "theirs" / "hub"
    run_python(
        "import huggingface_hub as h, sys, json\n"
        f"print(h.__version__); h.snapshot_download({REPO!r}, cache_dir={str(theirs)!r}, "
        f"allow_patterns={files!r})\n",
        {"HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_TELEMETRY": "1"})
    a, b = cache_tree(repo_dir(ours)), cache_tree(theirs / ("models--" + REPO.replace("/", "--")))
    assert a == b
    # huggingface_hub reads our cache as its own
    out = run_python(
        "import huggingface_hub as h, json\n"
        f"info = h.scan_cache_dir({str(ours / 'hub')!r})\n"
        "r = list(info.repos)[0]\n"
        f"print(json.dumps({{'warnings': [str(w) for w in info.warnings], 'id': r.repo_id, 'refs': sorted(r.refs), "
        f"'files': sorted(f.file_name for rev in r.revisions for f in rev.files), "
        f"'cached': h.try_to_load_from_cache({REPO!r}, {UNET!r}, cache_dir={str(ours / 'hub')!r})}}))\n",
        {})
    info = json.loads(out)
    assert info["warnings"] == [] and info["id"] == REPO and info["refs"] == ["main"]
    assert Path(info["cached"]).read_bytes() == (EXAMPLE_SD1 / UNET).read_bytes()
    # and sdcoreml reads a cache huggingface_hub filled (hf_hub_download of every file sdcoreml needs)
    check_ok(convert(sdcoreml, None, tmp_path, "--convert-unet", env={"HF_HOME": str(tmp_path / "theirs")}))


# ---------------------------------------------------------------------------------------------
# converting a Hub id


def test_convert_on_fresh_cache_then_offline(sdcoreml, hub, tmp_path):
    flags = ("--convert-unet", "--convert-text-encoder", "--convert-vae-decoder")
    r = convert(sdcoreml, hub, tmp_path, *flags)
    check_ok(r)
    assert r.stdout == ""
    # only what the three components read: configs, their weights; no safety checker weights,
    # no tokenizer vocabulary
    assert snapshot_files(tmp_path / "hf") == sorted([
        "model_index.json", "safety_checker/config.json", "scheduler/scheduler_config.json",
        "text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/tokenizer_config.json",
        "unet/config.json", UNET, "vae/config.json", "vae/diffusion_pytorch_model.safetensors"])
    assert (repo_dir(tmp_path / "hf") / "refs" / "main").read_text() == hub.repos[REPO].sha
    assert not list(repo_dir(tmp_path / "hf").glob("blobs/*.incomplete"))
    # the same packages as from the folder
    local = tmp_path / "local"
    check_ok(sdcoreml("--model-version", "tiny-sd", "-o", local, *flags, cwd=EXAMPLE_SD1.parent))
    for sub in ("unet", "text_encoder", "vae_decoder"):
        assert ((tmp_path / "out" / package_name(REPO, sub) / WEIGHT_BIN).read_bytes() ==
                (local / package_name("tiny-sd", sub) / WEIGHT_BIN).read_bytes())
    # a second run offline, with no server at all, finds everything in the cache
    hub.stop()
    r = convert(sdcoreml, None, tmp_path, *flags, env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"},
                out="out2")
    check_ok(r)
    assert len(list((tmp_path / "out2").glob("*.mlpackage"))) == 3


def test_complete_cache_is_not_asked_again(sdcoreml, hub, tmp_path):
    check_ok(convert(sdcoreml, hub, tmp_path, "--convert-text-encoder"))
    n = len(hub.requests)
    check_ok(convert(sdcoreml, hub, tmp_path, "--convert-text-encoder", out="again"))
    assert len(hub.requests) == n
    # a component not fetched yet is: only its weights are transferred
    check_ok(convert(sdcoreml, hub, tmp_path, "--convert-vae-decoder", out="vae"))
    assert [r["path"].split("?file=")[1] for r in hub.fetched("cdn")[1:]] == ["vae/diffusion_pytorch_model.safetensors"]


def shard(src, dst_dir, stem):
    """Splits a safetensors file into two shards with an index, as transformers writes them."""
    tensors = load_file(src)
    names = sorted(tensors)
    half = len(names) // 2
    parts = {f"{stem}-00001-of-00002.safetensors": names[:half], f"{stem}-00002-of-00002.safetensors": names[half:]}
    files = {}
    weight_map = {}
    for fname, keys in parts.items():
        path = dst_dir / fname
        save_file({k: tensors[k] for k in keys}, str(path))
        files[fname] = path.read_bytes()
        weight_map.update({k: fname for k in keys})
    files[f"{stem}.safetensors.index.json"] = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    return files


def test_fp16_variant_and_shards(sdcoreml, hub, tmp_path):
    """The fp16 variant when the repository has one (never the default beside it); a sharded
    text encoder: its index, then its shards."""
    files = {k: v for k, v in hub.repos[REPO].files.items() if k != "text_encoder/model.safetensors"}
    unet = files[UNET]
    files["unet/diffusion_pytorch_model.fp16.safetensors"] = unet
    files[UNET] = b"not read: the fp16 variant is preferred"
    (tmp_path / "shards").mkdir()
    for k, v in shard(EXAMPLE_SD1 / "text_encoder" / "model.safetensors", tmp_path / "shards", "model").items():
        files["text_encoder/" + k] = v
    hub.add_repo("testorg/variants", files=files)
    check_ok(convert(sdcoreml, hub, tmp_path, "--convert-unet", "--convert-text-encoder", model="testorg/variants"))
    got = snapshot_files(tmp_path / "hf", "testorg/variants")
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in got and UNET not in got
    assert {"text_encoder/model.safetensors.index.json", "text_encoder/model-00001-of-00002.safetensors",
            "text_encoder/model-00002-of-00002.safetensors"} <= set(got)


@pytest.mark.parametrize("kind", ["sd2", "sdxl"])
def test_generated_pipelines(sdcoreml, pipelines, tmp_path, kind):
    with FakeHub(lifetime=300) as hub:
        hub.add_repo(f"testorg/{kind}", pipelines[kind])
        extra = ("--xl-version",) if kind == "sdxl" else ()
        if kind == "sdxl":
            hub.add_repo("testorg/refiner", pipelines["sdxl-refiner"])
            extra += ("--refiner-version", "testorg/refiner")
        check_ok(convert(sdcoreml, hub, tmp_path, "--convert-unet", "--convert-text-encoder", *extra,
                         model=f"testorg/{kind}"))
        names = {p.name for p in (tmp_path / "out").iterdir()}
        assert package_name(f"testorg/{kind}", "unet") in names
        if kind == "sdxl":
            assert package_name("testorg/sdxl", "refiner") in names
            assert package_name("testorg/sdxl", "text_encoder_2") in names
            assert "unet/config.json" in snapshot_files(tmp_path / "hf", "testorg/refiner")


def test_custom_vae_id(sdcoreml, hub, tmp_path):
    """A VAE repository may keep config.json and its weights at its root (as ControlNet
    repositories do): those weights, never the pickle beside them nor the pipeline's own VAE."""
    vae = {"config.json": (EXAMPLE_SD1 / "vae/config.json").read_bytes(),
           "diffusion_pytorch_model.safetensors": (EXAMPLE_SD1 / "vae/diffusion_pytorch_model.safetensors").read_bytes(),
           "diffusion_pytorch_model.bin": b"never fetched"}
    hub.add_repo("testorg/vae", files=vae)
    check_ok(convert(sdcoreml, hub, tmp_path, "--convert-vae-decoder", "--custom-vae-version", "testorg/vae"))
    assert snapshot_files(tmp_path / "hf", "testorg/vae") == ["config.json", "diffusion_pytorch_model.safetensors"]
    # the pipeline's own VAE weights were not fetched
    assert "vae/diffusion_pytorch_model.safetensors" not in snapshot_files(tmp_path / "hf")


# ---------------------------------------------------------------------------------------------
# faults


def test_dropped_connection_resumes_with_range(sdcoreml, hub, tmp_path):
    size = len(hub.repos[REPO].files[UNET])
    hub.drop[UNET] = (size // 3, 1)
    r = convert(sdcoreml, hub, tmp_path, "--convert-unet")
    check_ok(r)
    ranges = [q["range"] for q in hub.fetched("cdn") if UNET in q["path"]]
    assert ranges == [None, f"bytes={size // 3}-"], ranges
    resumed = [ln for ln in r.stderr.splitlines() if "resuming" in ln]
    assert len(resumed) == 1 and f"resuming at byte {size // 3}" in resumed[0], r.stderr
    print("\n".join(resumed))  # for the report: pytest -s shows the log line
    blob = repo_dir(tmp_path / "hf") / "snapshots" / hub.repos[REPO].sha / UNET
    assert blob.read_bytes() == (EXAMPLE_SD1 / UNET).read_bytes()


def test_interrupted_run_resumes_next_run(sdcoreml, hub, tmp_path):
    """The .incomplete of an earlier (killed) run is continued, not started over."""
    data = hub.repos[REPO].files[UNET]
    digest = hashlib.sha256(data).hexdigest()
    blobs = repo_dir(tmp_path / "hf") / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{digest}.incomplete").write_bytes(data[:1000])
    r = convert(sdcoreml, hub, tmp_path, "--convert-unet")
    check_ok(r)
    assert [q["range"] for q in hub.fetched("cdn") if UNET in q["path"]] == ["bytes=1000-"]
    assert f"resuming {UNET} at byte 1000 of {len(data)} (Range request)" in r.stderr
    print("\n".join(ln for ln in r.stderr.splitlines() if "resuming" in ln))
    assert (blobs / digest).read_bytes() == data and not (blobs / f"{digest}.incomplete").exists()


def test_server_ignoring_range_restarts_the_file(sdcoreml, hub, tmp_path):
    """A server that answers a Range request with 200 sends the whole file: it replaces the part."""
    hub.no_range = True
    hub.drop[UNET] = (5000, 1)
    r = convert(sdcoreml, hub, tmp_path, "--convert-unet")
    check_ok(r)
    assert [q["range"] for q in hub.fetched("cdn") if UNET in q["path"]] == [None, "bytes=5000-"]
    blob = repo_dir(tmp_path / "hf") / "snapshots" / hub.repos[REPO].sha / UNET
    assert blob.read_bytes() == (EXAMPLE_SD1 / UNET).read_bytes()


def test_retries_exhausted_on_dropped_connections(sdcoreml, hub, tmp_path):
    hub.drop[UNET] = (100, 99)
    line = one_error_line(convert(sdcoreml, hub, tmp_path, "--convert-unet"))
    assert "downloading 'unet/diffusion_pytorch_model.safetensors' failed after 5 attempts" in line, line
    # the part received stays for the next run to resume
    assert list(repo_dir(tmp_path / "hf").glob("blobs/*.incomplete"))


def test_corrupt_bytes_fail_cleanly(sdcoreml, hub, tmp_path):
    hub.corrupt.add(UNET)
    r = convert(sdcoreml, hub, tmp_path, "--convert-unet")
    line = one_error_line(r)
    assert f"file '{UNET}' is corrupt" in line and "the download was deleted" in line, line
    digest = hashlib.sha256(hub.repos[REPO].files[UNET]).hexdigest()
    blobs = repo_dir(tmp_path / "hf") / "blobs"
    assert not (blobs / digest).exists() and not (blobs / f"{digest}.incomplete").exists()
    assert not (repo_dir(tmp_path / "hf") / "refs" / "main").exists()
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    # a bad partial file from elsewhere: verified as a whole, deleted, and the next run succeeds
    hub.corrupt.clear()
    check_ok(convert(sdcoreml, hub, tmp_path, "--convert-unet"))


def test_server_errors_are_retried(sdcoreml, hub, tmp_path):
    hub.statuses[("api", REPO)] = [500, 503]
    hub.statuses[("cdn", UNET)] = [502]
    r = convert(sdcoreml, hub, tmp_path, "--convert-unet")
    check_ok(r)
    assert r.stderr.count("warning:") >= 3, r.stderr


def test_server_error_after_last_attempt(sdcoreml, hub, tmp_path):
    hub.statuses[("api", REPO)] = [500] * 5
    line = one_error_line(convert(sdcoreml, hub, tmp_path, "--convert-unet"))
    assert f"model '{REPO}': listing the files failed after 5 attempts: HTTP 500" in line, line


def test_not_found(sdcoreml, hub, tmp_path):
    line = one_error_line(convert(sdcoreml, hub, tmp_path, "--convert-unet", model="testorg/nope"))
    assert "model 'testorg/nope' not found on http://127.0.0.1" in line, line
    hub.statuses[("resolve", UNET)] = [404]
    line = one_error_line(convert(sdcoreml, hub, tmp_path, "--convert-unet"))
    assert f"model '{REPO}': file '{UNET}' not found" in line, line
    line = one_error_line(convert(sdcoreml, hub, tmp_path, "--convert-unet", model=REPO + "@v9"))
    assert f"model '{REPO}' has no revision 'v9'" in line, line


def test_gated_model_needs_token(sdcoreml, hub, tmp_path):
    hub.token = "hf_secret"
    hub.add_repo("testorg/gated", EXAMPLE_SD1, gated=True)
    line = one_error_line(convert(sdcoreml, hub, tmp_path, "--convert-text-encoder", model="testorg/gated"))
    assert "model 'testorg/gated' is gated or private (HTTP 401, no token given)" in line, line
    assert f"accept its licence on {hub.endpoint}/testorg/gated and set HF_TOKEN" in line, line
    line = one_error_line(convert(sdcoreml, hub, tmp_path, "--convert-text-encoder", model="testorg/gated",
                                  env={"HF_TOKEN": "hf_wrong"}))
    assert "(HTTP 403, with the token given)" in line, line
    # from the environment
    check_ok(convert(sdcoreml, hub, tmp_path, "--convert-text-encoder", model="testorg/gated",
                     env={"HF_TOKEN": "hf_secret"}))
    hub_requests = [q for q in hub.requests if q["server"] == "hub"]
    assert hub_requests[-1]["authorization"] == "Bearer hf_secret"
    # never sent to the CDN (another host)
    assert all(q["authorization"] is None for q in hub.fetched("cdn"))


def test_token_from_file(sdcoreml, hub, tmp_path):
    hub.token = "hf_secret"
    hub.add_repo("testorg/gated", EXAMPLE_SD1, gated=True)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "token").write_text("hf_secret\n")
    check_ok(convert(sdcoreml, hub, tmp_path, "--convert-text-encoder", model="testorg/gated"))


def test_escaping_paths_are_refused(sdcoreml, hub, tmp_path):
    for bad in ("../evil/config.json", "unet/../../x.json", "/etc/config.json", "unet\\config.json"):
        hub.add_repo("testorg/evil", files={"model_index.json": b"{}", bad: b"{}"})
        line = one_error_line(convert(sdcoreml, hub, tmp_path, "--convert-unet", model="testorg/evil"))
        assert "refusing the file name" in line and "leave the snapshot folder" in line, line
    assert not (tmp_path / "evil").exists() and not (tmp_path / "hf" / "evil").exists()


def test_offline_missing_says_how_to_get_it(sdcoreml, tmp_path):
    r = sdcoreml("--model-version", REPO, "-o", tmp_path / "o", "--convert-unet", cwd=tmp_path,
                 env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    line = one_error_line(r)
    assert "HF_HUB_OFFLINE is set: unset it, or fill the cache first with `sdcoreml download ID`" in line, line


# ---------------------------------------------------------------------------------------------
# sdcoreml download, tokenizer URLs


def test_download_command(sdcoreml, hub, tmp_path):
    env = online(hub, tmp_path / "hf")
    r = sdcoreml("download", REPO, "--include-weights-for", "unet", env=env, timeout=120)
    check_ok(r)
    assert r.stdout == ""
    got = snapshot_files(tmp_path / "hf")
    assert UNET in got and "text_encoder/model.safetensors" not in got
    assert {"tokenizer/vocab.json", "tokenizer/merges.txt"} <= set(got)
    r = convert(sdcoreml, None, tmp_path, "--convert-unet", env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    check_ok(r)
    # a commit by its hash: no ref written, found again by the same spelling
    sha = hub.repos[REPO].sha
    check_ok(sdcoreml("download", REPO, "--revision", sha, "--include-weights-for", "none",
                      env=online(hub, tmp_path / "hf2"), timeout=120))
    assert not (repo_dir(tmp_path / "hf2") / "refs").exists()
    r = sdcoreml("download", REPO, env={"HF_HOME": str(tmp_path / "hf3"), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 1 and "HF_HUB_OFFLINE is set" in r.stderr


def test_tokenizer_urls_downloaded(sdcoreml, hub, tmp_path):
    env, _ = fake_xcrun(tmp_path)
    base = f"{hub.endpoint}/{REPO}/resolve/main/tokenizer"
    r = convert(sdcoreml, hub, tmp_path, "--convert-text-encoder", "--bundle-resources-for-swift-cli",
                "--text-encoder-vocabulary-url", f"{base}/vocab.json", "--text-encoder-merges-url", f"{base}/merges.txt",
                env=env)
    check_ok(r)
    res = tmp_path / "out" / "Resources"
    assert (res / "vocab.json").read_bytes() == (EXAMPLE_SD1 / "tokenizer/vocab.json").read_bytes()
    assert (res / "merges.txt").read_bytes() == (EXAMPLE_SD1 / "tokenizer/merges.txt").read_bytes()
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob(".sdcoreml-*-vocab.json"))


def test_bad_tokenizer_url_fails_before_converting(sdcoreml, hub, tmp_path):
    env, log = fake_xcrun(tmp_path)
    r = convert(sdcoreml, hub, tmp_path, "--convert-text-encoder", "--bundle-resources-for-swift-cli",
                "--text-encoder-vocabulary-url", f"{hub.endpoint}/nowhere/vocab.json", env=env)
    line = one_error_line(r)
    assert line.startswith("sdcoreml: error: --text-encoder-vocabulary-url: ") and "HTTP 404" in line, line
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.mlpackage"))


def test_progress_on_a_terminal(sdcoreml, hub, tmp_path):
    """Progress (file, bytes, rate, ETA) is drawn on stderr when it is a terminal; --quiet
    silences it; stdout stays empty."""
    import pty

    env = dict(os.environ)
    env.pop("HF_HUB_OFFLINE", None)
    env.update(online(hub, tmp_path / "hf"))
    for quiet in (False, True):
        master, slave = pty.openpty()
        args = [str(sdcoreml.exe), "download", REPO] + (["--quiet"] if quiet else [])
        p = subprocess.run(args, env=env, stdout=subprocess.PIPE, stderr=slave, timeout=120)
        os.close(slave)
        err = b""
        try:
            while True:
                chunk = os.read(master, 65536)
                if not chunk:
                    break
                err += chunk
        except OSError:
            pass
        os.close(master)
        assert p.returncode == 0 and p.stdout == b""
        text = err.decode()
        if quiet:
            assert "MB/s" not in text and "downloading" not in text, text
        else:
            assert UNET[-30:] in text and "MB/s" in text and "ETA" in text, text
        env["HF_HOME"] = str(tmp_path / "hf-quiet")
