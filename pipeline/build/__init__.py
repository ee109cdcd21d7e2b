"""Engine build: TensorRT FP16 and INT8 engines from the FP16 and w8a8 graphs.

Everything that needs no GPU (the capability probe, profiles, manifests, the
layer report) is plain Python here; ``trt.py`` is the thin TensorRT layer.
"""
