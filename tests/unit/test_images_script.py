"""`make images` (deploy/images/) statically: the scripts parse, the Dockerfile keeps the official bases as its
defaults (stand-ins are only build arguments), and the build machine's pip configuration reaches the build
only as read-only RUN mounts, never as a file in the build context or an image layer. The build and run
themselves: tests/slow/test_images.py."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.layout import REPO

SCRIPTS = [REPO / "deploy" / "images" / "build.sh", REPO / "deploy" / "images" / "run.sh"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


def test_dockerfile_defaults_are_the_official_bases():
    defaults = dict(re.findall(r"^ARG (PYTHON_IMAGE|BUSYBOX_IMAGE)=(\S+)$", (REPO / "Dockerfile").read_text(), re.M))
    assert set(defaults) == {"PYTHON_IMAGE", "BUSYBOX_IMAGE"}
    assert all(not v.startswith("localhost/") and re.search(r":\d", v) for v in defaults.values()), defaults


def test_pip_configuration_is_mounted_never_copied():
    build = SCRIPTS[0].read_text()
    assert '"${BUILDAH[@]}" bud --isolation chroot' in build and "BUILDAH=(buildah --storage-driver vfs)" in build
    assert '"${MOUNTS[@]}"' in build and '-v "$p:$p:ro"' in build
    ignored = (REPO / ".dockerignore").read_text()
    assert "pip.conf" not in (REPO / "Dockerfile").read_text() and "!pip" not in ignored


def _torch_args(tmp_path, wheels: list[str], **env: str) -> subprocess.CompletedProcess:
    """build.sh's torch choice for `serve` (TORCH_ONLY=1) with a pip.conf whose find-links folder holds `wheels`."""
    links = tmp_path / "wheels"
    links.mkdir(parents=True)
    for name in wheels:
        (links / name).touch()
    conf = tmp_path / "home" / ".config" / "pip" / "pip.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(f"[global]\nfind-links = {links}\n")
    run_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "TORCH_ONLY": "1", **env}
    return subprocess.run(["bash", str(SCRIPTS[0]), "serve"], env=run_env, capture_output=True, text=True, timeout=60)


def test_dockerfile_pins_torch_by_an_argument_defaulting_to_the_official_pin():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG TORCH_VERSION=2\.14\.1$", text, re.M) and '"torch==${TORCH_VERSION}"' in text
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cpu$", text, re.M)


def test_torch_stand_in_is_the_newest_local_cpu_wheel_and_says_so(tmp_path):
    wheels = ["torch-2.9.1+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"]
    wheels += ["torch-2.14.0-cp311-cp311-manylinux_2_28_x86_64.whl", "torch-2.14.0+cpu-cp312-cp312-manylinux_2_28_x86_64.whl"]
    proc = _torch_args(tmp_path, wheels, STANDIN="always")
    assert proc.returncode == 0, proc.stderr
    args = proc.stdout.split()
    assert args == ["--build-arg", "TORCH_VERSION=2.13.0+cpu", "--build-arg", "TORCH_INDEX_URL=https://pypi.org/simple"]
    assert "NOT the Dockerfile's torch==2.14.1" in proc.stderr


def test_torch_stand_in_refused_without_a_local_wheel_or_when_build_args_choose(tmp_path):
    proc = _torch_args(tmp_path, [], STANDIN="always")
    assert proc.returncode == 2 and "no torch-*+cpu-cp311 wheel" in proc.stderr, proc.stderr
    chosen = _torch_args(tmp_path / "x", [], STANDIN="always", BUILD_ARGS="--build-arg TORCH_INDEX_URL=https://pypi.org/simple")
    assert chosen.returncode == 0 and chosen.stdout == "", chosen.stderr
