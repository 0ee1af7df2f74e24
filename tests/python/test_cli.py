"""Command-line behaviour: help, version, usage errors, flags of components not built yet."""

import os

import pytest

from conftest import REPO


def test_help(sdcoreml):
    r = sdcoreml("--help")
    assert r.returncode == 0, r.stderr
    assert "usage" in r.stdout.lower()
    assert "--model-version" in r.stdout
    assert "--convert-text-encoder" in r.stdout


def test_version(sdcoreml):
    r = sdcoreml("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "sdcoreml 0.1.0"


def one_error_line(stderr):
    """The error: exactly one 'sdcoreml: error: ' line, the last line of stderr (progress
    lines may come before it unless --quiet)."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("sdcoreml: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], f"expected one error line, last:\n{stderr}"
    return errors[0]


# A dummy argument for each metavar the help uses.
METAVAR_ARGS = {"N": "8", "ID": "testorg/x", "URL": "https://example.invalid/x", "P": "FLOAT16"}


def not_supported_flags(help_text):
    """[(flag, args)] of every option that --help marks '(not supported yet)'."""
    out = []
    for line in help_text.splitlines():
        s = line.strip()
        if not s.startswith("--") or "(not supported yet)" not in s:
            continue
        words = s.split()
        flag, args = words[0], []
        for w in words[1:]:
            if w in METAVAR_ARGS:
                args.append(METAVAR_ARGS[w])
            else:
                break
        out.append((flag, args))
    return out


def test_not_supported_yet(sdcoreml, tmp_path):
    """Every flag whose component is not built yet exits 2 with 'not supported yet: --flag'
    and writes nothing, even next to a flag that works. The list comes from --help, so it
    shrinks by itself as components land (--convert-unet, the brief's first example, already
    works)."""
    flags = not_supported_flags(sdcoreml("--help").stdout)
    if not flags:
        pytest.skip("--help marks no option as not supported yet")
    problems = []
    for flag, args in flags:
        out = tmp_path / flag.lstrip("-")
        out.mkdir()
        r = sdcoreml("--model-version", "tiny-sd", "-o", out, "--convert-text-encoder", flag, *args,
                     cwd=REPO / "examples")
        if r.returncode != 2 or f"not supported yet: {flag}" not in r.stderr or os.listdir(out):
            problems.append(f"{flag} {' '.join(args)}: exit {r.returncode}, stderr {r.stderr!r}, "
                            f"left {os.listdir(out)}")
    assert not problems, "\n".join(problems)


def test_unknown_flag(sdcoreml, tmp_path):
    r = sdcoreml("--model-version", "tiny-sd", "-o", tmp_path, "--no-such-flag", cwd=REPO / "examples")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "--no-such-flag" in r.stderr


def test_model_version_required(sdcoreml, tmp_path):
    r = sdcoreml("-o", tmp_path, "--convert-text-encoder")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "--model-version" in r.stderr


def test_bad_precision(sdcoreml, tmp_path):
    r = sdcoreml("--model-version", "tiny-sd", "-o", tmp_path, "--convert-text-encoder",
                 "--compute-precision", "FLOAT8", cwd=REPO / "examples")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert os.listdir(tmp_path) == []


def test_missing_model_folder(sdcoreml, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    r = sdcoreml("--model-version", str(tmp_path / "nowhere"), "-o", out, "--convert-text-encoder",
                 env={"HF_HOME": str(tmp_path / "hf")})
    assert r.returncode == 1, (r.returncode, r.stderr)
    line = one_error_line(r.stderr)
    assert line.startswith("sdcoreml: error: ")
    assert os.listdir(out) == []


# ---------------------------------------------------------------------------------------------
# One option parser for every command (cli/options.c): the same help, spellings and usage errors
# for convert (no command word), run and inspect.

COMMANDS = [pytest.param([], id="convert"), pytest.param(["run"], id="run"), pytest.param(["inspect"], id="inspect")]


@pytest.mark.parametrize("command", COMMANDS)
def test_short_help_is_help(sdcoreml, command):
    long, short = sdcoreml(*command, "--help"), sdcoreml(*command, "-h")
    assert long.returncode == 0 and short.returncode == 0, (long.stderr, short.stderr)
    assert short.stderr == "" and short.stdout == long.stdout
    assert "Usage" in short.stdout and "\n  -h, --help " in short.stdout, short.stdout


def test_help_command_is_help(sdcoreml):
    r = sdcoreml("help")
    assert r.returncode == 0 and r.stdout == sdcoreml("-h").stdout


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("spelling", ["-h", "--help"])
def test_help_wins_over_what_follows(sdcoreml, command, spelling):
    """As argparse: the help is printed as soon as it is met, even before a bad option."""
    r = sdcoreml(*command, spelling, "--no-such-flag")
    assert r.returncode == 0 and r.stderr == "" and "Usage" in r.stdout, (r.returncode, r.stderr)
