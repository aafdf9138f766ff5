"""The Triton configs: valid ModelConfig protobufs, GPU and CPU variants agree on the interface."""

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from services.embedder import models


def parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def interface(config: model_config_pb2.ModelConfig):
    return (
        config.name,
        config.max_batch_size,
        [(t.name, t.data_type, list(t.dims)) for t in config.input],
        [(t.name, t.data_type, list(t.dims)) for t in config.output],
        config.dynamic_batching.max_queue_delay_microseconds,
    )


def test_gpu_and_cpu_configs_share_the_interface():
    for spec in (models.IMAGE_SPEC, models.TEXT_ENCODER_SPEC):
        gpu = parse(spec.onnx_gpu_config())
        cpu = parse(spec.python_cpu_config(instances=2, threads=1))
        assert interface(gpu) == interface(cpu)
        assert gpu.platform == "onnxruntime_onnx"
        assert gpu.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        assert cpu.backend == "python"
        assert cpu.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
        assert cpu.instance_group[0].count == 2
        assert cpu.parameters["intra_op_threads"].string_value == "1"
        assert gpu.HasField("dynamic_batching")


def test_image_model_takes_uint8_nhwc():
    config = parse(models.IMAGE_SPEC.onnx_gpu_config())
    assert config.input[0].data_type == model_config_pb2.TYPE_UINT8
    assert list(config.input[0].dims) == [224, 224, 3]
    assert list(config.output[0].dims) == [models.IMAGE_DIM]


@pytest.mark.parametrize(
    ("name", "dim"), [(models.TEXT_MODEL, models.TEXT_DIM), (models.BRIDGE_MODEL, models.IMAGE_DIM)]
)
def test_ensembles_wire_tokenizer_to_encoder(name, dim):
    steps = models.ENSEMBLES[name]
    config = parse(models.ensemble_config(name, f"{name}@test"))
    assert config.name == name and config.platform == "ensemble"
    scheduled = config.ensemble_scheduling.step
    assert [s.model_name for s in scheduled] == [s.name for s in steps]
    tokenizer = parse(steps[0].python_config(instances=1))
    encoder = parse(steps[1].onnx_gpu_config())
    assert set(scheduled[0].output_map.values()) == {t.name for t in encoder.input}
    assert {t.name for t in tokenizer.output} == set(scheduled[0].output_map.keys())
    assert [t.name for t in config.input] == ["text"] and list(config.output[0].dims) == [dim]
    assert config.parameters[models.VERSION_PARAMETER].string_value == f"{name}@test"
