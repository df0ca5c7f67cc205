"""Real photographs of several shapes and encodings (scikit-image's bundled samples), as files and as bytes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

ENCODINGS = ("JPEG", "PNG")


def sample_photos() -> dict[str, np.ndarray]:
    """name -> uint8 array: landscape, square, portrait crop, grey, large, and a tiny one (upsampled by S=224)."""
    from skimage import data

    chelsea = data.chelsea()  # 300 x 451 RGB
    astronaut = data.astronaut()  # 512 x 512 RGB
    return {
        "chelsea_landscape": chelsea,
        "astronaut_square": astronaut,
        "astronaut_portrait": np.ascontiguousarray(astronaut[:, 150:330]),  # 512 x 180
        "camera_grey": data.camera(),  # 512 x 512 greyscale (mode L once decoded)
        "hubble_large": data.hubble_deep_field(),  # 872 x 1000 RGB
        "chelsea_tiny": np.ascontiguousarray(chelsea[100:123:2, 200:237:2]),  # 12 x 19 RGB
    }


def encode(array: np.ndarray, fmt: str) -> bytes:
    """JPEG (quality 90) or PNG bytes of a uint8 photo."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_photo_folder(root: Path, sub: str = "photos") -> dict[str, bytes]:
    """Every photo in every encoding as `<root>/<sub>/<name>_<fmt>/<name>.<ext>` (one class folder each).

    Returns class-folder name -> the encoded bytes written there (what a client would send).
    """
    written = {}
    for name, array in sample_photos().items():
        for fmt in ENCODINGS:
            data = encode(array, fmt)
            folder = root / sub / f"{name}_{fmt.lower()}"
            folder.mkdir(parents=True)
            (folder / f"{name}.{'jpg' if fmt == 'JPEG' else 'png'}").write_bytes(data)
            written[folder.name] = data
    return written
