"""NVIDIA ModelOpt's ONNX INT8 PTQ on one graph, in ModelOpt's own environment (.modeloptvenv).

    .modeloptvenv/bin/python -m benchmarks.modelopt_ptq GRAPH DATA.npz SHAPES METHOD OUT RESULT.json

``benchmarks.quant_peers`` runs this as a child process: ModelOpt's ``[onnx]`` extra installs
onnxruntime-gpu, which owns the same ``onnxruntime`` package as the project's onnxruntime, so it
cannot share the project's environment. Only numpy and ModelOpt are imported here, no ``pipeline``.
On a machine without CUDA, onnxruntime-gpu still imports and its CPU execution provider runs;
``calibration_eps=["cpu"]`` keeps ModelOpt from trying the CUDA and TensorRT providers.

DATA.npz holds every calibration sample per input; SHAPES (``name:16x3x128x128,...``) is one
calibration step's shape, so ModelOpt calibrates on the same batches as the other tools.
ModelOpt calibrates and writes the graph in one call, so only their sum is timed. RESULT.json:
seconds (imports and data loading excluded), RSS before the call, ModelOpt's version.
"""

from __future__ import annotations

import json
import resource
import sys
import time


def main(graph: str, data: str, shapes: str, method: str, out: str, result: str) -> None:
    import modelopt
    import numpy as np
    from modelopt.onnx.quantization import quantize

    with np.load(data) as archive:
        calibration = {name: archive[name] for name in archive.files}
    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB
    start = time.perf_counter()
    quantize(
        graph,
        quantize_mode="int8",
        calibration_data=calibration,
        calibration_shapes=shapes,
        calibration_method=method,
        calibration_eps=["cpu"],
        high_precision_dtype="fp16",
        output_path=out,
        log_level="WARNING",
    )
    seconds = time.perf_counter() - start
    record = {"total_s": seconds, "baseline_rss_mb": baseline_mb, "version": modelopt.__version__}
    with open(result, "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    if len(sys.argv) != 7:
        raise SystemExit(__doc__.splitlines()[2].strip())
    main(*sys.argv[1:])
