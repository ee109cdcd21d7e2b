"""``manifest.json`` beside the engines, and the checks made before an engine is loaded.

An engine runs only on the GPU family (compute capability) and the TensorRT
version that built it, and a truncated copy must never be loaded; the
manifest records what is needed to refuse such an engine with a clear reason.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.fileio import sha256_file, write_json

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class EngineEntry:
    precision: str  # "fp16" or "w8a8"
    file: str  # relative to the manifest
    sha256: str
    source_graph: str
    source_graph_sha256: str
    build_seconds: float
    int8_coverage: float | None = None  # share of the graph's quantized Conv/GEMM/MatMul layers running INT8


@dataclass(frozen=True)
class Manifest:
    model: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    profiles: list[dict[str, dict[str, list[int]]]]
    builder: dict[str, object]
    engines: dict[str, EngineEntry] = field(default_factory=dict)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    version: int = MANIFEST_VERSION

    def save(self, path: Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> Manifest:
        if not path.is_file():
            raise PipelineError(f"{path}: no manifest; rebuild the engines with trtpipe build")
        try:
            raw = json.loads(path.read_text())
            engines = {k: EngineEntry(**v) for k, v in raw.pop("engines").items()}
            return cls(engines=engines, **raw)
        except (json.JSONDecodeError, TypeError, KeyError) as exc:
            raise PipelineError(f"{path}: manifest is corrupt ({exc}); rebuild the engines") from None


def verify_engine(manifest_path: Path, precision: str, trt_version: str | None, compute_capability: str | None) -> Path:
    """The engine file for ``precision`` if it is intact and made for this machine; else a clear refusal."""
    manifest = Manifest.load(manifest_path)
    entry = manifest.engines.get(precision)
    if entry is None:
        raise PipelineError(f"{manifest_path}: no {precision} engine (built: {', '.join(manifest.engines) or 'none'})")
    engine = manifest_path.parent / entry.file
    if not engine.is_file():
        raise PipelineError(f"{engine}: engine file missing; rebuild with trtpipe build")
    actual = sha256_file(engine)
    if actual != entry.sha256:
        raise PipelineError(
            f"{engine}: sha256 {actual[:12]}… differs from the manifest's {entry.sha256[:12]}… "
            f"(truncated or corrupt copy); rebuild or copy it again"
        )
    if trt_version is not None and trt_version != manifest.tensorrt_version:
        raise PipelineError(
            f"{engine}: built with TensorRT {manifest.tensorrt_version}, this machine has "
            f"{trt_version}; engines only load in the TensorRT version that built them: rebuild here"
        )
    if compute_capability is not None and compute_capability != manifest.compute_capability:
        raise PipelineError(
            f"{engine}: built for compute capability {manifest.compute_capability} "
            f"({manifest.gpu_name}), this GPU is {compute_capability}; rebuild on this GPU"
        )
    return engine
