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

import importlib

# Where each name of the API lives: imported on first use, so ``import pipeline`` (and importing any
# submodule, which imports this package first) stays light. Tools that import a package only to
# find it and then restore ``sys.modules`` (coverage's ``--cov=pipeline....``) must not load
# ONNX's and torch's native extensions, which cannot be loaded twice.
_API = {
    "AccuracySection": "pipeline.config",
    "AxisRange": "pipeline.config",
    "BatchProfile": "pipeline.config",
    "Budget": "pipeline.config",
    "CalibrationSection": "pipeline.config",
    "Config": "pipeline.config",
    "EvaluationSection": "pipeline.config",
    "ExportSection": "pipeline.config",
    "Gate": "pipeline.config",
    "ModelSection": "pipeline.config",
    "QuantizeSection": "pipeline.config",
    "TensorSpec": "pipeline.config",
    "config_from_dict": "pipeline.config",
    "load_config": "pipeline.config",
    "PipelineError": "pipeline.errors",
    "Layout": "pipeline.layout",
    "deploy": "pipeline.stages",
    "engines": "pipeline.stages",
    "run": "pipeline.stages",
    "sensitivity": "pipeline.stages",
    "STAGES": "pipeline.stages:NAMES",
}

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


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    module, _, attr = _API[name].partition(":")
    value = getattr(importlib.import_module(module), attr or name)
    globals()[name] = value  # once: the next look-up is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
