"""Intel NNCF's post-training quantization of an ONNX graph, in NNCF's own environment (.nncfvenv).

    .nncfvenv/bin/python -m benchmarks.nncf_ptq GRAPH DATA.npz SHAPES OUT RESULT.json

``benchmarks.quant_peers`` runs this as a child process, with the calibration samples and batch
shapes it gives ModelOpt (``modelopt_data``): ``nncf.quantize(model, nncf.Dataset(batches),
subset_size=<every batch>)`` at NNCF's defaults (the performance preset: symmetric int8, per-channel
weights, its own range estimators and bias correction). NNCF's ONNX backend writes a QDQ graph
for ONNX Runtime (or OpenVINO), so the benchmark judges it as an ORT CPU graph. Only numpy, onnx and
NNCF are imported here, no ``pipeline``: NNCF pins its own dependencies. RESULT.json: seconds
(imports and data loading excluded), RSS before the call, this process's peak RSS, NNCF's version.
"""

from __future__ import annotations

import sys
import time

from benchmarks.modelopt_ptq import own_peak_mb, write_result  # stdlib only at import


def batches(arrays: dict, shapes: str) -> list[dict]:
    """The samples in consecutive batches of the step's batch size (``name:16x3x128x128,...``), the
    last one possibly smaller, in the order the other tools see them."""
    step = int(shapes.split(",")[0].split(":")[1].split("x")[0])
    rows = len(next(iter(arrays.values())))
    return [{name: value[start : start + step] for name, value in arrays.items()} for start in range(0, rows, step)]


def main(graph: str, data: str, shapes: str, out: str, result: str) -> None:
    import nncf
    import numpy as np
    import onnx

    with np.load(data) as archive:
        feeds = batches({name: archive[name] for name in archive.files}, shapes)
    model = onnx.load(graph)
    baseline_mb = own_peak_mb()
    start = time.perf_counter()
    # subset_size counts the dataset's items, here batches: every one of them
    quantized = nncf.quantize(model, nncf.Dataset(feeds), subset_size=len(feeds))
    onnx.save(quantized, out)
    write_result(result, time.perf_counter() - start, baseline_mb, nncf.__version__)


if __name__ == "__main__":
    if len(sys.argv) != 6:
        raise SystemExit(__doc__.splitlines()[2].strip())
    main(*sys.argv[1:])
