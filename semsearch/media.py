"""Client-side preprocessing: decode any image to uint8 [224,224,3] and normalise query texts."""

from __future__ import annotations

import contextlib
import io
import unicodedata
import warnings
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageOps

from semsearch.core.models import IMAGE_SIZE

MAX_IMAGE_BYTES = 32 * 1024 * 1024
# Decoded size limit: a 64-megapixel RGBA image is 256 MB in memory; a "decompression bomb" is a
# small file that claims far more than that.
MAX_IMAGE_PIXELS = 64_000_000
MAX_TEXT_CHARS = 20_000
THUMBNAIL_SIZE = 128


class InputError(ValueError):
    """An input item that cannot be embedded; the message says why, for that item alone."""


def decode_image(data: bytes, size: int = IMAGE_SIZE) -> np.ndarray:
    """Decode JPEG/PNG/WebP/GIF/BMP/TIFF bytes to uint8 [size, size, 3] RGB.

    EXIF orientation is applied, alpha is composited on white, grayscale and palette images become
    RGB. The shorter side is resized to `size` and the centre cropped (the ImageNet evaluation
    transform the network was trained for). JPEGs are decoded at a reduced scale when they are much
    larger than needed (draft mode), which is several times faster than a full decode.
    """
    with _opened(data, size) as image:
        return np.asarray(_resize_center_crop(image, size), dtype=np.uint8)


def thumbnail(data: bytes, size: int = THUMBNAIL_SIZE, quality: int = 80) -> bytes:
    """A small WebP of the image, aspect kept, longest side `size` pixels (a few KB): what result grids
    show without the original."""
    with _opened(data, size) as image:
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, format="WEBP", quality=quality, method=4)
        return out.getvalue()


@contextlib.contextmanager
def _opened(data: bytes, size: int) -> Iterator[Image.Image]:
    """The image as RGB, upright, checked against the size limits, decoded at a reduced scale when a
    JPEG is much larger than `size`; decoding errors become InputError."""
    if not data:
        raise InputError("image is empty")
    if len(data) > MAX_IMAGE_BYTES:
        raise InputError(f"image is {len(data)} bytes, more than the limit of {MAX_IMAGE_BYTES}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise InputError(
                    f"image is {width}x{height} pixels, more than the limit of "
                    f"{MAX_IMAGE_PIXELS} (decompression bomb?)"
                )
            if image.format == "JPEG" and min(width, height) >= 2 * size:
                shorter = min(width, height)
                image.draft("RGB", (width * size // shorter, height * size // shorter))
            image = ImageOps.exif_transpose(image)
            image = _to_rgb(image)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"image too large to decode safely: {exc}") from exc
    except Image.UnidentifiedImageError as exc:
        raise InputError("image format not recognised (corrupt or unsupported)") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InputError(f"image could not be decoded: {exc}") from exc
    yield image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # High bit depth grayscale: rescale to 8 bits by the image's own range.
        array = np.asarray(image, dtype=np.float32)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.astype(np.uint8))
    return image.convert("RGB")


def _resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=3.0)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def normalize_text(text: str) -> str:
    """Unicode NFC with runs of whitespace collapsed; the form that is embedded and cache-keyed."""
    if not isinstance(text, str):
        raise InputError(f"text must be a string, got {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(f"text is {len(text)} characters, more than the limit of {MAX_TEXT_CHARS}")
    normalized = " ".join(unicodedata.normalize("NFC", text).split())
    if not normalized:
        raise InputError("text is empty")
    return normalized
