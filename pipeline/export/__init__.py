"""Export: the FP32 reference ONNX and the FP16 graph derived from it, checked against PyTorch."""
