"""Image decoding and text normalisation: every format, orientation and mode, and every bad input."""

import io

import numpy as np
import pytest
from PIL import Image

from semsearch import media as preprocess
from semsearch.media import InputError, decode_image, normalize_text


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    rgb = np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_formats_decode_to_224_rgb(fmt):
    out = decode_image(encode(gradient(320, 200), fmt))
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert out.std() > 20  # the content survived


def test_large_jpeg_uses_draft_and_matches_full_decode():
    image = gradient(4000, 3000)
    data = encode(image, "JPEG", quality=90)
    fast = decode_image(data).astype(np.float32)
    reference = np.asarray(
        image.resize((299, 224), Image.Resampling.BILINEAR).crop((37, 0, 261, 224)), dtype=np.float32
    )
    assert np.abs(fast - reference).mean() < 6


def test_exif_orientation_is_applied():
    # Left half black, right half white; EXIF orientation 6 means "rotate 90 degrees clockwise to
    # display", after which the black half is on top.
    array = np.zeros((224, 448, 3), np.uint8)
    array[:, 224:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode_image(encode(Image.fromarray(array), "JPEG", exif=exif.tobytes()))
    assert out[:100].mean() < 30 and out[-100:].mean() > 225


def test_grayscale_becomes_three_equal_channels():
    gray = Image.fromarray(np.arange(224 * 224, dtype=np.uint32).reshape(224, 224).astype(np.uint8))
    out = decode_image(encode(gray, "PNG"))
    assert out.shape == (224, 224, 3)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


def test_alpha_is_composited_on_white():
    rgba = Image.new("RGBA", (224, 224), (255, 0, 0, 0))  # fully transparent red
    out = decode_image(encode(rgba, "PNG"))
    assert out.min() == 255


def test_palette_with_transparency():
    image = Image.new("P", (64, 64), 0)
    image.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    out = decode_image(encode(image, "PNG", transparency=0))
    assert out.min() == 255


def test_sixteen_bit_grayscale():
    array = (np.arange(300 * 300, dtype=np.uint32) % 65535).reshape(300, 300).astype(np.uint16)
    out = decode_image(encode(Image.fromarray(array), "PNG"))
    assert out.shape == (224, 224, 3) and out.max() > 200


def test_tiny_image_is_upscaled():
    assert decode_image(encode(gradient(7, 3), "PNG")).shape == (224, 224, 3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"this is not an image at all", "not recognised"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "not recognised|could not be decoded"),
    ],
)
def test_bad_bytes_get_clear_errors(data, message):
    with pytest.raises(InputError, match=message):
        decode_image(data)


def test_truncated_jpeg_is_an_error():
    data = encode(gradient(640, 480), "JPEG")
    with pytest.raises(InputError, match="could not be decoded"):
        decode_image(data[: len(data) // 3])


def test_decompression_bomb_is_refused_before_decoding():
    # A 1-bit 20000x20000 PNG compresses to a few KB but claims 400 megapixels.
    bomb = encode(Image.new("1", (20_000, 20_000)), "PNG")
    assert len(bomb) < 200_000
    with pytest.raises(InputError, match="decompression bomb"):
        decode_image(bomb)


def test_oversized_payload_is_refused(monkeypatch):
    monkeypatch.setattr(preprocess, "MAX_IMAGE_BYTES", 1000)
    with pytest.raises(InputError, match="more than the limit"):
        decode_image(encode(gradient(200, 200), "BMP"))


def test_normalize_text():
    assert normalize_text("  Hello\t\n  world  ") == "Hello world"
    assert normalize_text("Cafe\u0301") == "Café"  # NFC


@pytest.mark.parametrize("bad", ["", "   \n\t", 42, None])
def test_normalize_text_rejects_empty_and_non_strings(bad):
    with pytest.raises(InputError):
        normalize_text(bad)


def test_normalize_text_rejects_huge_text():
    with pytest.raises(InputError, match="characters"):
        normalize_text("a" * (preprocess.MAX_TEXT_CHARS + 1))
