"""Shipping a model: ONNX export, onnxruntime verification, latency benchmarks."""
