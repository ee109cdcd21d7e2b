"""A target whose artifact is an exact copy of the FP32 graph, run on ONNX Runtime's CPU EP: the
smallest target that goes through quantize, build, compare, bench and deploy. Registered as
``"toy": "tests.extensions.toy_target.target:Toy"``."""
