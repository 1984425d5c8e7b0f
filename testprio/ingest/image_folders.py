"""Image folders as file pools: class subfolders give labels, images decoded one at a
time into the pool's mode, undecodable files quarantined as bad samples."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from testprio.errors import TestprioError
from testprio.ingest.formats import IMAGE_EXTENSIONS, is_image_name, is_visible, visible_entries
from testprio.ingest.messages import short
from testprio.ingest.pool import BadSample, FilePool
from testprio.log import get_logger

log = get_logger("ingest")


# Pillow may only use these decoders: a file named .png that is really, say, PostScript is
# not handed to a plugin that runs an external program.
PILLOW_FORMATS = ("PNG", "JPEG", "BMP", "PPM", "GIF", "WEBP", "TIFF")
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
MAX_NUMERIC_CLASS = 100_000
# The largest image decoded, in pixels (width x height; --max-image-pixels). A 257 KB PNG
# can decode to 265 MB; photographs up to 40 megapixels (7,750 x 5,160) pass. Above twice
# Pillow's own MAX_IMAGE_PIXELS (about 179 megapixels) Pillow refuses to open the file.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000


def _class_labels(folders: list[str], name: str) -> tuple[list[str], list[int], list[str]]:
    """Class folders in label order, their labels, and the class names (index -> name).

    All-integer names are their own labels ("0", "1", "10" -> 0, 1, 10); otherwise labels
    are positions in sorted order, as torchvision's ``ImageFolder`` numbers them.
    """
    if not all(re.fullmatch(r"[0-9]+", folder) for folder in folders):
        ordered = sorted(folders)
        return ordered, list(range(len(ordered))), ordered
    ordered = sorted(folders, key=lambda folder: (int(folder), folder))
    labels = [int(folder) for folder in ordered]
    for previous, folder in itertools.pairwise(ordered):
        if int(previous) == int(folder):
            raise TestprioError(
                f"class folders '{previous}' and '{folder}' in {name} both mean class "
                f"{int(folder)}; rename one of them."
            )
    if labels[-1] >= MAX_NUMERIC_CLASS:
        raise TestprioError(
            f"class folder '{ordered[-1]}' in {name} is a number too large for a class label "
            f"(at most {MAX_NUMERIC_CLASS - 1:,}); number the classes from 0."
        )
    class_names = [str(i) for i in range(labels[-1] + 1)]
    for folder, label in zip(ordered, labels, strict=True):
        class_names[label] = folder
    return ordered, labels, class_names


def _walk_images(root: str, sub: str) -> tuple[list[str], int]:
    """Image paths under ``root/sub`` relative to ``root`` (sorted), and how many visible
    files were skipped for not being images."""
    images, skipped = [], 0
    # A stack, not os.walk: Python 3.11's os.walk recurses once per level and fails on
    # folders nested about a thousand deep.
    pending = [sub]
    while pending:
        relative = pending.pop()
        with os.scandir(os.path.join(root, relative)) as entries:
            for entry in entries:
                if not is_visible(entry.name):
                    continue
                if entry.is_dir():
                    if not entry.is_symlink():  # as os.walk: linked folders are not entered
                        pending.append(f"{relative}/{entry.name}")
                elif is_image_name(entry.name):
                    images.append(f"{relative}/{entry.name}")
                else:
                    skipped += 1
    return sorted(images), skipped


def too_many_pixels(width: int, height: int, limit: int) -> str:
    """The bad-sample reason of an image over ``limit`` pixels: the limit and its option."""
    return (
        f"image of {width:,} x {height:,} pixels ({width * height:,}), more than the limit of "
        f"{limit:,} pixels (a decompression bomb?); raise --max-image-pixels to read it"
    )


@contextlib.contextmanager
def _open_image(path: str, max_pixels: int) -> Iterator[Image.Image]:
    """The decoded image at ``path``, at most ``max_pixels`` pixels; raises ``BadSample``
    with a short reason."""
    try:
        with Image.open(path, formats=PILLOW_FORMATS) as image:
            # The header gives the size: checked before a byte is decoded. (Pillow's own
            # check only warns up to twice its MAX_IMAGE_PIXELS, and a warning filter would
            # be process-wide, not thread-safe.)
            if image.width * image.height > max_pixels:
                raise BadSample(too_many_pixels(image.width, image.height, max_pixels))
            image.load()
            yield image
    except BadSample:
        raise
    except Image.DecompressionBombError:
        raise BadSample("image too large (decompression bomb)") from None
    except Exception as exc:  # any decoder failure quarantines this one file, nothing more
        if "truncated" in str(exc):
            raise BadSample("truncated image file") from None
        # Pillow names the file by its full (often temporary) path: the sample's source
        # column already says which file it is.
        detail = str(exc).replace(f"'{path}'", "").replace(path, "").strip(" :")
        raise BadSample(
            f"not a readable image ({short(detail or type(exc).__name__, 80)})"
        ) from None


def _to_mode(image: Image.Image, mode: str) -> np.ndarray:
    """``(H, W)`` (mode L) or ``(H, W, 3)`` (mode RGB) uint8; 16-bit gray is scaled down."""
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if image.mode != "F":  # 16-bit gray (PNG, PGM, TIFF) -> 8 bits
            values = values / 257.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    return np.array(image.convert(mode), dtype=np.uint8)


def _pool_mode(root: str, files: list[str], name: str, max_pixels: int) -> str:
    first = ""
    for relative in files:
        try:
            with _open_image(os.path.join(root, relative), max_pixels) as image:
                return "L" if image.mode in GRAY_MODES else "RGB"
        except BadSample as exc:
            first = first or f"the first, '{short(relative, 80)}': {exc}"
    raise TestprioError(
        f"none of the {len(files):,} images in {name} can be decoded ({first}); check that "
        f"the files are images ({', '.join(IMAGE_EXTENSIONS)})."
    )


def open_image_folder(
    path: str, name: str, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> FilePool:
    """An image folder as a file pool; images over ``max_pixels`` are bad samples.

    Class subfolders give labels (see ``_class_labels``; images nested deeper belong to
    their class folder); a flat folder of images has no labels. Hidden files and folders
    are ignored, other files without an image extension are skipped with a warning. Files
    are sorted by class, then path. Every image is decoded to the mode of the first image
    that decodes: ``L`` for grayscale modes, else ``RGB`` (alpha dropped, palettes expanded,
    first frame of animations). ``load`` is thread-safe and raises ``BadSample``.
    """
    entries = visible_entries(path)
    folders = [e for e in entries if os.path.isdir(os.path.join(path, e))]
    top_images = [e for e in entries if e not in folders and is_image_name(e)]
    skipped = len(entries) - len(folders) - len(top_images)
    if folders and top_images:
        raise TestprioError(
            f"{name} mixes image files ('{top_images[0]}') and folders ('{folders[0]}') at "
            "its top level; put every image in a class folder, or use one flat folder of "
            "images."
        )
    files: list[str] = []
    labels: list[int] | None = None
    class_names: list[str] | None = None
    if folders:
        ordered, class_labels, class_names = _class_labels(folders, name)
        labels = []
        for folder, label in zip(ordered, class_labels, strict=True):
            images, skipped_here = _walk_images(path, folder)
            if not images:
                log.warning("class folder '%s' in %s holds no images", folder, name)
            files += images
            labels += [label] * len(images)
            skipped += skipped_here
    else:
        files = top_images
    if skipped:
        log.warning(
            "skipped %d non-image file(s) in %s (image extensions: %s)",
            skipped,
            name,
            " ".join(IMAGE_EXTENSIONS),
        )
    if not files:
        raise TestprioError(
            f"{name} holds no images; put image files ({', '.join(IMAGE_EXTENSIONS)}) in it, "
            "in one subfolder per class for labelled images."
        )
    mode = _pool_mode(path, files, name, max_pixels)

    return FilePool(name, path, files, labels, class_names, ImageLoader(path, mode, max_pixels))


@dataclass(frozen=True)
class ImageLoader:
    """Decodes one image of a folder into the pool's mode; picklable, so that ingest can
    decode in worker processes. Thread-safe; raises ``BadSample``."""

    root: str
    mode: str
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

    def __call__(self, relative: str) -> np.ndarray:
        with _open_image(os.path.join(self.root, relative), self.max_pixels) as image:
            return _to_mode(image, self.mode)
