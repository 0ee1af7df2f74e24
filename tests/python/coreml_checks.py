"""Checks that every .mlpackage a test writes must pass, with coremltools as the oracle.

coremltools' Linux wheel cannot run a model, but it can parse it completely:
  1. coremltools.utils.load_spec(path)                       - the protobuf parses
  2. coremltools.models.MLModel(path, skip_model_load=True)  - the package layout is valid
  3. milproto.load(model_spec=..., file_weights_dir=...)     - the MIL program is rebuilt as a
     PyMIL program: every op is type-checked against Apple's op definitions and every
     blob weight is read from weight.bin.

load_spec rewrites Manifest.json, so the checks run on a private copy of the package; the
original stays byte-for-byte as sdcoreml wrote it.
"""

import collections
import os
import shutil
import tempfile
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Core ML ArrayFeatureType.ArrayDataType codes (reference/anchor-ml-stable-diffusion.md §4).
FLOAT32 = 65568
FLOAT16 = 65552
INT32 = 131104
DTYPE_CODES = {FLOAT32: "FLOAT32", FLOAT16: "FLOAT16", INT32: "INT32"}
DTYPE_NAMES = {v: k for k, v in DTYPE_CODES.items()}

# What the coremltools MIL loader calls the dtypes of a description's features.
MIL_DTYPES = {"FLOAT32": "fp32", "FLOAT16": "fp16", "INT32": "int32"}

# Consts with at least this many elements count as weights in PackageInfo.const_dtypes.
LARGE_CONST = 1024


@dataclass
class Feature:
    name: str
    shape: tuple
    dtype: str  # "FLOAT32" / "FLOAT16" / "INT32"

    @classmethod
    def of(cls, name, shape, dtype):
        return cls(name, tuple(int(d) for d in shape), dtype)


@dataclass
class PackageInfo:
    path: str
    spec_version: int
    inputs: list
    outputs: list
    metadata: dict
    op_histogram: collections.Counter
    const_dtypes: collections.Counter  # dtype of every const with >= LARGE_CONST elements
    weight_bin_size: int
    mil_function_inputs: dict = field(default_factory=dict)
    mil_function_outputs: list = field(default_factory=list)


def _features(descs):
    out = []
    for d in descs:
        which = d.type.WhichOneof("Type")
        assert which == "multiArrayType", f"feature {d.name!r} is a {which}, expected a multiArrayType"
        t = d.type.multiArrayType
        code = t.dataType
        assert code in DTYPE_CODES, f"feature {d.name!r}: unknown dataType {code}"
        out.append(Feature(d.name, tuple(int(x) for x in t.shape), DTYPE_CODES[code]))
    return out


def _walk_ops(block):
    for op in block.operations:
        yield op
        for b in getattr(op, "blocks", []) or []:
            yield from _walk_ops(b)


def _weights_dir(m, pkg):
    wd = getattr(m, "weights_dir", None)
    if wd:
        return wd
    return os.path.join(pkg, "Data", "com.apple.CoreML", "weights")


def load_and_check(path, inputs=None, outputs=None, spec_version=None):
    """Run the three coremltools checks on a copy of package `path`.

    inputs / outputs: optional lists of (name, shape, dtype-name) that the model description
    must equal exactly (same order). spec_version: optional expected specificationVersion.
    Returns a PackageInfo."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load
    from coremltools.converters.mil.mil import types

    assert os.path.isdir(path), f"{path} is not a directory"
    assert path.rstrip("/").endswith(".mlpackage"), path
    for rel in ("Manifest.json", "Data/com.apple.CoreML/model.mlmodel"):
        assert os.path.isfile(os.path.join(path, rel)), f"{path}: missing {rel}"

    tmp = tempfile.mkdtemp(prefix="coreml-check-")
    try:
        pkg = os.path.join(tmp, os.path.basename(path.rstrip("/")))
        shutil.copytree(path, pkg)

        spec = ct.utils.load_spec(pkg)
        assert spec.WhichOneof("Type") == "mlProgram", f"model type is {spec.WhichOneof('Type')}"
        m = ct.models.MLModel(pkg, skip_model_load=True)
        wdir = _weights_dir(m, pkg)
        prog = load(model_spec=spec, specification_version=spec.specificationVersion, file_weights_dir=wdir)

        ins = _features(spec.description.input)
        outs = _features(spec.description.output)
        md = spec.description.metadata
        metadata = {
            "author": md.author,
            "license": md.license,
            "version": md.versionString,
            "short_description": md.shortDescription,
            "user_defined": dict(md.userDefined),
        }

        fn = prog.functions["main"]
        fin = {name: (tuple(int(d) for d in var.shape), types.builtin_to_string(var.dtype))
               for name, var in fn.inputs.items()}
        fout = [(v.name, tuple(int(d) for d in v.shape), types.builtin_to_string(v.dtype)) for v in fn.outputs]

        hist = collections.Counter()
        consts = collections.Counter()
        for op in _walk_ops(fn):
            hist[op.op_type] += 1
            if op.op_type == "const":
                v = op.outputs[0]
                if v.val is not None and np.size(v.val) >= LARGE_CONST:
                    consts[types.builtin_to_string(v.dtype)] += 1

        wbin = os.path.join(path, "Data", "com.apple.CoreML", "weights", "weight.bin")
        info = PackageInfo(
            path=path,
            spec_version=int(spec.specificationVersion),
            inputs=ins,
            outputs=outs,
            metadata=metadata,
            op_histogram=hist,
            const_dtypes=consts,
            weight_bin_size=os.path.getsize(wbin) if os.path.exists(wbin) else 0,
            mil_function_inputs=fin,
            mil_function_outputs=fout,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # The description and the MIL function must agree (Core ML's compiler rejects a mismatch).
    assert [f.name for f in info.inputs] == list(info.mil_function_inputs), (
        f"description inputs {[f.name for f in info.inputs]} != MIL main inputs {list(info.mil_function_inputs)}")
    for f in info.inputs:
        shape, dt = info.mil_function_inputs[f.name]
        assert shape == f.shape, f"input {f.name}: description shape {f.shape} != MIL shape {shape}"
        assert dt == MIL_DTYPES[f.dtype], f"input {f.name}: description {f.dtype} != MIL {dt}"
    assert [f.name for f in info.outputs] == [o[0] for o in info.mil_function_outputs], (
        f"description outputs {[f.name for f in info.outputs]} != MIL main outputs "
        f"{[o[0] for o in info.mil_function_outputs]}")
    for f, (_, shape, dt) in zip(info.outputs, info.mil_function_outputs):
        if f.shape:
            assert shape == f.shape, f"output {f.name}: description shape {f.shape} != MIL shape {shape}"
        assert dt == MIL_DTYPES[f.dtype], f"output {f.name}: description {f.dtype} != MIL {dt}"

    if inputs is not None:
        want = [Feature.of(*x) for x in inputs]
        assert info.inputs == want, f"inputs {info.inputs} != expected {want}"
    if outputs is not None:
        want = [Feature.of(*x) for x in outputs]
        assert info.outputs == want, f"outputs {info.outputs} != expected {want}"
    if spec_version is not None:
        assert info.spec_version == spec_version, f"specificationVersion {info.spec_version} != {spec_version}"
    return info


def tree_bytes(root):
    """{relative path: bytes} of every file under root, plus the set of directories (for
    byte-identical-output comparisons)."""
    files, dirs = {}, set()
    for d, dnames, fnames in os.walk(root):
        rel = os.path.relpath(d, root)
        dirs.add(rel)
        for n in fnames:
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                files[os.path.normpath(os.path.join(rel, n))] = f.read()
    return files, dirs


def damage_weights(package):
    """Flips the sign of every 3rd fp16 weight in the data of each blob (headers intact)."""
    path = Path(package) / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    b = bytearray(path.read_bytes())
    count = struct.unpack_from("<I", b, 0)[0]
    off = 64
    for _ in range(count):
        sentinel, dtype, size, data = struct.unpack_from("<IIQQ", b, off)
        assert sentinel == 0xDEADBEEF
        if dtype == 1:  # fp16
            for i in range(data + 1, data + size, 6):
                b[i] ^= 0x80
        off = (data + size + 63) // 64 * 64
    path.write_bytes(bytes(b))
