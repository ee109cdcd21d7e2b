"""Provenance: what each stage consumed and wrote, by sha256, checked before a file is trusted.

``engines/NAME/records/STAGE.json`` holds a ``StageRecord``: its ``inputs`` are what the stage's
declaration (``pipeline.stages.base.Stage``) says it reads: the config sections, the model's files
(weights, source), the data's fingerprint, the pipeline source the stage runs (``pipeline.codehash``)
and the files of earlier stages; its
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
from typing import TYPE_CHECKING

from pipeline import signing
from pipeline.codehash import stage_code_version
from pipeline.config import Config
from pipeline.data import source_fingerprint
from pipeline.errors import PipelineError
from pipeline.fileio import newest, place_held, sha256_file, sweep, write_json
from pipeline.layout import Layout

if TYPE_CHECKING:
    from pipeline.stages.base import Stage

RECORD_VERSION = 1
CODE = "code (the pipeline source the stage runs)"
_STAGE_NAME = re.compile(r"[a-z][a-z0-9_-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class StageRecord:
    stage: str
    inputs: dict[str, str]  # what (a file's path, "config ...", "weights ...", CODE) -> sha256
    outputs: dict[str, str]  # file path (Layout.key) -> sha256
    passed: bool = True  # False: a gate failed and the outputs were written anyway (compare, quantize --force)

    def __post_init__(self) -> None:
        if not (isinstance(self.stage, str) and _STAGE_NAME.fullmatch(self.stage)):
            raise ValueError(f"stage {self.stage!r} is not a stage's name")
        for what, sha in {**self.inputs, **self.outputs}.items():
            if not (isinstance(what, str) and isinstance(sha, str) and _SHA256.fullmatch(sha)):
                raise ValueError(f"{what!r}: {sha!r} is not a sha256")
        if not isinstance(self.passed, bool):
            raise ValueError(f"passed must be true or false, got {self.passed!r}")

    def to_json(self) -> dict:
        """The record as written: signed where a signing key is configured (``pipeline.signing``)."""
        return signing.signed({"version": RECORD_VERSION, **dataclasses.asdict(self)})


def load_record(out: Layout, stage: str) -> StageRecord | None:
    """The stage's record, None if it has none; a damaged one is an error naming the fix."""
    path = out.record(stage)
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        if raw["version"] != RECORD_VERSION or raw["stage"] != stage:
            raise ValueError(f"version {raw['version']!r} of stage {raw['stage']!r}")
        record = StageRecord(stage, dict(raw["inputs"]), dict(raw["outputs"]), raw["passed"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise PipelineError(f"{path}: not a record of trtpipe {stage} ({exc}); re-run trtpipe {stage}") from None
    signing.check(raw, f"{out.key(path)}", f"re-run trtpipe {stage}")
    return record


def signatures(out: Layout, stages: Iterable[str]) -> dict[str, str]:
    """Each stage's record by its sha256, and its signature where it has one: the chain of evidence
    a deployment's manifest carries."""
    chain = {}
    for stage in stages:
        path = out.record(stage)
        if path.is_file():
            raw = json.loads(path.read_text())
            chain[stage] = raw.get("signature") or f"sha256:{sha256(path)}"
    return chain


def begin(cfg: Config, out: Layout, stage: Stage) -> dict[str, str]:
    """Before ``stage`` runs: what it reads is verified, and its own record goes until it finishes.
    Returns what it reads, by sha256, as it starts: what its record will name (``finish``)."""
    verify(cfg, out, stage)
    out.record(stage.name).unlink(missing_ok=True)
    engines = [p for p in out.trt_root.iterdir() if p.is_dir()] if out.trt_root.is_dir() else []
    for folder in (out.model_dir, out.onnx_dir, out.results_dir, out.reports_dir, out.ranges.parent, *engines):
        sweep(folder)  # what killed runs left behind
    sweep(out.record(stage.name).parent)
    return current_inputs(cfg, out, stage)


def whole_files(cfg: Config, stage: Stage) -> dict[Path, str]:
    """The model's files a stage reads whole (its weights, its source), by sha256 now: the bytes it
    must read (``fileio.read_checked``)."""
    return {path: sha256(path) for _, path in _source_files(cfg)} if stage.source else {}


def finish(
    cfg: Config,
    out: Layout,
    stage: Stage,
    outputs: Iterable[Path],
    passed: bool = True,
    read: dict[str, str] | None = None,
) -> StageRecord:
    """The record of a run whose ``outputs`` are complete. Inside ``fileio.after_record()`` the record takes
    its name first and the outputs theirs after it: a kill in between leaves files that do not match
    their record, which every check refuses, never an output that no record vouches for; a record
    that cannot be written (a full disk) leaves the outputs of the run before as they were. ``read``
    is what the stage read as it started (``begin``): an input that changed since is refused, with
    nothing recorded, as the record could not say which bytes the stage read."""
    outputs = list(outputs)
    outputs += _external_data(outputs)
    outputs_sha256 = {out.key(p): sha256(p) for p in outputs}
    now = current_inputs(cfg, out, stage)
    inputs = now if read is None else _unchanged_since(cfg, out, stage, read, now)
    record = StageRecord(stage.name, inputs, outputs_sha256, passed)
    write_json(out.record(stage.name), record.to_json())
    place_held(out.record(stage.name))
    return record


def _unchanged_since(cfg: Config, out: Layout, stage: Stage, read: dict[str, str], now: dict[str, str]) -> dict:
    """``read`` (the inputs as the stage started), once none has changed since; the files of the
    stages it remakes itself (quantize recalibrates) as they are now, the stage having written them."""
    remade = {out.key(path) for producer, path in stage.reads(cfg, out) if producer.name in stage.remakes}
    kept = {k: v for k, v in read.items() if k not in remade}
    changed = [k for k in sorted(set(kept) | (set(now) - remade)) if kept.get(k) != now.get(k)]
    if changed:
        raise PipelineError(
            f"{_named(cfg, changed[0])} changed while trtpipe {stage.name} ran, so its record could not name the "
            f"bytes it read; nothing was recorded: re-run {_command(cfg, stage)}"
        )
    return {**kept, **{k: v for k, v in now.items() if k in remade}}


def _external_data(outputs: Iterable[Path]) -> list[Path]:
    """The weights file of each graph saved with external data (``onnxutil.save``): the graph holds
    only where its weights lie, so two graphs with other weights can be the same bytes."""
    return [data for p in outputs if newest(data := p.with_name(p.name + ".data")).is_file()]


def verify(cfg: Config, out: Layout, stage: Stage) -> None:
    """Every file ``stage`` reads from an earlier stage is the one that stage wrote, and that stage's
    record (and each before it) is current; else one line naming the change and the command."""
    checked: set[str] = set()
    for producer, path in stage.reads(cfg, out):
        if producer.name in stage.remakes or not path.is_file():
            continue  # a missing file is the stage's own one-line error
        record = verify_stage(cfg, out, producer, checked)
        if out.key(path) not in record.outputs:
            raise PipelineError(f"{path}: trtpipe {producer.name} did not write it; re-run {_command(cfg, producer)}")


def verify_stage(cfg: Config, out: Layout, stage: Stage, checked: set[str] | None = None) -> StageRecord:
    """``stage``'s record: its outputs are on disk as written, its inputs are as they are now (code
    aside), and so for every stage before it."""
    checked = set() if checked is None else checked
    record = load_record(out, stage.name)
    if record is None:
        raise PipelineError(f"{out.record(stage.name)}: no record of trtpipe {stage.name}; run {_command(cfg, stage)}")
    if stage.name in checked:
        return record
    for producer, path in stage.reads(cfg, out):
        if out.key(path) in record.inputs:
            verify_stage(cfg, out, producer, checked)
    key = changed_output(out, record)
    if key is not None:
        raise PipelineError(f"{key} changed since trtpipe {stage.name} wrote it; re-run {_command(cfg, stage)}")
    changed = changed_inputs(record, current_inputs(cfg, out, stage), code=False)
    if changed:
        what = _named(cfg, changed[0])
        raise PipelineError(f"{what} changed since trtpipe {stage.name} ran; re-run {_command(cfg, stage)}")
    checked.add(stage.name)
    return record


def rerun_reason(cfg: Config, out: Layout, stage: Stage) -> str | None:
    """Why ``stage`` must run again (no record, an output gone or changed, a result of an older
    format, an input changed, code included), or None when its record is current."""
    try:
        record = load_record(out, stage.name)
    except PipelineError:
        return "its record is damaged"
    if record is None:
        return "not run yet"
    key = changed_output(out, record)
    if key is not None:
        return f"{key} changed since it was written"
    stale = _stale_result(out, stage)
    if stale is not None:
        return stale
    changed = changed_inputs(record, current_inputs(cfg, out, stage))
    if changed:
        return f"{_named(cfg, changed[0])} changed" + (f" (and {len(changed) - 1} more)" if len(changed) > 1 else "")
    return None


def _stale_result(out: Layout, stage: Stage) -> str | None:
    """Why the result ``stage`` wrote is not one this trtpipe reads (written by an older one), or None."""
    if stage.result is None:
        return None
    from pipeline.results import problem

    found = problem(stage.result, out)
    return None if found is None else f"{out.key(stage.result.path(out))}: {found}"


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


def current_inputs(cfg: Config, out: Layout, stage: Stage) -> dict[str, str]:
    """What ``stage`` reads now, by sha256: the config sections it declares, its code, the model's
    files (a stage that reads the model), its data sources and the files of earlier stages."""
    sections = stage.config
    # The config by its sections, not its path: a project copied elsewhere is the same project.
    found = {f"config [{', '.join(sections)}]": _config_hash(cfg, sections), CODE: stage_code_version(stage.module)}
    for what, path in _source_files(cfg) if stage.source else ():
        found[f"{what} {out.key(path)}"] = sha256(path)  # by its path in the project: a moved project is the same
    for what, source in stage.data(cfg):
        fingerprint = source_fingerprint(cfg, source)
        if fingerprint is not None:
            found[f"{what} {source}"] = fingerprint
    for _, path in stage.reads(cfg, out):
        if path.is_file():
            found[out.key(path)] = sha256(path)
    return found


def _source_files(cfg: Config) -> list[tuple[str, Path]]:
    from pipeline.sources import source_for

    return source_for(cfg).files()


def _config_hash(cfg: Config, sections: tuple[str, ...]) -> str:
    values = {s: _config_value(cfg, s) for s in sections}
    text = json.dumps({k: _plain(v) for k, v in values.items()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _config_value(cfg: Config, name: str) -> object:
    """A section (``bench``) or one key of it (``bench.threads``): a stage reading a key or two of a
    section is not re-run for the rest of it."""
    value: object = cfg
    for part in name.split("."):
        value = getattr(value, part)
    return value


def _plain(value: object) -> object:
    return (
        dataclasses.asdict(value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type)
        else ([_plain(v) for v in value] if isinstance(value, tuple) else value)
    )


def _named(cfg: Config, what: str) -> str:
    return f"config {cfg.path} {what.removeprefix('config ')}" if what.startswith("config [") else what


def _command(cfg: Config, stage: Stage) -> str:
    return f"trtpipe {stage.name} -c {cfg.path}"


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
