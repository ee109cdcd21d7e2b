"""Build a model's engines (FP16 and each TensorRT target's Q/DQ graph) into its ``<gpu>-sm<cc>-trt<version>``
folder, with manifest and layer report."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import onnx

from pipeline.config import Config
from pipeline.console import info
from pipeline.fileio import sha256_file, write_bytes, write_json
from pipeline.layout import Layout
from pipeline.results import BuildResult, Engines
from pipeline.targets.base import ENGINE, FP16
from pipeline.targets.tensorrt import layers as layer_report
from pipeline.targets.tensorrt.manifest import EngineEntry, Manifest
from pipeline.targets.tensorrt.probe import Capability
from pipeline.targets.tensorrt.profiles import InputProfile, check_bench_batches

# Ops whose FP32 form TensorRT may run on TF32 tensor cores (10 mantissa bits, FP32's range).
TF32_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def tf32_for(cfg: Config) -> tuple[bool, str]:
    """Whether to allow TF32, and why: ``[build] tf32`` where set; else on, unless the FP16 graph's FP32
    islands (``[export] keep_fp32``) hold a Conv/GEMM/MatMul kept there for FP32's precision."""
    if cfg.build.tf32 is not None:
        return cfg.build.tf32, "[build] tf32"
    kept = sorted(TF32_OPS & set(cfg.export.keep_fp32))
    if kept:
        return False, f"[export] keep_fp32 keeps {', '.join(kept)} in FP32, which TF32 would round; [build] tf32"
    return True, "default: the FP32 islands hold no Conv/GEMM/MatMul; [build] tf32 = false turns it off"


def built_files(out: Layout, record: BuildResult) -> list[Path]:
    """The engines, layer reports and manifest a build record names (none when TensorRT was skipped)."""
    if record.engines is None:
        return []
    manifest = out.root / record.engines.manifest  # by the precisions built: a held engine is not on disk yet
    folder, built = manifest.parent, sorted(record.engines.layers)
    return [manifest, *(out.engine_file(p, folder) for p in built), *(out.layers_file(p, folder) for p in built)]


def build_engines(
    cfg: Config, out: Layout, cap: Capability, profiles: list[list[InputProfile]], graphs: dict[str, Path]
) -> BuildResult:
    from pipeline import ortsession
    from pipeline.targets.tensorrt.trt import EngineFromOnnx, engine_information

    check_bench_batches(cfg, cfg.bench.gpu_batches, "bench.gpu_batches")
    tf32, tf32_why = tf32_for(cfg)
    target = out.engine_dir(cap.target_dir_name)
    timing_cache = out.timing_cache(target)
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
            "tf32": tf32,
        },
    )
    info(f"{cfg.name}: TF32 {'on' if tf32 else 'off'} for FP32 Conv/GEMM/MatMul layers ({tf32_why})")
    build_engine = EngineFromOnnx(profiles, cfg.build, timing_cache, tf32)
    summaries = {}
    for precision, graph in graphs.items():
        info(f"{cfg.name}: building {precision} engine from {graph.name} (TensorRT {cap.trt_version}, {cap.gpu_name})")
        start = time.perf_counter()
        plan = build_engine(graph, log=out.log(f"build-{precision}"))
        seconds = time.perf_counter() - start
        engine_path = out.engine_file(precision, target)
        write_bytes(engine_path, plan)
        inspector_json = engine_information(plan)
        layers_path = out.layers_file(precision, target)
        write_json(layers_path, inspector_json)
        qdq = precision != FP16  # an engine built from a Q/DQ graph: w8a8, fp8
        quantized = layer_report.quantized_compute_inputs(onnx.load(str(graph))) if qdq else {}
        summary = layer_report.summarize(layer_report.parse_layers(inspector_json, str(layers_path)), quantized)
        summaries[precision] = summary
        manifest.engines[precision] = EngineEntry(
            precision,
            engine_path.name,
            sha256_file(engine_path),
            graph.name,
            sha256_file(graph),
            round(seconds, 2),
            summary.quantized_coverage if qdq else None,
        )
        coverage = f"{summary.coverage_text()}, " if qdq else ""
        info(
            f"  {precision}: {coverage}{summary.int8_compute_layers}/{summary.compute_layers} Conv/GEMM/MatMul "
            f"layers 8-bit, {summary.reformat_layers} reformat layers, {summary.unfused_qdq_layers} unfused Q/DQ, "
            f"{seconds:.1f} s"
        )
        if qdq:
            warning = layer_report.coverage_warning(summary)
            if warning:
                info(f"WARNING: {cfg.name} {precision} engine: {warning}")
                summaries[precision] = dataclasses.replace(summary, warning=warning)
    manifest.save(out.manifest_file(target))
    info(f"{cfg.name}: engines and manifest in {target}")
    # Relative to the project, as records name files: a moved project is the same project.
    engines = Engines(out.key(target), out.key(out.manifest_file(target)), summaries)
    return BuildResult(ENGINE, tuple(ortsession.providers()), engines)
