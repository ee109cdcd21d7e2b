"""Write a deployment: Triton model repository or a plain folder, each with its manifest."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import onnx

from pipeline.artifacts import Artifacts
from pipeline.config import Config
from pipeline.deploy import triton
from pipeline.deploy.checks import Deployable
from pipeline.errors import PipelineError
from pipeline.fileio import atomic_path, read_json, sha256_file, write_json, write_text


def copy_verified(src: Path, dest: Path, sha256: str) -> None:
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
        if sha256_file(tmp) != sha256:
            raise PipelineError(f"{src}: changed while being copied; deploy again")


def manifest_for(cfg: Config, d: Deployable, file_name: str, fmt: str) -> dict:
    gate = (
        {"passed": True}
        if not d.gate_failures
        else {"passed": False, "overridden_with_force": True, "failures": list(d.gate_failures)}
    )
    return {
        "model": cfg.name,
        "precision": d.artifact.name,
        "format": fmt,
        "backend": d.backend,
        "device": d.device,
        "file": file_name,
        "sha256": d.sha256,
        "accuracy_gate": gate,
        "deployed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **d.manifest,
    }


def write_triton(cfg: Config, out: Artifacts, d: Deployable, to: Path) -> Path:
    graph = onnx.load(
        str(out.graph(d.artifact.name)),  # an engine keeps its source graph's I/O
        load_external_data=False,
    )
    bench = read_json(out.results_dir / "bench.json")  # optional: no preferred batch sizes without it
    config = triton.build_config(cfg, graph, d.backend, d.device, triton.preferred_batch_sizes(bench, d.artifact.name))
    text = triton.to_text(config)
    triton.parse(text)  # the text we write must parse back against Triton's schema
    model_dir = to / cfg.name
    file_name = "model.plan" if d.backend == "tensorrt" else "model.onnx"
    copy_verified(d.artifact.path, model_dir / "1" / file_name, d.sha256)
    write_json(model_dir / "manifest.json", manifest_for(cfg, d, f"1/{file_name}", "triton"))
    write_text(model_dir / "config.pbtxt", text)  # last: Triton only sees a model once its config exists
    return model_dir


def write_plain(cfg: Config, d: Deployable, to: Path) -> Path:
    folder = to / cfg.name
    file_name = f"{d.artifact.name}.plan" if d.backend == "tensorrt" else f"model.{d.artifact.name}.onnx"
    copy_verified(d.artifact.path, folder / file_name, d.sha256)
    write_json(folder / "manifest.json", manifest_for(cfg, d, file_name, "plain"))
    write_text(folder / "README.md", _plain_readme(cfg, d, file_name))
    return folder


def _plain_readme(cfg: Config, d: Deployable, file_name: str) -> str:
    names = ", ".join(f"`{s.name}` {list(s.shape)} {s.dtype}" for s in cfg.inputs)
    outs = ", ".join(f"`{s.name}` {list(s.shape)} {s.dtype}" for s in cfg.outputs)
    if d.backend == "tensorrt":
        load = f"""```python
import tensorrt as trt
# Check manifest.json first: sha256 of {file_name}, TensorRT {d.manifest.get("tensorrt_version")},
# compute capability {d.manifest.get("compute_capability")} ({d.manifest.get("gpu_name")}).
runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
engine = runtime.deserialize_cuda_engine(open("{file_name}", "rb").read())
context = engine.create_execution_context()
context.set_input_shape("{cfg.inputs[0].name}", (batch, ...))  # within the profile in manifest.json
# set_tensor_address for every I/O tensor, then context.execute_async_v3(stream)
```
The engine only runs with TensorRT {d.manifest.get("tensorrt_version")} on a GPU of compute capability
{d.manifest.get("compute_capability")}: TensorRT serializes kernels chosen for that GPU and version."""
    else:
        load = f"""```python
import onnxruntime as ort
session = ort.InferenceSession("{file_name}", providers=["CPUExecutionProvider"])
outputs = session.run(None, {{"{cfg.inputs[0].name}": batch}})
```"""
    return (
        f"# {cfg.name} ({d.artifact.name})\n\nInputs: {names}. Outputs: {outs}.\n"
        f"Check `sha256` in `manifest.json` before loading.\n\n{load}\n"
    )
