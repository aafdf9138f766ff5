"""Real data sets that ship in Debian packages: Fashion-MNIST images (more corpora join later)."""

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
