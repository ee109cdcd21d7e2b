"""Write a deployment: Triton model repository or a plain folder, each with its manifest."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import onnx

from pipeline.config import Config
from pipeline.deployment import triton
from pipeline.deployment.checks import Deployable
from pipeline.errors import PipelineError
from pipeline.fileio import atomic_path, sha256_file, sweep, temp_prefix, write_json, write_text, writer_alive
from pipeline.layout import Layout
from pipeline.targets.base import ENGINE


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


@contextlib.contextmanager
def model_folder(to: Path, name: str, replace: bool) -> Iterator[Path]:
    """A hidden sibling of ``to/name`` to fill; once the block succeeds it takes that name, so Triton
    never sees half a model, nor the old model's version folders beside the new config. A folder deploy
    did not write is replaced only with ``replace``."""
    dest = to / name
    if to.exists() and not to.is_dir():
        raise PipelineError(f"--to {to}: is a file, not a folder")
    _sweep(to, name)
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise PipelineError(f"{dest}: a file or a link, not a deployment's folder; move it away")
    if dest.is_dir():  # a killed deploy's temporaries inside the model folder: its own, not the user's
        for folder in (dest, *(p for p in dest.rglob("*") if p.is_dir() and not p.is_symlink())):
            sweep(folder)
    if dest.exists() and any(dest.iterdir()) and not replace and not _ours(dest, name):
        raise PipelineError(
            f"{dest}: holds files trtpipe deploy did not write (its manifest.json lists every file it wrote, "
            f"with its sha256); move it away or pass --replace"
        )
    try:
        to.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=to, prefix=temp_prefix(f"{name}.deploy")))
        try:
            yield staging
            old = to / (temp_prefix(f"{name}.old") + "d")
            if dest.exists():
                os.rename(dest, old)
            os.rename(staging, dest)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:  # a full disk, a read-only folder: the old deployment stays as it was
        raise PipelineError(
            f"--to {to}: cannot write the deployment ({exc.strerror or exc}); nothing was replaced"
        ) from None


MANIFEST = "manifest.json"


def seal(folder: Path, manifest: dict) -> None:
    """Write ``manifest`` last, listing every other file the deployment holds with its sha256: what
    deploy owns, and all it may replace or remove later."""
    files = {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    write_json(Layout.manifest_file(folder), {**manifest, "files": files})


def _ours(folder: Path, name: str) -> bool:
    """A deployment deploy wrote and nobody changed since: its manifest is of model ``name`` and lists
    exactly the files there are, each with the bytes deploy wrote (a version folder dropped in, an
    edited config.pbtxt, or a user's own folder with a manifest.json are not ours)."""
    try:
        manifest = json.loads(Layout.manifest_file(folder).read_text())
    except (OSError, ValueError):
        return False
    listed = manifest.get("files") if isinstance(manifest, dict) and manifest.get("model") == name else None
    if not isinstance(listed, dict):
        return False
    found = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*")}
    found.pop(MANIFEST, None)
    folders = {parent.as_posix() for f in listed for parent in Path(f).parents} - {"."}
    if set(found) != set(listed) | folders:
        return False
    return all(_same_file(found[f], sha) for f, sha in listed.items())


def _same_file(path: Path, sha256: str) -> bool:
    return path.is_file() and not path.is_symlink() and sha256_file(path) == sha256


def _sweep(to: Path, name: str) -> None:
    """Leftovers of a deploy killed midway: an unfinished staging folder goes; an old deployment moved
    aside just before the kill comes back. A deploy still running keeps its own (its process id is in
    their names)."""
    if not to.is_dir():
        return
    for staging in to.glob(f".{name}.deploy.*"):
        if staging.is_dir() and not staging.is_symlink() and not writer_alive(staging.name):
            shutil.rmtree(staging, ignore_errors=True)
    for old in to.glob(f".{name}.old.*"):
        # Only a deployment deploy wrote and moved aside: a stray file or a link of that name is not ours.
        if writer_alive(old.name) or old.is_symlink() or not old.is_dir() or not _ours(old, name):
            continue
        if (to / name).exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(old, to / name)


def write_triton(cfg: Config, out: Layout, d: Deployable, to: Path, replace: bool = False) -> Path:
    graph = onnx.load(
        str(out.graph(d.artifact.name)),  # an engine keeps its source graph's I/O
        load_external_data=False,
    )
    preferred = triton.preferred_batch_sizes(cfg)
    config = triton.build_config(cfg, graph, d.backend, d.device, preferred, tensorrt_accelerator=d.tensorrt_ep)
    text = triton.to_text(config)
    triton.parse(text)  # the text we write must parse back against Triton's schema
    file_name = "model.plan" if d.backend == ENGINE else "model.onnx"
    manifest = manifest_for(cfg, d, f"1/{file_name}", "triton")
    if d.backend == ENGINE:  # the Triton container whose TensorRT loads this engine
        manifest["triton_container"] = triton.container(d.manifest["tensorrt_version"])
    with model_folder(to, cfg.name, replace) as model_dir:
        copy_verified(d.artifact.path, model_dir / "1" / file_name, d.sha256)
        write_text(model_dir / "config.pbtxt", text)
        seal(model_dir, manifest)
    return to / cfg.name


def write_plain(cfg: Config, d: Deployable, to: Path, replace: bool = False) -> Path:
    file_name = f"{d.artifact.name}.plan" if d.backend == ENGINE else f"model.{d.artifact.name}.onnx"
    with model_folder(to, cfg.name, replace) as folder:
        copy_verified(d.artifact.path, folder / file_name, d.sha256)
        write_text(folder / "README.md", _plain_readme(cfg, d, file_name))
        seal(folder, manifest_for(cfg, d, file_name, "plain"))
    return to / cfg.name


def _plain_readme(cfg: Config, d: Deployable, file_name: str) -> str:
    names = ", ".join(f"`{s.name}` {list(s.shape)} {s.dtype}" for s in cfg.inputs)
    outs = ", ".join(f"`{s.name}` {list(s.shape)} {s.dtype}" for s in cfg.outputs)
    if d.backend == ENGINE:
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
{d.manifest.get("compute_capability")}: TensorRT serializes kernels chosen for that GPU and version. To serve
it with Triton, use {triton.container(str(d.manifest.get("tensorrt_version")))["release"]}."""
    elif d.tensorrt_ep:
        load = f"""```python
import onnxruntime as ort  # onnxruntime-gpu, built with TensorRT
providers = [("TensorrtExecutionProvider", {{"trt_int8_enable": True, "trt_engine_cache_enable": True}}),
             "CUDAExecutionProvider"]
session = ort.InferenceSession("{file_name}", providers=providers)
outputs = session.run(None, {{"{cfg.inputs[0].name}": batch}})
```
This Q/DQ graph runs INT8 only on the TensorRT execution provider: on the CUDA execution provider
alone its Q/DQ pairs are simulated in float, slower than the FP16 graph."""
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
