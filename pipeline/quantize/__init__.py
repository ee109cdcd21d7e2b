"""Q/DQ insertion: TensorRT w8a8 on the FP16 graph, ONNX Runtime CPU w8a8 on the FP32 graph."""
