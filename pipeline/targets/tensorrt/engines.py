"""Build both engines of a model into its ``<gpu>-sm<cc>-trt<version>`` folder, with manifest and layer report."""

from __future__ import annotations

import time
from pathlib import Path

import onnx

from pipeline.config import Config
from pipeline.console import info
from pipeline.fileio import sha256_file, write_bytes, write_json
from pipeline.layout import Layout
from pipeline.targets.tensorrt import layers as layer_report
from pipeline.targets.tensorrt.manifest import EngineEntry, Manifest
from pipeline.targets.tensorrt.probe import Capability
from pipeline.targets.tensorrt.profiles import InputProfile, check_bench_batches


def built_files(record: dict) -> list[Path]:
    """The engines, layer reports and manifest a build record names (none when TensorRT was skipped)."""
    if record["backend"] != "tensorrt":
        return []
    manifest = Path(record["manifest"])  # by the precisions built: a held engine is not on disk yet
    folder, built = manifest.parent, sorted(record["layers"])
    return [manifest, *(folder / f"{p}.plan" for p in built), *(folder / f"layers-{p}.json" for p in built)]


def build_engines(
    cfg: Config, out: Layout, cap: Capability, profiles: list[list[InputProfile]], graphs: dict[str, Path]
) -> dict:
    from pipeline.targets.tensorrt.trt import EngineFromOnnx, engine_information

    check_bench_batches(cfg, cfg.bench.gpu_batches, "bench.gpu_batches")
    target = out.trt_root / cap.target_dir_name
    timing_cache = target / "timing.cache"  # timings are per GPU and TensorRT version: kept beside the engines
    manifest = Manifest(
        cfg.name,
        cap.trt_version or "",
        cap.gpu_name or "",
        cap.compute_capability or "",
        [{p.name: p.as_dict() for p in per_input} for per_input in profiles],
        {
            "workspace_mib": cfg.build.workspace_mib,
            "builder_optimization_level": cfg.build.optimization_level,
            "profiling_verbosity": "DETAILED",
            "strongly_typed": True,
        },
    )
    build_engine = EngineFromOnnx(profiles, cfg.build, timing_cache)
    summaries = {}
    for precision, graph in graphs.items():
        info(f"{cfg.name}: building {precision} engine from {graph.name} (TensorRT {cap.trt_version}, {cap.gpu_name})")
        start = time.perf_counter()
        plan = build_engine(graph, log=out.log(f"build-{precision}"))
        seconds = time.perf_counter() - start
        engine_path = target / f"{precision}.plan"
        write_bytes(engine_path, plan)
        inspector_json = engine_information(plan)
        layers_path = target / f"layers-{precision}.json"
        write_json(layers_path, inspector_json)
        quantized = layer_report.quantized_compute_node_names(onnx.load(str(graph))) if precision == "w8a8" else set()
        summary = layer_report.summarize(layer_report.parse_layers(inspector_json, str(layers_path)), quantized)
        summaries[precision] = summary.as_dict()
        manifest.engines[precision] = EngineEntry(
            precision,
            engine_path.name,
            sha256_file(engine_path),
            graph.name,
            sha256_file(graph),
            round(seconds, 2),
            summary.quantized_coverage if precision == "w8a8" else None,
        )
        coverage = (
            f"{summary.int8_quantized_layers}/{summary.quantized_layers} quantized layers INT8, "
            if precision == "w8a8"
            else ""
        )
        info(
            f"  {precision}: {coverage}{summary.int8_compute_layers}/{summary.compute_layers} Conv/GEMM/MatMul "
            f"layers INT8, {summary.reformat_layers} reformat layers, {summary.unfused_qdq_layers} unfused Q/DQ, "
            f"{seconds:.1f} s"
        )
        if precision == "w8a8":
            warning = layer_report.coverage_warning(summary)
            if warning:
                info(f"WARNING: {cfg.name} w8a8 engine: {warning}")
                summaries[precision]["warning"] = warning
    manifest.save(target / "manifest.json")
    info(f"{cfg.name}: engines and manifest in {target}")
    return {"backend": "tensorrt", "dir": str(target), "manifest": str(target / "manifest.json"), "layers": summaries}
