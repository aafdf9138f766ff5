"""Real data sets that ship in Debian packages: Fashion-MNIST images, fortunes, Noto emoji."""

from __future__ import annotations

import gzip
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_MNIST_DIR = Path(os.environ.get("SEMSEARCH_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


@dataclass(frozen=True)
class LabelledImages:
    """uint8 images [n, h, w] (grayscale) with integer labels [n] and class names."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]

    def png(self, i: int) -> bytes:
        """Image i encoded as PNG: what a client would upload."""
        buffer = io.BytesIO()
        Image.fromarray(self.images[i]).save(buffer, format="PNG")
        return buffer.getvalue()


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist(split: str = "test", directory: Path = FASHION_MNIST_DIR) -> LabelledImages:
    """Fashion-MNIST from the Debian package `dataset-fashion-mnist`: 60,000 train or 10,000 test
    28x28 images of 10 clothing classes."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images_path = directory / f"{prefix}-images-idx3-ubyte.gz"
    if not images_path.exists():
        raise FileNotFoundError(
            f"{images_path} not found: install the Debian package dataset-fashion-mnist "
            "(scripts/setup.sh does)"
        )
    images = _read_idx(images_path)
    labels = _read_idx(directory / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    assert images.shape[0] == labels.shape[0], (images.shape, labels.shape)
    return LabelledImages(images=images, labels=labels, classes=FASHION_MNIST_CLASSES)


FORTUNES_DIR = Path(os.environ.get("SEMSEARCH_FORTUNES_DIR", "/usr/share/games/fortunes"))


@dataclass(frozen=True)
class LabelledTexts:
    """Texts with the name of the category (file) each came from."""

    texts: list[str]
    categories: list[str]


def fortunes(directory: Path = FORTUNES_DIR, skip: tuple[str, ...] = ("ascii-art",)) -> LabelledTexts:
    """The quotes of the Debian packages `fortunes` and `fortunes-min` (~15k quotes in ~40
    categories), in a stable order: by category, then by position in its file; text damaged by a
    double encoding is repaired (ftfy)."""
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory} not found: install the Debian package fortunes (scripts/setup.sh does)"
        )
    import ftfy  # some quotes are UTF-8 decoded as Latin-1 twice ("HereÃ¢ÂÂs"): repaired before use

    texts: list[str] = []
    categories: list[str] = []
    for path in sorted(directory.iterdir()):
        if path.suffix or not path.is_file() or path.name in skip:
            continue
        for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            entry = ftfy.fix_text(entry, uncurl_quotes=False, normalization="NFC")
            text = " ".join(entry.replace("%", " ").split())
            if text:
                texts.append(text)
                categories.append(path.name)
    return LabelledTexts(texts=texts, categories=categories)


EMOJI_FONT = Path(os.environ.get("SEMSEARCH_EMOJI_FONT", "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"))
EMOJI_TEST = Path(os.environ.get("SEMSEARCH_EMOJI_TEST", "/usr/share/unicode/emoji/emoji-test.txt"))


@dataclass(frozen=True)
class Emoji:
    """Emoji pictures (RGBA PNG) with their Unicode name, group and subgroup."""

    pngs: list[bytes]
    names: list[str]
    groups: list[str]
    subgroups: list[str]


def noto_emoji(font: Path = EMOJI_FONT, test_file: Path = EMOJI_TEST) -> Emoji:
    """Every fully-qualified emoji without a skin-tone variant (~1,900), drawn from Debian's
    `fonts-noto-color-emoji` (its 109-pixel bitmaps), cropped to a transparent square, labelled by
    Debian's `unicode-data` emoji-test.txt."""
    import re

    from PIL import ImageDraw, ImageFont

    for path, package in ((font, "fonts-noto-color-emoji"), (test_file, "unicode-data")):
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: install the Debian package {package} (scripts/setup.sh does)"
            )
    typeface = ImageFont.truetype(str(font), 109)  # the font's only bitmap size
    line_format = re.compile(r"^[0-9A-F ]+;\s*fully-qualified\s*#\s*(\S+)\s+E\S+\s+(.*)$")
    out = Emoji([], [], [], [])
    group = subgroup = ""
    for line in test_file.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif "; fully-qualified" in line and "skin tone" not in line:
            match = line_format.match(line.strip())
            if match is None:
                continue
            canvas = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
            ImageDraw.Draw(canvas).text(
                (80, 80), match.group(1), font=typeface, embedded_color=True, anchor="mm"
            )
            box = canvas.getbbox()
            if box is None:  # a sequence the font draws as nothing
                continue
            drawn = canvas.crop(box)
            side = max(drawn.size)
            square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
            square.paste(drawn, ((side - drawn.width) // 2, (side - drawn.height) // 2))
            buffer = io.BytesIO()
            square.save(buffer, format="PNG")
            out.pngs.append(buffer.getvalue())
            out.names.append(match.group(2))
            out.groups.append(group)
            out.subgroups.append(subgroup)
    return out
