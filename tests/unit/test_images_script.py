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
