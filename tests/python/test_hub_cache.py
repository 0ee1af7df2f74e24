"""--model-version as a Hub id, resolved in a Hugging Face cache laid out as huggingface_hub
lays it out (HF_HOME/hub/models--<org>--<name>/{refs/main, snapshots/<commit>/..., blobs/}),
with snapshot files as relative symlinks into blobs/. No network is used."""

import hashlib
import os

import coreml_checks
from conftest import EXAMPLE_SD1, check_ok, package_name

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_hub_cache(hf_home, repo_id, src):
    repo_dir = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    blobs = repo_dir / "blobs"
    snap = repo_dir / "snapshots" / COMMIT
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    blobs.mkdir()
    for d, _dirs, files in os.walk(src):
        for name in files:
            path = os.path.join(d, name)
            rel = os.path.relpath(path, src)
            data = open(path, "rb").read()
            digest = hashlib.sha256(data).hexdigest()  # LFS files are named by sha256
            blob = blobs / digest
            if not blob.exists():
                blob.write_bytes(data)
            link = snap / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(blob, link.parent), link)
    return repo_dir


def test_hub_id(sdcoreml, tmp_path):
    hf = tmp_path / "hf"
    make_hub_cache(hf, "testorg/tiny-sd", EXAMPLE_SD1)
    out = tmp_path / "out"
    work = tmp_path / "cwd"  # an empty cwd: no local folder named testorg/tiny-sd
    work.mkdir()
    r = sdcoreml("--model-version", "testorg/tiny-sd", "-o", out, "--convert-text-encoder",
                 cwd=work, env={"HF_HOME": str(hf)})
    check_ok(r)
    name = package_name("testorg/tiny-sd", "text_encoder")
    assert name == "Stable_Diffusion_version_testorg_tiny-sd_text_encoder.mlpackage"
    assert os.listdir(out) == [name]
    info = coreml_checks.load_and_check(
        str(out / name),
        inputs=[("input_ids", (1, 77), "FLOAT32")],
        outputs=[("last_hidden_state", (1, 77, 32), "FLOAT32"), ("pooled_outputs", (1, 32), "FLOAT32")],
        spec_version=7,
    )
    assert info.metadata["version"] == "testorg/tiny-sd"
    assert info.metadata["author"] == "Please refer to the Model Card available at huggingface.co/testorg/tiny-sd"


def test_hub_id_same_bytes_as_folder(sdcoreml, tmp_path):
    """The weights are the same, so only the metadata naming the model may differ: compare
    weight.bin byte for byte."""
    hf = tmp_path / "hf"
    make_hub_cache(hf, "testorg/tiny-sd", EXAMPLE_SD1)
    a, b = tmp_path / "a", tmp_path / "b"
    check_ok(sdcoreml("--model-version", "testorg/tiny-sd", "-o", a, "--convert-text-encoder",
                      cwd=tmp_path, env={"HF_HOME": str(hf)}))
    check_ok(sdcoreml("--model-version", "tiny-sd", "-o", b, "--convert-text-encoder", cwd=EXAMPLE_SD1.parent))
    w = "Data/com.apple.CoreML/weights/weight.bin"
    pa = a / package_name("testorg/tiny-sd", "text_encoder") / w
    pb = b / package_name("tiny-sd", "text_encoder") / w
    assert pa.read_bytes() == pb.read_bytes()


def test_hub_id_not_in_cache(sdcoreml, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    r = sdcoreml("--model-version", "testorg/not-there", "-o", out, "--convert-text-encoder",
                 cwd=tmp_path, env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("sdcoreml: error: "), r.stderr
    assert "testorg/not-there" in lines[0]
    assert os.listdir(out) == []
