"""NVIDIA ModelOpt's ONNX INT8 or FP8 PTQ on one graph, in ModelOpt's own environment (.modeloptvenv).

    .modeloptvenv/bin/python -m benchmarks.modelopt_ptq GRAPH DATA.npz SHAPES METHOD OUT RESULT.json

``benchmarks.quant_peers`` runs this as a child process: ModelOpt's ``[onnx]`` extra installs
onnxruntime-gpu, which owns the same ``onnxruntime`` package as the project's onnxruntime, so it
cannot share the project's environment. Only numpy and ModelOpt are imported here, no ``pipeline``.
On a machine without CUDA, onnxruntime-gpu still imports and its CPU execution provider runs;
``calibration_eps=["cpu"]`` keeps ModelOpt from trying the CUDA and TensorRT providers.

DATA.npz holds every calibration sample per input; SHAPES (``name:16x3x128x128,...``) is one
calibration step's shape, so ModelOpt calibrates on the same batches as the other tools. METHOD is
``max`` or ``entropy`` (``quantize_mode="int8"`` with that calibration), ``fp8``
(``quantize_mode="fp8"`` with ModelOpt's default calibration for it, entropy) or ``fp8-max``
(``quantize_mode="fp8"``, ``calibration_method="max"``). In FP8 mode ModelOpt calibrates as for int8
(ONNX Runtime's calibrators, symmetric) and then multiplies every int8 scale by 448/127: an FP8
scale of amax * 448 / 127^2, so its E4M3 range reaches about 12.4x the calibrated amax.
ModelOpt calibrates and writes the graph in one call, so only their sum is timed. RESULT.json:
seconds (imports and data loading excluded), RSS before the call, this process's peak RSS,
ModelOpt's version.
"""

from __future__ import annotations

import json
import re
import sys
import time


def own_peak_mb() -> float:
    """This process's peak RSS since its exec (VmHWM). Not ``wait4``'s ru_maxrss, nor getrusage's:
    Linux keeps the high-water mark of the memory a process had before exec, so a child started
    by a parent holding 1.3 GB reports at least 1.3 GB there."""
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) / 1024.0


def write_result(result: str, seconds: float, baseline_mb: float, version: str) -> None:
    """RESULT.json, as each peer's child process writes it for ``benchmarks.quant_peers``."""
    record = {"total_s": seconds, "baseline_rss_mb": baseline_mb, "peak_rss_mb": own_peak_mb(), "version": version}
    with open(result, "w") as f:
        json.dump(record, f)


def main(graph: str, data: str, shapes: str, method: str, out: str, result: str) -> None:
    import modelopt
    import numpy as np
    from modelopt.onnx.quantization import quantize

    with np.load(data) as archive:
        calibration = {name: archive[name] for name in archive.files}
    baseline_mb = own_peak_mb()
    start = time.perf_counter()
    fp8 = method.startswith("fp8")
    quantize(
        graph,
        quantize_mode="fp8" if fp8 else "int8",
        calibration_data=calibration,
        calibration_shapes=shapes,
        calibration_method={"fp8": None, "fp8-max": "max"}.get(method, method),
        calibration_eps=["cpu"],
        high_precision_dtype="fp16",
        output_path=out,
        log_level="WARNING",
    )
    write_result(result, time.perf_counter() - start, baseline_mb, modelopt.__version__)


if __name__ == "__main__":
    if len(sys.argv) != 7:
        raise SystemExit(__doc__.splitlines()[2].strip())
    main(*sys.argv[1:])
