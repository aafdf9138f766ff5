"""The Triton models semsearch serves: names, tensors, batching, and their config.pbtxt renderings."""

from __future__ import annotations

from dataclasses import dataclass, field

from semsearch.core.models import (
    BRIDGE_MODEL,
    IMAGE_DIM,
    IMAGE_MODEL,
    IMAGE_SIZE,
    MAX_BATCH_SIZE,
    TEXT_DIM,
    TEXT_MODEL,
    VERSION_PARAMETER,
)

TEXT_TOKENIZER = "minilm_l6_tokenizer"
TEXT_ENCODER = "minilm_l6_encoder"
# The two steps of the words-for-pictures bridge (services/embedder/bridge.py): the text tokenizer plus
# a WordNet lookup, then the text encoder extended with the class weights and prototypes.
BRIDGE_TOKENIZER = f"{BRIDGE_MODEL}_tokenizer"
BRIDGE_ENCODER = f"{BRIDGE_MODEL}_encoder"
NUM_IMAGENET_CLASSES = 1000
TEXT_MAX_TOKENS = 256

# The config name the local (CPU, python-backend) deployment passes as --model-config-name.
CPU_CONFIG_NAME = "cpu"


@dataclass(frozen=True)
class Tensor:
    """One model input or output; `dims` excludes the batch dimension."""

    name: str
    data_type: str
    dims: tuple[int, ...]

    def render(self) -> str:
        dims = ", ".join(str(d) for d in self.dims)
        return f'  {{ name: "{self.name}" data_type: {self.data_type} dims: [ {dims} ] }}'


@dataclass(frozen=True)
class ModelSpec:
    """What every deployment of a model shares: name, tensors, batch size, batching policy."""

    name: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    max_batch_size: int = MAX_BATCH_SIZE
    max_queue_delay_us: int = 500
    # Clients send batches of 32; dispatching those at once instead of merging two into 64 keeps
    # both CPU instances busy and the working set in cache (measured: ratio 0.93 -> 1.03).
    preferred_batch_sizes: tuple[int, ...] = (32,)
    parameters: dict[str, str] = field(default_factory=dict)

    def _render(self, backend: str, instance_group: str, extra: dict[str, str] | None = None) -> str:
        params = {**self.parameters, **(extra or {})}
        lines = [
            f'name: "{self.name}"',
            backend,
            f"max_batch_size: {self.max_batch_size}",
            "input [\n" + ",\n".join(t.render() for t in self.inputs) + "\n]",
            "output [\n" + ",\n".join(t.render() for t in self.outputs) + "\n]",
            f"instance_group [ {instance_group} ]",
            "dynamic_batching { "
            + "".join(f"preferred_batch_size: [ {b} ] " for b in self.preferred_batch_sizes)
            + f"max_queue_delay_microseconds: {self.max_queue_delay_us} }}",
        ]
        lines += [
            f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in sorted(params.items())
        ]
        return "\n".join(lines) + "\n"

    def onnx_gpu_config(self) -> str:
        """config.pbtxt for the NGC image: native onnxruntime backend on a GPU (CUDA EP)."""
        return self._render('platform: "onnxruntime_onnx"', "{ kind: KIND_GPU, count: 1 }")

    def python_cpu_config(self, instances: int, threads: int) -> str:
        """configs/cpu.pbtxt: the python backend running the same ONNX file with onnxruntime."""
        return self._render(
            'backend: "python"',
            f"{{ kind: KIND_CPU, count: {instances} }}",
            {"intra_op_threads": str(threads)},
        )

    def python_config(self, instances: int) -> str:
        """config.pbtxt of a python-only model (the tokenizer), the same on CPU and GPU nodes."""
        return self._render('backend: "python"', f"{{ kind: KIND_CPU, count: {instances} }}")


IMAGE_SPEC = ModelSpec(
    name=IMAGE_MODEL,
    inputs=(Tensor("pixels", "TYPE_UINT8", (IMAGE_SIZE, IMAGE_SIZE, 3)),),
    outputs=(Tensor("embedding", "TYPE_FP32", (IMAGE_DIM,)),),
)

TOKENIZER_SPEC = ModelSpec(
    name=TEXT_TOKENIZER,
    inputs=(Tensor("text", "TYPE_STRING", (1,)),),
    outputs=(
        Tensor("input_ids", "TYPE_INT64", (-1,)),
        Tensor("attention_mask", "TYPE_INT64", (-1,)),
    ),
    parameters={"max_tokens": str(TEXT_MAX_TOKENS)},
)

TEXT_ENCODER_SPEC = ModelSpec(
    name=TEXT_ENCODER,
    inputs=(
        Tensor("input_ids", "TYPE_INT64", (-1,)),
        Tensor("attention_mask", "TYPE_INT64", (-1,)),
    ),
    outputs=(Tensor("embedding", "TYPE_FP32", (TEXT_DIM,)),),
)


BRIDGE_TOKENIZER_SPEC = ModelSpec(
    name=BRIDGE_TOKENIZER,
    inputs=(Tensor("text", "TYPE_STRING", (1,)),),
    outputs=(
        Tensor("input_ids", "TYPE_INT64", (-1,)),
        Tensor("attention_mask", "TYPE_INT64", (-1,)),
        Tensor("wordnet_weights", "TYPE_FP32", (NUM_IMAGENET_CLASSES,)),
    ),
    parameters={"max_tokens": str(TEXT_MAX_TOKENS)},
)

BRIDGE_ENCODER_SPEC = ModelSpec(
    name=BRIDGE_ENCODER,
    inputs=(
        Tensor("input_ids", "TYPE_INT64", (-1,)),
        Tensor("attention_mask", "TYPE_INT64", (-1,)),
        Tensor("wordnet_weights", "TYPE_FP32", (NUM_IMAGENET_CLASSES,)),
    ),
    outputs=(Tensor("embedding", "TYPE_FP32", (IMAGE_DIM,)),),
)


def ensemble_config(name: str, version: str) -> str:
    """config.pbtxt of a public model that chains its steps (ENSEMBLES): the first step's inputs in,
    the last step's outputs out, every tensor passed on under its own name."""
    steps = ENSEMBLES[name]

    def maps(key: str, tensors: tuple[Tensor, ...]) -> str:
        return "".join(f'      {key} {{ key: "{t.name}" value: "{t.name}" }}\n' for t in tensors)

    blocks = [
        "    {\n"
        f'      model_name: "{step.name}"\n'
        "      model_version: -1\n"
        + maps("input_map", step.inputs)
        + maps("output_map", step.outputs)
        + "    }"
        for step in steps
    ]
    first, last = steps[0], steps[-1]
    return "\n".join([
        f'name: "{name}"',
        'platform: "ensemble"',
        f"max_batch_size: {MAX_BATCH_SIZE}",
        "input [\n" + ",\n".join(t.render() for t in first.inputs) + "\n]",
        "output [\n" + ",\n".join(t.render() for t in last.outputs) + "\n]",
        "ensemble_scheduling {\n  step [\n" + ",\n".join(blocks) + "\n  ]\n}",
        f'parameters {{ key: "{VERSION_PARAMETER}" value: {{ string_value: "{version}" }} }}',
    ]) + "\n"  # fmt: skip


# The public models that chain steps (raw strings in, vectors out): 384-d MiniLM vectors, and 1280-d
# vectors in the image model's feature space.
ENSEMBLES = {
    TEXT_MODEL: (TOKENIZER_SPEC, TEXT_ENCODER_SPEC),
    BRIDGE_MODEL: (BRIDGE_TOKENIZER_SPEC, BRIDGE_ENCODER_SPEC),
}
