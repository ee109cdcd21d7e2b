"""The thin TensorRT layer: build through Polygraphy's loaders, inspect, load.

TensorRT 11 networks are strongly typed: the FP16 engine's precision comes
from the FP16 graph and the INT8 engine's from the Q/DQ graph. No FP16/INT8
builder flags (removed in 11) and no calibrators are used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.build.profiles import InputProfile
from pipeline.config import BuildSection


class EngineFromOnnx:
    """Serialized engine bytes from an ONNX graph, built with the given profiles and settings."""

    def __init__(self, profiles: list[list[InputProfile]], settings: BuildSection, timing_cache: Path) -> None:
        self.profiles = profiles
        self.settings = settings
        self.timing_cache = timing_cache  # read if present, then extended: timings are reused across builds

    def __call__(self, graph: Path) -> bytes:
        import tensorrt as trt
        from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile

        trt_profiles = []
        for per_input in self.profiles:
            profile = Profile()
            for p in per_input:
                profile.add(p.name, min=p.min, opt=p.opt, max=p.max)
            trt_profiles.append(profile)
        # Polygraphy opens "<cache>.lock" beside the timing cache before anything else makes the folder.
        self.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        config = CreateConfig(
            profiles=trt_profiles,
            memory_pool_limits={trt.MemoryPoolType.WORKSPACE: self.settings.workspace_mib << 20},
            builder_optimization_level=self.settings.optimization_level,
            profiling_verbosity=trt.ProfilingVerbosity.DETAILED,  # the inspector then reports per-layer precisions
            load_timing_cache=str(self.timing_cache) if self.timing_cache.is_file() else None,
        )
        network = NetworkFromOnnxPath(str(graph), strongly_typed=True)
        try:
            return bytes(EngineBytesFromNetwork(network, config=config, save_timing_cache=str(self.timing_cache))())
        finally:
            # Polygraphy leaves the lock file behind; one build at a time writes an engine folder.
            Path(f"{self.timing_cache}.lock").unlink(missing_ok=True)


def engine_information(plan: bytes) -> dict[str, Any]:
    """The engine inspector's whole-engine JSON."""
    import tensorrt as trt
    from polygraphy.backend.trt import EngineFromBytes

    engine = EngineFromBytes(plan)()
    inspector = engine.create_engine_inspector()
    return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def load_engine(path: Path):
    """Deserialize an engine file; call ``manifest.verify_engine`` first."""
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes

    return EngineFromBytes(BytesFromPath(str(path)))()
