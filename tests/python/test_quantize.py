"""--quantize-nbits N: per-tensor k-means palettization (reference/anchor-ml-stable-diffusion.md
§10.1; serialization in reference/coreml-format.md §4.4, §5, §6.3).

On the tiny sd1 UNet and text encoder at 8, 6 and 4 bits (and the iOS 18 form):
  - coremltools' three checks pass: its milproto loader type-checks our constexpr ops;
  - the serialized program, read here straight from the protobuf and weight.bin (an oracle
    that shares nothing with sdcoreml's writer or interpreter), holds one constexpr_lut_to_dense
    named <const>_palettized for each of the anchor's candidates — float consts of rank >= 2
    with more than 2048 elements, used, and not by a gather — and no const for them; every
    other const is unchanged; the token embedding (gathered) stays a float16 const;
  - decoding indices and table gives back the dense weights up to the clustering, the
    clustering is a k-means optimum (contiguous clusters, centroids = means, cost equal to an
    exact O(k·n²) dynamic programme here in NumPy), and coremltools' own value inference of
    the op agrees with our decoding;
  - coremltools' own palettize_weights pass, handed our tables, writes the same ops and a
    byte-identical weight.bin (iOS 16 and iOS 18 forms): the serialization is coremltools';
  - weight.bin shrinks to the exact size predicted from the blob layout (candidates ≈ N/16);
  - noise_pred and the text encoder outputs, run by sdcoreml's interpreter, against diffusers /
    transformers in float32 (PSNR printed; thresholds below);
  - ControlNets and control-unet are palettized, the VAE and the safety checker never; chunks
    are palettized too; N = 3 is a usage error; two runs are byte-identical; an existing
    package is kept (with a notice).
"""

import glob
import os
import re
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest

import coreml_checks
from conftest import check_ok, package_name
from test_controlnet import CN, workdir  # noqa: F401  (workdir: the tiny ControlNet fixture)
from test_interp_ops import run_package

KIND = "sd1"
BITS = [8, 6, 4]
COMPONENTS = ["unet", "text_encoder"]

# PSNR floors against float32 diffusers / transformers, measured on the tiny sd1 fixture with
# sdcoreml's interpreter (test_unet's inputs): UNet noise_pred 50.2 / 37.0 / 25.5 dB at 8 / 6 / 4
# bits (63.5 dB unquantized float16), text encoder (lowest of both outputs and prompts)
# 59.4 / 49.5 / 36.4 dB. Each bit removed costs about 6 dB, as for any quantizer (6.02 dB/bit);
# the floors keep 3 dB of margin. 8-bit stays above the anchor's 35 dB
# --check-output-correctness bar with room to spare; 4-bit does not, as the anchor's README
# warns (it recommends >= 6 bits for post-training palettization).
MIN_PSNR = {
    "unet": {8: 47.0, 6: 34.0, 4: 22.0},
    "text_encoder": {8: 56.0, 6: 46.0, 4: 33.0},
}
# The same outputs against the unpalettized float16 package's, run the same way: what is left is
# the palettization alone (with test_palettized_package's structural checks: every candidate a
# k-means-optimal lut op, nothing else changed). Measured: UNet 50.1 / 37.1 / 25.5 dB, text
# encoder 59.4 / 49.3 / 36.5 dB at 8 / 6 / 4 bits; 3 dB of margin.
MIN_PSNR_VS_DENSE = {
    "unet": {8: 47.0, 6: 34.0, 4: 22.0},
    "text_encoder": {8: 56.0, 6: 46.0, 4: 33.0},
}

DT_FLOAT16, DT_FLOAT32, DT_UINT8, DT_UINT32 = 10, 11, 31, 33
DT_SUB_BYTE = {37: 1, 36: 2, 35: 4, 38: 6}  # UINT1, UINT2, UINT4, UINT6 -> bits
BLOB_CODES = {1: "fp16", 2: "fp32", 3: "uint8", 9: "uint1", 10: "uint2", 11: "uint4", 13: "uint6"}


# ---------------------------------------------------------------------------------------------
# Packages


def convert(sdcoreml, pipeline, out, *flags):
    pipeline = Path(pipeline)
    return sdcoreml("--model-version", pipeline.name, "-o", out, *flags, cwd=pipeline.parent)


@pytest.fixture(scope="module")
def packages(sdcoreml, pipelines, tmp_path_factory):
    """{(nbits or None, extra flags...): output dir} with the UNet and the text encoder."""
    cache = {}

    def get(nbits=None, *extra):
        key = (nbits,) + extra
        if key not in cache:
            out = tmp_path_factory.mktemp(f"quant-{nbits}")
            flags = ["--convert-unet", "--convert-text-encoder", *extra]
            if nbits:
                flags += ["--quantize-nbits", str(nbits)]
            check_ok(convert(sdcoreml, pipelines[KIND], out, *flags))
            cache[key] = out
        return cache[key]

    return get


def pkg_path(out, component, pipelines):
    return Path(out) / package_name(pipelines[KIND].name, component)


# ---------------------------------------------------------------------------------------------
# An independent reader of the serialized program and weight.bin


class Program:
    def __init__(self, pkg):
        from coremltools.proto import Model_pb2

        self.pkg = Path(pkg)
        m = Model_pb2.Model()
        m.ParseFromString((self.pkg / "Data/com.apple.CoreML/model.mlmodel").read_bytes())
        self.spec = m
        fn = m.mlProgram.functions["main"]
        self.opset = fn.opset
        self.ops = list(fn.block_specializations[fn.opset].operations)
        self.bin = (self.pkg / "Data/com.apple.CoreML/weights/weight.bin").read_bytes()
        self.by_output = {op.outputs[0].name: op for op in self.ops}

    def consumers(self):
        """{value name: [op types that bind it]}"""
        used = {}
        for op in self.ops:
            for arg in op.inputs.values():
                for b in arg.arguments:
                    if b.WhichOneof("binding") == "name":
                        used.setdefault(b.name, []).append(op.type)
        return used

    def blob(self, offset):
        """(code, data bytes, padding bits) of the blob record at offset"""
        sentinel, code, size, data, pad = struct.unpack_from("<IIQQQ", self.bin, offset)
        assert sentinel == 0xDEADBEEF, f"no blob record at {offset}"
        return code, self.bin[data:data + size], pad

    def blob_records(self):
        """[(offset, code, size, padding bits)] walking the file as Core ML's reader does"""
        count = struct.unpack_from("<I", self.bin, 0)[0]
        out, off = [], 64
        for _ in range(count):
            sentinel, code, size, data, pad = struct.unpack_from("<IIQQQ", self.bin, off)
            assert sentinel == 0xDEADBEEF and data == off + 64
            out.append((off, code, size, pad))
            off = (data + size + 63) // 64 * 64
        assert data + size == len(self.bin), "weight.bin must end right after the last blob"
        return out


def tensor_type(vt):
    tt = vt.tensorType
    return tt.dataType, tuple(int(d.constant.size) for d in tt.dimensions)


def value_array(prog, value, dtype_override=None):
    """A Value (immediate or blob) as a NumPy array (sub-byte data: the packed bytes)."""
    dt, shape = tensor_type(value.type)
    if value.WhichOneof("value") == "blobFileValue":
        code, data, _ = prog.blob(value.blobFileValue.offset)
    else:
        tv = value.immediateValue.tensor
        which = tv.WhichOneof("value")
        if which == "floats":
            return np.array(tv.floats.values, np.float32).reshape(shape)
        assert which == "bytes", which
        data = tv.bytes.values
    if dt in DT_SUB_BYTE:
        return np.frombuffer(data, np.uint8)
    np_dt = {DT_FLOAT16: np.float16, DT_FLOAT32: np.float32, DT_UINT8: np.uint8, DT_UINT32: np.uint32}[dt]
    return np.frombuffer(data, np_dt).reshape(shape)


def const_value(prog, op):
    return value_array(prog, op.attributes["val"])


def unpack_bits(packed, n, nbits):
    """LSB-first sub-byte unpacking (coreml-format.md §4.4), with NumPy only."""
    bits = np.unpackbits(np.frombuffer(bytes(packed), np.uint8), bitorder="little")
    assert bits.size >= n * nbits
    bits = bits[: n * nbits].reshape(n, nbits).astype(np.uint32)
    return (bits << np.arange(nbits, dtype=np.uint32)).sum(axis=1)


def decode_palettized(prog, op):
    """(indices, table, dense value, nbits, form) of a constexpr_lut_to_dense op."""
    out_dt, shape = tensor_type(op.outputs[0].type)
    n = int(np.prod(shape))
    if "indices" in op.attributes:  # iOS 16
        assert set(op.attributes) == {"name", "indices", "lut", "shape"}, set(op.attributes)
        assert len(op.inputs) == 0
        ind_v, lut_v, shp_v = op.attributes["indices"], op.attributes["lut"], op.attributes["shape"]
        assert tensor_type(shp_v.type)[0] == DT_UINT32
        assert tuple(value_array(prog, shp_v).tolist()) == shape
        lut = value_array(prog, lut_v)
        assert lut.ndim == 1
        nbits = int(np.log2(lut.size))
        idt, ishape = tensor_type(ind_v.type)
        assert idt == DT_UINT8 and ishape == ((n * nbits + 7) // 8,), (idt, ishape)
        idx = unpack_bits(value_array(prog, ind_v), n, nbits)
        form = "ios16"
    else:  # iOS 18: inputs bound to inline values
        assert set(op.attributes) == {"name"} and set(op.inputs) == {"indices", "lut"}, (set(op.attributes), set(op.inputs))
        ind_v = op.inputs["indices"].arguments[0].value
        lut_v = op.inputs["lut"].arguments[0].value
        idt, ishape = tensor_type(ind_v.type)
        assert ishape == shape
        lut = value_array(prog, lut_v)
        assert lut.shape == (1,) * len(shape) + (lut.shape[-2], 1), lut.shape
        lut = lut.reshape(-1)
        nbits = int(np.log2(lut.size))
        if nbits == 8:
            assert idt == DT_UINT8
            idx = value_array(prog, ind_v).reshape(-1).astype(np.uint32)
        else:
            assert DT_SUB_BYTE.get(idt) == nbits, (idt, nbits)
            code, data, pad = prog.blob(ind_v.blobFileValue.offset)
            assert BLOB_CODES[code] == f"uint{nbits}" and len(data) == (n * nbits + 7) // 8
            assert pad == (8 - n * nbits % 8) % 8
            idx = unpack_bits(data, n, nbits)
        form = "ios18"
    assert lut.dtype == (np.float16 if out_dt == DT_FLOAT16 else np.float32)
    return idx, lut, lut[idx].reshape(shape), nbits, form


def candidates(dense):
    """The anchor's candidates in a dense package: {const name: value}."""
    used = dense.consumers()
    out = {}
    for op in dense.ops:
        if op.type != "const":
            continue
        dt, shape = tensor_type(op.outputs[0].type)
        name = op.outputs[0].name
        if dt not in (DT_FLOAT16, DT_FLOAT32) or len(shape) < 2 or int(np.prod(shape)) <= 2048:
            continue
        if name not in used or "gather" in used[name]:
            continue
        out[name] = const_value(dense, op)
    return out


def exact_kmeans_sse(values, weights, k):
    """Least weighted SSE of k contiguous clusters: the plain O(k·n²) dynamic programme."""
    x = np.asarray(values, np.float64)
    w = np.asarray(weights, np.float64)
    W = np.concatenate([[0], np.cumsum(w)])
    S = np.concatenate([[0], np.cumsum(w * x)])
    Q = np.concatenate([[0], np.cumsum(w * x * x)])
    n = x.size
    m = np.arange(n + 1)[:, None]  # cluster = points m..i-1
    i = np.arange(n + 1)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        cost = (Q[i] - Q[m]) - (S[i] - S[m]) ** 2 / (W[i] - W[m])
    cost = np.where(m < i, np.maximum(cost, 0), np.inf)
    d = cost[0].copy()  # one cluster over the first i points
    for _ in range(k - 1):
        d = (d[:, None] + cost).min(axis=0)
    return d[n]


def partition_sse(values, counts, labels):
    s = 0.0
    for c in np.unique(labels):
        sel = labels == c
        mu = np.average(values[sel], weights=counts[sel])
        s += float((counts[sel] * (values[sel] - mu) ** 2).sum())
    return s


def assert_error_bound(name, dense, decoded, nbits):
    """The k-means optimum is never worse than the uniform quantizer with 2^N levels over the
    value range (one of the partitions it chooses from), whose RMS error is at most half a
    step; the table's rounding to its dtype adds at most half an ulp of the largest value."""
    a, b = dense.astype(np.float64), decoded.astype(np.float64)
    rms = np.sqrt(np.mean((a - b) ** 2))
    step = np.ptp(a) / ((1 << nbits) - 1)
    ulp = float(np.spacing(dense.dtype.type(np.abs(a).max())))
    assert rms <= step / 2 + ulp, f"{name}: RMS error {rms} > half step {step / 2}"


def check_clustering(dense_value, idx, lut, nbits, exact=False):
    """The clustering behind (idx, lut) is a 1-D k-means optimum of the dense value."""
    dense = np.asarray(dense_value).reshape(-1)
    k = 1 << nbits
    if dense.dtype == np.float16:
        dense = np.where(dense == 0, np.float16(0), dense)  # -0 and +0 are one value
    values, inverse, counts = np.unique(dense, return_inverse=True, return_counts=True)
    labels = np.zeros(values.size, np.int64) - 1
    labels[inverse] = idx
    # each distinct value has one index, and clusters are intervals of the sorted values
    assert (labels[inverse] == idx).all(), "a value maps to two indices"
    assert (np.diff(labels) >= 0).all(), "clusters are not contiguous in value order"
    used = np.unique(labels)
    assert used.size == min(k, values.size)
    assert (used == np.arange(used.size)).all(), "used entries are not the first ones"
    assert (lut[used.size:] == 0).all(), "unused table entries must be 0"
    # each entry is its cluster's mean, rounded once to the table's dtype (as astype)
    for c in used:
        sel = labels == c
        mu = np.average(values[sel].astype(np.float64), weights=counts[sel])
        assert lut[c] == lut.dtype.type(mu), (c, lut[c], mu)  # rounded once, as astype
    if exact:
        best = exact_kmeans_sse(values.astype(np.float64), counts, used.size)
        got = partition_sse(values.astype(np.float64), counts, labels)
        assert got <= best * (1 + 1e-9) + 1e-12, f"SSE {got} > optimum {best}"


# ---------------------------------------------------------------------------------------------
# Format, candidates and the clustering


@pytest.mark.parametrize("component", COMPONENTS)
@pytest.mark.parametrize("nbits", BITS)
def test_palettized_package(packages, pipelines, component, nbits):
    dense_pkg = pkg_path(packages(None), component, pipelines)
    pkg = pkg_path(packages(nbits), component, pipelines)
    dense_info = coreml_checks.load_and_check(str(dense_pkg))
    info = coreml_checks.load_and_check(str(pkg), spec_version=7)
    assert info.inputs == dense_info.inputs and info.outputs == dense_info.outputs

    dense, prog = Program(dense_pkg), Program(pkg)
    assert prog.opset == "CoreML6"
    cands = candidates(dense)
    assert cands, "the fixture must have candidates"
    ops = {op.outputs[0].name: op for op in prog.ops}
    lut_ops = [op for op in prog.ops if op.type == "constexpr_lut_to_dense"]
    assert info.op_histogram["constexpr_lut_to_dense"] == len(lut_ops) == len(cands)
    # every candidate became <name>_palettized, and nothing else changed
    dense_consts = {op.outputs[0].name for op in dense.ops if op.type == "const"}
    consts = {op.outputs[0].name for op in prog.ops if op.type == "const"}
    assert consts == dense_consts - set(cands)
    assert [op.type for op in prog.ops if op.type != "constexpr_lut_to_dense"] == \
        [op.type for op in dense.ops if op.outputs[0].name not in cands]
    used = prog.consumers()
    for name, value in cands.items():
        op = ops.get(name + "_palettized")
        assert op is not None and op.type == "constexpr_lut_to_dense", name
        assert op.attributes["name"].immediateValue.tensor.strings.values[0] == name + "_palettized"
        assert tensor_type(op.outputs[0].type) == tensor_type(dense.by_output[name].outputs[0].type)
        assert name + "_palettized" in used and name not in used
        idx, lut, decoded, got_bits, form = decode_palettized(prog, op)
        assert (got_bits, form) == (nbits, "ios16")
        assert decoded.dtype == value.dtype and decoded.shape == value.shape
        assert_error_bound(name, value, decoded, nbits)
        check_clustering(value, idx, lut, nbits, exact=value.size <= 2600 and nbits <= 6)

    if component == "text_encoder":  # the token embedding table stays dense
        gathered = [n for n, t in used.items() if "gather" in t and n in ops and ops[n].type == "const"]
        tables = [n for n in gathered if len(tensor_type(ops[n].outputs[0].type)[1]) == 2]
        assert len(tables) == 1 and tensor_type(ops[tables[0]].outputs[0].type)[0] == DT_FLOAT16
        assert np.array_equal(const_value(prog, ops[tables[0]]), const_value(dense, dense.by_output[tables[0]]))


@pytest.mark.parametrize("nbits", BITS)
def test_coremltools_decodes_the_same(packages, pipelines, nbits):
    """coremltools' own constexpr_lut_to_dense value inference agrees with our decoding."""
    from coremltools.converters.mil.frontend.milproto.load import load

    pkg = pkg_path(packages(nbits), "unet", pipelines)
    prog = Program(pkg)
    spec = prog.spec
    mil = load(model_spec=spec, specification_version=spec.specificationVersion,
               file_weights_dir=str(pkg / "Data/com.apple.CoreML/weights"))
    checked = 0
    for op in mil.functions["main"].operations:
        if op.op_type != "constexpr_lut_to_dense":
            continue
        theirs = op.materialized_val_inference()
        _, _, ours, _, _ = decode_palettized(prog, prog.by_output[op.outputs[0].name])
        assert np.array_equal(theirs, ours), op.name
        checked += 1
    assert checked == len(candidates(Program(pkg_path(packages(None), "unet", pipelines))))


@pytest.mark.parametrize("target", ["iOS16", "iOS18"])
@pytest.mark.parametrize("nbits", BITS)
def test_coremltools_writes_the_same(packages, pipelines, target, nbits):
    """coremltools' own palettize_weights pass (op_type_configs {"gather": None}, its default
    weight_threshold, as the anchor calls it), run on our float16 package with a lut_function
    that returns our table and indices, then serialized by coremltools: the same ops, protobuf
    for protobuf, and a byte-identical weight.bin. So the candidates, names, op forms (iOS 16
    attributes / iOS 18 inputs), value types, blob-or-immediate choices, blob order, dtype codes
    and sub-byte packing are coremltools', and only the k-means differs (kmeans1d / k-means++
    there, not installed here; exact here)."""
    import hashlib

    import coremltools as ct
    import coremltools.optimize.coreml as cto
    from coremltools.converters.mil.frontend.milproto.load import load
    from coremltools.optimize.coreml._quantization_passes import palettize_weights as palettize_pass

    flags = () if target == "iOS16" else ("--min-deployment-target", target)
    for component in COMPONENTS:
        dense_pkg = pkg_path(packages(None, *flags), component, pipelines)
        ours = Program(pkg_path(packages(nbits, *flags), component, pipelines))
        dense = Program(dense_pkg)
        table = {}
        for name, value in candidates(dense).items():
            idx, lut, _, _, _ = decode_palettized(ours, ours.by_output[name + "_palettized"])
            table[hashlib.sha1(value.tobytes()).hexdigest()] = (lut, idx.astype(np.uint8))

        def ours_lut(val):
            return table[hashlib.sha1(np.ascontiguousarray(val).tobytes()).hexdigest()]

        spec = dense.spec
        prog = load(model_spec=spec, specification_version=spec.specificationVersion,
                    file_weights_dir=str(dense_pkg / "Data/com.apple.CoreML/weights"))
        cfg = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="custom", lut_function=ours_lut),
                                     op_type_configs={"gather": None})
        palettize_pass(config=cfg).apply(prog)
        m = ct.convert(prog, convert_to="mlprogram", pass_pipeline=ct.PassPipeline.EMPTY,
                       minimum_deployment_target=getattr(ct.target, target), skip_model_load=True,
                       compute_precision=ct.precision.FLOAT32)
        with tempfile.TemporaryDirectory() as tmp:
            m.save(os.path.join(tmp, "c.mlpackage"))
            theirs = Program(os.path.join(tmp, "c.mlpackage"))
        assert theirs.opset == ours.opset
        assert len(theirs.ops) == len(ours.ops)
        for a, b in zip(theirs.ops, ours.ops):
            assert a == b, f"{component}: coremltools writes\n{str(a)[:3000]}\nwe write\n{str(b)[:3000]}"
        assert theirs.bin == ours.bin, f"{component}: weight.bin differs from coremltools'"


def expected_layout_size(dense, prog, cands):
    """weight.bin size of `prog` predicted from the dense file: each candidate's blob replaced
    by an index blob and (2^N >= 10) a table blob, every record 64-aligned."""
    sizes = []
    offsets = {}
    for op in dense.ops:
        if op.type == "const" and op.attributes["val"].WhichOneof("value") == "blobFileValue":
            offsets[op.outputs[0].name] = op.attributes["val"].blobFileValue.offset
    for op in dense.ops:
        name = op.outputs[0].name
        if name not in offsets:
            continue
        if name in cands:
            n = cands[name].size
            q = prog.by_output[name + "_palettized"]
            _, lut, _, nbits, _ = decode_palettized(prog, q)
            sizes.append((n * nbits + 7) // 8)
            if lut.size >= 10:
                sizes.append(lut.size * lut.itemsize)
        else:
            sizes.append(len(dense.blob(offsets[name])[1]))
    pos = 64
    for s in sizes:
        pos = (pos + 63) // 64 * 64 + 64 + s
    return pos


@pytest.mark.parametrize("component", COMPONENTS)
@pytest.mark.parametrize("nbits", BITS)
def test_weight_bin_shrinks(packages, pipelines, component, nbits):
    dense = Program(pkg_path(packages(None), component, pipelines))
    prog = Program(pkg_path(packages(nbits), component, pipelines))
    cands = candidates(dense)
    prog.blob_records()  # the layout is walkable as Core ML's reader walks it
    assert len(prog.bin) == expected_layout_size(dense, prog, cands)
    dense_bytes = sum(v.nbytes for v in cands.values())
    index_bytes = sum((v.size * nbits + 7) // 8 for v in cands.values())
    ratio = dense_bytes / index_bytes
    assert abs(ratio - 16 / nbits) < 0.01 * 16 / nbits
    print(f"{component} {nbits}-bit: candidates {dense_bytes} -> {index_bytes} bytes of indices (x{ratio:.2f}); "
          f"weight.bin {len(dense.bin)} -> {len(prog.bin)} bytes")


# ---------------------------------------------------------------------------------------------
# The iOS 18 form


@pytest.mark.parametrize("nbits", [4, 6, 8])
def test_ios18_form(packages, pipelines, nbits):
    """--min-deployment-target iOS18: the iOS 18 op (typed uintN indices in the weight's shape,
    table [1, …, 1, 2^N, 1], both inputs), with the same indices and table as the iOS 16 form."""
    for component in COMPONENTS:
        pkg = pkg_path(packages(nbits, "--min-deployment-target", "iOS18"), component, pipelines)
        info = coreml_checks.load_and_check(str(pkg), spec_version=9)
        prog = Program(pkg)
        ref = Program(pkg_path(packages(nbits), component, pipelines))
        assert prog.opset == "CoreML8"
        lut_ops = [op for op in prog.ops if op.type == "constexpr_lut_to_dense"]
        assert len(lut_ops) == info.op_histogram["constexpr_lut_to_dense"] > 0
        for op in lut_ops:
            idx, lut, decoded, got_bits, form = decode_palettized(prog, op)
            ridx, rlut, rdecoded, _, _ = decode_palettized(ref, ref.by_output[op.outputs[0].name])
            assert (got_bits, form) == (nbits, "ios18")
            assert np.array_equal(idx, ridx) and np.array_equal(lut, rlut)


@pytest.mark.parametrize("nbits", [4])
def test_ios18_runs_like_ios16(sdcoreml, packages, pipelines, tmp_path, nbits):
    """The interpreter gives identical noise_pred for both forms of the same palettization."""
    from test_unet import random_inputs

    feeds = random_inputs(pipelines[KIND], False)
    a, _ = run_package(sdcoreml, pkg_path(packages(nbits), "unet", pipelines), feeds, tmp_path / "ios16")
    b, _ = run_package(sdcoreml, pkg_path(packages(nbits, "--min-deployment-target", "iOS18"), "unet", pipelines),
                       feeds, tmp_path / "ios18")
    assert np.array_equal(dict(a)["noise_pred"], dict(b)["noise_pred"])


# ---------------------------------------------------------------------------------------------
# Numbers


@pytest.mark.parametrize("nbits", BITS)
def test_unet_psnr(sdcoreml, packages, pipelines, tmp_path, record_property, nbits):
    from test_unet import diffusers_noise_pred, psnr, random_inputs

    feeds = random_inputs(pipelines[KIND], False)
    ref = diffusers_noise_pred(pipelines[KIND], feeds)
    got, _ = run_package(sdcoreml, pkg_path(packages(nbits), "unet", pipelines), feeds, tmp_path)
    value = psnr(ref, dict(got)["noise_pred"])
    print(f"PSNR unet {KIND} {nbits}-bit vs diffusers float32: {value:.1f} dB")
    record_property("psnr", round(float(value), 2))
    assert value >= MIN_PSNR["unet"][nbits]
    dense, _ = run_package(sdcoreml, pkg_path(packages(None), "unet", pipelines), feeds, tmp_path / "dense")
    value = psnr(dict(dense)["noise_pred"], dict(got)["noise_pred"])
    print(f"PSNR unet {KIND} {nbits}-bit vs the unpalettized package: {value:.1f} dB")
    assert value >= MIN_PSNR_VS_DENSE["unet"][nbits]


@pytest.mark.parametrize("nbits", BITS)
def test_text_encoder_psnr(sdcoreml, packages, pipelines, tmp_path, record_property, nbits):
    from test_interp_text_encoder import PROMPTS, psnr, reference

    for pi, prompt in enumerate(PROMPTS):
        ids, ref = reference(pipelines[KIND], "text_encoder", "tokenizer", False, prompt)
        got, _ = run_package(sdcoreml, pkg_path(packages(nbits), "text_encoder", pipelines),
                             {"input_ids": ids.astype(np.float32)}, tmp_path / str(pi))
        got = dict(got)
        dense, _ = run_package(sdcoreml, pkg_path(packages(None), "text_encoder", pipelines),
                               {"input_ids": ids.astype(np.float32)}, tmp_path / f"dense{pi}")
        dense = dict(dense)
        for name, want in ref.items():
            value = psnr(want, got[name])
            print(f"PSNR text_encoder {KIND} {nbits}-bit {name} prompt {pi}: {value:.1f} dB")
            record_property(f"psnr_{name}_{pi}", round(value, 2))
            assert value >= MIN_PSNR["text_encoder"][nbits], f"{name}: {value:.1f} dB"
            value = psnr(dense[name], got[name])
            print(f"PSNR text_encoder {KIND} {nbits}-bit {name} prompt {pi} vs the unpalettized package: "
                  f"{value:.1f} dB")
            assert value >= MIN_PSNR_VS_DENSE["text_encoder"][nbits], f"{name} vs dense: {value:.1f} dB"


def test_float32_tables(sdcoreml, pipelines, tmp_path):
    """--compute-precision FLOAT32: float32 tables; values clustered through float16 bins."""
    check_ok(convert(sdcoreml, pipelines[KIND], tmp_path / "d", "--convert-text-encoder", "--compute-precision",
                     "FLOAT32"))
    check_ok(convert(sdcoreml, pipelines[KIND], tmp_path / "q", "--convert-text-encoder", "--compute-precision",
                     "FLOAT32", "--quantize-nbits", "8"))
    name = package_name(pipelines[KIND].name, "text_encoder")
    coreml_checks.load_and_check(str(tmp_path / "q" / name))
    dense, prog = Program(tmp_path / "d" / name), Program(tmp_path / "q" / name)
    cands = candidates(dense)
    assert cands
    for cname, value in cands.items():
        assert value.dtype == np.float32
        idx, lut, decoded, _, _ = decode_palettized(prog, prog.by_output[cname + "_palettized"])
        assert lut.dtype == np.float32
        assert_error_bound(cname, value, decoded, 8)


# ---------------------------------------------------------------------------------------------
# Behaviour


def test_vae_and_safety_checker_are_never_palettized(sdcoreml, pipelines, tmp_path):
    flags = ["--convert-vae-decoder", "--convert-vae-encoder", "--convert-safety-checker"]
    check_ok(convert(sdcoreml, pipelines[KIND], tmp_path / "a", *flags))
    r = check_ok(convert(sdcoreml, pipelines[KIND], tmp_path / "b", *flags, "--quantize-nbits", "4"))
    assert "palettiz" not in r.stderr
    for sub in ("vae_decoder", "vae_encoder", "safety_checker"):
        name = package_name(pipelines[KIND].name, sub)
        a, b = Program(tmp_path / "a" / name), Program(tmp_path / "b" / name)
        assert a.bin == b.bin, sub
        assert [op.type for op in a.ops] == [op.type for op in b.ops], sub
        assert not any(op.type.startswith("constexpr_") for op in b.ops)
        coreml_checks.load_and_check(str(tmp_path / "b" / name))


@pytest.mark.parametrize("value", ["3", "5", "7", "0", "16", "four"])
def test_invalid_nbits_is_a_usage_error(sdcoreml, pipelines, tmp_path, value):
    r = convert(sdcoreml, pipelines[KIND], tmp_path, "--convert-unet", "--quantize-nbits", value)
    assert r.returncode == 2, r.stderr
    assert f"--quantize-nbits: invalid choice '{value}' (1, 2, 4, 6, 8)" in r.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("nbits", [1, 2])
def test_one_and_two_bits(sdcoreml, pipelines, tmp_path, nbits):
    """Tables of 2 and 4 entries are immediate values (< 10 elements), as coremltools writes them."""
    check_ok(convert(sdcoreml, pipelines[KIND], tmp_path, "--convert-text-encoder", "--quantize-nbits", str(nbits)))
    pkg = tmp_path / package_name(pipelines[KIND].name, "text_encoder")
    coreml_checks.load_and_check(str(pkg))
    prog = Program(pkg)
    ops = [op for op in prog.ops if op.type == "constexpr_lut_to_dense"]
    assert ops
    for op in ops:
        assert op.attributes["lut"].WhichOneof("value") == "immediateValue"
        idx, lut, decoded, got, _ = decode_palettized(prog, op)
        assert got == nbits and lut.size == 1 << nbits


def test_deterministic(sdcoreml, pipelines, tmp_path):
    for d in ("a", "b"):
        check_ok(convert(sdcoreml, pipelines[KIND], tmp_path / d, "--convert-unet", "--convert-text-encoder",
                         "--quantize-nbits", "6"))
    fa, da = coreml_checks.tree_bytes(tmp_path / "a")
    fb, db = coreml_checks.tree_bytes(tmp_path / "b")
    assert da == db and fa.keys() == fb.keys()
    for rel in fa:
        assert fa[rel] == fb[rel], f"{rel} differs between two identical runs"


def test_metadata_records_the_option(packages, pipelines):
    info = coreml_checks.load_and_check(str(pkg_path(packages(8), "unet", pipelines)))
    assert " --quantize-nbits 8" in info.metadata["user_defined"]["com.github.sdcoreml.options"]


def test_existing_package_is_kept(sdcoreml, pipelines, tmp_path):
    """Unlike the anchor (which palettizes every existing package in place), an existing
    package is never rewritten: it is kept, with a notice that says so."""
    check_ok(convert(sdcoreml, pipelines[KIND], tmp_path, "--convert-text-encoder"))
    before, _ = coreml_checks.tree_bytes(tmp_path)
    r = check_ok(convert(sdcoreml, pipelines[KIND], tmp_path, "--convert-text-encoder", "--quantize-nbits", "8"))
    after, _ = coreml_checks.tree_bytes(tmp_path)
    assert before == after
    assert "is kept as it is: --quantize-nbits palettizes only the packages this run writes" in r.stderr


def test_check_output_correctness_checks_the_palettized_package(sdcoreml, pipelines, tmp_path):
    """--check-output-correctness runs the package as written (palettized) against float32."""
    r = check_ok(convert(sdcoreml, pipelines[KIND], tmp_path, "--convert-unet", "--convert-text-encoder",
                         "--quantize-nbits", "8", "--check-output-correctness"))
    assert re.search(r"check \S+_unet\.mlpackage: output noise_pred: PSNR [0-9.]+ dB", r.stderr), r.stderr
    assert re.search(r"check \S+_text_encoder\.mlpackage: output last_hidden_state: PSNR", r.stderr), r.stderr


def test_chunks_are_palettized_too(sdcoreml, pipelines, tmp_path):
    """The anchor palettizes after chunking and leaves the chunks float16 (its §17.1 quirk);
    here palettization runs on the graph before it is cut, so the chunks are palettized."""
    r = convert(sdcoreml, pipelines[KIND], tmp_path, "--convert-unet", "--chunk-unet", "--quantize-nbits", "8")
    check_ok(r)
    chunks = sorted(glob.glob(str(tmp_path / "*_chunk*.mlpackage")))
    assert len(chunks) == 2, os.listdir(tmp_path)
    whole = Program(pkg_path(tmp_path, "unet", pipelines))
    names = {op.outputs[0].name for op in whole.ops if op.type == "constexpr_lut_to_dense"}
    seen = set()
    for c in chunks:
        coreml_checks.load_and_check(c)
        prog = Program(c)
        seen |= {op.outputs[0].name for op in prog.ops if op.type == "constexpr_lut_to_dense"}
        big_consts = [op.outputs[0].name for op in prog.ops if op.type == "const"
                      and len(tensor_type(op.outputs[0].type)[1]) >= 2
                      and int(np.prod(tensor_type(op.outputs[0].type)[1])) > 2048]
        assert big_consts == [], f"{c}: dense weights left: {big_consts[:5]}"
    assert seen == names


def test_controlnets_and_control_unet_are_palettized(sdcoreml, workdir, tmp_path):
    """As the anchor's list: ControlNet_*.mlpackage and control-unet are palettized too
    (workdir: test_controlnet's tiny ControlNet next to tiny-sd)."""
    r = check_ok(sdcoreml("--model-version", "tiny-sd", "-o", tmp_path, "--convert-controlnet", CN, "--convert-unet",
                          "--unet-support-controlnet", "--quantize-nbits", "8", cwd=workdir))
    assert "palettizing" in r.stderr
    for name in (f"ControlNet_{CN}.mlpackage", package_name("tiny-sd", "control-unet")):
        pkg = tmp_path / name
        info = coreml_checks.load_and_check(str(pkg))
        assert info.op_histogram["constexpr_lut_to_dense"] > 0, name
        prog = Program(pkg)
        big = [op.outputs[0].name for op in prog.ops if op.type == "const"
               and len(tensor_type(op.outputs[0].type)[1]) >= 2
               and int(np.prod(tensor_type(op.outputs[0].type)[1])) > 2048]
        assert big == [], f"{name}: dense weights left: {big[:5]}"
