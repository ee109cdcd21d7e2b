"""Catalogue: every bad input and attack of issue 13 (items 1-9), run as a user runs it, judged.

    python -m benchmarks.catalogue [--work DIR] [--only WORDS]

Each case starts from a scratch project of its own (``--work``, else a temporary folder): the tests'
tiny user model (``net.py``, its data callables in ``data.py``, ``weights.pt``, ``models/tiny.toml``),
either as it is ("project") or after ``trtpipe engines`` ran on it once ("done", made once and copied
per case); the name cases use a copy of ``models/resnet_digits.toml`` whose weights point at this
checkout's file. Then its steps: what the user does to the project (a Python function), and the
trtpipe commands they run (``python -m pipeline ...`` in the project, under the audit hook of
``benchmarks.audit``). Each command is judged:

* expected ``works``: exit 0, no traceback; expected ``error``: one line ``Error: ...`` (matching
  what the case says it must name: the file, key or fix), non-zero exit, no traceback;
  expected ``interrupted`` (SIGINT to its process group, as Ctrl-C sends): exit 130 and one line
  "interrupted" (or exit 0 when it came as the process exited, its work done);
* no file under engines/, calib/ or the deploy folder that is new or changed and looks complete but
  no stage record (or a deployment's manifest) vouches for, and no temporary leftover
  (``benchmarks.faults.unvouched``);
* no write outside engines/, calib/ and --to: the audit log (Python's writes), the project's files
  (any writer), the checkout's ``git status``.

Checks of a case's own (the malicious pickle's marker file must not exist, a user's Triton folder is
untouched, ...) are steps too. One table: case, expected, outcome, ok/FAIL, and a total.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.audit import audited, written_outside
from benchmarks.faults import finish, git_status, one_line_error, outside, spawn, tree, unvouched
from pipeline.console import table
from tests.conftest import BAD_DATA, FAST_BENCH, USER_MODEL, config_text

REPO = Path(__file__).resolve().parent.parent
CONFIG = "models/tiny.toml"
NAME = "tiny"
TO = "deployed"
ROOTS = ("engines", "calib", TO)  # where a run may write
TIMEOUT = 180.0
SAID = 110  # characters of a command's last line in the table
# The data callables the cases point [calibration] and [evaluation] at, beside the model's own.
DATA = (
    USER_MODEL
    + BAD_DATA
    + textwrap.dedent(
        """
    def calibration_dim(samples, batch_size):  # 100x below the held-out data: ranges that saturate
        for start in range(0, samples, batch_size):
            yield {"x": images(min(batch_size, samples - start), start) * 0.01}
    """
    )
)


MODEL = '[model]\nsource = "../net.py:build"\nweights = "../weights.pt"\n[model.args]\nchannels = 16'


def toml(top: str = "", bench: str = FAST_BENCH, **sections: str) -> str:
    """The tiny model's config: ``top`` after the name, ``sections`` replacing blocks by name."""
    blocks = {
        "top": f'name = "{NAME}"\n{top}\n{bench}'.strip(),
        "model": MODEL,
        "calibration": '[calibration]\nsource = "../data.py:calibration"\nsamples = 64\nbatch_size = 16',
        "evaluation": '[evaluation]\nsource = "../data.py:heldout"',
    }
    return config_text("", **{**blocks, **sections})


# --- what a case is made of -------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """``trtpipe COMMAND -c CONFIG`` in the project."""

    command: str
    expect: str = "works"  # "works", "error" or "interrupted"
    says: str = ""  # a regex its Error line (or, when it works, its output) must match
    config: str = CONFIG
    fsize: int | None = None  # a file size limit: writes past it fail as on a full disk
    interrupt_after: float | None = None  # SIGINT this many seconds in
    timeout: float = TIMEOUT
    env: tuple[tuple[str, str], ...] = ()  # environment variables of this command (a signing key)
    users_writes: tuple[str, ...] = ()  # files the user's own code writes while it runs (a swap mid-stage)


@dataclass(frozen=True)
class Do:
    """What the user does to the project between commands."""

    what: Callable[[Path], object]


@dataclass(frozen=True)
class Check:
    """A condition on the project after the steps before it."""

    what: str
    holds: Callable[[Path], bool]


@dataclass(frozen=True)
class Case:
    name: str
    item: int | str  # the numbered defect: of issue 13 (a number), of issue 23 ("23.N")
    start: str  # "project", "done" or "example"
    steps: tuple[Run | Do | Check, ...]


# --- what the user does ----------------------------------------------------------------------


def config(text: str, path: str = CONFIG) -> Do:
    return Do(lambda p: _write(p / path, text))


def _write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())


def flip_byte(rel: str) -> Do:
    def flip(p: Path) -> None:
        data = bytearray((p / rel).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (p / rel).write_bytes(bytes(data))

    return Do(flip)


def truncate(rel: str, keep: float = 0.5) -> Do:
    return Do(lambda p: (p / rel).write_bytes((p / rel).read_bytes()[: int((p / rel).stat().st_size * keep)]))


def edit_text(rel: str, old: str, new: str) -> Do:
    def edit(p: Path) -> None:
        text = (p / rel).read_text()
        if text.count(old) != 1:
            raise SystemExit(f"catalogue: {rel} holds {old!r} {text.count(old)} times")
        (p / rel).write_text(text.replace(old, new))

    return Do(edit)


def edit_ranges(change: Callable[[dict], None]) -> Do:
    """An edit of calib/tiny/ranges.json's first tensor (or of the whole cache)."""

    def edit(p: Path) -> None:
        path = p / "calib" / NAME / "ranges.json"
        cache = json.loads(path.read_text())
        change(cache)
        path.write_text(json.dumps(cache))  # NaN is written as NaN, as Python's json reads it

    return Do(edit)


def first_tensor(cache: dict) -> dict:
    return cache["tensors"][sorted(cache["tensors"])[0]]


def set_amax(value: float) -> Callable[[dict], None]:
    def change(cache: dict) -> None:
        first_tensor(cache)["amax"] = dict.fromkeys(first_tensor(cache)["amax"], value)

    return change


def scale_weights(p: Path) -> None:
    state = torch.load(p / "weights.pt", weights_only=True)
    state["conv1.weight"] = state["conv1.weight"] * 1.5
    torch.save(state, p / "weights.pt")


def edit_graph_weight(rel: str) -> Do:
    """A hand edit that leaves a valid graph: its first float initializer scaled."""

    def edit(p: Path) -> None:
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(p / rel))
        for init in model.graph.initializer:
            values = numpy_helper.to_array(init)
            if values.dtype == np.float32 and values.size > 1:
                init.CopyFrom(numpy_helper.from_array(values * 1.5, init.name))
                break
        onnx.save(model, str(p / rel))

    return Do(edit)


class _Payload:
    """Unpickled, it would run a shell command: the marker file says whether it ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def marker(p: Path) -> Path:
    return p.parent / "the-pickle-ran"


def malicious_weights(p: Path) -> None:
    torch.save({"conv1.weight": _Payload(marker(p))}, p / "weights.pt")


def malicious_npz(p: Path) -> None:
    (p / "npz").mkdir()
    np.savez(p / "npz" / "a.npz", x=np.array([_Payload(marker(p))], dtype=object))


def npz_folder(p: Path, truncated: bool = False) -> None:
    (p / "npz").mkdir()
    np.savez(p / "npz" / "a.npz", x=_images(64))
    if truncated:
        truncate("npz/a.npz").what(p)


def _images(n: int) -> np.ndarray:
    return _user_model()["images"](n)  # the user's own sinusoid images


def _user_model() -> dict:
    """The names ``net.py`` defines (``build``, ``images``, ...)."""
    namespace: dict = {}
    exec(compile(USER_MODEL, "net.py", "exec"), namespace)
    return namespace


def dead_pid() -> int:
    """The id of a process that has exited."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


LEFTOVERS = (
    "engines/tiny/onnx/.model.fp32.onnx.trtpipe-{pid}.a1.tmp",  # a graph of full size
    "engines/tiny/.scratch.trtpipe-{pid}.b2/ort.quant.x/augmented.onnx",
    "calib/tiny/.ranges.json.trtpipe-{pid}.c3.tmp",
    "engines/tiny/results/.compare.json.trtpipe-{pid}.d4.tmp",
    f"{TO}/.tiny.deploy.trtpipe-{{pid}}.e5/1/model.onnx",
    f"{TO}/tiny/1/.model.onnx.trtpipe-{{pid}}.f6.tmp",  # inside the Triton model folder
)


def plant_leftovers(p: Path) -> None:
    pid = dead_pid()
    graph = (p / "engines/tiny/onnx/model.fp32.onnx").read_bytes()
    for rel in LEFTOVERS:
        _write(p / rel.format(pid=pid), graph)
    (p / "pid").write_text(str(pid))


def leftovers_gone(p: Path) -> bool:
    pid = (p / "pid").read_text()
    return not any((p / rel.format(pid=pid)).exists() for rel in LEFTOVERS)


def users_triton_folder(p: Path) -> None:
    for rel, text in (("config.pbtxt", 'name: "tiny"  # hand-tuned\n'), ("1/model.onnx", "v1"), ("2/model.onnx", "v2")):
        _write(p / TO / NAME / rel, text)


def users_folder_kept(p: Path) -> bool:
    folder = p / TO / NAME
    return (folder / "config.pbtxt").read_text().endswith("# hand-tuned\n") and (folder / "2/model.onnx").is_file()


def deployed_alone(p: Path) -> bool:
    """The new deployment and nothing of the user's: Triton would serve no other version."""
    folder = p / TO / NAME
    return sorted(x.name for x in folder.iterdir()) == ["1", "config.pbtxt", "manifest.json"]


def read_only_folder(p: Path) -> None:
    """``ro/``: a read-only tmpfs as root (who may write anywhere else), else a folder without write permission."""
    (p / "ro").mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(p / "ro")]).returncode
    ):
        (p / "ro").chmod(0o555)


def release(p: Path) -> None:
    """Undo ``read_only_folder`` so the case's folder can be removed."""
    if os.path.ismount(p / "ro"):
        subprocess.run(["umount", str(p / "ro")], check=True)
    (p / "ro").chmod(0o755)


def no_graphs(p: Path) -> bool:
    return not list((p / "engines" / NAME / "onnx").glob("model.*.onnx"))


def record_of_weights(p: Path) -> bool:
    from pipeline.fileio import sha256_file

    inputs = json.loads((p / "engines/tiny/records/export.json").read_text())["inputs"]
    return inputs["weights weights.pt"] == sha256_file(p / "weights.pt")


# --- the cases ---------------------------------------------------------------------------------

DEPLOY = f"deploy --to {TO}"


def cases() -> list[Case]:
    return [
        Case(
            "a clean run: engines, deploy",
            0,
            "project",
            (Run("engines"), Run(DEPLOY), Check("deployed", deployed_alone)),
        ),
        *_names(),
        *_stale_evidence(),
        *_export_parity(),
        *_deploy_over(),
        *_changed_inputs(),
        *_cache(),
        *_interrupts(),
        *_user_fixable(),
        *_smaller(),
        *_issue23(),
    ]


def _names() -> list[Case]:
    def named(name: str) -> Do:
        return Do(lambda p: _rename_example(p, name))

    return [
        Case(
            f"model named {n!r} (resnet_digits copy)",
            1,
            "example",
            (named(n), Run(cmd, "error", r"name '.*' may hold only")),
        )
        for n, cmd in (("..", "export"), (".", "engines"), ("../x", DEPLOY))
    ]


def _rename_example(p: Path, name: str) -> None:
    path = p / "models" / "resnet_digits.toml"
    path.write_text(re.sub(r'(?m)^name = ".*"$', f'name = "{name}"', path.read_text()))
    shutil.move(path, p / CONFIG)


def _stale_evidence() -> list[Case]:
    dim = toml(calibration='[calibration]\nsource = "../data.py:calibration_dim"\nsamples = 64\nbatch_size = 16')
    refused = r"compare|changed since"
    return [
        Case(
            "re-quantized to a bad graph (--force), then deploy",
            2,
            "done",
            (
                config(dim),
                Run("quantize --force", "works", "accuracy gate failed"),
                Run(DEPLOY, "error", refused),
                Run("build --backend onnxruntime"),
                Run("compare", "error", r"accuracy gate failed for w8a8"),
                Run(DEPLOY, "error", r"failed its accuracy gate"),
                Check("nothing deployed", lambda p: not (p / TO).exists()),
            ),
        ),
        Case(
            "byte-flipped w8a8 graph, then build, then deploy",
            2,
            "done",
            (
                flip_byte("engines/tiny/onnx/model.w8a8.onnx"),
                Run("build --backend onnxruntime", "error", r"model\.w8a8\.onnx changed since trtpipe quantize"),
                Run(DEPLOY, "error", r"model\.w8a8\.onnx changed since trtpipe quantize"),
            ),
        ),
        Case(
            "byte-flipped w8a8-cpu graph, then build, then deploy",
            2,
            "done",
            (
                flip_byte("engines/tiny/onnx/model.w8a8-cpu.onnx"),
                Run("build --backend onnxruntime", "error", r"model\.w8a8-cpu\.onnx changed since trtpipe quantize"),
                Run(DEPLOY, "error", r"model\.w8a8-cpu\.onnx changed since trtpipe quantize"),
            ),
        ),
        Case(
            "graph edited by hand (valid), then engines, then deploy",
            2,
            "done",
            (
                edit_graph_weight("engines/tiny/onnx/model.w8a8-cpu.onnx"),
                Run("engines", "works", r"quantize: engines/tiny/onnx/model\.w8a8-cpu\.onnx changed"),
                Run(DEPLOY),
            ),
        ),
    ]


def _export_parity() -> list[Case]:
    strict = toml("[accuracy.fp16]\nmax_rel_error = 0.0")
    return [
        Case(
            "export failing parity ([accuracy.fp16] max_rel_error = 0)",
            3,
            "project",
            (
                config(strict),
                Run("export", "error", r"ONNX Runtime disagrees with the source \(PyTorch module\)"),
                Check("no graph written", no_graphs),
                Run("calibrate", "error", r"model\.fp32\.onnx"),
            ),
        ),
    ]


def _deploy_over() -> list[Case]:
    return [
        Case(
            "deploy over a user's Triton folder (config.pbtxt, 1/, 2/)",
            4,
            "done",
            (
                Do(users_triton_folder),
                Run(DEPLOY, "error", r"holds files trtpipe deploy did not write.*--replace"),
                Check("the user's files untouched", users_folder_kept),
            ),
        ),
        Case(
            "deploy --replace over a user's Triton folder",
            4,
            "done",
            (
                Do(users_triton_folder),
                Run(DEPLOY + " --replace"),
                Check("no 2/ left beside the new config", deployed_alone),
            ),
        ),
        Case("deploy twice", 4, "done", (Run(DEPLOY), Run(DEPLOY + " --format plain"))),
        Case(
            "deploy --to engines --replace (the pipeline's own folder)",
            4,
            "done",
            (Run("deploy --to engines --replace", "error", r"--to engines"), Check("graphs kept", _graphs_kept)),
        ),
        Case(
            "deploy --to calib --replace (the cache's folder)",
            4,
            "done",
            (Run("deploy --to calib --replace", "error", r"--to calib"), Check("cache kept", _cache_kept)),
        ),
    ]


def _graphs_kept(p: Path) -> bool:
    return (p / "engines" / NAME / "onnx" / "model.fp32.onnx").is_file()


def _cache_kept(p: Path) -> bool:
    return (p / "calib" / NAME / "ranges.json").is_file()


def _changed_inputs() -> list[Case]:
    return [
        Case(
            "project moved to another folder, then engines",
            5,
            "done",
            (Run("engines", "works", r"tiny: export is up to date(.|\n)*tiny: report is up to date"),),
        ),
        Case(
            "swapped weights, then engines",
            5,
            "done",
            (
                Do(scale_weights),
                Run("engines", "works", r"export: weights \S*weights\.pt changed"),
                Check("export recorded the new weights", record_of_weights),
            ),
        ),
        Case(
            "swapped weights, then calibrate and deploy",
            5,
            "done",
            (
                Do(scale_weights),
                Run("calibrate", "error", r"weights \S*weights\.pt changed since trtpipe export ran"),
                Run(DEPLOY, "error", r"weights \S*weights\.pt changed since trtpipe export ran"),
            ),
        ),
        Case(
            "edited calibration callable, then calibrate",
            5,
            "done",
            (
                edit_text("data.py", "samples - start), start)}", "samples - start), start) * 0.9}"),
                Run("calibrate", "works", r"calibrating .*calibration settings changed \(data\)"),
                Run("engines"),
            ),
        ),
    ]


def _cache() -> list[Case]:
    damaged = {
        "negative": set_amax(-1.0),
        "zero": set_amax(0.0),
        "NaN": set_amax(float("nan")),
        "missing key": lambda cache: first_tensor(cache).pop("amax"),
    }
    found = [
        Case(
            f"cache with {what} ranges, then quantize, calibrate, quantize",
            6,
            "done",
            (
                edit_ranges(change),
                Run("quantize", "error", r"ranges\.json: .*calibrate --force"),
                Run("calibrate", "works", r"rebuilding: .*ranges\.json"),
                Run("quantize"),
            ),
        )
        for what, change in damaged.items()
    ]
    gate = toml("[accuracy.w8a8_cpu]\nmin_cosine = 1.0")
    return [
        *found,
        Case(
            "quantize with a failing gate",
            6,
            "done",
            (
                config(gate),
                Run("quantize", "error", r"accuracy gate failed for w8a8-cpu.*kept aside"),
                Run("build --backend onnxruntime"),  # of the TensorRT graph, which passed
                Run("engines", "error", r"an accuracy gate failed when quantize ran"),
            ),
        ),
    ]


def _interrupts() -> list[Case]:
    return [
        Case(
            f"Ctrl-C (SIGINT) {delay:g} s into {stage}",
            7,
            "done",
            (Run(stage, "interrupted", interrupt_after=delay), Run(stage)),
        )
        for stage, delay in (("export", 1.5), ("compare", 1.0), ("compare", 2.5))
    ]


def _user_fixable() -> list[Case]:
    calibrate_from = lambda source: toml(  # noqa: E731
        calibration=f'[calibration]\nsource = "{source}"\nsamples = 64\nbatch_size = 16'
    )
    return [
        Case(
            "full disk during quantize",
            8,
            "done",
            (Run("quantize", "error", r"disk full", fsize=4096), Run("quantize")),
        ),
        Case(
            "full disk during deploy",
            8,
            "done",
            (Run(DEPLOY, "error", r"disk full|cannot write", fsize=4096), Run(DEPLOY)),
        ),
        Case(
            "deploy --to a file",
            8,
            "done",
            (
                Do(lambda p: (p / "notes.txt").write_text("mine")),
                Run("deploy --to notes.txt", "error", r"notes\.txt.* is a file"),
            ),
        ),
        Case(
            "deploy --to a folder inside a file",
            8,
            "done",
            (
                Do(lambda p: (p / "notes.txt").write_text("mine")),
                Run("deploy --to notes.txt/x", "error", r"notes\.txt"),
            ),
        ),
        Case(
            "deploy --to an unwritable folder",
            8,
            "done",
            (Do(read_only_folder), Run("deploy --to ro", "error", r"--to ro"), Do(release)),
        ),
        Case(
            "0-byte FP32 graph, then calibrate, then engines",
            8,
            "done",
            (
                truncate("engines/tiny/onnx/model.fp32.onnx", 0),
                Run("calibrate", "error", r"model\.fp32\.onnx"),
                Run("engines"),
            ),
        ),
        Case(
            "corrupt FP16 graph, then build, then engines",
            8,
            "done",
            (
                truncate("engines/tiny/onnx/model.fp16.onnx"),
                Run("build", "error", r"model\.fp16\.onnx"),
                Run("engines"),
            ),
        ),
        Case(
            "0-byte graph with no records at all, then calibrate",
            8,
            "done",
            (
                Do(lambda p: shutil.rmtree(p / "engines/tiny/records")),
                truncate("engines/tiny/onnx/model.fp32.onnx", 0),
                Run("calibrate", "error", r"export"),
            ),
        ),
        *(
            Case(
                f"truncated {rel.split('/')[-1]}, then {stage}, then engines",
                8,
                "done",
                (truncate(f"engines/tiny/{rel}"), Run(stage, "error", re.escape(rel.split("/")[-1])), Run("engines")),
            )
            for rel, stage in (
                ("build.json", "compare"),
                ("results/compare.json", DEPLOY),
                ("results/bench.json", "report"),
                ("records/export.json", "calibrate"),
            )
        ),
        Case(
            "truncated .npz calibration file",
            8,
            "done",
            (
                Do(lambda p: npz_folder(p, truncated=True)),
                config(calibrate_from("../npz")),
                Run("calibrate", "error", r"a\.npz"),
            ),
        ),
        Case(
            "calibration callable with another signature",
            8,
            "done",
            (
                config(calibrate_from("../data.py:wrong_signature")),
                Run("calibrate", "error", r"wrong_signature' cannot be called"),
            ),
        ),
        Case(
            "calibration callable returning None",
            8,
            "done",
            (
                config(calibrate_from("../data.py:returns_none")),
                Run("calibrate", "error", r"returns_none' returned NoneType"),
            ),
        ),
        Case(
            "config not UTF-8",
            8,
            "project",
            (Do(lambda p: _write(p / CONFIG, toml().encode() + b"# caf\xe9\n")), Run("export", "error", r"not UTF-8")),
        ),
        Case(
            "[bench] cpu_batches = []",
            8,
            "project",
            (config(toml(bench="[bench]\ncpu_batches = []")), Run("bench", "error", r"bench\.cpu_batches")),
        ),
        Case(
            "[export] opset = 99",
            8,
            "project",
            (config(toml("[export]\nopset = 99")), Run("export", "error", r"opset 99")),
        ),
        Case(
            "state_dict with a value that is no tensor",
            8,
            "project",
            (
                Do(lambda p: torch.save({"conv1.weight": 3}, p / "weights.pt")),
                Run("export", "error", r"weights\.pt: 'conv1\.weight' is a int"),
            ),
        ),
        Case(
            "weights file missing",
            8,
            "project",
            (Do(lambda p: (p / "weights.pt").unlink()), Run("export", "error", r"weights\.pt does not exist")),
        ),
        Case(
            "weights of another model (shapes differ)",
            8,
            "project",
            (
                config(toml(model=MODEL.replace("channels = 16", "channels = 8"))),
                Run("export", "error", r"weight shapes do not match"),
            ),
        ),
        Case(
            "config key misspelt (sampels)",
            8,
            "project",
            (
                edit_text(CONFIG, "samples =", "sampels ="),
                Run("engines", "error", r"unknown key 'calibration\.sampels'"),
            ),
        ),
        Case(
            "config file missing",
            8,
            "project",
            (Run("export", "error", r"config file not found", config="models/none.toml"),),
        ),
        Case(
            "config is a folder", 8, "project", (Run("export", "error", r"'models' is a directory", config="models"),)
        ),
    ]


def _smaller() -> list[Case]:
    calibrate_from = lambda source, samples=64: toml(  # noqa: E731
        calibration=f'[calibration]\nsource = "{source}"\nsamples = {samples}\nbatch_size = 16'
    )
    evaluate_from = lambda fn: toml(evaluation=f'[evaluation]\nsource = "../data.py:{fn}"')  # noqa: E731
    return [
        Case(
            "deploy w8a8 without an ONNX Runtime CPU target",
            9,
            "done",
            (
                config(toml('[quantize]\ntargets = ["tensorrt"]')),
                Run("engines --until compare"),
                Run(DEPLOY, "error", r"lacks 'onnxruntime-cpu'"),
            ),
        ),
        Case(
            "fewer samples than [calibration] samples",
            9,
            "done",
            (
                config(calibrate_from("../data.py:short")),
                Run("calibrate", "works", r"ran out after 8 of the 64 samples"),
            ),
        ),
        Case(
            "[calibration] samples = 10**20",
            9,
            "done",
            (
                config(calibrate_from("../data.py:calibration", 10**20)),
                Run("calibrate", "error", r"calibration.*samples", timeout=60),
            ),
        ),
        Case(
            "endless empty calibration batches",
            9,
            "done",
            (
                config(calibrate_from("../data.py:empty_batches_forever")),
                Run("calibrate", "error", r"a batch without rows", timeout=60),
            ),
        ),
        Case(
            "calibrate --force over a corrupt cache",
            9,
            "done",
            (
                Do(lambda p: (p / "calib/tiny/ranges.json").write_text("{")),
                Run("calibrate --force"),
                Run("quantize"),
            ),
        ),
        Case(
            "malicious weights (a pickle that runs a command)",
            9,
            "project",
            (
                Do(malicious_weights),
                Run("export", "error", r"weights\.pt: holds objects other than tensors"),
                Check("the pickle did not run", lambda p: not marker(p).exists()),
            ),
        ),
        Case(
            "malicious .npz (a pickled object array)",
            9,
            "done",
            (
                Do(malicious_npz),
                config(calibrate_from("../npz")),
                Run("calibrate", "error", r"a\.npz: cannot read without pickle"),
                Check("the pickle did not run", lambda p: not marker(p).exists()),
            ),
        ),
        Case(
            "[accuracy] batches = []",
            9,
            "project",
            (config(toml("[accuracy]\nbatches = []")), Run("export", "error", r"accuracy\.batches")),
        ),
        Case(
            "held-out data without a batch",
            9,
            "done",
            (config(evaluate_from("nothing_held_out")), Run("engines", "error", r"yielded no batches")),
        ),
        Case(
            "temp files of killed runs (one inside the Triton folder)",
            9,
            "done",
            (Run(DEPLOY), Do(plant_leftovers), Run("calibrate"), Run(DEPLOY), Check("all swept", leftovers_gone)),
        ),
        Case(
            "config file name != name",
            9,
            "done",
            (
                Do(lambda p: shutil.move(p / CONFIG, p / "models/other.toml")),
                Run("engines", config="models/other.toml"),
                Run(DEPLOY, config="models/other.toml"),
            ),
        ),
        Case(
            "labels shaped (B, 1)",
            9,
            "done",
            (config(evaluate_from("labels_as_a_column")), Run("engines", "error", r"labels of shape \(\d+, 1\)")),
        ),
        *(
            Case(
                f"invalid value: {text.splitlines()[-1]} in {text.splitlines()[0]}",
                9,
                "project",
                (config(toml(bench="", top=text)), Run("export", "error", says)),
            )
            for text, says in (
                ("[bench]\nwarmup = -1", r"bench: warmup"),
                ("[bench]\nmin_seconds = inf", r"bench: .*min_seconds"),
                ("[bench]\nthreads = 0", r"bench: .*threads"),
                ("[accuracy.w8a8]\nmin_cosine = 2.0", r"accuracy\.w8a8: min_cosine 2\.0"),
                ("[accuracy.w8a8]\nmin_cosine = nan", r"accuracy\.w8a8: min_cosine nan"),
                ("[accuracy.fp16]\nmax_rel_error = -0.1", r"accuracy\.fp16: max_rel_error"),
                ("[accuracy]\nsensitivity_rows = 0", r"sensitivity_rows"),
                ("[build]\nworkspace_mib = -1", r"workspace_mib"),
            )
        ),
        Case(
            "typo in exclude_nodes",
            9,
            "done",
            (
                config(toml('[quantize]\nexclude_nodes = ["conv9"]')),
                Run("quantize", "error", r"exclude_nodes names 'conv9'"),
            ),
        ),
        Case(
            "typo in exclude_op_types",
            9,
            "done",
            (
                config(toml('[quantize]\nexclude_op_types = ["Comv"]')),
                Run("quantize", "error", r"exclude_op_types names 'Comv'"),
            ),
        ),
        Case(
            "typo in keep_fp32",
            9,
            "project",
            (
                config(toml('[export]\nkeep_fp32 = ["LayerNormalisation"]')),
                Run("export", "error", r"keep_fp32 names 'LayerNormalisation'"),
            ),
        ),
    ]


# --- running and judging -----------------------------------------------------------------------


# --- issue 23: evidence as read, signed records, deploy's own files, bounds, special files ----------

# Builders and data callables that swap a file while the stage runs (a training job saving its next
# checkpoint, an editor in a second terminal), and one that raises in the user's own code.
SWAPS = textwrap.dedent(
    """
    from pathlib import Path

    def build_then_swap(channels=16, path="", source=""):
        Path(path).write_bytes(Path(source).read_bytes())
        return build(channels)

    def calibration_then_swap(samples, batch_size, path="", source=""):
        first = True
        for feed in calibration(samples, batch_size):
            yield feed
            if first:
                Path(path).write_bytes(Path(source).read_bytes())
                first = False

    def build_checked(channels=16):
        if channels < 1:
            raise ValueError("channels must be positive")
        return build(channels)
    """
)


def swapping_project(p: Path) -> None:
    (p / "swaps.py").write_text(USER_MODEL + SWAPS)
    model = _user_model()["build"]()
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(0.5)
    torch.save(model.state_dict(), p / "next.pt")
    (p / "data_next.py").write_text(DATA + "\n# edited in another terminal\n")


def _swap_args(path: str, source: str) -> str:
    return f'path = "{path}"\nsource = "{source}"'


def repoint_record_hashes(p: Path) -> None:
    """Another graph in place of the CPU graph, and the sha256 strings naming it re-pointed."""
    from pipeline.fileio import sha256_file

    graph = p / "engines/tiny/onnx/model.w8a8-cpu.onnx"
    old = sha256_file(graph)
    graph.write_bytes((p / "engines/tiny/onnx/model.fp32.onnx").read_bytes())
    new = sha256_file(graph)
    for record in (p / "engines/tiny/records").glob("*.json"):
        record.write_text(record.read_text().replace(old, new))


def fifo(rel: str) -> Do:
    return Do(lambda p: (p / rel).parent.mkdir(parents=True, exist_ok=True) or os.mkfifo(p / rel))


def npz_claiming_rows(p: Path) -> None:
    import io
    import zipfile

    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.zeros((2, 3, 8, 8), np.float32))
    claimed = buffer.getvalue().replace(b"(2, 3, 8, 8)", b"(1000000000000, 3, 8, 8)")
    (p / "npz").mkdir(exist_ok=True)
    with zipfile.ZipFile(p / "npz" / "bomb.npz", "w") as archive:
        archive.writestr("x.npy", claimed)


def npz_inflating(p: Path) -> None:
    (p / "npz").mkdir(exist_ok=True)
    np.savez_compressed(p / "npz" / "large.npz", x=np.zeros((200_000, 3, 8, 8), np.float32))


def stray_old_entries(p: Path) -> None:
    pid = dead_pid()
    (p / TO).mkdir(exist_ok=True)
    (p / TO / f".tiny.old.trtpipe-{pid}.a").write_text("a stray file")
    (p / TO / f".tiny.old.trtpipe-{pid}.b").symlink_to(p / "engines")


def strays_kept(p: Path) -> bool:
    found = {e.name.rsplit(".", 1)[-1]: e for e in (p / TO).glob(".tiny.old.*")}
    return found["a"].read_text() == "a stray file" and found["b"].is_symlink() and deployed_alone(p)


def no_bytecode_beside_the_users_files(p: Path) -> bool:
    return not [c for c in p.rglob("__pycache__") if not any(c.is_relative_to(p / r) for r in ROOTS)]


def _issue23() -> list[Case]:
    model = lambda source, args="": toml(  # noqa: E731
        model=f'[model]\nsource = "{source}"\nweights = "../weights.pt"\n[model.args]\nchannels = 16\n{args}'
    )
    sign = (("TRTPIPE_SIGNING_KEY", "a key kept outside the project"),)
    return [
        Case(
            "weights saved anew after export started, before it read them",
            "23.1",
            "project",
            (
                Do(swapping_project),
                Do(
                    lambda p: _write(
                        p / CONFIG, model("../swaps.py:build_then_swap", _swap_args(p / "weights.pt", p / "next.pt"))
                    )
                ),
                Run(
                    "export",
                    "error",
                    r"weights\.pt: changed after trtpipe export started",
                    users_writes=("weights.pt",),
                ),
            ),
        ),
        Case(
            "the calibration callable's file edited while calibrate runs",
            "23.1",
            "done",
            (
                Do(swapping_project),
                Do(
                    lambda p: _write(
                        p / CONFIG,
                        toml(
                            calibration='[calibration]\nsource = "../data.py:calibration_then_swap"\nsamples = 64\n'
                            f"batch_size = 16\n[calibration.args]\n{_swap_args(p / 'data.py', p / 'data_next.py')}"
                        ),
                    )
                ),
                Do(lambda p: (p / "data.py").write_text(DATA + SWAPS)),
                Run(
                    "calibrate",
                    "error",
                    r"changed while trtpipe calibrate ran, .*nothing was recorded",
                    users_writes=("data.py",),
                ),
            ),
        ),
        Case(
            "a graph swapped and its record's hashes re-pointed, signing key set",
            "23.2",
            "project",
            (
                Run("engines", env=sign),
                Do(repoint_record_hashes),
                Run(DEPLOY, "error", r"signature does not match its content", env=sign),
            ),
        ),
        Case(
            "records written unsigned, then a signing key set",
            "23.2",
            "done",
            (Run(DEPLOY, "error", r"not signed, and a signing key is set", env=sign),),
        ),
        Case(
            "deploy over a user's folder holding any manifest.json",
            "23.3",
            "done",
            (
                Do(lambda p: _write(p / TO / NAME / "manifest.json", json.dumps({"model": NAME, "sha256": "0" * 64}))),
                Do(lambda p: _write(p / TO / NAME / "config.pbtxt", "# tuned by hand\n")),
                Run(DEPLOY, "error", r"holds files trtpipe deploy did not write.*--replace"),
                Check(
                    "the user's config kept",
                    lambda p: (p / TO / NAME / "config.pbtxt").read_text() == "# tuned by hand\n",
                ),
            ),
        ),
        Case(
            "a version folder 2/ dropped into a deployment, then deploy again",
            "23.3",
            "done",
            (
                Run(DEPLOY),
                Do(lambda p: _write(p / TO / NAME / "2" / "model.onnx", "v2")),
                Run(DEPLOY, "error", r"holds files trtpipe deploy did not write"),
                Check("2/ kept", lambda p: (p / TO / NAME / "2" / "model.onnx").read_text() == "v2"),
            ),
        ),
        Case(
            "build --backend tensorrt without TensorRT keeps the last build's record",
            "23.4",
            "done",
            (
                Run("build --backend tensorrt", "error", r"--backend tensorrt: "),
                Check("build's record kept", lambda p: (p / "engines/tiny/records/build.json").is_file()),
                Run(DEPLOY),
            ),
        ),
        Case(
            "an endless [evaluation] stream",
            "23.5",
            "done",
            (
                Do(lambda p: swapping_project(p)),
                config(toml(evaluation='[evaluation]\nsource = "../data.py:endless_heldout"\nsamples = 200')),
                Run("engines"),
            ),
        ),
        Case(
            "[bench] warmup = 10**12",
            "23.5",
            "done",
            (
                config(toml(bench=f"[bench]\nwarmup = {10**12}")),
                Run("bench", "error", r"warmup 1000000000000 is more than bench can use"),
            ),
        ),
        Case(
            "[bench] threads = 100000",
            "23.5",
            "done",
            (
                config(toml(bench="[bench]\nthreads = 100000")),
                Run("bench", "error", r"threads 100000 is more than bench can use"),
            ),
        ),
        Case(
            "the config is a FIFO",
            "23.5",
            "project",
            (Do(lambda p: (p / CONFIG).unlink()), fifo(CONFIG), Run("export", "error", r"not a regular file")),
        ),
        Case(
            "a FIFO named a.npz in the calibration folder",
            "23.5",
            "done",
            (
                fifo("npz/a.npz"),
                config(toml(calibration='[calibration]\nsource = "../npz"\nsamples = 64\nbatch_size = 16')),
                Run("calibrate", "error", r"a\.npz: not a regular file"),
            ),
        ),
        Case(
            "a dead deploy's stray file and link named .tiny.old.*",
            "23.6",
            "done",
            (Do(stray_old_entries), Run(DEPLOY), Check("the stray file and link untouched", strays_kept)),
        ),
        Case(
            "a model named README.md (a file engines/ ships)",
            "23.7",
            "project",
            (
                Do(lambda p: _write(p / "engines" / "README.md", "x")),
                config(toml().replace(f'name = "{NAME}"', 'name = "README.md"')),
                Run("export", "error", r"engines/README\.md: not a folder of trtpipe's"),
            ),
        ),
        Case(
            "a 300-character name",
            "23.7",
            "project",
            (
                config(toml().replace(f'name = "{NAME}"', f'name = "{"n" * 300}"')),
                Run("export", "error", r"name is 300 characters; at most 100"),
            ),
        ),
        Case(
            "deployed/tiny is a file",
            "23.7",
            "done",
            (
                Do(lambda p: _write(p / TO / NAME, "a file")),
                Run(DEPLOY + " --replace", "error", r"a file or a link, not a deployment's folder"),
            ),
        ),
        Case(
            "weights = a folder",
            "23.7",
            "project",
            (
                Do(lambda p: (p / "wfolder").mkdir()),
                config(toml(model='[model]\nsource = "../net.py:build"\nweights = "../wfolder"')),
                Run("export", "error", r"is not a regular file"),
            ),
        ),
        Case(
            "weights = /etc/passwd",
            "23.7",
            "project",
            (
                config(toml(model='[model]\nsource = "../net.py:build"\nweights = "/etc/passwd"')),
                Run("export", "error", r"/etc/passwd: "),
            ),
        ),
        Case(
            "a folder named b.npz in the data folder",
            "23.7",
            "done",
            (
                Do(lambda p: (p / "npz" / "b.npz").mkdir(parents=True)),
                config(toml(calibration='[calibration]\nsource = "../npz"\nsamples = 64\nbatch_size = 16')),
                Run("calibrate", "error", r"b\.npz: not a regular file"),
            ),
        ),
        Case(
            "[batch] max = 2**63-1",
            "23.8",
            "project",
            (
                config(toml(batch=f"[batch]\nmin = 1\nopt = 8\nmax = {2**63 - 1}")),
                Run("export", "error", r"max 9223372036854775807 is more than a profile can serve"),
            ),
        ),
        Case(
            "parity_batches = [1000000]",
            "23.8",
            "project",
            (
                config(toml("[export]\nparity_batches = [1000000]")),
                Run("export", "error", r"batch 1000000 is outside every \[batch\] profile"),
            ),
        ),
        Case(
            "an .npz header declaring 10**12 rows",
            "23.8",
            "done",
            (
                Do(npz_claiming_rows),
                config(toml(calibration='[calibration]\nsource = "../npz"\nsamples = 64\nbatch_size = 16')),
                Run("calibrate", "error", r"declares shape \[1000000000000, 3, 8, 8\]"),
            ),
        ),
        Case(
            "a 1.4 MB .npz inflating to 150 MB, 64 samples read",
            "23.8",
            "done",
            (
                Do(npz_inflating),
                config(toml(calibration='[calibration]\nsource = "../npz"\nsamples = 64\nbatch_size = 16')),
                Run("calibrate"),
            ),
        ),
        Case(
            "string labels",
            "23.9",
            "done",
            (
                Do(swapping_project),
                config(toml(evaluation='[evaluation]\nsource = "../data.py:labels_as_strings"')),
                Run("engines", "error", r"labels of dtype <U\d+; give class indices"),
            ),
        ),
        Case(
            "a clean run writes no bytecode beside the user's files",
            "23.10",
            "project",
            (Run("export"), Check("no __pycache__ outside engines/, calib/", no_bytecode_beside_the_users_files)),
        ),
        Case(
            "the builder raises on channels = -1",
            "23.11",
            "project",
            (
                Do(swapping_project),
                config(toml(model='[model]\nsource = "../swaps.py:build_checked"\n[model.args]\nchannels = -1')),
                Run(
                    "export",
                    "error",
                    r"swaps\.py:\d+: ValueError: channels must be positive .*traceback: engines/tiny/logs/user-code",
                ),
            ),
        ),
        Case(
            "a syntax error in net.py",
            "23.11",
            "project",
            (
                Do(lambda p: (p / "net.py").write_text(USER_MODEL + "\ndef broken(:\n")),
                Run("export", "error", r"net\.py:\d+: SyntaxError"),
            ),
        ),
    ]


def new_project(folder: Path) -> None:
    """The tiny user model's project: its model, data callables, weights and config."""
    folder.mkdir(parents=True)
    (folder / "net.py").write_text(USER_MODEL)
    (folder / "data.py").write_text(DATA)
    torch.save(_user_model()["build"]().state_dict(), folder / "weights.pt")
    _write(folder / CONFIG, toml())


def example_project(folder: Path) -> None:
    from benchmarks.faults import scratch_project

    scratch_project(str(REPO / "models" / "resnet_digits.toml"), folder)


@dataclass
class Verdict:
    expected: list[str]
    said: list[str]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def run_case(case: Case, states: dict[str, Path], work: Path) -> Verdict:
    folder = work / "cases" / re.sub(r"[^A-Za-z0-9]+", "-", case.name).strip("-")
    shutil.rmtree(folder, ignore_errors=True)
    project, hooks, tmp = folder / "project", folder / "hooks", folder / "tmp"
    shutil.copytree(states[case.start], project, symlinks=True)
    tmp.mkdir()
    env = audited({**os.environ, "TMPDIR": str(tmp)}, hooks)
    verdict = Verdict([], [], [])
    git0 = git_status()
    for step in case.steps:
        if isinstance(step, Do):
            step.what(project)
        elif isinstance(step, Check):
            verdict.problems += check(step, project)
        else:
            verdict.expected.append(step.expect)
            said, problems = judged(step, project, env)
            verdict.said.append(said if len(said) <= SAID else said[: SAID - 1] + "…")
            verdict.problems += problems
    theirs = {str(project / w) for s in case.steps if isinstance(s, Run) for w in s.users_writes}
    outside_roots = written_outside(hooks, [project / r for r in ROOTS])
    verdict.problems += [f"wrote outside: {w}" for w in outside_roots if w not in theirs]
    if git_status() != git0:
        verdict.problems.append("the checkout's git status changed")
    return verdict


def check(step: Check, project: Path) -> list[str]:
    try:
        return [] if step.holds(project) else [f"check failed: {step.what}"]
    except (OSError, ValueError, KeyError) as exc:  # what it looks at is missing or unreadable
        return [f"check failed: {step.what} ({type(exc).__name__} {exc})"]


def judged(step: Run, project: Path, env: dict[str, str]) -> tuple[str, list[str]]:
    """What the command said, and its problems: its own, then what it left in the project."""
    before = tree(project)
    said, problems = run_step(step, project, env)
    after = tree(project)
    bad, leftovers = unvouched(project, NAME, before, after, ROOTS)
    left = [] if problems else leftovers  # a run killed for its time leaves temporaries, as any kill does
    problems += [f"after {step.command}: unvouched {b}" for b in bad]
    problems += [f"after {step.command}: leftover {b}" for b in left]
    problems += [
        f"after {step.command}: wrote {w}" for w in outside(before, after, ROOTS) if w not in step.users_writes
    ]
    return said.replace(f"{project}/", ""), problems


def run_step(step: Run, project: Path, env: dict[str, str]) -> tuple[str, list[str]]:
    """(what the command said, problems) for one command judged against what it should do."""
    cmd = [sys.executable, "-m", "pipeline", *shlex.split(step.command), "-c", step.config]
    began = time.perf_counter()
    proc = spawn(cmd, project, {**env, **dict(step.env)}, step.fsize)
    if step.interrupt_after is not None:
        while time.perf_counter() - began < step.interrupt_after and proc.poll() is None:
            time.sleep(0.02)
        if proc.poll() is not None:
            finish(proc)
            return f"done in < {step.interrupt_after:g} s, not interrupted", []
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: the terminal's foreground process group
    try:
        code, err = finish(proc, step.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        finish(proc)
        return f"still running after {step.timeout:g} s", [f"{step.command}: still running after {step.timeout:g} s"]
    seconds = time.perf_counter() - began
    lines = [line for line in err.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    said = last if code != 0 else "exit 0"
    problems = []
    if "Traceback (most recent call last)" in err:
        problems.append(f"{step.command}: traceback: {last[:120]}")
    elif step.expect == "works" and code != 0:
        problems.append(f"{step.command}: exit {code}: {last[:120]}")
    elif step.expect == "error" and code == 0:
        problems.append(f"{step.command}: exit 0 where an error was expected")
    elif step.expect == "error" and (bad := one_line_error(code, err)) is not None:
        problems.append(f"{step.command}: {bad}")
    elif step.expect == "interrupted" and (code, last) != (130, "interrupted") and code != 0:
        problems.append(f"{step.command}: exit {code} after SIGINT: {last[:120]}")  # 0: it came as the work was done
    elif step.says and not re.search(step.says, last if step.expect == "error" else err):
        problems.append(f"{step.command}: does not say /{step.says}/")
    if step.expect == "interrupted":
        said = f"exit {code} {seconds - step.interrupt_after:.1f} s after SIGINT" + (f": {last}" if code else "")
    return said, problems


def prepare(work: Path) -> dict[str, Path]:
    """The starting states: the project, the project after ``trtpipe engines``, the example's copy."""
    states = {
        "project": work / "state" / "project",
        "done": work / "state" / "done",
        "example": work / "state" / "example",
    }
    new_project(states["project"])
    example_project(states["example"])
    shutil.copytree(states["project"], states["done"])
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(work / "tmp")}
    (work / "tmp").mkdir(exist_ok=True)
    code, err = finish(spawn([sys.executable, "-m", "pipeline", "engines", "-c", CONFIG], states["done"], env), TIMEOUT)
    if code != 0:
        raise SystemExit(f"catalogue: trtpipe engines on the tiny model failed ({code}):\n{err[-3000:]}")
    return states


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed after)")
    parser.add_argument("--only", help="only the cases whose name holds these words")
    args = parser.parse_args()
    os.nice(10)  # children inherit it: others share the machine
    work = args.work or Path(tempfile.mkdtemp(prefix="trtpipe.catalogue."))
    work.mkdir(parents=True, exist_ok=True)
    chosen = [c for c in cases() if args.only is None or args.only in c.name]
    rows = []
    try:
        began = time.perf_counter()
        states = prepare(work)
        for case in chosen:
            verdict = run_case(case, states, work)
            outcome = "; ".join(verdict.said) if verdict.ok else "; ".join(verdict.problems)
            rows.append([case.item, case.name, ", ".join(verdict.expected), outcome, "ok" if verdict.ok else "FAIL"])
            print(f"{rows[-1][-1]}: {case.name}: {'; '.join(verdict.said)} {outcome}", file=sys.stderr)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(table(["#", "case", "expected", "outcome", "ok"], rows))
    failed = sum(r[-1] != "ok" for r in rows)
    print(f"{len(rows) - failed} of {len(rows)} cases ok ({time.perf_counter() - began:.0f} s)")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
