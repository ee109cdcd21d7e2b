"""What must hold before anything is deployed: the file is intact, the precision exists, its gate passed."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.artifacts import Artifacts
from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.evaluate.compare import results_path
from pipeline.fileio import read_json, sha256_file
from pipeline.runners import Artifact, artifacts


@dataclass(frozen=True)
class Deployable:
    artifact: Artifact
    sha256: str
    backend: str  # "tensorrt" or "onnxruntime"
    device: str  # "GPU" or "CPU"
    gate_failures: tuple[str, ...]  # non-empty only when --force overrode the gate
    manifest: dict


def select(cfg: Config, out: Artifacts, precision: str, force: bool) -> Deployable:
    record = read_json(out.build_record, "build")
    found = {a.name: a for a in artifacts(cfg, out)}
    cpu_only = record["backend"] == "onnxruntime" and "CUDAExecutionProvider" not in record.get("providers", [])
    # On a CPU-only deployment the w8a8 artifact that runs well is ONNX Runtime's CPU graph.
    name = "w8a8-cpu" if (precision == "w8a8" and cpu_only) else precision
    if name not in found:
        raise PipelineError(f"{cfg.name}: no {precision} artifact to deploy (have: {', '.join(found)})")
    artifact = found[name]  # artifacts() has refused missing files

    if artifact.backend == "tensorrt":
        from pipeline.build.manifest import Manifest, verify_engine
        from pipeline.build.probe import probe

        cap = probe()  # where a GPU is present, also refuse engines built for another GPU or TensorRT
        verify_engine(
            artifact.manifest,
            name,
            cap.trt_version if cap.available else None,
            cap.compute_capability if cap.available else None,
        )
        manifest = Manifest.load(artifact.manifest)
        entry = manifest.engines[name]
        info = {
            "tensorrt_version": manifest.tensorrt_version,
            "gpu_name": manifest.gpu_name,
            "compute_capability": manifest.compute_capability,
            "profiles": manifest.profiles,
            "source_graph_sha256": entry.source_graph_sha256,
        }
        sha = entry.sha256
    else:
        recorded = record.get("graphs", {}).get(name)
        if recorded is None:
            raise PipelineError(f"{out.build_record}: no hash recorded for {name}; re-run trtpipe build")
        sha = sha256_file(artifact.path)
        if sha != recorded["sha256"]:
            raise PipelineError(
                f"{artifact.path}: sha256 {sha[:12]}… differs from the build record's "
                f"{recorded['sha256'][:12]}… (changed since build); re-run trtpipe build"
            )
        info = {"onnxruntime_providers": record.get("providers", [])}

    compare = results_path(out)
    if not compare.is_file():
        raise PipelineError(f"{compare}: no compare results; run trtpipe compare before deploying")
    saved = read_json(compare)
    measured = saved.get("sha256", {}).get(artifact.label) if isinstance(saved, dict) else None
    if measured != sha:  # accuracy measured on other bytes (or by an older compare) says nothing of these
        raise PipelineError(
            f"{compare}: {artifact.label} was not compared as it is now (sha256 {sha[:12]}…); re-run trtpipe compare"
        )
    rows = [r for r in saved["rows"] if r["artifact"] == artifact.label]
    if not rows:
        raise PipelineError(f"{compare}: {artifact.label} was not compared; re-run trtpipe compare")
    failures = tuple(f"batch {r['batch']} {r['output']!r}: {'; '.join(r['failures'])}" for r in rows if r["failures"])
    if failures and not force:
        raise PipelineError(
            f"{cfg.name}: {artifact.label} failed its accuracy gate ({failures[0]}); "
            f"fix it or pass --force to deploy anyway"
        )
    return Deployable(artifact, sha, artifact.backend, "CPU" if cpu_only else "GPU", failures if force else (), info)
