"""Provenance: what each stage consumed and wrote, by sha256, checked before a file is trusted.

``engines/NAME/records/STAGE.json`` holds a ``StageRecord``: its ``inputs`` are the config
sections the stage reads, the weights, the model's source file, the data's fingerprint, the
pipeline source the stage runs (``pipeline.codehash``) and the files of earlier stages; its
``outputs`` are the files it wrote. A stage removes its record when it starts and writes it once
its outputs are complete, before they take their names (``fileio.after_record``): a failed or
killed run leaves no output that no record vouches for. Before a stage reads a file, ``verify``
walks the records upstream: each file is the one its stage wrote, and nothing that stage was made
from has changed since (the code aside: ``trtpipe engines`` re-runs the stages whose code
changed, single stages do not refuse).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pipeline.callables import source_file
from pipeline.codehash import stage_code_version
from pipeline.config import Config
from pipeline.data import source_fingerprint
from pipeline.errors import PipelineError
from pipeline.fileio import newest, place_held, sha256_file, sweep, write_json
from pipeline.layout import Layout

RECORD_VERSION = 1
STAGES = ("export", "calibrate", "quantize", "build", "compare", "bench", "report")
CODE = "code (the pipeline source the stage runs)"
# The config sections each stage reads: an edit elsewhere in the file does not make it stale.
CONFIG_SECTIONS = {
    "export": ("name", "model", "inputs", "outputs", "batch", "axes", "export"),
    "calibrate": ("inputs", "calibration", "quantize"),
    "quantize": ("batch", "calibration", "quantize", "accuracy", "evaluation"),
    "build": ("batch", "axes", "quantize", "build"),
    "compare": ("batch", "quantize", "accuracy", "evaluation"),
    "bench": ("batch", "quantize", "bench"),
    "report": ("name", "quantize"),
}
# Files a stage makes itself when they are missing or stale (quantize recalibrates): recorded as
# its inputs, not verified before it runs.
MAKES_ITSELF = {"quantize": {"calibrate"}}
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class StageRecord:
    stage: str
    inputs: dict[str, str]  # what (a file's path, "config ...", "weights ...", CODE) -> sha256
    outputs: dict[str, str]  # file path (Layout.key) -> sha256
    passed: bool = True  # False: a gate failed and the outputs were written anyway (compare, quantize --force)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage {self.stage!r} is not one of {', '.join(STAGES)}")
        for what, sha in {**self.inputs, **self.outputs}.items():
            if not (isinstance(what, str) and isinstance(sha, str) and _SHA256.fullmatch(sha)):
                raise ValueError(f"{what!r}: {sha!r} is not a sha256")
        if not isinstance(self.passed, bool):
            raise ValueError(f"passed must be true or false, got {self.passed!r}")

    def to_json(self) -> dict:
        return {"version": RECORD_VERSION, **dataclasses.asdict(self)}


def load_record(out: Layout, stage: str) -> StageRecord | None:
    """The stage's record, None if it has none; a damaged one is an error naming the fix."""
    path = out.record(stage)
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        if raw["version"] != RECORD_VERSION or raw["stage"] != stage:
            raise ValueError(f"version {raw['version']!r} of stage {raw['stage']!r}")
        return StageRecord(stage, dict(raw["inputs"]), dict(raw["outputs"]), raw["passed"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise PipelineError(f"{path}: not a record of trtpipe {stage} ({exc}); re-run trtpipe {stage}") from None


def begin(cfg: Config, out: Layout, stage: str) -> None:
    """Before ``stage`` runs: what it reads is verified, and its own record goes until it finishes."""
    verify(cfg, out, stage)
    out.record(stage).unlink(missing_ok=True)
    engines = [p for p in out.trt_root.iterdir() if p.is_dir()] if out.trt_root.is_dir() else []
    for folder in (out.model_dir, out.onnx_dir, out.results_dir, out.reports_dir, out.ranges.parent, *engines):
        sweep(folder)  # what killed runs left behind
    sweep(out.record(stage).parent)


def finish(cfg: Config, out: Layout, stage: str, outputs: Iterable[Path], passed: bool = True) -> StageRecord:
    """The record of a run whose ``outputs`` are complete. Inside ``fileio.after_record()`` the record takes
    its name first and the outputs theirs after it: a kill in between leaves files that do not match
    their record, which every check refuses, never an output that no record vouches for; a record
    that cannot be written (a full disk) leaves the outputs of the run before as they were."""
    outputs = list(outputs)
    outputs += _external_data(outputs)
    record = StageRecord(stage, current_inputs(cfg, out, stage), {out.key(p): sha256(p) for p in outputs}, passed)
    write_json(out.record(stage), record.to_json())
    place_held(out.record(stage))
    return record


def _external_data(outputs: Iterable[Path]) -> list[Path]:
    """The weights file of each graph saved with external data (``onnxutil.save``): the graph holds
    only where its weights lie, so two graphs with other weights can be the same bytes."""
    return [data for p in outputs if newest(data := p.with_name(p.name + ".data")).is_file()]


def verify(cfg: Config, out: Layout, stage: str) -> None:
    """Every file ``stage`` reads from an earlier stage is the one that stage wrote, and that stage's
    record (and each before it) is current; else one line naming the change and the command."""
    checked: set[str] = set()
    for producer, path in upstream(cfg, out, stage):
        if producer in MAKES_ITSELF.get(stage, ()) or not path.is_file():
            continue  # a missing file is the stage's own one-line error
        record = verify_stage(cfg, out, producer, checked)
        if out.key(path) not in record.outputs:
            raise PipelineError(f"{path}: trtpipe {producer} did not write it; re-run {_command(cfg, producer)}")


def verify_stage(cfg: Config, out: Layout, stage: str, checked: set[str] | None = None) -> StageRecord:
    """``stage``'s record: its outputs are on disk as written, its inputs are as they are now (code
    aside), and so for every stage before it."""
    checked = set() if checked is None else checked
    record = load_record(out, stage)
    if record is None:
        raise PipelineError(f"{out.record(stage)}: no record of trtpipe {stage}; run {_command(cfg, stage)}")
    if stage in checked:
        return record
    for producer, path in upstream(cfg, out, stage):
        if out.key(path) in record.inputs:
            verify_stage(cfg, out, producer, checked)
    key = changed_output(out, record)
    if key is not None:
        raise PipelineError(f"{key} changed since trtpipe {stage} wrote it; re-run {_command(cfg, stage)}")
    changed = changed_inputs(record, current_inputs(cfg, out, stage), code=False)
    if changed:
        what = _named(cfg, changed[0])
        raise PipelineError(f"{what} changed since trtpipe {stage} ran; re-run {_command(cfg, stage)}")
    checked.add(stage)
    return record


def rerun_reason(cfg: Config, out: Layout, stage: str) -> str | None:
    """Why ``stage`` must run again (no record, an output gone or changed, an input changed, code
    included), or None when its record is current."""
    try:
        record = load_record(out, stage)
    except PipelineError:
        return "its record is damaged"
    if record is None:
        return "not run yet"
    key = changed_output(out, record)
    if key is not None:
        return f"{key} changed since it was written"
    changed = changed_inputs(record, current_inputs(cfg, out, stage))
    if changed:
        return f"{_named(cfg, changed[0])} changed" + (f" (and {len(changed) - 1} more)" if len(changed) > 1 else "")
    return None


def changed_output(out: Layout, record: StageRecord) -> str | None:
    """The first of ``record``'s outputs that is gone or holds other bytes than it wrote, or None."""
    for key, sha in record.outputs.items():
        if not (out.root / key).is_file() or sha256(out.root / key) != sha:
            return key
    return None


def changed_inputs(record: StageRecord, now: dict[str, str], code: bool = True) -> list[str]:
    """What differs between the recorded inputs and ``now`` (added, removed or other bytes)."""
    keys = sorted(set(record.inputs) | set(now), key=lambda k: (k == CODE, k))
    return [k for k in keys if record.inputs.get(k) != now.get(k) and (code or k != CODE)]


def current_inputs(cfg: Config, out: Layout, stage: str) -> dict[str, str]:
    sections = CONFIG_SECTIONS[stage]
    # The config by its sections, not its path: a project copied elsewhere is the same project.
    found = {f"config [{', '.join(sections)}]": _config_hash(cfg, sections), CODE: stage_code_version(stage)}
    for what, path in _source_files(cfg, stage):
        found[f"{what} {out.key(path)}"] = sha256(path)  # by its path in the project: a moved project is the same
    for what, source in _data_sources(cfg, stage):
        fingerprint = source_fingerprint(cfg, source)
        if fingerprint is not None:
            found[f"{what} {source}"] = fingerprint
    for _, path in upstream(cfg, out, stage):
        if path.is_file():
            found[out.key(path)] = sha256(path)
    return found


def upstream(cfg: Config, out: Layout, stage: str) -> list[tuple[str, Path]]:
    """(the stage that writes it, file) for each file ``stage`` reads from an earlier stage."""
    if stage == "export":
        return []
    if stage == "calibrate":
        return [("export", out.graph("fp32"))]
    if stage == "quantize":
        made = [("calibrate", path) for path in calibration_files(cfg, out)]
        return [("export", out.graph("fp32")), ("export", out.graph("fp16")), *made]
    if stage == "build":
        w8a8 = [("quantize", out.graph("w8a8"))] if "tensorrt" in cfg.quantize.targets else []
        return [("export", out.graph("fp16")), *w8a8]
    if stage in ("compare", "bench"):
        return [("export", out.graph("fp32")), ("build", out.build_record), *_artifact_files(cfg, out)]
    reads = [("build", out.build_record), ("bench", out.result("bench")), ("compare", out.result("compare"))]
    return [*reads, ("quantize", out.result("quantize"))]


def calibration_files(cfg: Config, out: Layout) -> list[Path]:
    """What calibrate writes: the ranges, and with [quantize] smoothquant the per-channel maxima."""
    smoothed = cfg.quantize.smoothquant is not None and newest(out.channels).is_file()  # held, if just measured
    channels = [out.channels] if smoothed else []
    return [out.ranges, *channels]


def _artifact_files(cfg: Config, out: Layout) -> list[tuple[str, Path]]:
    """The deployable artifacts (as ``runners.artifacts`` lists them) with the stage writing each."""
    from pipeline.runners import artifacts

    build = load_record(out, "build")
    key = out.key(out.build_record)
    if build is None or not out.build_record.is_file() or build.outputs.get(key) != sha256(out.build_record):
        return []  # not read before its own record vouches for it: verify names the change
    found = []
    for a in artifacts(cfg, out):
        found.append(
            ("build" if a.backend == "tensorrt" else "quantize" if a.name.startswith("w8a8") else "export", a.path)
        )
    return found


def _source_files(cfg: Config, stage: str) -> list[tuple[str, Path]]:
    if stage != "export":
        return []
    found = []
    model = source_file(cfg.model.source, cfg.root)
    if model is not None:
        found.append(("model source", model))
    if cfg.model.weights is not None and cfg.resolve(cfg.model.weights).is_file():
        found.append(("weights", cfg.resolve(cfg.model.weights).resolve()))  # "models/../x.pt" is x.pt
    return found


def _data_sources(cfg: Config, stage: str) -> list[tuple[str, str]]:
    calibration = ("calibration data", cfg.calibration.source)
    evaluation = [("held-out data", cfg.evaluation.source)] if cfg.evaluation is not None else [calibration]
    return {"calibrate": [calibration], "quantize": [calibration, *evaluation], "compare": evaluation}.get(stage, [])


def _config_hash(cfg: Config, sections: tuple[str, ...]) -> str:
    values = {s: getattr(cfg, s) for s in sections}
    text = json.dumps({k: _plain(v) for k, v in values.items()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _plain(value: object) -> object:
    return (
        dataclasses.asdict(value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type)
        else ([_plain(v) for v in value] if isinstance(value, tuple) else value)
    )


def _named(cfg: Config, what: str) -> str:
    return f"config {cfg.path} {what.removeprefix('config ')}" if what.startswith("config [") else what


def _command(cfg: Config, stage: str) -> str:
    return f"trtpipe {stage} -c {cfg.path}"


_HASHES: dict[tuple[int, int, int, int], str] = {}


def sha256(path: Path) -> str:
    """A file's sha256, once per version of it in this process (weights and graphs are read by several checks).
    A version is known by its inode, not its name: a held output hashed under its temporary name is not
    hashed again once renamed into place."""
    path = newest(path)  # a held output's bytes
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]
