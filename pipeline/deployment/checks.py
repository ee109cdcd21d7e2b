"""What must hold before anything is deployed: the file is intact, the precision exists, its gate passed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline import records, targets
from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.layout import Layout
from pipeline.results import BuildResult, CompareResult, load
from pipeline.runners import Artifact, artifacts
from pipeline.stages import NAMES, compare
from pipeline.targets.base import ENGINE, FP16, FP32, ONNXRUNTIME


@dataclass(frozen=True)
class Deployable:
    artifact: Artifact
    sha256: str
    backend: str  # ENGINE or ONNXRUNTIME
    device: str  # "GPU" or "CPU"
    gate_failures: tuple[str, ...]  # non-empty only when --force overrode the gate
    manifest: dict
    # A TensorRT-target Q/DQ graph on ONNX Runtime with a GPU: INT8 only through the TensorRT EP.
    tensorrt_ep: bool = False


def check_destination(out: Layout, to: Path) -> None:
    """The deployment's folder ``to/NAME`` must keep clear of engines/ and calib/: there (with --replace,
    over a folder) it would take the place of the stages' own files, or of the whole project."""
    dest = (to / out.name).resolve()
    for folder in out.output_roots:
        found = folder.resolve()
        if dest.is_relative_to(found) or found.is_relative_to(dest):
            where = "be inside" if dest.is_relative_to(found) else "hold"
            raise PipelineError(
                f"--to {to}: the deployment {to / out.name} would {where} {out.key(folder)}/, where the stages "
                f"write; deploy to a folder of its own"
            )


def select(cfg: Config, out: Layout, precision: str, verdict: str | None, force: bool) -> Deployable:
    """The artifact of ``precision`` where this build deploys, checked, with its manifest's entries;
    ``verdict`` (the report's line at the largest batch, None without bench) goes in the manifest."""
    record = load(BuildResult, out, cfg.path)
    # The FP32 graph is the reference compare measured the others against: what a CPU runs where no
    # 8-bit graph is faster.
    found = {a.name: a for a in (*artifacts(cfg, out), Artifact(FP32, ONNXRUNTIME, out.graph(FP32), cpu=True))}
    cpu_only = record.engines is None and "CUDAExecutionProvider" not in record.providers
    name = precision if precision in (FP16, FP32) else _quantized_for(cfg, cpu_only, precision)
    artifact = found[name]  # artifacts() has refused missing files
    sha = measured_sha256(cfg, out, artifact)
    target = targets.by_artifact(cfg).get(name)
    tensorrt_ep = artifact.backend != ENGINE and not cpu_only and target is not None and target.builds_engine
    if artifact.backend == ENGINE:
        info = _engine_info(artifact, name)
    else:
        info = {"onnxruntime_providers": list(record.providers)}
    if tensorrt_ep:
        info["execution_accelerator"] = (
            "tensorrt: this Q/DQ graph runs INT8 only on ONNX Runtime's TensorRT execution provider "
            "(trt_int8_enable); on the CUDA EP alone its Q/DQ pairs are simulated in float"
        )
    if verdict is not None:
        info["speed_verdict"] = verdict
    failures = () if name == FP32 else _gate_failures(cfg, out, artifact)  # the reference has no gate
    if failures and not force:
        raise PipelineError(
            f"{cfg.name}: {artifact.label} failed its accuracy gate ({failures[0]}); "
            f"fix it or pass --force to deploy anyway"
        )
    # The records of the stages that made and measured these bytes: signatures where a key is set.
    info["records"] = records.signatures(out, NAMES)
    return Deployable(
        artifact, sha, artifact.backend, "CPU" if cpu_only else "GPU", failures if force else (), info, tensorrt_ep
    )


def _quantized_for(cfg: Config, cpu_only: bool, precision: str) -> str:
    """The artifact of the first configured target of ``precision`` (w8a8, fp8) that deploys where this
    build runs: on a CPU-only deployment the 8-bit graph that runs well there (ONNX Runtime's CPU
    graph), else a GPU's."""
    for target in targets.configured(cfg):
        if target.deploys_on_cpu == cpu_only and target.precision == precision:
            return target.artifact
    wanted = [t.name for t in targets.everything() if t.deploys_on_cpu == cpu_only and t.precision == precision]
    if not wanted:
        raise PipelineError(f"{cfg.name}: no target makes a {precision} artifact that deploys on a CPU-only build")
    where = " on this CPU-only build" if cpu_only else ""
    raise PipelineError(
        f"{cfg.name}: no {precision} artifact to deploy{where}: [quantize] targets in {cfg.path} lacks "
        f"{wanted[0]!r}; add it and run trtpipe engines, or deploy --precision {FP16}"
    )


def measured_sha256(cfg: Config, out: Layout, artifact: Artifact) -> str:
    """The artifact's sha256, once the records show compare measured these very bytes, on graphs and
    engines that are what their stages wrote from the current config, weights and data."""
    if not out.result("compare").is_file():
        raise PipelineError(f"{out.result('compare')}: no compare results; run trtpipe compare before deploying")
    compared = records.verify_stage(cfg, out, compare.STAGE)
    sha = records.sha256(artifact.path)
    if compared.inputs.get(out.key(artifact.path)) != sha:  # accuracy of other bytes says nothing of these
        raise PipelineError(
            f"{artifact.path}: compare did not measure it as it is now (sha256 {sha[:12]}…); "
            f"re-run trtpipe compare -c {cfg.path}"
        )
    return sha


def _engine_info(artifact: Artifact, name: str) -> dict:
    from pipeline.targets.tensorrt.manifest import Manifest, verify_engine
    from pipeline.targets.tensorrt.probe import probe

    cap = probe()  # where a GPU is present, also refuse engines built for another GPU or TensorRT
    verify_engine(
        artifact.manifest,
        name,
        cap.trt_version if cap.available else None,
        cap.compute_capability if cap.available else None,
    )
    manifest = Manifest.load(artifact.manifest)
    return {
        "tensorrt_version": manifest.tensorrt_version,
        "gpu_name": manifest.gpu_name,
        "compute_capability": manifest.compute_capability,
        "profiles": manifest.profiles,
        "source_graph_sha256": manifest.engines[name].source_graph_sha256,
    }


def _gate_failures(cfg: Config, out: Layout, artifact: Artifact) -> tuple[str, ...]:
    rows = [r for r in load(CompareResult, out, cfg.path).rows if r.artifact == artifact.label]
    if not rows:
        raise PipelineError(f"{CompareResult.path(out)}: {artifact.label} was not compared; re-run trtpipe compare")
    return tuple(f"batch {r.batch} {r.output!r}: {'; '.join(r.failures)}" for r in rows if r.failures)
