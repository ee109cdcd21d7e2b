"""Faults: SIGKILL at 0.5, 2 and 5 s into each stage, and a full disk during each stage.

    python -m benchmarks.faults [models/resnet_digits.toml] [--work DIR] [--delays 0.5 2 5]

Runs on a scratch project (``--work``, else a temporary folder): a copy of the config whose weights
point at this checkout's file, run with that folder as the working directory, so the checkout's
``engines/`` and ``calib/`` are left alone. A first pass runs every stage once and keeps the
folder as it was before each stage. Then, for each stage (export, calibrate, quantize,
build --backend onnxruntime, compare, bench, report, deploy --to deployed) from that state:

* ``kill Ns``: SIGKILL (to its process group) N s after it started (skipped, and said so, when
  it finished sooner). Every file under engines/, calib/ and deployed/ that is new or changed is
  either vouched for (a stage record lists it with its sha256; a deployment's manifest names its
  file's sha256) or a temporary leftover of a dead writer, which the re-run must sweep. The same
  stage is re-run: it must exit 0 and leave no leftovers.
* ``full disk``: the project on a tmpfs with room for half of the bytes the stage writes (as root;
  else RLIMIT_FSIZE, SIGXFSZ ignored so writes fail with EFBIG). It must exit non-zero with one
  line on stderr and no traceback, leave nothing that looks complete but is not, and re-run fine
  once the space is back.

Each trial also checks that nothing outside engines/, calib/ and deployed/ changed in the scratch
project, that the checkout's ``git status --porcelain`` did not change, and what the stage left
in its TMPDIR (a folder of its own). One table, stage x fault -> outcome.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.config import load_config
from pipeline.console import table
from pipeline.errors import PipelineError
from pipeline.layout import Layout
from pipeline.records import load_record, sha256
from pipeline.stages import NAMES as RECORDED

REPO = Path(__file__).resolve().parent.parent
STAGES = ("export", "calibrate", "quantize", "build", "compare", "bench", "report", "deploy")
TO = "deployed"
OUTPUT_ROOTS = ("engines", "calib", TO)
EXTRA = {"build": ["--backend", "onnxruntime"], "deploy": ["--to", TO]}
TEMP = re.compile(r"\.trtpipe-\d+\.")
TIMEOUT = 900


def scratch_project(config: str, run: Path) -> str:
    """``run/models/NAME.toml``: the config with its weights as an absolute path; returns that path."""
    cfg = load_config(config)
    text = Path(config).read_text()
    if cfg.model.weights is not None:
        weights = cfg.resolve(cfg.model.weights).resolve()
        text = re.sub(r'(?m)^weights\s*=\s*"[^"]*"', f'weights = "{weights}"', text)
    dest = run / "models" / Path(config).name
    dest.parent.mkdir(parents=True)
    dest.write_text(text)
    if load_config(dest).name != cfg.name:
        raise SystemExit(f"{dest}: the copy names another model")
    return f"models/{dest.name}"


def start(stage: str, config: str, run: Path, tmp: Path, fsize: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp)}  # this checkout's pipeline
    cmd = [sys.executable, "-m", "pipeline", stage, "-c", config, *EXTRA.get(stage, [])]
    return spawn(cmd, run, env, fsize)


def spawn(cmd: list[str], cwd: Path, env: dict[str, str], fsize: int | None = None) -> subprocess.Popen:
    """``cmd`` in a process group of its own (a kill reaches its children), stderr kept; with ``fsize``
    a write past that many bytes fails with EFBIG, as one fails with ENOSPC on a full disk."""

    def limits() -> None:
        if fsize is not None:  # a write past the limit fails with EFBIG instead of killing the process
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        preexec_fn=limits,
    )  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = TIMEOUT) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err.decode(errors="replace")


def run_stage(stage: str, config: str, run: Path, tmp: Path) -> tuple[int, str, float]:
    began = time.perf_counter()
    code, err = finish(start(stage, config, run, tmp))
    return code, err, time.perf_counter() - began


def tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 (files) or "dir" / "link" / "special" (a FIFO or device: reading one
    would block), hidden entries included."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for d in dirs:
            found[os.path.relpath(os.path.join(folder, d), root)] = "dir"
        for f in files:
            path = Path(folder, f)
            kind = "link" if path.is_symlink() else None if path.is_file() else "special"
            found[os.path.relpath(path, root)] = kind or _hash(path)
    return found


def _hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def is_output(rel: str, roots: tuple[str, ...] = OUTPUT_ROOTS) -> bool:
    return rel.split(os.sep)[0] in roots


def is_leftover(rel: str, name: str) -> bool:
    """A temporary file or staging folder of a writer that died (the next run's to sweep)."""
    parts = rel.split(os.sep)
    staged = (f".{name}.deploy.", f".{name}.old.")
    return any(TEMP.search(p) or p.startswith(staged) for p in parts)


def git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout


def unvouched(
    run: Path, name: str, before: dict[str, str], after: dict[str, str], roots: tuple[str, ...] = OUTPUT_ROOTS
) -> tuple[list[str], list[str]]:
    """(files that look complete but nothing vouches for, leftovers of dead writers) among the
    new or changed files under the output folders ``roots`` of model ``name`` (engines/, calib/
    and the deploy folders)."""
    out = Layout(name, run)
    vouched: dict[str, str] = {}
    damaged = {}
    for stage in RECORDED:
        key = out.key(out.record(stage))
        try:
            record = load_record(out, stage)
        except PipelineError as exc:
            damaged[key] = f"{key} ({str(exc)[:60]})"
            continue
        if record is not None:
            vouched[key] = after.get(key, "")
            vouched.update(record.outputs)
    for root in roots:
        if root not in ("engines", "calib"):  # a deploy folder
            vouched.update(_deployed(run / root / name, run))
    bad, leftovers = [], []
    for rel, sha in sorted(after.items()):
        if not is_output(rel, roots) or sha == "dir" or before.get(rel) == sha:
            continue
        if is_leftover(rel, name):
            leftovers.append(rel)
        elif rel.split(os.sep)[-2:-1] == ["logs"]:
            continue  # a stage's log: text, never read as an artifact
        elif vouched.get(rel) != sha:
            bad.append(damaged.get(rel, rel))
    return bad, leftovers


def _deployed(folder: Path, run: Path) -> dict[str, str]:
    """The files of a deployment whose manifest names its model file's sha256, that file matching."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        model = folder / manifest["file"]
        ok = model.is_file() and sha256(model) == manifest["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if not ok:
        return {}
    return {os.path.relpath(p, run): _hash(p) for p in folder.rglob("*") if p.is_file()}


def outside(before: dict[str, str], after: dict[str, str], roots: tuple[str, ...] = OUTPUT_ROOTS) -> list[str]:
    keys = set(before) | set(after)
    return sorted(k for k in keys if not is_output(k, roots) and before.get(k) != after.get(k))


def one_line_error(code: int, err: str) -> str | None:
    """None when a failed run ended on one error line and printed no traceback (its progress lines
    before that are fine); else what it did instead."""
    lines = [line for line in err.splitlines() if line.strip()]
    if "Traceback (most recent call last)" in err:
        return "traceback: " + (lines[-1][:100] if lines else "")
    errors = [line for line in lines if line.startswith("Error:")]
    if code != 0 and (len(errors) != 1 or lines[-1] != errors[0]):
        return f"{len(errors)} error lines, last line: {lines[-1][:100] if lines else ''}"
    return None


def check_after_fault(run: Path, config: str, tmp: Path, before: dict[str, str]) -> tuple[list, list]:
    """Problems and notes after a fault, then after a normal re-run of the same stage."""
    problems, notes = [], []
    after = tree(run)
    bad, leftovers = unvouched(run, load_config(run / config).name, before, after)
    problems += [f"half-written {b}" for b in bad]
    problems += [f"write outside {w}" for w in outside(before, after)]
    if leftovers:
        notes.append(f"{len(leftovers)} leftover(s)")
    ours = sorted(p for p in tmp.iterdir() if p.name.startswith("trtpipe."))  # libraries' caches aside
    if ours:  # outside the three folders, though only a kill leaves it: a problem of its own kind
        problems.append(f"left in TMPDIR: {', '.join(p.name.split('.')[1] + '.*' for p in ours)}")
        for p in ours:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    return problems, notes


def rerun_checks(stage: str, run: Path, config: str, tmp: Path, before: dict[str, str], git0: str) -> list[str]:
    problems = []
    code, err, _ = run_stage(stage, config, run, tmp)
    if code != 0:
        problems.append(f"re-run exit {code}: {err.strip().splitlines()[-1][:120] if err.strip() else ''}")
    after = tree(run)
    bad, leftovers = unvouched(run, load_config(run / config).name, before, after)
    problems += [f"after re-run: half-written {b}" for b in bad]
    problems += [f"after re-run: leftover {rel}" for rel in leftovers]
    problems += [f"after re-run: write outside {w}" for w in outside(before, after)]
    if git_status() != git0:
        problems.append("checkout's git status changed")
    return problems


def kill_trial(stage: str, delay: float, state: Path, work: Path, config: str, git0: str) -> str:
    run, tmp = fresh(state, work)
    before = tree(run)
    proc = start(stage, config, run, tmp)
    deadline = time.perf_counter() + delay
    while time.perf_counter() < deadline and proc.poll() is None:
        time.sleep(0.02)
    if proc.poll() is not None:
        finish(proc)
        return f"skipped: done in < {delay:g} s"
    os.killpg(proc.pid, signal.SIGKILL)  # the stage's own process group (start_new_session)
    finish(proc)
    problems, notes = check_after_fault(run, config, tmp, before)
    problems += rerun_checks(stage, run, config, tmp, before, git0)
    return outcome(problems, notes)


def disk_trial(stage: str, state: Path, work: Path, config: str, git0: str, writes: int) -> str:
    """The stage on a filesystem with room for half of what it writes (``writes`` bytes)."""
    mount = work / "fs"
    mount.mkdir(exist_ok=True)
    tmp = work / "tmp"
    tmp.mkdir(exist_ok=True)
    on_tmpfs = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1g", "tmpfs", str(mount)]).returncode == 0
    try:
        run = mount / "run"
        shutil.copytree(state, run, symlinks=True)
        before = tree(run)
        if on_tmpfs:
            st = os.statvfs(mount)
            used = (st.f_blocks - st.f_bfree) * st.f_frsize
            resize(mount, used + writes // 2)
            code, err = finish(start(stage, config, run, tmp))
        else:
            code, err = finish(start(stage, config, run, tmp, fsize=max(writes // 2, 1)))
        problems, notes = check_after_fault(run, config, tmp, before)
        if code == 0:
            notes.insert(0, f"no fault hit: fitted in {writes // 2} bytes")
        elif (said := one_line_error(code, err)) is not None:
            problems.insert(0, said)
        else:
            notes.insert(0, f"exit {code}: {err.strip().splitlines()[-1][:110]}")
        if on_tmpfs:
            resize(mount, 1 << 30)
        problems += rerun_checks(stage, run, config, tmp, before, git0)
        return outcome(problems, notes)
    finally:
        if on_tmpfs:
            subprocess.run(["umount", str(mount)], check=True)
        else:
            shutil.rmtree(mount / "run", ignore_errors=True)


def resize(mount: Path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)


def fresh(state: Path, work: Path) -> tuple[Path, Path]:
    run, tmp = work / "trial", work / "tmp"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(state, run, symlinks=True)
    tmp.mkdir(exist_ok=True)
    return run, tmp


def outcome(problems: list[str], notes: list[str]) -> str:
    if problems:
        return "; ".join(problems)
    return "ok" + (f" ({'; '.join(notes)})" if notes else "")


def baseline(config: str, work: Path) -> tuple[str, dict[str, Path], dict[str, int], dict[str, float]]:
    """Every stage once; the project as it was before each stage, and the bytes each one wrote."""
    run = work / "base"
    rel = scratch_project(config, run)
    tmp = work / "tmp"
    tmp.mkdir(exist_ok=True)
    states, writes, seconds = {}, {}, {}
    for stage in STAGES:
        states[stage] = work / "state" / stage
        shutil.copytree(run, states[stage], symlinks=True)
        before = tree(run)
        code, err, seconds[stage] = run_stage(stage, rel, run, tmp)
        if code != 0:
            raise SystemExit(f"baseline: trtpipe {stage} failed ({code}):\n{err[-3000:]}")
        after = tree(run)
        writes[stage] = sum((run / k).stat().st_size for k, v in after.items() if v != "dir" and before.get(k) != v)
        print(f"baseline {stage}: {seconds[stage]:.1f} s, wrote {writes[stage]} bytes", file=sys.stderr)
    return rel, states, writes, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="models/resnet_digits.toml")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed after)")
    parser.add_argument("--delays", type=float, nargs="+", default=[0.5, 2.0, 5.0])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    args = parser.parse_args()
    os.nice(10)  # children inherit it: others share the machine
    work = args.work or Path(tempfile.mkdtemp(prefix="trtpipe.faults."))
    work.mkdir(parents=True, exist_ok=True)
    try:
        git0 = git_status()
        config, states, writes, seconds = baseline(args.config, work)
        rows = []
        for stage in args.stages:
            row: list[object] = [stage, f"{seconds[stage]:.1f}"]
            for delay in args.delays:
                row.append(kill_trial(stage, delay, states[stage], work, config, git0))
                print(f"{stage} kill {delay:g}s: {row[-1]}", file=sys.stderr)
            row.append(disk_trial(stage, states[stage], work, config, git0, writes[stage]))
            print(f"{stage} full disk: {row[-1]}", file=sys.stderr)
            rows.append(row)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    headers = ["stage", "s", *(f"SIGKILL {d:g} s" for d in args.delays), "full disk"]
    print(table(headers, rows))
    cells = [c for r in rows for c in r[2:]]
    bad = [c for c in cells if not (c.startswith("ok") or c.startswith("skipped"))]
    ran = [c for c in cells if not c.startswith("skipped")]
    print(f"{len(ran) - len(bad)} of {len(ran)} faults ok ({len(cells) - len(ran)} kills skipped: stage done sooner)")


if __name__ == "__main__":
    main()
