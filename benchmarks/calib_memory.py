"""Peak memory of calibration against plain FP32 inference of the same graph at the same batch.

    python -m benchmarks.calib_memory models/resnet_digits.toml models/vit_digits.toml [--quantize]

For each config (run ``trtpipe export`` first), in separate child processes, each
reaped with ``os.wait4`` so its peak RSS is its own:

* ``fp32 inference``: the FP32 graph on ONNX Runtime (CPU, default session options)
  over the calibration data at ``[calibration] batch_size``, outputs dropped: the
  same imports, data source and batches as calibration, without the statistics.
* ``trtpipe calibrate --force``: the real command.
* with ``--quantize``, ``trtpipe quantize`` too (calibration cached, so this is the
  quantizers and the held-out accuracy pass); with ``--compare``, ``trtpipe quantize``
  and then ``trtpipe compare`` (after ``trtpipe build --backend onnxruntime``).

The children run in a scratch folder holding a copy of the model's ONNX graphs, so
the model's own ``calib/`` and ``engines/`` are left as they are. The figure that
matters is the ratio: calibration may take at most 1.5x what inference takes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.config import load_config
from pipeline.console import table
from pipeline.layout import Layout

REPO = Path(__file__).resolve().parent.parent
LIMIT = 1.5


def infer_child(config: str, same_allocator: bool = False) -> None:
    """Plain FP32 inference over the calibration batches; nothing kept. ``same_allocator``: with
    the C allocator's policy trtpipe sets (``pipeline.allocator``), for a like-for-like figure."""
    from pipeline import ortsession
    from pipeline.allocator import return_large_blocks
    from pipeline.data import calibration_batches

    if same_allocator:
        return_large_blocks()

    cfg = load_config(config)
    sess = ortsession.session(Layout.of(cfg).graph("fp32"), cpu_only=True)
    for feed in calibration_batches(cfg):
        sess.run(None, ortsession.feed_for(sess, feed))


PHASES: list[str] = []  # each stage's own phase line (``pipeline.phases``), printed after the table


def peak_of(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Run ``cmd``; its peak RSS in MB (its own, from wait4) and wall seconds. A stage's line of phase
    timings goes to ``PHASES``."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's pipeline, whatever is installed
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    seconds = time.perf_counter() - start
    PHASES.extend(line for line in stderr.splitlines() if " phases, " in line)
    # A failed accuracy gate is an outcome of compare (random-weight test nets fail them), not a failed run.
    if proc.returncode != 0 and "accuracy gate failed" not in stderr:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return usage.ru_maxrss / 1024.0, seconds  # Linux reports KiB


def measure(config: str, stages: list[str]) -> list[object]:
    """One table row: peak RSS and seconds of FP32 inference, calibrate and each of ``stages``."""
    cfg = load_config(config)
    src = Layout.of(cfg)
    graphs = ("fp32", "fp16")  # both: the export record that vouches for them names both
    for precision in graphs:
        if not src.graph(precision).is_file():
            raise SystemExit(f"{src.graph(precision)} missing: run `trtpipe export -c {config}` first")
    path = str(Path(config).resolve())
    with tempfile.TemporaryDirectory(prefix="trtpipe.calibmem.") as tmp:
        work = Path(tmp)
        dst = Layout(cfg.name, work)
        dst.onnx_dir.mkdir(parents=True)
        for precision in graphs:
            shutil.copy(src.graph(precision), dst.graph(precision))
        dst.record("export").parent.mkdir(parents=True)
        shutil.copy(src.record("export"), dst.record("export"))  # calibrate trusts the graphs through it
        infer = [sys.executable, "-m", "benchmarks.calib_memory", "--infer", path]
        infer_mb, infer_s = peak_of(infer, work)
        alike_mb, _ = peak_of([*infer, "--same-allocator"], work)
        calib_mb, calib_s = peak_of([sys.executable, "-m", "pipeline", "calibrate", "--force", "-c", path], work)
        row = [cfg.name, cfg.calibration.batch_size, cfg.calibration.samples, f"{infer_mb:.0f}", f"{alike_mb:.0f}"]
        row += [f"{calib_mb:.0f}", f"{calib_mb / infer_mb:.2f}x", f"{calib_mb / alike_mb:.2f}x"]
        row += [f"{infer_s:.1f}", f"{calib_s:.1f}"]
        for stage in stages:
            if stage == "compare":
                peak_of([sys.executable, "-m", "pipeline", "build", "--backend", "onnxruntime", "-c", path], work)
            force = ["--force"] if stage == "quantize" else []  # memory, not accuracy: a missed gate still builds
            mb, seconds = peak_of([sys.executable, "-m", "pipeline", stage, *force, "-c", path], work)
            row += [f"{mb:.0f}", f"{mb / infer_mb:.2f}x", f"{seconds:.1f}"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--quantize", action="store_true", help="also measure trtpipe quantize")
    parser.add_argument("--compare", action="store_true", help="also measure trtpipe quantize and compare")
    parser.add_argument("--infer", action="store_true", help=argparse.SUPPRESS)  # the inference child
    parser.add_argument("--same-allocator", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.infer:
        infer_child(args.configs[0], args.same_allocator)
        return
    stages = [s for s, on in (("quantize", args.quantize or args.compare), ("compare", args.compare)) if on]
    headers = ["model", "batch", "samples", "FP32 infer MB", "infer MB, same allocator", "calibrate MB", "ratio"]
    headers += ["ratio, same allocator", "infer s", "calibrate s"]
    for stage in stages:
        headers += [f"{stage} MB", "ratio", f"{stage} s"]
    rows = [measure(config, stages) for config in args.configs]
    print(table(headers, rows))
    worst = max(float(str(r[6]).rstrip("x")) for r in rows)
    alike = max(float(str(r[7]).rstrip("x")) for r in rows)
    print(f"calibrate / FP32 inference peak RSS, worst: {worst:.2f}x, {alike:.2f}x with the same allocator ", end="")
    print(f"(limit {LIMIT}x)")
    print("\n".join(PHASES))


if __name__ == "__main__":
    main()
