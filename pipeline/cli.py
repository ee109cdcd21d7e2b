"""``trtpipe``: one command per stage, each a thin call into ``pipeline.stages``."""

from __future__ import annotations

import atexit
import functools
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pipeline.errors import PipelineError, UserCodeError
from pipeline.stages import NAMES as STAGE_NAMES
from pipeline.stages.build import BACKENDS
from pipeline.targets import REGISTRY as TARGETS
from pipeline.targets.base import FP8, FP16, FP32, QUANTIZED


def _config_option(name: str = "config_path", multiple: bool = False):
    return click.option(
        "-c",
        "--config",
        name,
        required=True,
        multiple=multiple,
        type=click.Path(dir_okay=False, path_type=Path),
        help="Model config, e.g. models/resnet_digits.toml" + (" (repeatable)." if multiple else "."),
    )


config_option = _config_option()

targets_option = click.option(
    "--target",
    "targets",
    multiple=True,
    type=click.Choice(list(TARGETS)),
    help="Only these targets (repeatable); default: every one in [quantize] targets.",
)


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Show PipelineError as one line with exit status 1; other exceptions are bugs and keep tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pipeline.interrupts import imports_held

        over = _ctrl_c_ignored_once_over(click.get_current_context())
        try:
            with imports_held():  # a Ctrl-C while torch, ONNX Runtime, ... initialise waits for them
                return fn(*args, **kwargs)
        except UserCodeError as exc:  # the user's own code raised: one line, its traceback in the model's logs
            raise click.ClickException(f"{exc} (full traceback: {_keep_traceback(exc)})") from None
        except PipelineError as exc:
            raise click.ClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        except KeyboardInterrupt:  # Ctrl-C: one line, the shell's status for SIGINT, no traceback
            click.echo("interrupted", err=True)
            raise SystemExit(130) from None
        except OSError as exc:  # a full disk, a read-only folder, a file in a folder's place: where it is
            from pipeline.fileio import path_error

            error = path_error(exc)
            if error is None:
                raise
            raise click.ClickException(str(error)) from None
        finally:
            over()

    return wrapper


def _keep_traceback(exc: UserCodeError) -> Path | str:
    """The traceback of the user's code, in engines/NAME/logs/user-code.log of the command's config."""
    from pipeline.fileio import write_text
    from pipeline.layout import Layout

    ctx = click.get_current_context()
    cfg = (ctx.obj or {}).get("config")
    if cfg is None:  # the config itself did not load: there is no model folder to keep it in
        return "not kept: the config did not load"
    out = Layout.of(cfg)
    write_text(out.log("user-code"), exc.traceback_text)
    return out.key(out.log("user-code"))


def _ctrl_c_ignored_once_over(ctx: click.Context) -> Callable[[], object]:
    """What ignores Ctrl-C once the command's work is over (done, failed or interrupted), while its
    context closes (its temporaries removed) and the process exits (torch and ONNX Runtime torn down):
    a Ctrl-C then changed nothing but said "Aborted!" (exit 1) or killed the process (exit -2). An
    in-process caller (a test) gets its handler back when the context closes."""
    previous = signal.getsignal(signal.SIGINT)
    ctx.call_on_close(lambda: signal.signal(signal.SIGINT, previous))  # registered first: runs last
    atexit.register(signal.signal, signal.SIGINT, signal.SIG_IGN)
    return lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)


def _load(config_path: Path):
    """The config; from here on this process's temporary files go inside the model's engines folder."""
    from pipeline.config import load_config
    from pipeline.fileio import keep_temporaries_in
    from pipeline.layout import Layout

    cfg = load_config(config_path)
    ctx = click.get_current_context()
    ctx.ensure_object(dict)["config"] = cfg
    Layout.of(cfg).check_folders()  # before the scratch folder goes inside the model's folder
    ctx.call_on_close(keep_temporaries_in(Layout.of(cfg).model_dir))
    return cfg


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="trtpipe")
def main() -> None:
    """PyTorch model -> FP32/FP16 ONNX -> calibrated w8a8 Q/DQ graph -> TensorRT engines, checked and benchmarked."""
    from pipeline.allocator import return_large_blocks

    return_large_blocks()


@main.command()
@config_option
@click.option(
    "--until",
    type=click.Choice(list(STAGE_NAMES)),
    default="report",
    show_default=True,
    help="The last stage to bring up to date.",
)
@_user_errors
def engines(config_path: Path, until: str) -> None:
    """Run each stage whose record is missing or whose inputs changed since it ran: config
    sections, weights, model source, calibration and held-out data, code, earlier stages' files
    (by sha256, not modification times). What make engines calls."""
    from pipeline import stages

    stages.engines(_load(config_path), until=until)


@main.command()
@config_option
@_user_errors
def export(config_path: Path) -> None:
    """Export engines/NAME/onnx/model.fp32.onnx and model.fp16.onnx, checked against PyTorch."""
    from pipeline import stages

    stages.run("export", _load(config_path))


@main.command()
@config_option
@click.option("--force", is_flag=True, help="Recalibrate even when the cache is up to date.")
@_user_errors
def calibrate(config_path: Path, force: bool) -> None:
    """Activation ranges from the calibration data into calib/NAME/ranges.json (rebuilt when stale)."""
    from pipeline import stages

    stages.run("calibrate", _load(config_path), force=force)


@main.command()
@config_option
@targets_option
@click.option(
    "--force",
    is_flag=True,
    help=(
        "Write a graph that fails its accuracy gate as the artifact anyway, and under an [accuracy.budget] "
        "out of reach the closest graph its search scored (quantize.json records it)."
    ),
)
@_user_errors
def quantize(config_path: Path, targets: tuple[str, ...], force: bool) -> None:
    """w8a8 Q/DQ graphs: model.w8a8.onnx (TensorRT, FP16 graph) and model.w8a8-cpu.onnx (ONNX Runtime CPU).

    \b
    A graph that fails its [accuracy] gate is kept aside as model.NAME.failed.onnx
    and quantize exits non-zero, unless --force.
    """
    from pipeline import stages

    stages.run("quantize", _load(config_path), targets=targets, force=force)


@main.command()
@config_option
@targets_option
@_user_errors
def sensitivity(config_path: Path, targets: tuple[str, ...]) -> None:
    """Per-layer sensitivity of each w8a8 graph into results/sensitivity.json.

    \b
    For every quantized Conv/ConvTranspose/Gemm/MatMul: the output against FP32
    (centered cosine, relative error, the metric where labels exist) with only that
    layer quantized, and with only that layer left in FP16, on [accuracy]
    sensitivity_rows held-out rows. The report draws it as a table and a chart.
    """
    from pipeline import stages

    stages.sensitivity(_load(config_path), names=targets)


@main.command()
@config_option
@click.option(
    "--backend",
    type=click.Choice(list(BACKENDS)),
    default="auto",
    show_default=True,
    help="auto: TensorRT when it imports and a CUDA GPU is visible, else ONNX Runtime.",
)
@_user_errors
def build(config_path: Path, backend: str) -> None:
    """Build TensorRT engines: fp16.plan from model.fp16.onnx, w8a8.plan from model.w8a8.onnx.

    \b
    Engines go to engines/NAME/trt/<gpu>-sm<cc>-trt<version>/ with manifest.json
    (hashes, TensorRT version, GPU, profiles, builder settings) and
    layers-<precision>.json (the engine inspector's per-layer precisions).
    An engine runs only on the GPU family (compute capability) and the TensorRT
    version that built it, so each lives in a folder named for both, and loading
    checks the manifest. TensorRT 11 builds strongly typed networks: precision
    comes from the graph (FP16 graph, Q/DQ graph), never from builder flags.
    Without TensorRT or a GPU, auto records why and later stages use ONNX Runtime.
    """
    from pipeline import stages

    stages.run("build", _load(config_path), backend=backend)


@main.command()
@config_option
@_user_errors
def compare(config_path: Path) -> None:
    """Accuracy of every deployable artifact against FP32 (Polygraphy Comparator); fails on a broken gate."""
    from pipeline import stages

    stages.run("compare", _load(config_path))


@main.command()
@config_option
@click.option(
    "--repeat",
    type=click.IntRange(1, 10),
    default=1,
    show_default=True,
    help="Run the whole benchmark this many times and check each median against the other run's spread.",
)
@_user_errors
def bench(config_path: Path, repeat: int) -> None:
    """Latency per artifact and batch size: median, p90, p99, spread, items/s; JSON and CSV in results/.

    \b
    TensorRT engines are timed as execute_async_v3 + stream sync on device-resident
    buffers (no host copies, no per-call checks) at [bench] gpu_batches. Without TensorRT, ONNX Runtime
    times host arrays in and out: on a CPU, the FP32 graph against the ONNX
    Runtime CPU w8a8 graph at [bench] cpu_batches with [bench] threads.
    """
    from pipeline import stages

    stages.run("bench", _load(config_path), repeat=repeat)


@main.command()
@config_option
@_user_errors
def report(config_path: Path) -> None:
    """Write engines/NAME/reports/report.md and latency.png from the saved compare/bench/build results."""
    from pipeline import stages

    stages.run("report", _load(config_path))


@main.command()
@config_option
@click.option(
    "--to",
    "to",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Destination folder (a Triton model repository for --format triton).",
)
@click.option(
    "--precision",
    type=click.Choice([QUANTIZED, FP8, FP16, FP32]),
    default=None,
    help="Default: what the report's verdict chooses at the largest batch benched ([verdict] min_speedup).",
)
@click.option("--format", "fmt", type=click.Choice(["triton", "plain"]), default="triton", show_default=True)
@click.option("--force", is_flag=True, help="Deploy despite a failed accuracy gate (recorded in the manifest).")
@click.option("--replace", is_flag=True, help="Replace a folder at the target that trtpipe deploy did not write.")
@_user_errors
def deploy(config_path: Path, to: Path, precision: str | None, fmt: str, force: bool, replace: bool) -> None:
    """Deploy an engine (or, without TensorRT, the ONNX graph) with its manifest.

    \b
    triton: DIR/NAME/config.pbtxt + DIR/NAME/1/model.plan (TensorRT) or model.onnx
            (onnxruntime backend), config validated against Triton's schema.
    plain:  the file, manifest.json and a README on loading it.
    Refuses a file whose sha256 differs from its manifest, a precision that was
    not built, and an artifact whose compare gate failed (unless --force).
    """
    from pipeline import stages

    stages.deploy(_load(config_path), to, precision=precision, fmt=fmt, force=force, replace=replace)


@main.command()
@click.argument("model")
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    help="A folder of .npz or .npy files or images: calibration data (and, for a PyTorch model, its inputs).",
)
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The config to write, e.g. models/mymodel.toml (not replaced if it exists).",
)
@_user_errors
def init(model: str, data: Path | None, output: Path) -> None:
    """Write a starting config for MODEL: an ONNX file, or file.py:callable (a PyTorch module; needs --data).

    \b
    Inputs, outputs, dtypes and dynamic axes come from the graph (or the data and
    one run of the model); the batch profile and other guesses are commented.
    """
    from pipeline.fileio import disk_full_is_user_error, write_text
    from pipeline.starter import write_starter

    if output.exists():
        raise PipelineError(f"{output}: exists; trtpipe init writes a new config (remove it or name another)")
    text = write_starter(model, output, data)
    with disk_full_is_user_error(output):
        output.parent.mkdir(parents=True, exist_ok=True)
        write_text(output, text)
    click.echo(f"wrote {output}; read its guesses, then: trtpipe engines -c {output}")


@main.command("gpu-check")
@_config_option("config_paths", multiple=True)
@_user_errors
def gpu_check(config_paths: tuple[Path, ...]) -> None:
    """On a GPU machine, first: every stage on TensorRT, then INT8 coverage, accuracy and speed per model.

    \b
    Writes engines/gpu-check.json; exits non-zero unless every check passed.
    Without TensorRT or a GPU it stops with the probe's one-line reason.
    """
    from pipeline.targets.tensorrt.gpu_check import gpu_check as check

    if not check(list(config_paths))["passed"]:
        raise PipelineError("gpu-check failed; see engines/gpu-check.json")


if __name__ == "__main__":
    main()
