"""Peak memory of calibrate and quantize against plain FP32 inference of the same graph at the same batch.

    python -m benchmarks.calib_memory CONFIG... [--again] [--timeout SECONDS]

Run from the repository root, with a Python that can export every config given (the zoo's
environment, ``.zoovenv``, for zoo and trained models). For each config, holding the benchmark lock
(``/tmp/trtpipe-bench.lock``) for that model only, so other benchmarks can run between models:

* ``trtpipe engines --until export``: the graphs, made only when missing or stale (not measured);
* ``fp32 inference``: the FP32 graph on ONNX Runtime (CPU, default session options and allocator)
  over the calibration data at ``[calibration] batch_size``, outputs dropped: the same imports,
  data source and batches as calibration, without the statistics;
* ``trtpipe calibrate --force`` and ``trtpipe quantize --force`` (calibration cached, so this is
  the quantizers, the accuracy pass and the CPU speed search as configured), the real commands
  writing into the model's own ``engines/`` and ``calib/`` folders.

Each runs in its own process under a small launcher (``benchmarks.zoo.peak``) whose ``wait4`` gives
the child's own peak RSS (VmHWM). Each model's row goes into ``engines/calib-memory.json`` as soon as
it is measured, with the commit it was measured at; a model already measured at this commit is
skipped (``--again`` measures it anew), so a long run can stop and resume. ``engines/calib-memory.md``
is the table of every saved row. The rule: each stage at most 1.5x what inference takes.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks.zoo.driver import run_stage
from pipeline.config import load_config
from pipeline.fileio import read_json, write_json, write_text
from pipeline.layout import Layout

REPO = Path(__file__).resolve().parent.parent
LIMIT = 1.5
LOCK = Path("/tmp/trtpipe-bench.lock")
RESULTS = Path("engines") / "calib-memory.json"
TABLE = Path("engines") / "calib-memory.md"
LOGS = Path("engines") / "calib-memory-logs"
MEASURED = ("fp32", "calibrate", "quantize")


def infer_child(config: str) -> None:
    """Plain FP32 inference over the calibration batches; nothing kept."""
    from pipeline import ortsession
    from pipeline.data import calibration_batches

    cfg = load_config(config)
    sess = ortsession.session(Layout.of(cfg).graph("fp32"), cpu_only=True)
    for feed in calibration_batches(cfg):
        sess.run(None, ortsession.feed_for(sess, feed))


def peak_of(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Run ``cmd``; its peak RSS in MB as ``wait4`` reports it, and wall seconds. Raises SystemExit
    with its output's tail when it fails (a missed accuracy gate is an outcome, not a failure)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's pipeline, whatever is installed
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    seconds = time.perf_counter() - start
    if proc.returncode != 0 and "accuracy gate failed" not in stderr:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return usage.ru_maxrss / 1024.0, seconds  # Linux reports KiB


def commit() -> str:
    """HEAD's short hash, marked when the code measured differs from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--", "pipeline", "benchmarks"], cwd=REPO, capture_output=True, text=True
    )
    return head.stdout.strip() + ("+changes" if changed.stdout.strip() else "")


@contextlib.contextmanager
def bench_lock() -> Iterator[None]:
    """The machine's benchmark lock (the one ``flock /tmp/trtpipe-bench.lock`` takes), held by this block."""
    with LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def measure(config: Path, timeout: float) -> dict:
    """One model's row: peak RSS (MB) and seconds of FP32 inference, calibrate and quantize."""
    cfg = load_config(config)
    row: dict = {"model": cfg.name, "config": str(config.relative_to(REPO)), "batch": cfg.calibration.batch_size}
    row["samples"] = cfg.calibration.samples
    py = sys.executable
    commands = {
        "export": [py, "-m", "pipeline", "engines", "-c", str(config), "--until", "export"],
        "fp32": [py, "-m", "benchmarks.calib_memory", "--infer", str(config)],
        "calibrate": [py, "-m", "pipeline", "calibrate", "--force", "-c", str(config)],
        "quantize": [py, "-m", "pipeline", "quantize", "--force", "-c", str(config)],
    }
    for step, cmd in commands.items():
        log = REPO / LOGS / f"{cfg.name}.{step}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        run = run_stage(step, config, REPO, log, timeout, cmd)
        print(f"  {cfg.name} {step}: {run.status} in {run.seconds:.1f} s, peak {run.peak_rss_mb:.0f} MB", flush=True)
        if step in MEASURED:  # a failed step's peak too: what it reached before it stopped
            row[f"{step}_mb"], row[f"{step}_s"] = round(run.peak_rss_mb, 1), round(run.seconds, 1)
            row[f"{step}_phases"] = phase_line(log.read_text(errors="replace"))
        if run.status == "FAIL":
            row["failed"] = f"{step}: {run.error}"
            return row
    return row


def phase_line(output: str) -> str:
    """The stage's own line of phase timings (``pipeline.phases``), '' when it printed none."""
    found = [line.strip() for line in output.splitlines() if " phases, " in line]
    return found[-1] if found else ""


def ratio(row: dict, step: str) -> float:
    return row[f"{step}_mb"] / row["fp32_mb"]


def verdict(row: dict) -> str:
    if "failed" in row:
        return "failed: " + row["failed"].split(";")[0][:120]
    worst = max(ratio(row, "calibrate"), ratio(row, "quantize"))
    return "pass" if worst <= LIMIT else f"FAIL (+{worst / LIMIT - 1:.0%} over {LIMIT}x)"


def markdown(rows: list[dict]) -> str:
    """Every saved row; a step that failed or did not run is left blank."""
    head = "| model | batch | FP32 inference MiB | calibrate MiB | ratio | quantize MiB | ratio | rule (1.5x) |"
    head += " calibrate s | quantize s | commit |\n" + "|---" * 11 + "|\n"
    lines = []
    for r in rows:
        cells = [r["model"], r["batch"], f"{r['fp32_mb']:.0f}" if "fp32_mb" in r else ""]
        for step in ("calibrate", "quantize"):
            done = f"{step}_mb" in r and "fp32_mb" in r
            cells += [f"{r[f'{step}_mb']:.0f}", f"{ratio(r, step):.2f}x"] if done else ["", ""]
        cells.append(verdict(r))
        cells += [f"{r[f'{step}_s']:.0f}" if f"{step}_s" in r else "" for step in ("calibrate", "quantize")]
        cells.append(r["commit"])
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", type=Path)
    parser.add_argument("--again", action="store_true", help="measure models already measured at this commit")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per step before it is killed")
    parser.add_argument("--infer", action="store_true", help=argparse.SUPPRESS)  # the inference child
    args = parser.parse_args()
    if args.infer:
        infer_child(str(args.configs[0]))
        return
    here = commit()
    saved = {r["model"]: r for r in (read_json(REPO / RESULTS) or {"rows": []})["rows"]}
    for config in (c.resolve() for c in args.configs):
        name = load_config(config).name
        if not args.again and saved.get(name, {}).get("commit") == here and "failed" not in saved[name]:
            print(f"{name}: measured at {here} already", flush=True)
            continue
        print(f"{name}: waiting for {LOCK}", flush=True)
        with bench_lock():
            saved[name] = {**measure(config, args.timeout), "commit": here}
        write_json(REPO / RESULTS, {"rows": list(saved.values())})  # after every model: a stop keeps it
        write_text(REPO / TABLE, markdown(list(saved.values())))
    print(markdown(list(saved.values())))
    for row in saved.values():
        for step in ("calibrate", "quantize"):
            if row.get(f"{step}_phases"):
                print(row[f"{step}_phases"])


if __name__ == "__main__":
    main()
