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
