"""Triton python-backend model that runs `model.onnx` beside it with onnxruntime on the CPU."""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort


def make_session(path: str, threads: int = 1) -> ort.InferenceSession:
    """An onnxruntime CPU session with `threads` intra-op threads and no spinning between runs."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads steal the core from the other instance between runs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Denormal floats run on a slow microcode path; some inputs (mostly-black images) produce
    # many. Flushing them to zero changes embeddings by < 1e-6 and keeps speed input-independent.
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


class TritonPythonModel:
    """Batches every request the dynamic batcher hands over into one onnxruntime call."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        threads = int(params.get("intra_op_threads", "1"))
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = make_session(path, threads)
        self.input_names = [t["name"] for t in config["input"]]
        self.output_names = [t["name"] for t in config["output"]]

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        inputs = [
            [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.input_names]
            for r in requests
        ]
        # The dynamic batcher only batches requests of one shape, but stay safe if it did not.
        shapes = {tuple(a.shape[1:] for a in per_request) for per_request in inputs}
        if len(shapes) == 1:
            feeds = {
                name: np.concatenate([per_request[i] for per_request in inputs])
                for i, name in enumerate(self.input_names)
            }
            outputs = self.session.run(self.output_names, feeds)
            sizes = np.cumsum([per_request[0].shape[0] for per_request in inputs])[:-1]
            split = [np.split(out, sizes) for out in outputs]
            per_request_outputs = [[s[i] for s in split] for i in range(len(requests))]
        else:
            per_request_outputs = [
                self.session.run(self.output_names, dict(zip(self.input_names, arrays))) for arrays in inputs
            ]
        return [
            pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor(name, np.ascontiguousarray(out))
                    for name, out in zip(self.output_names, outs)
                ]
            )
            for outs in per_request_outputs
        ]
