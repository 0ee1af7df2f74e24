"""What `cmake --install` delivers (issue 13): the CLI, the static library with its one header,
a pkg-config file a program can build against, and a man page that documents exactly the
options --help lists."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, sdcoreml_path

BUILD = sdcoreml_path().parent
MAN = REPO / "docs" / "sdcoreml.1"


def help_options(*command):
    out = subprocess.run([str(sdcoreml_path()), *command, "--help"], capture_output=True, text=True, check=True).stdout
    opts = set()
    for line in out.splitlines():
        m = re.match(r"^\s+((?:-\w|--[\w-]+)(?:, (?:-\w|--[\w-]+))?)", line)
        if m:
            opts.update(re.findall(r"--?[\w-]+", m.group(1)))
    return opts


def man_sections():
    """{section title: set of options documented in its tagged paragraphs (.TP then .B/.BI/.BR)}"""
    sections, current, tagged = {}, None, False
    for line in MAN.read_text().splitlines():
        if line.startswith(".SH "):
            current = line[4:].strip()
            sections[current] = set()
        elif line.startswith(".TP"):
            tagged = True
        elif tagged and current:
            sections[current].update(o.replace("\\-", "-") for o in re.findall(r"(?:\\-)+[\w\\-]+", line)
                                     if not o.replace("\\-", "-").endswith("-"))
            tagged = False
    return sections


@pytest.mark.parametrize("command,section", [((), "CONVERSION OPTIONS"), (("run",), "RUN"), (("inspect",), "INSPECT"),
                                             (("download",), "DOWNLOAD"), (("pipeline",), "PIPELINE")])
def test_man_page_matches_help(command, section):
    documented = {o.rstrip(",") for o in man_sections()[section]}
    listed = help_options(*command)
    assert listed, "no options parsed from --help"
    assert listed - documented == set(), f"in --help but not in the man page: {sorted(listed - documented)}"
    assert documented - listed == set(), f"in the man page but not in --help: {sorted(documented - listed)}"


PROGRAM = r"""
#include <stdio.h>
#include <sdcoreml.h>

int main(int argc, char **argv) {
    sdc_job job;
    sdc_job_init(&job);
    job.model_version = argv[1];
    job.output_dir = argv[2];
    job.convert_text_encoder = true;
    char err[1024];
    sdc_status s = sdc_convert(&job, err, sizeof err);
    if (s) {
        fprintf(stderr, "%s: %s\n", sdc_status_str(s), err);
        return 1;
    }
    printf("sdcoreml %s\n", sdc_version());
    return argc == 3 ? 0 : 1;
}
"""


def test_install_and_build_against_the_library(tmp_path):
    prefix = tmp_path / "prefix"
    subprocess.run(["cmake", "--install", str(BUILD), "--prefix", str(prefix)], check=True, capture_output=True)
    for f in ("bin/sdcoreml", "include/sdcoreml.h", "share/man/man1/sdcoreml.1"):
        assert (prefix / f).is_file(), f
    libdir = next(p for p in (prefix / "lib", *prefix.glob("lib/*-linux-gnu"), prefix / "lib64") if (p / "libsdcoreml.a").is_file())
    pc = libdir / "pkgconfig" / "sdcoreml.pc"
    assert pc.is_file()
    env = {"PKG_CONFIG_PATH": str(pc.parent), "PATH": "/usr/bin:/bin"}
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "sdcoreml"], capture_output=True, text=True, env=env,
                           check=True).stdout.split()
    includes = [Path(f[2:]).resolve() for f in flags if f.startswith("-I")]
    assert (prefix / "include").resolve() in includes and "-lsdcoreml" in flags, flags
    src = tmp_path / "convert.c"
    src.write_text(PROGRAM)
    exe = tmp_path / "convert"
    cc = shutil.which("cc") or shutil.which("gcc")
    subprocess.run([cc, "-std=c11", "-Wall", "-Werror", str(src), "-o", str(exe), *flags], check=True, env=env)
    out = tmp_path / "out"
    r = subprocess.run([str(exe), str(REPO / "examples" / "tiny-sd"), str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("sdcoreml ")
    # the installed CLI runs from its prefix and reads the package the program wrote
    pkg = next(out.glob("*_text_encoder.mlpackage"))
    r = subprocess.run([str(prefix / "bin" / "sdcoreml"), "inspect", str(pkg)], capture_output=True, text=True)
    assert r.returncode == 0 and "input_ids" in r.stdout, r.stderr
