"""Async Triton client that embeds batches of images and texts, with per-item errors and metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc.aio as triton_aio
from prometheus_client import Counter, Histogram
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from semsearch.core import models
from semsearch.media import InputError, decode_image, normalize_text
from services.gateway.coalesce import Coalescer

log = logging.getLogger(__name__)

REQUEST_SECONDS = Histogram(
    "semsearch_embedder_request_duration_seconds",
    "Time of one Triton inference call made by the embedder client.",
    ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DECODE_SECONDS = Histogram(
    "semsearch_embedder_decode_duration_seconds",
    "Time to decode and resize one batch of images on the client.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
BATCH_SIZE = Histogram(
    "semsearch_embedder_batch_size",
    "Items per Triton inference call made by the embedder client.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
ITEMS = Counter(
    "semsearch_embedder_items_total",
    "Items submitted to the embedder client, by outcome (ok, invalid, failed).",
    ["model", "outcome"],
)


# gRPC's default reconnect backoff grows to 2 minutes, and subchannels are shared process-wide:
# after a Triton restart, calls would keep failing long after it is back. Reconnect within a second.
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]


class EmbedderUnavailable(RuntimeError):
    """Triton cannot be reached or refused the whole batch (not an input problem)."""


@dataclass
class Embeddings:
    """Vectors for a batch of inputs: float32 [n, dim], unit norm; rows of failed items are zero
    and `errors[i]` says why item i failed (None for items that succeeded)."""

    vectors: np.ndarray
    errors: list[str | None]
    model_version: str

    @property
    def ok(self) -> np.ndarray:
        """bool [n]: which items have a vector."""
        return np.array([e is None for e in self.errors], dtype=bool)


class EmbedderClient:
    """Embeds images (encoded bytes) and texts through a Triton server's gRPC endpoint.

    Large inputs are split into batches of `batch_size` sent concurrently (at most
    `max_concurrency` in flight); Triton's dynamic batcher merges them with other callers' work.
    """

    def __init__(
        self,
        url: str,
        *,
        batch_size: int = 32,
        max_concurrency: int = 4,
        timeout_s: float = 30.0,
        decode_executor: Executor | None = None,
        image_model: str = models.IMAGE_MODEL,
        text_model: str = models.TEXT_MODEL,
    ) -> None:
        if not 1 <= batch_size <= models.MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be in [1, {models.MAX_BATCH_SIZE}]")
        self.url = url
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.image_model = image_model
        self.text_model = text_model
        self._client = triton_aio.InferenceServerClient(url, channel_args=CHANNEL_ARGS)
        self._decode_executor = decode_executor
        self._slots = asyncio.Semaphore(max_concurrency)
        self._versions: dict[str, str] = {}
        self._coalescer: Coalescer[tuple[str, str], object, Embeddings] = Coalescer(
            self._embed_batch, max_in_flight=max_concurrency, max_items=batch_size
        )

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> EmbedderClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def ready(self) -> bool:
        """True when Triton is live and both public models are ready."""
        try:
            return all(
                [
                    await self._client.is_server_ready(),
                    await self._client.is_model_ready(self.image_model),
                    await self._client.is_model_ready(self.text_model),
                ]
            )
        except InferenceServerException:
            return False

    async def model_version(self, model: str) -> str:
        """The version string the export recorded in the model's config (cache keys use it)."""
        if model not in self._versions:
            try:
                response = await self._client.get_model_config(model, as_json=True)
            except InferenceServerException as exc:
                raise EmbedderUnavailable(f"Triton at {self.url}: {exc.message()}") from exc
            params = response["config"].get("parameters", {})
            self._versions[model] = params[models.VERSION_PARAMETER]["string_value"]
        return self._versions[model]

    async def _embed_batch(self, key: tuple[str, str], items: list, timeout: float) -> list[Embeddings]:
        """The coalescer's call: one embedding request for the single items of concurrent queries."""
        kind, model = key
        result = await (self._embed_images(items) if kind == "image" else self._embed_texts(items, model))
        return [
            Embeddings(result.vectors[i : i + 1], [result.errors[i]], result.model_version)
            for i in range(len(items))
        ]

    async def embed_images(self, images: Sequence[bytes]) -> Embeddings:
        """Decode and embed encoded images (JPEG, PNG, WebP, ...); [n, 1280] vectors. A single image
        (a query) joins the other queries' images that arrive while a request is in flight."""
        if len(images) == 1:
            return await self._coalescer.submit(("image", self.image_model), images[0], self.timeout_s)
        return await self._embed_images(images)

    async def _embed_images(self, images: Sequence[bytes]) -> Embeddings:
        version = await self.model_version(self.image_model)
        loop = asyncio.get_running_loop()
        errors: list[str | None] = [None] * len(images)
        vectors = np.zeros((len(images), models.IMAGE_DIM), dtype=np.float32)

        async def run(start: int) -> None:
            chunk = images[start : start + self.batch_size]
            begin = time.perf_counter()
            decoded = await loop.run_in_executor(self._decode_executor, _decode_all, chunk)
            DECODE_SECONDS.observe(time.perf_counter() - begin)
            good = [i for i, d in enumerate(decoded) if isinstance(d, np.ndarray)]
            for i, d in enumerate(decoded):
                if isinstance(d, str):
                    errors[start + i] = d
            if good:
                pixels = np.stack([decoded[i] for i in good])
                out = await self._infer(self.image_model, "pixels", pixels, "UINT8")
                vectors[[start + i for i in good]] = out

        await asyncio.gather(*(run(s) for s in range(0, len(images), self.batch_size)))
        _count(self.image_model, errors)
        return Embeddings(vectors, errors, version)

    async def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Embed already decoded uint8 [n, 224, 224, 3] pixels; [n, 1280] vectors."""
        assert pixels.dtype == np.uint8 and pixels.shape[1:] == (
            models.IMAGE_SIZE, models.IMAGE_SIZE, 3,
        ), (pixels.dtype, pixels.shape)  # fmt: skip
        parts = await asyncio.gather(
            *(
                self._infer(self.image_model, "pixels", pixels[s : s + self.batch_size], "UINT8")
                for s in range(0, len(pixels), self.batch_size)
            )
        )
        return np.concatenate(parts) if parts else np.zeros((0, models.IMAGE_DIM), np.float32)

    async def embed_texts(self, texts: Sequence[str], model: str | None = None) -> Embeddings:
        """Embed raw strings (tokenized inside Triton) with the text model ([n, 384] vectors) or
        another model that reads strings, such as the words-for-pictures bridge ([n, 1280]). A single
        text (a query) joins the other queries' texts that arrive while a request is in flight."""
        model = model or self.text_model
        if len(texts) == 1:
            return await self._coalescer.submit(("text", model), texts[0], self.timeout_s)
        return await self._embed_texts(texts, model)

    async def _embed_texts(self, texts: Sequence[str], model: str) -> Embeddings:
        version = await self.model_version(model)
        errors: list[str | None] = [None] * len(texts)
        vectors = np.zeros((len(texts), models.MODEL_DIMS[model]), dtype=np.float32)
        good: list[int] = []
        normalized: list[bytes] = []
        for i, text in enumerate(texts):
            try:
                normalized.append(normalize_text(text).encode("utf-8"))
                good.append(i)
            except InputError as exc:
                errors[i] = str(exc)

        # Batch texts of similar length together: each batch is padded to its longest text, and
        # attention cost grows with that length (3x the throughput on mixed-length corpora).
        order = sorted(range(len(normalized)), key=lambda j: len(normalized[j]))

        async def run(start: int) -> None:
            picked = order[start : start + self.batch_size]
            array = np.array([normalized[j] for j in picked], dtype=np.object_).reshape(-1, 1)
            vectors[[good[j] for j in picked]] = await self._infer(model, "text", array, "BYTES")

        await asyncio.gather(*(run(s) for s in range(0, len(normalized), self.batch_size)))
        _count(model, errors)
        return Embeddings(vectors, errors, version)

    async def _infer(self, model: str, name: str, array: np.ndarray, dtype: str) -> np.ndarray:
        infer_input = InferInput(name, list(array.shape), dtype)
        infer_input.set_data_from_numpy(array)
        async with self._slots:
            begin = time.perf_counter()
            try:
                result = await self._client.infer(
                    model,
                    [infer_input],
                    outputs=[InferRequestedOutput("embedding")],
                    client_timeout=self.timeout_s,
                )
            except InferenceServerException as exc:
                ITEMS.labels(model, "failed").inc(len(array))
                raise EmbedderUnavailable(f"Triton at {self.url}, model {model}: {exc.message()}") from exc
            REQUEST_SECONDS.labels(model).observe(time.perf_counter() - begin)
            BATCH_SIZE.labels(model).observe(len(array))
        return result.as_numpy("embedding")


def _decode_all(chunk: Sequence[bytes]) -> list[np.ndarray | str]:
    out: list[np.ndarray | str] = []
    for data in chunk:
        try:
            out.append(decode_image(data))
        except InputError as exc:
            out.append(str(exc))
    return out


def _count(model: str, errors: list[str | None]) -> None:
    invalid = sum(e is not None for e in errors)
    ITEMS.labels(model, "ok").inc(len(errors) - invalid)
    ITEMS.labels(model, "invalid").inc(invalid)
