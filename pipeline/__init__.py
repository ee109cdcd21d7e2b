"""trtpipe: PyTorch models to FP16 and w8a8 TensorRT engines, with ONNX Runtime as the CPU target."""

__version__ = "0.1.0"
