"""Where each stage writes: the one place that spells a path under engines/ and calib/.

Every file a stage writes, a record names or a command reads has its name here, the TensorRT
engine folder's included; records name files relative to the project root (``key``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Config


@dataclass(frozen=True)
class Layout:
    """Output paths of one model, under ``root`` (the working folder by default)."""

    name: str
    root: Path = Path(".")

    @classmethod
    def of(cls, cfg: Config, root: Path | None = None) -> Layout:
        return cls(cfg.name, Path(root) if root is not None else Path.cwd())

    @property
    def output_roots(self) -> tuple[Path, Path]:
        """engines/ and calib/: where the stages write, for every model."""
        return self.root / "engines", self.root / "calib"

    def check_folders(self) -> None:
        """The model's folders under engines/ and calib/ are folders, or are not there yet: a model named
        as a file the checkout ships there (engines/README.md) would write into that file's place."""
        from pipeline.errors import PipelineError

        for folder in (*self.output_roots, self.model_dir, self.ranges.parent):
            if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                raise PipelineError(
                    f"{self.key(folder)}: not a folder of trtpipe's (a file or a link is there); give the model "
                    f"another name in its config"
                )

    @property
    def model_dir(self) -> Path:
        return self.output_roots[0] / self.name

    @property
    def onnx_dir(self) -> Path:
        return self.model_dir / "onnx"

    def graph(self, artifact: str) -> Path:
        """An exported graph (``fp32``, ``fp16``) or a target's quantized one (its ``artifact``)."""
        return self.onnx_dir / f"model.{artifact}.onnx"

    def failed_graph(self, precision: str) -> Path:
        """A quantized graph that missed its accuracy gate, kept aside for inspection, never used."""
        return self.onnx_dir / f"model.{precision}.failed.onnx"

    @property
    def ranges(self) -> Path:
        return self.output_roots[1] / self.name / "ranges.json"

    @property
    def channels(self) -> Path:
        """Per-channel activation maxima of the tensors SmoothQuant smooths."""
        return self.output_roots[1] / self.name / "channels.json"

    @property
    def trt_root(self) -> Path:
        return self.model_dir / "trt"

    def engine_dir(self, device: str) -> Path:
        """The engines of one GPU family and TensorRT version (``Capability.target_dir_name``)."""
        return self.trt_root / device

    @staticmethod
    def engine_file(precision: str, folder: Path = Path(".")) -> Path:
        return folder / f"{precision}.plan"

    @staticmethod
    def layers_file(precision: str, folder: Path = Path(".")) -> Path:
        """The engine inspector's per-layer report of one engine."""
        return folder / f"layers-{precision}.json"

    @staticmethod
    def manifest_file(folder: Path) -> Path:
        """What built the engines in ``folder`` (and a deployment's manifest): hashes, versions, GPU."""
        return folder / "manifest.json"

    @staticmethod
    def timing_cache(folder: Path) -> Path:
        """TensorRT's kernel timings, per GPU and TensorRT version: kept beside the engines."""
        return folder / "timing.cache"

    @property
    def gpu_check(self) -> Path:
        """``trtpipe gpu-check``'s machine-readable result, for every model it ran."""
        return self.output_roots[0] / "gpu-check.json"

    @property
    def build_record(self) -> Path:
        """What the build stage did (engines built, or why TensorRT was skipped)."""
        return self.model_dir / "build.json"

    @property
    def results_dir(self) -> Path:
        return self.model_dir / "results"

    def result(self, stage: str) -> Path:
        """``quantize``, ``compare`` or ``bench``: what the stage measured."""
        return self.results_dir / f"{stage}.json"

    @property
    def bench_csv(self) -> Path:
        return self.results_dir / "bench.csv"

    @property
    def sensitivity(self) -> Path:
        """Per-layer sensitivity of each w8a8 graph (trtpipe sensitivity, or quantize under a budget)."""
        return self.result("sensitivity")

    @property
    def reports_dir(self) -> Path:
        return self.model_dir / "reports"

    @property
    def report(self) -> Path:
        return self.reports_dir / "report.md"

    def chart(self, what: str) -> Path:
        """``latency`` or ``sensitivity``: a picture the report shows."""
        return self.reports_dir / f"{what}.png"

    def record(self, stage: str) -> Path:
        """What a stage consumed and wrote, by sha256 (``pipeline.records``)."""
        return self.model_dir / "records" / f"{stage}.json"

    def key(self, path: Path) -> str:
        """How records name a file: relative to ``root`` when inside it, else absolute."""
        path = Path(path).absolute()
        root = self.root.absolute()
        return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)

    def log(self, stage: str) -> Path:
        """A stage's full log (e.g. every exporter's traceback), named in its one-line errors."""
        return self.model_dir / "logs" / f"{stage}.log"
