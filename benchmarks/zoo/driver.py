"""Run each zoo model through every stage, one subprocess per stage, past failures.

Each stage is ``python -m pipeline STAGE -c CONFIG`` from the repository root, so its outputs
land in ``engines/NAME`` and ``calib/NAME``. Its wall time comes from the parent's clock and
its peak RSS from ``os.wait4`` on that child (``getrusage(RUSAGE_CHILDREN)`` keeps only the
largest child so far, so it cannot be read per stage).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.config import load_config

STAGES = ("export", "calibrate", "quantize", "build", "compare", "bench", "report")
# A stage runs only when the stages it reads from succeeded; compare writes its results even
# when a gate fails, so report needs bench and compare's file, not compare's status.
NEEDS = {
    "calibrate": ("export",),
    "quantize": ("calibrate",),
    "build": ("quantize",),
    "compare": ("build",),
    "bench": ("build",),
    "report": ("bench",),
}
POLL_SECONDS = 0.2
# Random-weight nets miss quantize's accuracy gates legitimately: quantize writes the graphs anyway
# (--force), the stage reads "gate failed", and the stages after it still run to record the figures.
ARGS = {"quantize": ("--force",)}
PASSED = ("ok", "gate failed")


@dataclass(frozen=True)
class StageRun:
    stage: str
    status: str  # "ok", "gate failed", "FAIL" or "skip"
    error: str = ""  # the one line that says why
    seconds: float = 0.0
    peak_rss_mb: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def run_model(config: Path, root: Path, logs: Path, timeout: float) -> list[StageRun]:
    """Every stage for one config, from fresh output folders; a log file per stage under ``logs``."""
    name = load_config(config).name
    for folder in (root / "engines" / name, root / "calib" / name):
        shutil.rmtree(folder, ignore_errors=True)  # a stale file must not pass for this run's result
    logs.mkdir(parents=True, exist_ok=True)
    runs: dict[str, StageRun] = {}
    for stage in STAGES:
        blocked = [n for n in NEEDS.get(stage, ()) if runs[n].status not in PASSED]
        if blocked:
            runs[stage] = StageRun(stage, "skip", f"{blocked[0]} did not succeed")
            continue
        runs[stage] = run_stage(stage, config, root, logs / f"{name}.{stage}.log", timeout)
        print(f"  {name} {stage}: {_brief(runs[stage])}", flush=True)
        if stage == "export" and runs[stage].status == "ok":
            # The memory rule's yardstick: plain FP32 inference over the same calibration batches.
            cmd = [sys.executable, "-m", "benchmarks.calib_memory", "--infer", str(config)]
            runs[INFERENCE] = run_stage(INFERENCE, config, root, logs / f"{name}.{INFERENCE}.log", timeout, cmd)
            print(f"  {name} {INFERENCE}: {_brief(runs[INFERENCE])}", flush=True)
    return list(runs.values())


INFERENCE = "fp32-inference"  # measured beside the stages, not one of them


def run_stage(
    stage: str, config: Path, root: Path, log: Path, timeout: float, cmd: list[str] | None = None
) -> StageRun:
    cmd = cmd or [sys.executable, "-m", "pipeline", stage, *ARGS.get(stage, ()), "-c", str(config)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # never reach for a hub
    peak = log.with_suffix(".rss")
    peak.unlink(missing_ok=True)
    start = time.perf_counter()
    with log.open("w") as out:
        launched = [sys.executable, "-m", "benchmarks.zoo.peak", str(peak), "--", *cmd]  # see peak.py: why
        proc = subprocess.Popen(
            launched, cwd=root, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        status, usage, timed_out = _wait(proc, timeout)
    seconds = time.perf_counter() - start
    rss_mb = (int(peak.read_text()) if peak.is_file() else usage.ru_maxrss) / 1024.0  # Linux reports KiB
    code = os.waitstatus_to_exitcode(status)
    if timed_out:
        return StageRun(stage, "FAIL", f"timed out after {timeout:.0f} s", seconds, rss_mb)
    if code != 0:
        return StageRun(stage, "FAIL", error_line(log.read_text(errors="replace"), code), seconds, rss_mb)
    missed = gate_line(log.read_text(errors="replace"))
    return StageRun(stage, "gate failed" if missed else "ok", missed, seconds, rss_mb)


def _wait(proc: subprocess.Popen, timeout: float) -> tuple[int, os.struct_rusage, bool]:
    """``os.wait4`` on the child: its own exit status and resource usage (peak RSS)."""
    deadline = time.monotonic() + timeout
    timed_out = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; Popen must not wait again
            return status, usage, timed_out
        if not timed_out and time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the stage and anything it started
            timed_out = True
        time.sleep(POLL_SECONDS)


def error_line(output: str, code: int) -> str:
    """The CLI's one-line ``Error: ...`` for user errors, else the last line of a traceback."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("Error:"):
            return line.removeprefix("Error:").strip()
    return lines[-1] if lines else f"exit status {code}, no output"


MISSED = ("accuracy gate failed", "cannot meet [accuracy.budget]")


def gate_line(output: str) -> str:
    """What a stage run with --force printed first about the accuracy gate or budget it missed, else ''."""
    lines = [line.strip() for line in output.splitlines() if any(m in line for m in MISSED)]
    return lines[0].removeprefix("WARNING:").strip() if lines else ""


def _brief(run: StageRun) -> str:
    detail = f" ({run.error})" if run.error else ""
    return f"{run.status} in {run.seconds:.1f} s, peak RSS {run.peak_rss_mb:.0f} MB{detail}"
