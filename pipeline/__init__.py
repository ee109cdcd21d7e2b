"""trtpipe as a library: a model (a PyTorch module) and a little data to FP16 and calibrated w8a8
graphs, TensorRT engines where a GPU is, compared, benchmarked, reported and deployed.

A config comes from a TOML file or from code::

    import pipeline

    cfg = pipeline.load_config("models/resnet_digits.toml")
    cfg = pipeline.config_from_dict({"name": "net", "model": {"source": "net.py:build"}, ...}, "project/net.toml")

Then one stage, every stage that is not up to date, or a deployment::

    pipeline.run("export", cfg)            # its result (export: the parity rows)
    pipeline.engines(cfg)                  # the names of the stages it ran
    pipeline.deploy(cfg, "/srv/models")    # the deployment's folder

Outputs go under ``engines/NAME`` and ``calib/NAME`` of ``root`` (the working folder by default;
``run(..., root=...)``), exactly as the ``trtpipe`` command writes them (``pipeline.Layout`` names
every path). User errors raise ``PipelineError`` with a one-line message. Nothing process-wide is
changed by importing or calling the library: Ctrl-C handling, the temporary folder and the
allocator policy are the ``trtpipe`` command's own.
"""

from pipeline.config import (
    AccuracySection,
    AxisRange,
    BatchProfile,
    Budget,
    CalibrationSection,
    Config,
    EvaluationSection,
    ExportSection,
    Gate,
    ModelSection,
    QuantizeSection,
    TensorSpec,
    config_from_dict,
    load_config,
)
from pipeline.errors import PipelineError
from pipeline.layout import Layout
from pipeline.stages import NAMES as STAGES
from pipeline.stages import deploy, engines, run, sensitivity

__version__ = "0.1.0"

__all__ = [
    "STAGES",
    "AccuracySection",
    "AxisRange",
    "BatchProfile",
    "Budget",
    "CalibrationSection",
    "Config",
    "EvaluationSection",
    "ExportSection",
    "Gate",
    "Layout",
    "ModelSection",
    "PipelineError",
    "QuantizeSection",
    "TensorSpec",
    "config_from_dict",
    "deploy",
    "engines",
    "load_config",
    "run",
    "sensitivity",
]
