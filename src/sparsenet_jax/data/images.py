"""The one image decoder that every loader uses: encoded bytes to uint8 RGB.

* ``decode(data, name)``: JPEG/PNG/WebP bytes to a PIL RGB image, through
  ``convert("RGB")`` (so CMYK JPEGs and palette PNGs keep their colours), with
  transparency composited over white and 16-bit grayscale scaled to 8 bits.
* ``decode_array(data, name, size=None)``: the same as a uint8 ``(H, W, 3)`` array,
  resized and centre-cropped to ``size`` x ``size`` when ``size`` is given.
* ``to_rgb(image, name)``: an already decoded array (e.g. from tfds) as a PIL RGB image.
* ``resize_center_crop(image, size)``: the shorter side scaled to ``size``, the centre kept.
* ``ConversionNotes``: counts the images that were not RGB, for one note per load.
* ``check_finite(images, name)``: float images with NaN or Inf are refused, naming one.

Every failure is an ``ImageDecodeError`` whose one-line message names the example
(a file, or ``archive:split[index]``): truncated or garbage data, a format other than
JPEG, PNG or WebP, and images over ``MAX_PIXELS`` (decompression bombs), which are
refused from the header, before any pixel is decoded.
"""

from __future__ import annotations

import collections
import io
import logging
import threading
import warnings
from typing import TYPE_CHECKING

import numpy as np

from sparsenet_jax.data.errors import DatasetNotFoundError

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger("sparsenet_jax.data")

# 40 megapixels: larger than any photo in ImageNet or a phone camera's, far below what
# exhausts memory (a 20000 x 20000 header would ask for 1.2 GB per decode).
MAX_PIXELS = 40_000_000
FORMATS = ("JPEG", "PNG", "WEBP")  # JPEG includes MPO, the variant that many cameras write
_MODE_NAMES = {
    "1": "black-and-white",
    "L": "grayscale",
    "LA": "grayscale+alpha",
    "I": "32-bit grayscale",
    "I;16": "16-bit grayscale",
    "I;16B": "16-bit grayscale",
    "I;16L": "16-bit grayscale",
    "P": "palette",
    "PA": "palette+alpha",
    "RGBA": "RGBA",
    "RGBa": "RGBA",
    "CMYK": "CMYK",
    "YCbCr": "YCbCr",
    "LAB": "LAB",
    "HSV": "HSV",
}


class ImageDataError(DatasetNotFoundError):
    """Image data that cannot be used as given; the one-line message names the file or folder."""


class ImageDecodeError(ImageDataError):
    """One example could not be decoded (not an image, truncated, too large, wrong format)."""


class NonFiniteImageError(ImageDataError):
    """A float image holds NaN or Inf; the message names the first such example."""


class ConversionNotes:
    """Counts, thread-safely, the images of one load that were converted to RGB."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()

    def add(self, mode: str) -> None:
        if mode != "RGB":
            with self._lock:
                self.counts[_MODE_NAMES.get(mode, mode)] += 1

    def message(self, what: str) -> str | None:
        """One line, or None when every image was RGB already."""
        if not self.counts:
            return None
        parts = ", ".join(f"{n} {mode}" for mode, n in sorted(self.counts.items()))
        return f"{what}: converted to RGB: {parts} image(s)"

    def log(self, what: str) -> None:
        """Log the note once (at INFO) if any image was converted."""
        message = self.message(what)
        if message:
            logger.info(message)


def open_image(data: bytes | str, name: str) -> Image.Image:
    """The PIL image of ``data`` (bytes, or a file's path), header read only.

    Refuses non-images, other formats and decompression bombs in one line naming ``name``.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            source = data if isinstance(data, str) else io.BytesIO(data)
            image = Image.open(source, formats=FORMATS)
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(
            f"{name}: refused as a decompression bomb ({_reason(err)})"
        ) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"{name}: not a JPEG, PNG or WebP image ({_describe(data)})"
        ) from None
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageDecodeError(
            f"{name}: truncated or corrupt image header ({_reason(err)})"
        ) from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageDecodeError(
            f"{name}: refused as a possible decompression bomb: its header says "
            f"{width}x{height} ({width * height:,} pixels, limit {MAX_PIXELS:,})"
        )
    if width < 1 or height < 1:
        raise ImageDecodeError(f"{name}: the header says {width}x{height}")
    return image


def _reason(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _describe(data: bytes | str) -> str:
    if isinstance(data, str):
        try:
            with open(data, "rb") as f:
                data = f.read(8)
        except OSError as err:
            return str(err)
        return f"it starts {data!r}" if data else "empty file"
    return f"{len(data)} bytes, starting {bytes(data[:8])!r}" if len(data) else "empty"


def decode(data: bytes | str, name: str, notes: ConversionNotes | None = None) -> Image.Image:
    """``data`` (JPEG, PNG or WebP bytes) decoded to a PIL image in mode RGB.

    CMYK, palette, grayscale and YCbCr images go through PIL's ``convert("RGB")``;
    images with transparency (RGBA, LA, PA, palette with a transparent colour) are
    composited over white; 16/32-bit grayscale is scaled to 8 bits. ``name`` is used in
    the one-line ``ImageDecodeError`` for truncated, garbage or oversized data.
    """
    from PIL import Image

    image = open_image(data, name)
    try:
        image.load()  # decodes; raises on truncated data (PIL does not pad by default)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
        raise ImageDecodeError(
            f"{name}: truncated or corrupt {image.format} data ({_reason(err)})"
        ) from None
    if notes is not None:
        notes.add(image.mode)
    return to_rgb(image, name)


def to_rgb(image: Image.Image | np.ndarray, name: str = "image") -> Image.Image:
    """``image`` (PIL, or a uint8 HxW / HxWxC array) as a PIL image in mode RGB."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.dtype != np.uint8 or array.ndim not in (2, 3):
            raise ImageDecodeError(
                f"{name}: expected a uint8 image, got {array.dtype} {array.shape}"
            )
        if array.ndim == 3 and array.shape[2] not in (3, 4):
            raise ImageDecodeError(f"{name}: expected 1, 3 or 4 channels, got {array.shape}")
        image = Image.fromarray(array)
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(image), name, mode)).convert("RGB")
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
        mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _to_uint8(pixels: np.ndarray, name: str, mode: str) -> np.ndarray:
    """16/32-bit integer or float grayscale to uint8 (integers by their type's range)."""
    if pixels.dtype.kind == "f":
        check_finite(pixels[None], name)
        return np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)
    top = 65535 if "16" in mode or pixels.max(initial=0) <= 65535 else 2**32 - 1
    return np.clip(np.rint(pixels.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """The shorter side scaled to ``size`` and the central ``size`` x ``size`` kept (bilinear).

    One resize of the central square box, antialiased when shrinking; an image already
    ``size`` x ``size`` is returned unchanged.
    """
    from PIL import Image

    width, height = image.size
    if (width, height) == (size, size):
        return image
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return image.resize(
        (size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side)
    )


def decode_array(
    data: bytes | str, name: str, size: int | None = None, notes: ConversionNotes | None = None
) -> np.ndarray:
    """``data`` decoded to uint8 ``(H, W, 3)``; resized and centre-cropped when ``size`` is set."""
    image = decode(data, name, notes)
    if size is not None:
        image = resize_center_crop(image, size)
    return np.asarray(image, np.uint8)


def check_finite(images: np.ndarray, name: str) -> None:
    """Refuse float ``images`` (a batch, first axis = example) holding NaN or Inf, once.

    The message names ``name`` and the first bad example's index. Integer images
    cannot hold either and pass without a look.
    """
    if images.dtype.kind not in "fc":
        return
    bad = ~np.isfinite(images.reshape(len(images), -1)).all(axis=1)
    if bad.any():
        first = int(np.argmax(bad))
        raise NonFiniteImageError(
            f"{name}[{first}]: holds NaN or Inf pixels ({int(bad.sum())} such image(s) in all); "
            "refusing to train or evaluate on them"
        )
