"""The embedder: ONNX export, Triton model repository, launcher and async client."""
