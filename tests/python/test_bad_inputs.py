"""Malformed inputs are errors, never crashes or half-written output.

Each case breaks one file of a copy of the sd1 fixture, then checks: exit code 1, exactly one
line on stderr starting 'sdcoreml: error: ', last, naming the file (and the tensor, for tensor
errors); with --quiet that line is all of stderr; and nothing at all left in the -o folder.
"""

import json
import os
import shutil
import struct

import numpy as np
import pytest

from conftest import EXAMPLE_SD1

TE = "text_encoder/model.safetensors"
# A tensor every text-encoder conversion must read.
VICTIM = "text_model.encoder.layers.1.mlp.fc1.weight"


def read_st(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    return header, data[8 + n :]


def write_st_raw(path, header_text, body):
    hb = header_text.encode("utf-8")
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        f.write(body)


def rewrite_tensors(path, edit):
    """Load all tensors (numpy), let edit(dict) change them, save a valid safetensors file."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


# -- the breakages -------------------------------------------------------------------------------


def truncated(root):
    p = root / TE
    size = p.stat().st_size
    with open(p, "r+b") as f:
        f.truncate(size // 2)


def header_past_eof(root):
    p = root / TE
    size = p.stat().st_size
    with open(p, "r+b") as f:
        f.write(struct.pack("<Q", size + 1000))


def invalid_json(root):
    p = root / TE
    header, body = read_st(p)
    text = json.dumps(header)
    write_st_raw(p, "{" + text[1:].replace(":", ";", 3), body)


def duplicate_key(root):
    p = root / TE
    header, body = read_st(p)
    entry = json.dumps(header[VICTIM])
    text = json.dumps(header)
    assert text.endswith("}")
    write_st_raw(p, text[:-1] + f', "{VICTIM}": {entry}}}', body)


def unknown_dtype(root):
    p = root / TE
    header, body = read_st(p)
    header[VICTIM]["dtype"] = "Q7"
    write_st_raw(p, json.dumps(header), body)


def missing_tensor(root):
    rewrite_tensors(root / TE, lambda t: t.pop(VICTIM))


def wrong_shape(root):
    def edit(t):
        w = t[VICTIM]  # (intermediate, hidden)
        t[VICTIM] = np.ascontiguousarray(w[:, :-1])

    rewrite_tensors(root / TE, edit)


def missing_config(root):
    (root / "text_encoder" / "config.json").unlink()


CASES = [
    # (breakage, file named in the message, tensor named in the message or None)
    (truncated, "model.safetensors", None),
    (header_past_eof, "model.safetensors", None),
    (invalid_json, "model.safetensors", None),
    (duplicate_key, "model.safetensors", None),
    (unknown_dtype, "model.safetensors", VICTIM),
    (missing_tensor, "model.safetensors", VICTIM),
    (wrong_shape, "model.safetensors", VICTIM),
    (missing_config, "config.json", None),
]


@pytest.mark.parametrize("breakage,file_name,tensor", CASES, ids=[c[0].__name__ for c in CASES])
def test_bad_input(sdcoreml, tmp_path, breakage, file_name, tensor):
    src = tmp_path / "tiny-sd"
    shutil.copytree(EXAMPLE_SD1, src)
    breakage(src)
    for quiet in (False, True):
        out = tmp_path / f"out-{quiet}"
        out.mkdir()
        r = sdcoreml("--model-version", "tiny-sd", "-o", out, "--convert-text-encoder",
                     *(["--quiet"] if quiet else []), cwd=tmp_path)
        assert r.returncode == 1, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("sdcoreml: error: ")]
        # One error line, and it is the last thing said; with --quiet it is all that is said
        # (without it, progress lines such as 'sdcoreml: converting ...' may come first).
        assert len(errors) == 1 and lines[-1] == errors[0], f"expected one error line, last:\n{r.stderr}"
        if quiet:
            assert len(lines) == 1, f"--quiet: expected exactly one line on stderr:\n{r.stderr}"
        line = errors[0]
        assert file_name in line, f"the message does not name {file_name}: {line}"
        if tensor:
            assert tensor in line, f"the message does not name the tensor {tensor}: {line}"
        assert os.listdir(out) == [], f"left in -o: {os.listdir(out)}"


# ---- inputs that are unusual but valid: they convert -------------------------------------------

UNLIMITED = "1000000000000000019884624838656"  # what transformers writes for "no limit"


def test_integers_beyond_64_bits_in_configs(sdcoreml, tmp_path):
    """Valid JSON whatever its integers: a tokenizer without a limit (transformers writes 1e30 as
    an integer) and an unused key beyond 64 bits convert as if the keys were absent; a 64-bit
    integer at the edge still parses as an integer."""
    src = tmp_path / "tiny-sd"
    shutil.copytree(EXAMPLE_SD1, src)
    tok = src / "tokenizer" / "tokenizer_config.json"
    text = tok.read_text()
    cfg = json.loads(text)
    cfg["model_max_length"] = 0  # placeholder, replaced below as raw text
    raw = json.dumps(cfg).replace('"model_max_length": 0', f'"model_max_length": {UNLIMITED}')
    raw = raw[:-1] + ', "an_unused_big": -123456789012345678901234567890, "edge": 9223372036854775807, ' \
                     '"in_a_string": "12345678901234567890123"}'
    tok.write_text(raw)
    out = tmp_path / "o"
    r = sdcoreml("--model-version", "tiny-sd", "-o", out, "--convert-text-encoder", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ref = tmp_path / "ref"
    tok.write_text(text)
    assert sdcoreml("--model-version", "tiny-sd", "-o", ref, "--convert-text-encoder", cwd=tmp_path).returncode == 0
    # the same package as with the original tokenizer config (77 tokens, from the text encoder)
    name = "Stable_Diffusion_version_tiny-sd_text_encoder.mlpackage"
    for part in ("Data/com.apple.CoreML/model.mlmodel", "Data/com.apple.CoreML/weights/weight.bin"):
        assert (out / name / part).read_bytes() == (ref / name / part).read_bytes(), part


# ---- weights that a package must not hold -------------------------------------------------------


def poke(value, dtype=None):
    def edit(tensors):
        t = tensors[VICTIM]
        if dtype is not None:
            t = t.astype(dtype)
        t = t.copy()
        t.flat[5] = value
        t.flat[17] = value
        tensors[VICTIM] = t
    return edit


@pytest.mark.parametrize("case", ["overflow", "nan", "inf-f16-source", "nan-bf16-source"])
def test_weights_that_are_not_finite_in_the_package_are_refused(sdcoreml, tmp_path, case):
    """A value that overflows float16 (|x| > 65504) or a NaN/Inf in the source never reaches a
    package silently: one error naming the file, the tensor and the count."""
    src = tmp_path / "tiny-sd"
    shutil.copytree(EXAMPLE_SD1, src)
    if case == "nan-bf16-source":
        import torch
        from safetensors.torch import load_file, save_file
        tensors = load_file(src / TE)
        t = tensors[VICTIM].to(torch.bfloat16).clone()
        t.view(-1)[5] = float("nan")
        t.view(-1)[17] = float("nan")
        tensors[VICTIM] = t
        save_file(tensors, src / TE, metadata={"format": "pt"})
    else:
        value, dtype = {"overflow": (1e6, None), "nan": (np.nan, None), "inf-f16-source": (np.inf, np.float16)}[case]
        rewrite_tensors(src / TE, poke(value, dtype))
    for precision in ("FLOAT16", "FLOAT32"):
        out = tmp_path / f"o-{precision}"
        r = sdcoreml("--model-version", "tiny-sd", "-o", out, "--convert-text-encoder", "--compute-precision", precision,
                     cwd=tmp_path)
        if case == "overflow" and precision == "FLOAT32":
            assert r.returncode == 0, r.stderr  # 1e6 is a fine float32
            continue
        assert r.returncode == 1, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        what = "values exceed the float16 range (65504)" if case == "overflow" else "values are NaN or infinite"
        assert f"model.safetensors: tensor '{VICTIM}': 2 {what}" in last, last
        assert not out.exists() or os.listdir(out) == []
