"""Packages crafted to exhaust resources (found in review): the reader and the interpreter must
answer with one error line and exit 1, never crash. Built by hand with a minimal protobuf
encoder (pbwire.py), on a copy of a real package so the manifest and weight file are valid."""

import shutil
import struct
from pathlib import Path

import numpy as np

from conftest import check_ok
from pbwire import fld, varint, vint


def tensor_type(dtype, shape):  # ValueType{tensorType{dataType, rank, dimensions}}
    return fld(1, vint(1, dtype) + vint(2, len(shape)) + b"".join(fld(3, fld(1, vint(1, s))) for s in shape))


def named(name, dtype, shape):
    return fld(1, name) + fld(2, tensor_type(dtype, shape))


def operation(typ, inputs, outputs, attributes=b""):
    ins = b"".join(fld(2, fld(1, k) + fld(2, fld(1, fld(1, v)))) for k, v in inputs)
    return fld(1, typ) + ins + b"".join(fld(3, o) for o in outputs) + attributes


def model_with_function(fn):
    prog = vint(1, 1) + fld(2, fld(1, "main") + fld(2, fn))
    return vint(1, 7) + varint((502 << 3) | 2) + varint(len(prog)) + prog


def package_with(model, base, dst):
    shutil.copytree(base, dst)
    (dst / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(model)
    return dst


def base_package(sdcoreml, pipelines, tmp_path):
    out = tmp_path / "base"
    check_ok(sdcoreml("--convert-text-encoder", "--model-version", "tiny-sd", "-o", out, cwd=pipelines["sd1"].parent))
    return next(out.glob("*.mlpackage"))


def one_error(r):
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sdcoreml: error: "), r.stderr
    return lines[0]


def test_deeply_nested_types(sdcoreml, pipelines, tmp_path):
    """10 000 nested list types: protobuf-c would recurse once per level."""
    vt = b""
    for _ in range(10000):
        vt = fld(2, fld(1, vt))  # ValueType.listType{type: vt}
    fn = fld(1, fld(1, "x") + fld(2, vt)) + fld(2, "CoreML6")
    pkg = package_with(model_with_function(fn), base_package(sdcoreml, pipelines, tmp_path), tmp_path / "deep.mlpackage")
    ids = tmp_path / "ids.npy"
    np.save(ids, np.zeros((1, 77), np.float32))
    one_error(sdcoreml("run", pkg, "--input", f"input_ids={ids}", "-o", tmp_path / "o"))
    r = sdcoreml("inspect", pkg, "--json")
    assert r.returncode in (0, 1) and "Segmentation" not in r.stderr


def test_long_constexpr_chain(sdcoreml, pipelines, tmp_path):
    """20 000 chained constexpr_cast ops, each expanded on use by recursion."""
    fp32, n, e = 11, 20000, 4100
    imm = fld(3, fld(1, fld(1, fld(1, struct.pack(f"<{e}f", *([1.0] * e))))))
    ops = [operation("const", [], [named("c0", fp32, [e])], fld(5, fld(1, "val") + fld(2, fld(2, tensor_type(fp32, [e])) + imm)))]
    ops += [operation("constexpr_cast", [("source_val", f"c{i - 1}")], [named(f"c{i}", fp32, [e])]) for i in range(1, n + 1)]
    ops.append(operation("add", [("x", "x"), ("y", f"c{n}")], [named("out", fp32, [e])]))
    block = fld(2, "out") + b"".join(fld(3, o) for o in ops)
    fn = fld(1, named("x", fp32, [1])) + fld(2, "CoreML6") + fld(3, fld(1, "CoreML6") + fld(2, block))
    pkg = package_with(model_with_function(fn), base_package(sdcoreml, pipelines, tmp_path), tmp_path / "chain.mlpackage")
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1,), np.float32))
    line = one_error(sdcoreml("run", pkg, "--input", f"x={x}", "-o", tmp_path / "o"))
    assert "constexpr ops chained more than 8 deep" in line


def test_split_einsum_v2_query_limit(sdcoreml, pipelines, tmp_path):
    r = sdcoreml("--convert-unet", "--model-version", "tiny-sd", "-o", tmp_path, "--attention-implementation",
                 "SPLIT_EINSUM_V2", "--latent-h", 192, "--latent-w", 192, cwd=pipelines["sd1"].parent)
    assert r.returncode == 1
    assert "36864 query tokens are more than SPLIT_EINSUM_V2's 64 chunks of 512" in r.stderr
    assert list(Path(tmp_path).iterdir()) == []


def test_weight_bin_one_byte_short(sdcoreml, pipelines, tmp_path):
    """The boundary of the blob reader's bounds check: weight.bin cut by exactly one byte, so the
    last record's data runs one byte past the end of the file. Refused, naming the const and its
    blob, by `run` (which reads every const); a reader off by one would read past the mapping."""
    pkg = shutil.copytree(base_package(sdcoreml, pipelines, tmp_path), tmp_path / "short.mlpackage")
    wb = pkg / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    data = wb.read_bytes()
    wb.write_bytes(data[:-1])
    ids = np.zeros((1, 77), np.float32)
    np.save(tmp_path / "ids.npy", ids)
    r = sdcoreml("run", pkg, "--input", f"input_ids={tmp_path / 'ids.npy'}", "-o", tmp_path / "out")
    message = one_error(r)
    assert f"inside the {len(data) - 1}-byte file" in message and "blob at offset" in message, message
