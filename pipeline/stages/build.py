"""``trtpipe build``: TensorRT engines (FP16, and each TensorRT target's Q/DQ graph) with a manifest
and layer report, or a record of why TensorRT was not used and what compare and bench run instead."""

from __future__ import annotations

from pipeline import targets
from pipeline.config import Config
from pipeline.console import info
from pipeline.results import BuildResult
from pipeline.stages import export, quantize
from pipeline.stages.base import Stage, StageRun
from pipeline.targets.base import ENGINE, FP16, FP32, ONNXRUNTIME
from pipeline.targets.tensorrt.probe import Capability

AUTO = "auto"  # TensorRT where it imports and a CUDA GPU is visible, else ONNX Runtime
BACKENDS = (AUTO, ENGINE, ONNXRUNTIME)


def check(cfg: Config, out, backend: str = AUTO) -> None:
    """The graphs to build are there, and TensorRT is, where ``--backend tensorrt`` asks for it."""
    from pipeline.errors import PipelineError
    from pipeline.targets.tensorrt.probe import probe

    for precision, path in _graphs(cfg, out).items():
        if not path.is_file():
            raise PipelineError(f"{path}: the {precision} graph is missing; run export and quantize first")
    cap = probe()
    if backend == ENGINE and not cap.available:
        raise PipelineError(f"--backend {ENGINE}: {cap.reason}")
    if backend == ENGINE or (backend == AUTO and cap.available):
        _check_gpu_is_new_enough(cfg, cap)


def _check_gpu_is_new_enough(cfg: Config, cap: Capability) -> None:
    """A target whose engine needs a newer GPU (FP8: compute capability 8.9) stops the build in one line."""
    from pipeline.errors import PipelineError

    have = tuple(int(part) for part in (cap.compute_capability or "0.0").split("."))
    for t in targets.configured(cfg):
        need = t.min_compute_capability
        if t.builds_engine and need is not None and have < need:
            raise PipelineError(
                f"{t.name}: its {t.artifact} engine needs a GPU of compute capability {need[0]}.{need[1]} or newer, "
                f"and this {cap.gpu_name} is {cap.compute_capability}; drop {t.name!r} from [quantize] targets in "
                f"{cfg.path}, or build --backend {ONNXRUNTIME} to run its graph on ONNX Runtime"
            )


def run(r: StageRun, backend: str = AUTO) -> BuildResult:
    from pipeline import onnxutil, results
    from pipeline.targets.tensorrt.engines import build_engines, built_files
    from pipeline.targets.tensorrt.probe import probe
    from pipeline.targets.tensorrt.profiles import profiles_for

    cfg, out = r.cfg, r.out
    graphs = _graphs(cfg, out)
    cap = probe()
    profiles = profiles_for(cfg, onnxutil.load(graphs[FP16]))  # checked on every machine, GPU or not
    with r.writing() as written:
        if backend == ENGINE or (backend == AUTO and cap.available):
            record = build_engines(cfg, out, cap, profiles, graphs)
        else:
            record = _skipped_build(cfg, backend, cap)
        results.save(record, out)
        written.paths = [BuildResult.path(out), *built_files(out, record)]
    return record


def _graphs(cfg: Config, out) -> dict:
    return {FP16: out.graph(FP16), **{a: out.graph(a) for a in _engine_artifacts(cfg)}}


def _engine_artifacts(cfg: Config) -> list[str]:
    """The configured targets whose graphs become engines (their artifacts run as TensorRT engines)."""
    return [t.artifact for t in targets.configured(cfg) if t.builds_engine]


def _skipped_build(cfg: Config, backend: str, cap: Capability) -> BuildResult:
    """The build record when TensorRT is not used: why, and what compare and bench run instead."""
    from pipeline import ortsession

    reason = f"--backend {ONNXRUNTIME}" if backend == ONNXRUNTIME else cap.reason
    providers = ortsession.providers()
    info(
        f"{cfg.name}: TensorRT step skipped: {reason}. Compare and bench run the ONNX graphs on "
        f"ONNX Runtime ({', '.join(p.replace('ExecutionProvider', '') for p in providers)})."
    )
    return BuildResult(ONNXRUNTIME, tuple(providers), reason=reason)


def _reads(cfg, out):
    return [(export.STAGE, out.graph(FP16)), *((quantize.STAGE, out.graph(a)) for a in _engine_artifacts(cfg))]


STAGE = Stage(
    "build", ("batch", "axes", "export", "quantize", "build"), run, reads=_reads, check=check, result=BuildResult
)


def artifact_reads(cfg: Config, out) -> list:
    """What compare and bench read: the FP32 graph, the build record, and each deployable artifact
    (``runners.artifacts``) with the stage that wrote it."""
    from pipeline import records
    from pipeline.runners import artifacts

    reads = [(export.STAGE, out.graph(FP32)), (STAGE, out.build_record)]
    record = records.load_record(out, STAGE.name)
    key = out.key(out.build_record)
    if record is None or not out.build_record.is_file() or record.outputs.get(key) != records.sha256(out.build_record):
        return reads  # not read before its own record vouches for it: verify names the change
    for a in artifacts(cfg, out):
        producer = STAGE if a.backend == ENGINE else export.STAGE if a.name in (FP32, FP16) else quantize.STAGE
        reads.append((producer, a.path))
    return reads
