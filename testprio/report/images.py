"""A sample's tensor as a picture: a displayable uint8 image, enlarged without blur, as PNG."""

from __future__ import annotations

import io
import math

import numpy as np

from testprio.errors import TestprioError

GALLERY_MIN_SIDE = 96
GALLERY_MAX_SIDE = 384
THUMBNAIL_SIDE = 48


def display_image(sample: np.ndarray) -> np.ndarray:
    """A sample as a displayable ``(H, W)`` grayscale or ``(H, W, 3)`` RGB uint8 image.

    Channels-first ``(1|3, H, W)`` and channels-last ``(H, W, 1|3)`` samples are both
    understood (channels-first wins when ambiguous, as in ONNX models); other channel counts
    show their first channel. Values are stretched from the sample's own min..max onto
    0..255, which undoes any mean/std normalization for display.
    """
    image = np.asarray(sample, dtype=np.float64)
    while image.ndim > 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim == 1:
        side = math.isqrt(image.size)
        rgb_side = math.isqrt(image.size // 3)
        if side * side == image.size:
            image = image.reshape(side, side)
        elif image.size % 3 == 0 and rgb_side * rgb_side * 3 == image.size:
            image = image.reshape(rgb_side, rgb_side, 3)
        else:
            image = image.reshape(1, -1)
    elif image.ndim == 3:
        if image.shape[0] in (1, 3):
            image = np.moveaxis(image, 0, -1)
        elif image.shape[-1] not in (1, 3):
            image = image[0][..., None]
        if image.shape[-1] == 1:
            image = image[..., 0]
    elif image.ndim > 3:
        image = image.reshape(-1, image.shape[-1])
    finite = np.isfinite(image)
    if not finite.any():
        return np.zeros(image.shape, dtype=np.uint8)
    low, high = float(image[finite].min()), float(image[finite].max())
    image = np.where(finite, image, low)
    if high - low < 1e-12:
        level = round(255 * low) if 0.0 <= low <= 1.0 else 128
        return np.full(image.shape, level, dtype=np.uint8)
    return np.round((image - low) / (high - low) * 255).astype(np.uint8)


def upscale(image: np.ndarray, *, min_side: int = GALLERY_MIN_SIDE) -> np.ndarray:
    """Enlarge a small image by whole-pixel repetition (nearest, no blur) to ``min_side``."""
    from PIL import Image

    height, width = image.shape[:2]
    factor = max(1, math.ceil(min_side / max(1, min(height, width))))
    factor = min(factor, max(1, GALLERY_MAX_SIDE // max(height, width)))
    if factor == 1:
        return image
    enlarged = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).resize(
        (width * factor, height * factor), Image.Resampling.NEAREST
    )
    return np.asarray(enlarged)


def encode_png(image: np.ndarray) -> bytes:
    """A lossless PNG (Pillow) of a ``(H, W)`` grayscale or ``(H, W, 3)`` RGB uint8 image."""
    from PIL import Image

    image = np.ascontiguousarray(image, dtype=np.uint8)
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise TestprioError(f"cannot encode an image of shape {image.shape} as PNG.")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
