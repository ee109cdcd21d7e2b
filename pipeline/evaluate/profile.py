"""Where an ONNX Runtime graph spends its time, by op type (ONNX Runtime's own profiler)."""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import onnxruntime as ort

from pipeline import ortsession
from pipeline.errors import PipelineError
from pipeline.fileio import outside_temporaries

INT8_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")  # what INT8 can speed up


def op_time_share(graph: Path, feed: dict, threads: int | None, runs: int = 10) -> dict[str, float]:
    """Share of node time per op type over ``runs`` inferences."""
    with tempfile.TemporaryDirectory(prefix="trtpipe.prof.") as tmp:
        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        opts.log_severity_level = 3
        if threads is not None:
            opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
        inputs = ortsession.feed_for(sess, feed)
        for _ in range(runs):
            sess.run(None, inputs)
        events = _events(Path(sess.end_profiling()))
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            totals[event.get("args", {}).get("op_name", "(op not named)")] += float(event.get("dur", 0))
    whole = sum(totals.values()) or 1.0
    return {op: t / whole for op, t in sorted(totals.items(), key=lambda kv: -kv[1])}


def _events(profile: Path) -> list:
    """The profile's events. ONNX Runtime writes it in C++, where a full disk cuts it short unsaid."""
    try:
        return json.loads(profile.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PipelineError(
            f"{profile}: ONNX Runtime's profile is cut short ({exc}); as on a full disk: free space in "
            f"{outside_temporaries(Path(tempfile.gettempdir()))} and re-run"
        ) from None
