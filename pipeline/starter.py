"""``trtpipe init``: a starting config from a model file and (optionally) a data folder.

From an ONNX file the inputs, outputs, dtypes and dynamic axes are read from the graph; from a
``file.py:callable`` they come from the data (the first ``.npz`` or ``.npy`` file, or the first image
preprocessed as guessed) and one run of the model on it. A folder of images gets a
``[calibration.image]`` guessed from the model's input (or 224x224 RGB NCHW); one with a subfolder per
class is also named as held-out data. Every guess is written with a comment saying so; the config is
then the user's to edit.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import CHANNELS, ImageSection
from pipeline.errors import PipelineError

# A first profile: small batches for latency, up to a batch large enough to time throughput.
BATCH_GUESS = (1, 8, 64)
AXIS_GUESS = (1, 64, 512)  # a sequence-like axis the graph leaves open, where the data does not say
SIZE_FILES = 64  # at most this many data files are read for the sizes a dynamic axis comes in
# Where the model does not say: the size and normalisation ImageNet classifiers take.
IMAGE_GUESS = ImageSection(size=(224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int | str, ...]
    dtype: str
    guessed: str = ""  # why a dimension was named, where it was guessed


def write_starter(model: str, out: Path, data: Path | None = None) -> str:
    """The config's text for ``model`` (an ONNX file or ``file.py:callable``), paths relative to ``out``."""
    name = _name(model)
    if model.endswith(".onnx"):
        inputs, outputs = _from_onnx(Path(model))
        model_block = f'[model]\nonnx = "{_relative(Path(model), out)}"'
    else:
        if data is None:
            raise PipelineError(
                f"trtpipe init {model}: a PyTorch model needs --data DIR (.npz, .npy or images) to learn its inputs"
            )
        inputs, outputs = _from_torch(model, data, out)
        path, _, attr = model.rpartition(":")
        weights = '# weights = "weights.pt"   # a state_dict, if the callable does not load its own'
        model_block = f'[model]\nsource = "{_relative(Path(path), out)}:{attr}"\n{weights}'
    axes = sorted({d for t in inputs for d in t.shape if isinstance(d, str) and d != "batch"})
    seen = _axis_sizes(data, inputs) if data is not None and model.endswith(".onnx") else {}
    lines = [
        f"# Written by trtpipe init from {model}: every guess is commented; see docs/config.md.",
        f'name = "{name}"',
        "",
        model_block,
        "",
        *[block for t in inputs for block in _tensor("inputs", t)],
        *[block for t in outputs for block in _tensor("outputs", t)],
        "# guessed: a TensorRT profile over the batch axis (min, opt = the batch to tune for, max)",
        f"[batch]\nmin = {BATCH_GUESS[0]}\nopt = {BATCH_GUESS[1]}\nmax = {BATCH_GUESS[2]}",
        "",
        *[_axis_block(a, seen.get(a, [])) for a in axes],
        _calibration(data, out, inputs if model.endswith(".onnx") else []),
        BUDGET_BLOCK,
    ]
    text = "\n".join(lines).rstrip() + "\n"
    _check_loads(text, model, out)
    return text


def _check_loads(text: str, model: str, out: Path) -> None:
    """Refuses a config its own guesses made unloadable (a shape the schema refuses), before it is written."""
    import tomllib

    from pipeline.config import config_from_dict

    try:
        config_from_dict(tomllib.loads(text), out)
    except PipelineError as exc:
        raise PipelineError(
            f"trtpipe init {model}: the config it would write does not load ({exc}); nothing written: "
            "write that section by hand (docs/config.md)"
        ) from None


# A model nobody has quantized before may miss the gates on a few layers: the budget keeps the
# fewest of them in FP16 until each 8-bit graph meets its gate, instead of refusing the graph.
BUDGET_BLOCK = (
    "# guessed: quantize keeps the fewest layers in FP16 (at most a quarter) that bring each 8-bit graph\n"
    "# to the gates, and names them; it searches only where a graph misses (minutes on a large model).\n"
    "# Remove this section to have quantize refuse a graph that misses its gate instead.\n"
    "[accuracy.budget]\nmin_cosine = 0.99\n"
)


def _axis_block(axis: str, sizes: list[int]) -> str:
    """The [[axes]] entry for ``axis``: the range the data comes in (opt its most common size), or a
    sequence-like guess where the data does not say."""
    if sizes:
        low, opt, high = min(sizes), max(set(sizes), key=sizes.count), max(sizes)
        why = f"the data comes at {axis} {low}..{high}; widen it to the sizes you will serve"
    else:
        (low, opt, high), why = AXIS_GUESS, "a sequence-like range: set it to the sizes you will serve"
    return f'# guessed: {why}\n[[axes]]\nname = "{axis}"\nmin = {low}\nopt = {opt}\nmax = {high}\n'


def _axis_sizes(data: Path, inputs: list[Tensor]) -> dict[str, list[int]]:
    """The sizes each named axis of ``inputs`` has in the first files of a .npz or .npy folder (a
    file holds one sample or a batch: its rank tells). Images are resized to one size: none."""
    from pipeline.data import NPY, NPZ, read_npy, read_npz

    found = _folder(data)
    if found.kind not in (NPY, NPZ):
        return {}
    sizes: dict[str, list[int]] = {}
    for path in found.files[:SIZE_FILES]:
        arrays = {inputs[0].name: read_npy(path, 1)} if found.kind == NPY else read_npz(path, 1)
        for t in inputs:
            array = arrays.get(t.name)
            if array is None or array.ndim not in (len(t.shape), len(t.shape) - 1):
                continue
            offset = array.ndim - len(t.shape)  # -1: one sample, without the batch axis
            for axis, dim in enumerate(t.shape):
                if isinstance(dim, str) and dim != "batch" and axis + offset >= 0:
                    sizes.setdefault(dim, []).append(int(array.shape[axis + offset]))
    return sizes


def _name(model: str) -> str:
    stem = Path(model.rpartition(":")[0] if ":" in model and not model.endswith(".onnx") else model).stem
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", stem).lstrip(".-") or "model"
    return name[:64]


def _relative(path: Path, out: Path) -> str:
    """``path`` as the config at ``out`` names it: relative to the config's folder."""
    return Path(os.path.relpath(path.resolve(), out.resolve().parent)).as_posix()


def _tensor(kind: str, t: Tensor) -> list[str]:
    shape = ", ".join(f'"{d}"' if isinstance(d, str) else str(d) for d in t.shape)
    note = f"# guessed: {t.guessed}\n" if t.guessed else ""
    return [f'{note}[[{kind}]]\nname = "{t.name}"\nshape = [{shape}]\ndtype = "{t.dtype}"\n']


def _from_onnx(path: Path) -> tuple[list[Tensor], list[Tensor]]:
    import onnx

    if not path.is_file():
        raise PipelineError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's and onnx's own errors: not an ONNX graph
        raise PipelineError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    initializers = {i.name for i in model.graph.initializer}
    inputs = [_onnx_tensor(v, path) for v in model.graph.input if v.name not in initializers]
    outputs = [_onnx_tensor(v, path) for v in model.graph.output]
    return inputs, outputs


def _onnx_tensor(value, path: Path) -> Tensor:
    tensor = value.type.tensor_type
    from pipeline.sources.onnx_file import ONNX_DTYPES

    if tensor.elem_type not in ONNX_DTYPES:
        raise PipelineError(f"{path}: {value.name!r} has a dtype trtpipe does not take ({tensor.elem_type})")
    if not tensor.HasField("shape"):
        raise PipelineError(f"{path}: {value.name!r} has no shape in the graph; give its [[inputs]] by hand")
    shape: list[int | str] = []
    notes = []
    for axis, dim in enumerate(tensor.shape.dim):
        # Unset, or -1 as older Paddle2ONNX writes (RapidOCR's direction classifier): open, not a size.
        is_open = bool(dim.dim_param) or dim.dim_value <= 0
        if axis == 0 and (is_open or dim.dim_value == 1):
            shape.append("batch")
            notes.append(f"axis 0 ({dim.dim_param or dim.dim_value}) is the batch")
        elif is_open:
            # A dim_param with no letters or digits ("?", as some exporters write) names nothing.
            named = dim.dim_param if re.search(r"[A-Za-z0-9]", dim.dim_param) else f"{value.name}_axis{axis}"
            axis_name = re.sub(r"[^A-Za-z0-9_]", "_", named).lower()
            shape.append(axis_name)
            notes.append(f"axis {axis} ({dim.dim_param or '?'}) is dynamic: see [[axes]] {axis_name!r}")
        else:
            shape.append(dim.dim_value)
    return Tensor(value.name, tuple(shape), ONNX_DTYPES[tensor.elem_type], "; ".join(notes))


def _folder(data: Path):
    from pipeline.data import data_folder

    if not data.is_dir():
        raise PipelineError(f"--data {data}: not a folder (a folder of .npz, .npy or image files)")
    return data_folder(data)


def _image_spec(inputs: list[Tensor]) -> tuple[ImageSection, str]:
    """Preprocessing for images, from a rank-4 input's static dims where it has them, and why."""
    shape = inputs[0].shape if len(inputs) == 1 else ()
    if len(shape) == 4 and all(isinstance(d, int) for d in shape[1:]):
        for layout, (c, h, w) in (("NCHW", shape[1:]), ("NHWC", (shape[3], shape[1], shape[2]))):
            channels = {count: name for name, count in CHANNELS.items() if name != "BGR"}.get(c)
            if channels is not None:
                mean = IMAGE_GUESS.mean if channels == "RGB" else None
                std = IMAGE_GUESS.std if channels == "RGB" else None
                dtype = inputs[0].dtype if inputs[0].dtype in ("float32", "float16", "uint8") else "float32"
                mean, std = (None, None) if dtype == "uint8" else (mean, std)
                spec = ImageSection((h, w), "resize", channels, layout, dtype, mean, std)
                return spec, f"size, channels and layout from input {inputs[0].name!r}; mean and std ImageNet's"
    return IMAGE_GUESS, "ImageNet's size, channels and normalisation; check what the model was trained on"


def _from_torch(model: str, data: Path, out: Path) -> tuple[list[Tensor], list[Tensor]]:
    import numpy as np
    import torch

    from pipeline.callables import load_callable
    from pipeline.data import IMAGES, NPY, read_npy, read_npz
    from pipeline.images import read_image

    found = _folder(data)
    first = found.files[0]
    if found.kind == IMAGES:
        arrays = {"input": np.stack([read_image(first, IMAGE_GUESS)] * 2)}
    elif found.kind == NPY:
        arrays = {"input": read_npy(first)}
    else:
        arrays = read_npz(first, 2)  # two rows, read without pickle: enough to run the model once
    note = "axis 0 is the batch (from the data)"
    inputs = [Tensor(k, ("batch", *a.shape[1:]), str(a.dtype), note) for k, a in arrays.items()]
    net = load_callable(model, Path.cwd(), "trtpipe init MODEL")()
    with torch.no_grad():
        outs = net.eval()(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays.values()))
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    names = ["output"] if len(outs) == 1 else [f"output{i}" for i in range(len(outs))]
    outputs = [
        Tensor(n, ("batch", *o.shape[1:]), str(o.detach().numpy().dtype), "a name of your choice, in the model's order")
        for n, o in zip(names, outs, strict=True)
    ]
    return inputs, outputs


def _calibration(data: Path | None, out: Path, inputs: list[Tensor]) -> str:
    """The [calibration] block; for images, ``inputs`` are the graph's (none: a PyTorch model, whose
    input the data defines)."""
    if data is None:
        return (
            "# Calibration needs real data: a folder of .npz files (one array per input, named as the inputs),\n"
            "# of .npy files or images (one input), or a callable 'data.py:calibration' yielding batches.\n"
            "# Without held-out data ([evaluation]), the accuracy gates score calibration rows.\n"
            '[calibration]\nsource = "data"\nsamples = 512\nbatch_size = 32\n'
        )
    from pipeline.data import IMAGES

    found = _folder(data)
    text = (
        "# guessed: how many rows to calibrate on, in batches of batch_size. Without held-out data\n"
        "# ([evaluation]) the accuracy gates score calibration rows.\n"
        f'[calibration]\nsource = "{_relative(data, out)}"\nsamples = 512\nbatch_size = 32\n'
    )
    if found.kind != IMAGES:
        return text
    spec, why = _image_spec(inputs)
    text += f"\n# guessed: {why}\n[calibration.image]\n{_image_block(spec)}"
    if found.classes:
        text += (
            "\n# guessed: images in one subfolder per class: these are labelled. Point source at held-out\n"
            "# images (not the calibration ones) to judge the artifacts on data they were not fitted to.\n"
            f'[evaluation]\nsource = "{_relative(data, out)}"\nmetric = "top1"\n'
        )
    return text


def _image_block(spec: ImageSection) -> str:
    def floats(values: tuple[float, ...]) -> str:
        return "[" + ", ".join(f"{v:g}" for v in values) + "]"

    lines = [
        f"size = [{spec.size[0]}, {spec.size[1]}]   # height, width",
        f'resize = "{spec.resize}"   # or "center-crop", "letterbox"',
        f'channels = "{spec.channels}"',
        f'layout = "{spec.layout}"',
        f'dtype = "{spec.dtype}"',
    ]
    lines += [f"mean = {floats(spec.mean)}"] if spec.mean is not None else []
    lines += [f"std = {floats(spec.std)}"] if spec.std is not None else []
    return "\n".join(lines) + "\n"
