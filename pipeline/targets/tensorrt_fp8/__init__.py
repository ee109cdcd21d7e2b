"""TensorRT FP8: E4M3 Q/DQ on the FP16 graph's GEMMs (and, optionally, its convolutions), built into
engines on GPUs of compute capability 8.9 and newer (Ada, Hopper, Blackwell)."""
