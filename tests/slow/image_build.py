"""Building an image for a slow image test: `deploy/images/build.sh TARGET`, its report line, and reuse.

One path for both image tests (`test_images.py`: serve-kserve; `test_image_torchserve.py`: serve).
CLIPSHIELD_IMAGES_REUSE=1 skips the build when the image already exists (built by the same script).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.layout import REPO

BUILD = REPO / "deploy" / "images" / "build.sh"


def image_exists(image: str) -> bool:
    """Whether buildah's vfs storage holds `image`."""
    return subprocess.run(["buildah", "--storage-driver", "vfs", "inspect", "--type", "image", image], capture_output=True).returncode == 0


def built_image(target: str, image: str, workdir: Path) -> dict:
    """The build script's report line for `target` (built now), or a stub naming the existing image (reuse)."""
    if os.environ.get("CLIPSHIELD_IMAGES_REUSE") == "1" and image_exists(image):
        return {"target": target, "image": image, "reused": True}
    report = workdir / "report.jsonl"
    proc = subprocess.run([str(BUILD), target], env={**os.environ, "REPORT": str(report)}, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = json.loads(report.read_text().splitlines()[-1])
    print(line, [ln for ln in proc.stderr.splitlines() if ln.startswith("[images")])
    assert line["image"] == image and image_exists(image)
    return line
