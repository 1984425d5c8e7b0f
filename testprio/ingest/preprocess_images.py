"""Image preprocessing ops (channels-last samples) and ``layout``, which moves channels.

``rgb``, ``grayscale``, ``rgb_to_y``, ``equalize``, ``resize`` and ``center_crop`` take
``(H, W)`` or ``(H, W, C)`` samples and keep uint8 data uint8, rounded and clipped as Pillow
stores an image, so a preset computes what a Pillow-based training pipeline computed.
``layout`` converts between channels-last and channels-first. The op contract is in
``testprio.ingest.preprocess``'s docstring.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from testprio.ingest.preprocess_base import (
    Op,
    Param,
    choices_text,
    one_of,
    parse_size,
    row_blocks,
    to_uint8,
    working_float,
)

# --- image ops (channels-last samples) ----------------------------------------------------


def _images(x: np.ndarray) -> np.ndarray:
    """A batch of images as ``(N, H, W, C)``: ``(N, H, W)`` gains a channel axis."""
    if x.ndim == 3:
        return x[..., None]
    if x.ndim == 4:
        return x
    raise ValueError(
        "it needs image samples, (H, W) or channels-last (H, W, C); reshape the pool "
        "(--input-shape) or leave the op out"
    )


def _channel_count_error(channels: int) -> ValueError:
    return ValueError(
        f"it needs images with 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA) channels, not {channels}; "
        "if the samples are channels-first, put a layout op to NHWC first"
    )


# ITU-R luma weights of R, G, B.
_LUMA = {"bt601": (0.299, 0.587, 0.114), "bt709": (0.2126, 0.7152, 0.0722)}


def _luma(x: np.ndarray, weights: tuple[float, float, float]) -> np.ndarray:
    """``(N, H, W, 1)`` luma of a batch of images; L and LA images give their L channel."""
    images = _images(x)
    channels = images.shape[-1]
    if channels in (1, 2):
        return images[..., :1]
    if channels not in (3, 4):
        raise _channel_count_error(channels)
    luma = working_float(images[..., :3]) @ np.asarray(weights, dtype=np.float32)
    luma = luma[..., None]
    return to_uint8(luma) if x.dtype == np.uint8 else luma


class ToRGB(Op):
    """Three channels, as Pillow's ``convert("RGB")``: L and LA repeat L, RGBA drops alpha."""

    name = "rgb"
    needs_channels_last = True

    def apply(self, x: np.ndarray) -> np.ndarray:
        images = _images(x)
        channels = images.shape[-1]
        if channels in (1, 2):
            return np.repeat(images[..., :1], 3, axis=-1)
        if channels in (3, 4):
            return images[..., :3]
        raise _channel_count_error(channels)


class Grayscale(Op):
    """ITU-R 601-2 luma (Pillow's ``convert("L")``) ``(N, H, W, 1)``; L images pass through."""

    name = "grayscale"
    needs_channels_last = True

    def apply(self, x: np.ndarray) -> np.ndarray:
        images = _images(x)
        if x.dtype == np.uint8 and images.shape[-1] in (3, 4):
            # Pillow's own fixed-point formula (Convert.c, L24), so uint8 results match it.
            rgb = images[..., :3].astype(np.uint32)
            luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
            return luma.astype(np.uint8)[..., None]
        return _luma(x, _LUMA["bt601"])


class RGBToY(Op):
    """The Y (luma) channel of YCbCr ``(N, H, W, 1)``: ``bt601`` as Pillow's YCbCr, or ``bt709``.

    Full range (JPEG's YCbCr, no 16..235 studio swing); L images pass through.
    """

    name = "rgb_to_y"
    needs_channels_last = True
    params = {"standard": Param(one_of(*_LUMA), choices_text(*_LUMA), "bt601")}
    standard: str

    def apply(self, x: np.ndarray) -> np.ndarray:
        return _luma(x, _LUMA[self.standard])


class Equalize(Op):
    """Histogram equalization of each channel of each image, as Pillow's ``ImageOps.equalize``.

    Values are first stored as uint8 (rounded, clipped to 0..255); the output is uint8.
    """

    name = "equalize"
    needs_channels_last = True

    def apply(self, x: np.ndarray) -> np.ndarray:
        images = to_uint8(_images(x))
        out = np.empty_like(images)
        start = 0
        for block in row_blocks(images):
            out[start : start + len(block)] = _equalize(block)
            start += len(block)
        return out.reshape(x.shape) if x.ndim == 3 else out


def _equalize(images: np.ndarray) -> np.ndarray:
    """``ImageOps.equalize`` of every channel of ``(N, H, W, C)`` uint8, vectorized."""
    n, height, width, channels = images.shape
    planes = np.moveaxis(images, -1, 1).reshape(n * channels, height * width)
    # One histogram per plane: offset each plane's values into its own 256 bins.
    codes = planes.astype(np.int32) + (np.arange(n * channels, dtype=np.int32) * 256)[:, None]
    hist = np.bincount(codes.ravel(), minlength=n * channels * 256).reshape(-1, 256)
    # Pillow: step = (pixels - pixels in the highest used bin) // 255, and
    # lut[i] = (step // 2 + pixels below bin i) // step; identity when step is 0.
    highest = 255 - np.argmax(hist[:, ::-1] > 0, axis=1)
    step = (hist.sum(axis=1) - hist[np.arange(len(hist)), highest]) // 255
    below = np.cumsum(hist, axis=1) - hist
    lut = (step[:, None] // 2 + below) // np.maximum(step, 1)[:, None]
    lut = np.where(step[:, None] > 0, lut, np.arange(256))
    lut = np.clip(lut, 0, 255).astype(np.uint8)
    equalized = lut.ravel()[codes].reshape(n, channels, height, width)
    return np.moveaxis(equalized, 1, -1)


_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


class Resize(Op):
    """Images resized with Pillow: ``size`` int sets the shorter side (aspect kept, as
    torchvision's ``Resize(int)``), ``[h, w]`` the exact size.

    uint8 images are resized as 8-bit images (RGB at once, other channel counts channel by
    channel: no alpha premultiplication) and stay uint8; other dtypes are resized channel by
    channel in Pillow's float mode "F" and give float32.
    """

    name = "resize"
    needs_channels_last = True
    params = {
        "size": Param(parse_size, "a positive integer or a [height, width] list of them"),
        "resample": Param(one_of(*_RESAMPLE), choices_text(*_RESAMPLE), "bilinear"),
    }
    size: int | tuple[int, int]
    resample: str

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """``(height, width)`` of the resized image."""
        if isinstance(self.size, tuple):
            return self.size
        # torchvision: the shorter side becomes size, the longer one is scaled and truncated.
        if height <= width:
            return self.size, int(self.size * width / height)
        return int(self.size * height / width), self.size

    def apply(self, x: np.ndarray) -> np.ndarray:
        images = _images(x)
        n, height, width, channels = images.shape
        new_height, new_width = self.output_size(height, width)
        if (new_height, new_width) == (height, width):
            return x  # what Pillow does too: an unchanged copy
        if min(new_height, new_width) == 0:
            raise ValueError(f"it would make {height}x{width} images {new_height}x{new_width}")
        resample = _RESAMPLE[self.resample]
        size = (new_width, new_height)
        eight_bit = images.dtype == np.uint8
        out = np.empty((n, new_height, new_width, channels), np.uint8 if eight_bit else np.float32)
        for i in range(n):
            if eight_bit and channels == 3:
                out[i] = np.asarray(Image.fromarray(images[i]).resize(size, resample))
                continue
            for channel in range(channels):
                plane = np.ascontiguousarray(images[i, :, :, channel])
                if not eight_bit:
                    plane = plane.astype(np.float32)
                out[i, :, :, channel] = np.asarray(Image.fromarray(plane).resize(size, resample))
        return out[..., 0] if x.ndim == 3 else out


class CenterCrop(Op):
    """The central ``size`` (int: square, or ``[h, w]``) of each image, as torchvision's
    ``CenterCrop`` places it; a crop larger than the image is an error."""

    name = "center_crop"
    needs_channels_last = True
    params = {"size": Param(parse_size, "a positive integer or a [height, width] list of them")}
    size: int | tuple[int, int]

    def apply(self, x: np.ndarray) -> np.ndarray:
        height, width = _images(x).shape[1:3]
        crop_height, crop_width = self.size if isinstance(self.size, tuple) else (self.size,) * 2
        if crop_height > height or crop_width > width:
            raise ValueError(
                f"the {crop_height}x{crop_width} crop is larger than the {height}x{width} "
                "images; resize them first or crop less"
            )
        top = int(round((height - crop_height) / 2.0))
        left = int(round((width - crop_width) / 2.0))
        return x[:, top : top + crop_height, left : left + crop_width]


# --- layout --------------------------------------------------------------------------------


class Layout(Op):
    """Channels-last <-> channels-first: ``to`` "NCHW" moves the last axis of each sample to
    the front (``(N, H, W)`` gains a channel: ``(N, 1, H, W)``); "NHWC" moves it back."""

    name = "layout"
    params = {"to": Param(one_of("NCHW", "NHWC"), choices_text("NCHW", "NHWC"))}
    to: str

    def apply(self, x: np.ndarray) -> np.ndarray:
        if x.ndim == 3:
            return x[:, None] if self.to == "NCHW" else x[..., None]
        if x.ndim < 3:
            raise ValueError(
                "it needs samples with 2 or more axes (images); flat samples have no channels "
                "to move"
            )
        return np.moveaxis(x, -1, 1) if self.to == "NCHW" else np.moveaxis(x, 1, -1)
