"""Single-file checkpoints (--model-version FILE, --custom-vae-version FILE, --config DIR).

Fixtures: the tiny pipelines written in the original LDM/SGM layouts by
tests/fixtures/make_single_files.py, each first read back by diffusers' own
from_single_file(config=<folder>) and compared tensor by tensor with the folder (the oracle
that the file is what it claims to be). Then the packages converted from the file must be the
packages converted from the folder, byte for byte (weight.bin), for every component."""

import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import EXAMPLE_SD1, check_ok

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
import make_single_files as msf  # noqa: E402

WEIGHT_BIN = Path("Data/com.apple.CoreML/weights/weight.bin")
KINDS = ["sd1", "sd2", "sdxl", "sdxl-refiner", "sd1-inpaint"]
DTYPES = ["fp32", "fp16"]
COMPONENTS = ["--convert-unet", "--convert-text-encoder", "--convert-vae-decoder", "--convert-vae-encoder"]


def folders(pipelines):
    return {k: Path(pipelines[k]) for k in KINDS}


@pytest.fixture(scope="session")
def single_files(pipelines, tmp_path_factory):
    out = tmp_path_factory.mktemp("single-files")
    return msf.write_all(out, folders(pipelines))


class CastFolders:
    """The fixture folders with every weight cast to float16 or bfloat16 (what a file of that
    dtype must equal), made once per (kind, dtype)."""

    def __init__(self, pipelines, root):
        self.pipelines, self.root, self.made = pipelines, root, {}

    def __call__(self, kind, dtype):
        if dtype == "fp32":
            return folders(self.pipelines)[kind]
        if (kind, dtype) not in self.made:
            dst = self.root / dtype / kind
            shutil.copytree(folders(self.pipelines)[kind], dst)
            to = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
            for st in dst.glob("*/*.safetensors"):
                save_file({k: v.to(to) if v.is_floating_point() else v for k, v in load_file(st).items()}, st)
            self.made[kind, dtype] = dst
        return self.made[kind, dtype]


@pytest.fixture(scope="session")
def cast_folders(pipelines, tmp_path_factory):
    return CastFolders(pipelines, tmp_path_factory.mktemp("cast-folders"))


def xl_flags(kind):
    return ["--xl-version"] if kind.startswith("sdxl") else []


def submodule_bins(out, stem):
    prefix = f"Stable_Diffusion_version_{stem}_"
    return {p.name[len(prefix):-len(".mlpackage")]: (p / WEIGHT_BIN).read_bytes()
            for p in sorted(Path(out).glob(prefix + "*.mlpackage"))}


def convert_file(sdcoreml, path, out, *flags, env=None):
    path = Path(path)
    return sdcoreml("--model-version", path.name, "-o", out, *flags, cwd=path.parent, env=env)


# ---------------------------------------------------------------------------------------------


FILES = [(k, d) for k in KINDS for d in DTYPES] + [("sd1", "bf16")]


@pytest.mark.parametrize("kind,dtype", FILES)
def test_fixture_is_what_diffusers_reads(single_files, pipelines, kind, dtype):
    msf.validate(single_files[f"{kind}-{dtype}"], kind, folders(pipelines)[kind])


@pytest.mark.parametrize("kind,dtype", FILES)
def test_packages_equal_the_folder_ones(sdcoreml, single_files, pipelines, cast_folders, tmp_path, kind, dtype):
    folder = cast_folders(kind, dtype)
    a, b = tmp_path / "file", tmp_path / "folder"
    f = single_files[f"{kind}-{dtype}"]
    check_ok(convert_file(sdcoreml, f, a, "--config", folders(pipelines)[kind], *COMPONENTS, *xl_flags(kind)))
    check_ok(sdcoreml("--model-version", folder.name, "-o", b, *COMPONENTS, *xl_flags(kind), cwd=folder.parent))
    got, want = submodule_bins(a, f.stem), submodule_bins(b, folder.name)
    encoders = {"sdxl": {"text_encoder", "text_encoder_2"}, "sdxl-refiner": {"text_encoder_2"}}.get(kind, {"text_encoder"})
    expected = {"unet", "vae_decoder", "vae_encoder"} | encoders
    assert set(got) == set(want) == expected
    for sub in expected:
        assert got[sub] == want[sub], f"{kind}-{dtype}: {sub} weight.bin differs from the folder's"


@pytest.mark.parametrize("name", ["sd1-fp16", "sdxl-fp32"])
def test_check_output_correctness(sdcoreml, single_files, pipelines, tmp_path, name):
    kind = name.rsplit("-", 1)[0]
    r = check_ok(convert_file(sdcoreml, single_files[name], tmp_path, "--config", folders(pipelines)[kind],
                              "--check-output-correctness", *COMPONENTS, *xl_flags(kind)))
    assert "PSNR" in r.stdout + r.stderr


def test_safety_checker_from_config(sdcoreml, single_files, pipelines, tmp_path):
    """A checkpoint holds no safety checker: as diffusers' from_single_file(config=…), it comes
    from the --config folder; without --config it is skipped with a warning."""
    folder = folders(pipelines)["sd1-inpaint"]
    f = single_files["sd1-inpaint-fp32"]
    a, b = tmp_path / "file", tmp_path / "folder"
    check_ok(convert_file(sdcoreml, f, a, "--config", folder, "--convert-safety-checker"))
    check_ok(sdcoreml("--model-version", folder.name, "-o", b, "--convert-safety-checker", cwd=folder.parent))
    got, want = submodule_bins(a, f.stem), submodule_bins(b, folder.name)
    assert set(got) == {"safety_checker"} and got == want
    r = check_ok(convert_file(sdcoreml, f, tmp_path / "none", "--convert-safety-checker"))
    assert "safety_checker" in r.stderr and not any((tmp_path / "none").glob("*.mlpackage"))


@pytest.mark.parametrize("vae", ["vae-ldm", "vae-diffusers"])
def test_custom_vae_file(sdcoreml, single_files, tmp_path, vae):
    """A lone VAE file (LDM or diffusers names) as --custom-vae-version equals the folder's VAE."""
    flags = ["--convert-vae-decoder", "--convert-vae-encoder"]
    a, b = tmp_path / "custom", tmp_path / "folder"
    check_ok(sdcoreml("--model-version", EXAMPLE_SD1.name, "-o", a, "--custom-vae-version", single_files[vae], *flags,
                      cwd=EXAMPLE_SD1.parent))
    check_ok(sdcoreml("--model-version", EXAMPLE_SD1.name, "-o", b, *flags, cwd=EXAMPLE_SD1.parent))
    got, want = submodule_bins(a, EXAMPLE_SD1.name), submodule_bins(b, EXAMPLE_SD1.name)
    assert set(got) == {"vae_decoder", "vae_encoder"} and got == want


@pytest.mark.parametrize("name,flags,subs", [
    ("sd1-diffusers-names", COMPONENTS, {"unet", "text_encoder", "vae_decoder", "vae_encoder"}),
    ("unet-ldm", ["--convert-unet"], {"unet"}),
])
def test_other_namings_equal_the_folder(sdcoreml, single_files, tmp_path, name, flags, subs):
    """A pipeline already in diffusers' names (unet.*, vae.*, text_encoder.*) and a lone LDM UNet."""
    a, b = tmp_path / "file", tmp_path / "folder"
    check_ok(convert_file(sdcoreml, single_files[name], a, "--config", EXAMPLE_SD1, *flags))
    check_ok(sdcoreml("--model-version", EXAMPLE_SD1.name, "-o", b, *flags, cwd=EXAMPLE_SD1.parent))
    got, want = submodule_bins(a, name), submodule_bins(b, EXAMPLE_SD1.name)
    assert set(got) == set(want) == subs and got == want


def test_lone_vae_as_model(sdcoreml, single_files, pipelines, tmp_path):
    """A VAE file on its own converts its decoder, named after the file's stem."""
    check_ok(convert_file(sdcoreml, single_files["vae-ldm"], tmp_path, "--convert-vae-decoder"))
    assert (tmp_path / "Stable_Diffusion_version_vae-ldm_vae_decoder.mlpackage").is_dir()


# ---- configs inferred from the shapes (no --config) ---------------------------------------------


@pytest.fixture(scope="session")
def conventional(tmp_path_factory):
    """Tiny pipelines that keep the families' conventions, as folders and single files."""
    return msf.write_conventional(tmp_path_factory.mktemp("conventional"))


def spec_without_metadata(package):
    import coremltools as ct

    spec = ct.utils.load_spec(str(package))
    spec.description.metadata.Clear()  # names the --model-version given
    return spec.SerializeToString()


@pytest.mark.parametrize("kind,stem", [(k, k) for k in msf.CONVENTIONAL] +
                         [("sd2-conventional", "sd2-conventional-diffusers-names")])
def test_inferred_configs_give_the_folder_packages(sdcoreml, conventional, tmp_path, kind, stem):
    """Without --config, every config value that shapes settle comes from the shapes and the rest
    from the family's conventions: the packages (graph, shapes, head counts, weights) are those
    of the folder with its real configs. SD 2.x's file carries one OpenCLIP block more than the
    pipeline runs."""
    folder = conventional[kind]
    f = folder.parent / f"{stem}.safetensors"
    if stem == kind:
        msf.validate(f, kind, folder)
    flags = [*COMPONENTS, *xl_flags(kind)]
    a, b = tmp_path / "file", tmp_path / "folder"
    check_ok(convert_file(sdcoreml, f, a, *flags))
    check_ok(sdcoreml("--model-version", kind, "-o", b, *flags, cwd=folder.parent))
    got, want = submodule_bins(a, stem), submodule_bins(b, kind)
    assert set(got) == set(want) and len(got) >= 4
    for sub in got:
        assert got[sub] == want[sub], sub
        pa, pb = (d / f"Stable_Diffusion_version_{s}_{sub}.mlpackage" for d, s in ((a, stem), (b, kind)))
        assert spec_without_metadata(pa) == spec_without_metadata(pb), sub


@pytest.mark.parametrize("kind", ["sd2-conventional", "sdxl-conventional"])
def test_text_encoders_match_diffusers_single_file_load(sdcoreml, conventional, tmp_path, kind):
    """The float32 text encoder packages of a file converted without --config, evaluated with
    coremltools' op semantics, against the encoders diffusers' from_single_file makes of the
    same file (OpenCLIP: the fused projection split, the last block left out)."""
    import diffusers
    import mil_eval
    import numpy as np
    from test_text_encoder import load_program

    folder = conventional[kind]
    f = folder.parent / f"{kind}.safetensors"
    xl = kind.startswith("sdxl")
    check_ok(convert_file(sdcoreml, f, tmp_path / "o", "--convert-text-encoder", "--compute-precision", "FLOAT32",
                          *xl_flags(kind)))
    cls = diffusers.StableDiffusionXLPipeline if xl else diffusers.StableDiffusionPipeline
    pipe = cls.from_single_file(str(f), config=str(folder), local_files_only=True, torch_dtype=torch.float32)
    ids = pipe.tokenizer("a photo of a cat", padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids
    for sub in ["text_encoder", "text_encoder_2"][: 2 if xl else 1]:
        with torch.no_grad():
            o = getattr(pipe, sub)(ids, output_hidden_states=True, return_dict=True)
        pooled = o.text_embeds if hasattr(o, "text_embeds") else o.pooler_output
        ref = {"hidden_embeds": o.hidden_states[-2], "pooled_outputs": pooled} if xl else \
            {"last_hidden_state": o.last_hidden_state, "pooled_outputs": pooled}
        prog = load_program(tmp_path / "o" / f"Stable_Diffusion_version_{kind}_{sub}.mlpackage", tmp_path / sub)
        got = mil_eval.evaluate(prog, {"input_ids": ids.numpy().astype(np.float32)})
        for name, want in ref.items():
            v = mil_eval.psnr(want.numpy(), got[name])
            print(f"PSNR single-file {kind} {sub} {name}: {v:.1f} dB")
            assert v >= 60, f"{sub} {name}: {v:.1f} dB"


def test_vae_decoder_matches_diffusers_single_file_load(sdcoreml, conventional, tmp_path):
    """The float32 VAE decoder of a file converted without --config (the LDM mid attention's 1x1
    convs as linears, the up blocks reversed), run by the interpreter, against diffusers'
    from_single_file VAE."""
    import diffusers
    import mil_eval
    import numpy as np

    kind = "sd1-conventional"
    folder = conventional[kind]
    f = folder.parent / f"{kind}.safetensors"
    check_ok(convert_file(sdcoreml, f, tmp_path / "o", "--convert-vae-decoder", "--compute-precision", "FLOAT32",
                          "--latent-h", "8", "--latent-w", "8"))
    pipe = diffusers.StableDiffusionPipeline.from_single_file(str(f), config=str(folder), local_files_only=True,
                                                              torch_dtype=torch.float32)
    z = np.random.default_rng(5).standard_normal((1, 4, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = pipe.vae.decode(torch.from_numpy(z)).sample.numpy()  # the scaling factor stays outside
    np.save(tmp_path / "z.npy", z)
    check_ok(sdcoreml("run", tmp_path / "o" / f"Stable_Diffusion_version_{kind}_vae_decoder.mlpackage",
                      "--input", f"z={tmp_path / 'z.npy'}", "-o", tmp_path / "run"))
    got = np.load(tmp_path / "run" / "image.npy")
    v = mil_eval.psnr(want, got)
    print(f"PSNR single-file {kind} vae_decoder image: {v:.1f} dB")
    assert v >= 60, f"{v:.1f} dB"


def test_bundle_takes_the_tokenizer_from_config(sdcoreml, conventional, tmp_path):
    from test_bundle import fake_xcrun

    env, _ = fake_xcrun(tmp_path)
    folder = conventional["sd1-conventional"]
    f = folder.parent / "sd1-conventional.safetensors"
    r = convert_file(sdcoreml, f, tmp_path / "o1", "--convert-text-encoder", "--bundle-resources-for-swift-cli", env=env)
    assert r.returncode != 0 and "no tokenizer/vocab.json" in r.stderr and "--config" in r.stderr, r.stderr
    check_ok(convert_file(sdcoreml, f, tmp_path / "o2", "--convert-text-encoder", "--bundle-resources-for-swift-cli",
                          "--config", folder, env=env))
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / "o2" / "Resources" / name).read_bytes() == (folder / "tokenizer" / name).read_bytes()


# ---- refusals: one line naming the file and what to do, nothing written ----------------------


def refused(r, out, *words):
    assert r.returncode != 0, r.stdout
    err = r.stderr.strip()
    assert len(err.splitlines()) >= 1
    for w in words:
        assert w in err, err
    assert not any(Path(out).glob("*.mlpackage")), list(Path(out).iterdir())


def test_unknown_layout(sdcoreml, tmp_path):
    f = tmp_path / "mystery.safetensors"
    save_file({"backbone.layer1.weight": torch.zeros(4, 4), "head.bias": torch.zeros(4)}, f)
    out = tmp_path / "out"
    refused(convert_file(sdcoreml, f, out, "--convert-unet"), out, "mystery.safetensors", "unknown layout")


@pytest.mark.parametrize("kind,component,flag", [
    ("sd1", "text_encoder", "--convert-text-encoder"),    # 32 wide: not 64 channels per head
    ("sd2", "unet", "--convert-unet"),                     # 16 channels per head, not 64
    ("sdxl", "unet", "--convert-unet"),                    # time ids embedded 8 wide, not 256
])
def test_unconventional_shapes_need_config(sdcoreml, single_files, tmp_path, kind, component, flag):
    f = single_files[f"{kind}-fp32"]
    refused(convert_file(sdcoreml, f, tmp_path, flag, *xl_flags(kind)), tmp_path, f.name, component, "--config")


def test_uninferable_config_is_refused_before_any_package(sdcoreml, single_files, tmp_path):
    """The UNet and VAE come before the text encoder in the anchor's order: nothing of theirs is
    written when the text encoder's config cannot be inferred."""
    f = single_files["sd1-fp32"]
    out = tmp_path / "out"
    r = convert_file(sdcoreml, f, out, "--convert-unet", "--convert-vae-decoder", "--convert-text-encoder")
    refused(r, out, f.name, "text_encoder", "--config")
    assert r.returncode == 1 and (not out.exists() or not any(out.iterdir())), r.stderr


def test_missing_component(sdcoreml, single_files, tmp_path):
    refused(convert_file(sdcoreml, single_files["vae-ldm"], tmp_path, "--convert-unet"), tmp_path, "vae-ldm", "no unet")


def test_config_without_the_component(sdcoreml, single_files, pipelines, tmp_path):
    cfg = tmp_path / "cfg"
    shutil.copytree(folders(pipelines)["sd1"], cfg)
    shutil.rmtree(cfg / "unet")
    refused(convert_file(sdcoreml, single_files["sd1-fp32"], tmp_path / "out", "--config", cfg, "--convert-unet"),
            tmp_path / "out", "unet/config.json")


def test_config_is_for_single_files(sdcoreml, tmp_path):
    r = sdcoreml("--model-version", EXAMPLE_SD1.name, "-o", tmp_path, "--config", EXAMPLE_SD1, "--convert-unet",
                 cwd=EXAMPLE_SD1.parent)
    refused(r, tmp_path, "--config", "single-file")


@pytest.mark.parametrize("name,kind", [("sd1.ckpt", "sd1"), ("sd2.pt", "sd2")])
def test_pickle_checkpoints_equal_the_folder(sdcoreml, single_files, pipelines, tmp_path, name, kind):
    """torch.save'd checkpoints (zip and legacy format, Lightning's state_dict wrapping, EMA
    decoys), read without running them, give the folder's packages."""
    a, b = tmp_path / "file", tmp_path / "folder"
    folder = folders(pipelines)[kind]
    check_ok(convert_file(sdcoreml, single_files[name], a, "--config", folder, *COMPONENTS))
    check_ok(sdcoreml("--model-version", folder.name, "-o", b, *COMPONENTS, cwd=folder.parent))
    got, want = submodule_bins(a, name.split(".")[0]), submodule_bins(b, folder.name)
    assert set(got) == {"unet", "text_encoder", "vae_decoder", "vae_encoder"} and got == want


def test_other_files_are_not_models(sdcoreml, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    refused(convert_file(sdcoreml, f, tmp_path / "out", "--convert-unet"), tmp_path / "out", "notes.txt")


def edited(single_files, name, tmp_path, edit):
    sd = load_file(single_files[name])
    edit(sd)
    f = tmp_path / f"edited-{name}.safetensors"
    save_file(sd, f)
    return f


def test_fused_projection_that_does_not_split(sdcoreml, single_files, pipelines, tmp_path):
    key = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"
    f = edited(single_files, "sd2-fp32", tmp_path, lambda sd: sd.__setitem__(key, sd[key][:-1]))
    r = convert_file(sdcoreml, f, tmp_path / "out", "--config", folders(pipelines)["sd2"], "--convert-unet")
    refused(r, tmp_path / "out", f.name, key, "multiple of 3")


def test_unet_without_conv_in(sdcoreml, single_files, tmp_path):
    f = edited(single_files, "sd1-fp32", tmp_path, lambda sd: sd.pop("model.diffusion_model.input_blocks.0.0.weight"))
    refused(convert_file(sdcoreml, f, tmp_path / "out", "--convert-unet"), tmp_path / "out", f.name, "conv_in")


def test_missing_file_is_not_a_hub_id(sdcoreml, tmp_path):
    """dir/model.safetensors that does not exist is a missing file, not a Hub repository."""
    r = sdcoreml("--model-version", "downloads/model.safetensors", "-o", tmp_path, "--convert-unet", cwd=tmp_path)
    refused(r, tmp_path, "downloads/model.safetensors", "not found")
    assert "Hub" not in r.stderr and "cache" not in r.stderr, r.stderr
