"""The deployable artifacts of a model and one runner interface for all of them.

Runners are Polygraphy's (``OnnxrtRunner``, ``TrtRunner``): they share
``activate``/``infer``/``deactivate`` and plug into its ``Comparator``. Which
artifacts exist comes from the build record and ``[quantize] targets``:
TensorRT engines where they were built, otherwise the FP16 and w8a8 graphs on
ONNX Runtime, and the ONNX Runtime CPU w8a8 graph when that target is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import ortsession, targets
from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.layout import Layout
from pipeline.results import BuildResult, load
from pipeline.targets.base import ENGINE, FP16, FP32, ONNXRUNTIME


@dataclass(frozen=True)
class Artifact:
    name: str  # FP16, or a target's artifact
    backend: str  # ENGINE (a TensorRT engine) or ONNXRUNTIME (an ONNX graph)
    path: Path  # engine or graph
    manifest: Path | None = None
    cpu: bool = False  # a graph that deploys on a CPU: ONNX Runtime's CPU EP, fully optimized

    @property
    def label(self) -> str:
        return f"{self.name} ({'TensorRT' if self.backend == ENGINE else 'ONNX Runtime'})"


def artifacts(cfg: Config, out: Layout) -> list[Artifact]:
    """The FP16 artifact (an engine where build made one, else the graph) and each configured target's."""
    record = load(BuildResult, out, cfg.path)
    if record.engines is not None:
        manifest = out.root / record.engines.manifest  # relative to the project
        found = [Artifact(FP16, ENGINE, manifest.parent / out.engine_file(FP16).name, manifest)]
    else:
        found = [Artifact(FP16, ONNXRUNTIME, out.graph(FP16))]
    for target in targets.configured(cfg):
        found += target.artifacts(cfg, out, record)
    missing = [a for a in found if not a.path.is_file()]
    if missing:
        raise PipelineError(f"{missing[0].path}: missing; re-run the stage that makes it")
    return found


def _feeding_declared_dtypes(runner_class: type, source: Path) -> type:
    """A subclass of a Polygraphy runner that casts numpy inputs to the dtypes the artifact declares.

    Held-out data is in the config's dtypes; an FP16-I/O graph or engine takes float16, and
    Polygraphy refuses a dtype mismatch. A failure Polygraphy reports (``PolygraphyException``)
    becomes a one-line error naming ``source``, the graph or engine.
    """
    from polygraphy.exception import PolygraphyException

    class FeedingDeclaredDtypes(runner_class):
        def activate(self):
            try:
                return super().activate()
            except PolygraphyException as exc:
                raise PipelineError(f"{source}: {_first_line(exc)}") from None

        def infer(self, feed_dict, check_inputs=True, *args, **kwargs):
            meta = self.get_input_metadata(use_numpy_dtypes=True)
            feed = {
                name: value.astype(meta[name].dtype, copy=False)
                if isinstance(value, np.ndarray) and name in meta
                else value
                for name, value in feed_dict.items()
            }
            try:
                return super().infer(feed, check_inputs, *args, **kwargs)
            except PolygraphyException as exc:
                raise PipelineError(f"{source}: {_first_line(exc)}") from None

    FeedingDeclaredDtypes.__name__ = runner_class.__name__
    return FeedingDeclaredDtypes


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def engine_to_run(artifact: Artifact) -> Path:
    """The engine file of a TensorRT artifact, once this machine can run it and its manifest agrees."""
    from pipeline.targets.tensorrt.manifest import verify_engine
    from pipeline.targets.tensorrt.probe import probe

    cap = probe()
    if not cap.available:
        raise PipelineError(
            f"{artifact.path}: a TensorRT engine (the build record says so), and this machine cannot run it: "
            f"{cap.reason}. Run compare and bench on the GPU machine that built it, or rebuild here with "
            f"trtpipe build --backend onnxruntime"
        )
    return verify_engine(artifact.manifest, artifact.name, cap.trt_version, cap.compute_capability)


def reference_runner(out: Layout, threads: int | None = None, arena: bool = True):
    from polygraphy.backend.onnxrt import OnnxrtRunner

    path = out.graph(FP32)
    return OnnxrtRunner(lambda: ortsession.session_for(path, True, threads, arena=arena), name="fp32 (ONNX Runtime)")


def runner_for(artifact: Artifact, profile: int = 0, threads: int | None = None, arena: bool = True):
    """A Polygraphy runner; engines are checked against their manifest before they load.
    ``arena`` is ONNX Runtime's CPU arena (see ``ortsession.session``)."""
    if artifact.backend == ENGINE:
        from polygraphy.backend.trt import TrtRunner

        from pipeline.targets.tensorrt.trt import load_engine

        engine_path = engine_to_run(artifact)
        return _feeding_declared_dtypes(TrtRunner, engine_path)(
            lambda: load_engine(engine_path), name=artifact.label, optimization_profile=profile
        )
    from polygraphy.backend.onnxrt import OnnxrtRunner

    return _feeding_declared_dtypes(OnnxrtRunner, artifact.path)(
        lambda: ortsession.session_for(artifact.path, artifact.cpu, threads, arena=arena), name=artifact.label
    )
