"""Inputs a user can get wrong that used to end in a traceback or pass silently: each is one line
naming the file, key or tensor and the fix."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipeline import data, onnxutil
from pipeline.config import QuantizeSection, load_config
from pipeline.errors import PipelineError
from pipeline.fileio import read_json
from pipeline.targets.tensorrt.placement import plan_tensorrt
from tests import graphs
from tests.conftest import BAD_DATA, USER_MODEL, config_text

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def config(tmp_path):
    net = tmp_path / "net.py"
    net.write_text(USER_MODEL + BAD_DATA)

    def make(**sections: str):
        path = tmp_path / "tiny.toml"
        path.write_text(config_text(str(net), **sections))
        return load_config(path)

    make.net = net
    return make


def _one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def test_an_empty_graph_file_is_not_an_empty_model(tmp_path):
    (tmp_path / "model.fp32.onnx").write_bytes(b"")
    with pytest.raises(PipelineError, match=r"model\.fp32\.onnx: an ONNX file without a graph .*re-run its stage"):
        onnxutil.load(tmp_path / "model.fp32.onnx")


def test_a_truncated_result_file_names_the_stage(tmp_path):
    (tmp_path / "build.json").write_text('{"backend": "onnxrun')
    with pytest.raises(PipelineError, match=r"build\.json: not readable JSON .*; re-run trtpipe build") as caught:
        read_json(tmp_path / "build.json", "build")
    _one_line(caught)


def test_a_truncated_npz_file(config, tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    np.savez(folder / "a.npz", x=np.zeros((16, 3, 8, 8), np.float32))
    whole = (folder / "a.npz").read_bytes()
    (folder / "a.npz").write_bytes(whole[: len(whole) // 2])
    cfg = config(calibration=f'[calibration]\nsource = "{folder}"\nsamples = 16\nbatch_size = 16')
    with pytest.raises(PipelineError, match=r"a\.npz: not a readable \.npz file"):
        list(data.calibration_batches(cfg))


def test_a_calibration_callable_returning_none(config):
    cfg = config(calibration=f'[calibration]\nsource = "{config.net}:returns_none"\nsamples = 16\nbatch_size = 16')
    with pytest.raises(PipelineError, match=r"returns_none' returned NoneType, not an iterable of batches"):
        list(data.calibration_batches(cfg))


def test_labels_shaped_as_a_column_are_refused(config):
    """(B, 1) labels broadcast against (B,) predictions: perfect logits scored 25% top-1."""
    cfg = config(evaluation=f'[evaluation]\nsource = "{config.net}:labels_as_a_column"')
    with pytest.raises(PipelineError, match=r"batch 0: labels of shape \(8, 1\); expected .* shape \(8,\)"):
        list(data.heldout_batches(cfg, 8))


def test_held_out_data_without_a_batch_is_refused(config):
    """An accuracy check over no data would pass having checked nothing."""
    cfg = config(evaluation=f'[evaluation]\nsource = "{config.net}:nothing_held_out"')
    with pytest.raises(PipelineError, match=r"nothing_held_out' yielded no batches"):
        list(data.heldout_batches(cfg, 8))


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        (QuantizeSection(exclude_nodes=("conv9",)), r"exclude_nodes names 'conv9', which is no node"),
        (QuantizeSection(exclude_op_types=("Comv",)), r"exclude_op_types names 'Comv', which is no ONNX op type"),
    ],
)
def test_a_typo_in_an_exclusion_is_refused(settings, words):
    with pytest.raises(PipelineError, match=words):
        plan_tensorrt(graphs.residual(), settings)


def test_exclusions_of_ops_the_graph_lacks_are_fine():
    plan = plan_tensorrt(graphs.residual(), QuantizeSection(exclude_nodes=("conv2",), exclude_op_types=("MatMul",)))
    assert [s.node for s in plan.skipped if "excluded" in s.reason] == ["conv2"]


def test_a_typo_in_keep_fp32_is_refused(config):
    from pipeline.fp16 import Fp16OnnxFromOnnx

    cfg = config(top='name = "tiny"\n[export]\nkeep_fp32 = ["LayerNormalisation"]')
    with pytest.raises(PipelineError, match=r"export\.keep_fp32 names 'LayerNormalisation', which is no ONNX op"):
        Fp16OnnxFromOnnx(cfg)(graphs.residual())


@pytest.mark.parametrize(("stage", "damaged"), [("compare", "build.json"), ("report", "bench.json")])
def test_a_damaged_result_of_an_earlier_stage_is_named_not_a_key_error(pipeline_run, stage, damaged):
    """Valid JSON without the keys a stage reads (an edit, another version): its record no longer
    vouches for it, and the line says which stage writes it again."""
    from pipeline import stages

    cfg, _, out = pipeline_run
    if stage == "report":
        stages.run("compare", cfg)
        stages.run("bench", cfg)
    path = out.build_record if damaged == "build.json" else out.result("bench")
    path.write_text("{}")
    writer = {"build.json": "build", "bench.json": "bench"}[damaged]
    with pytest.raises(
        PipelineError, match=rf"{damaged} changed since trtpipe {writer} wrote it; re-run trtpipe {writer}"
    ):
        stages.run(stage, cfg)


def _calibration(config, fn: str):
    return config(calibration=f'[calibration]\nsource = "{config.net}:{fn}"\nsamples = 64\nbatch_size = 16')


def test_a_data_callable_with_another_signature(config):
    with pytest.raises(PipelineError, match=r"wrong_signature' cannot be called with samples, batch_size: .*'n'"):
        list(data.calibration_batches(_calibration(config, "wrong_signature")))


def test_endless_empty_batches_stop_at_the_first(config):
    with pytest.raises(PipelineError, match=r"empty_batches_forever' batch 0: a batch without rows"):
        list(data.calibration_batches(_calibration(config, "empty_batches_forever")))


def test_fewer_samples_than_asked_for_are_said(config, capsys):
    assert sum(len(f["x"]) for f in data.calibration_batches(_calibration(config, "short"))) == 8
    assert "ran out after 8 of the 64 samples asked for" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ("[bench]\nwarmup = -1", r"bench: warmup and min_seconds must be 0 or more"),
        ("[bench]\nthreads = 0", r"bench: .*iterations and threads 1 or more"),
        ("[accuracy.w8a8]\nmin_cosine = 2.0", r"accuracy\.w8a8: min_cosine 2\.0 must be in \[-1, 1\]"),
        ("[accuracy.fp16]\nmax_rel_error = -0.1", r"accuracy\.fp16: max_rel_error -0\.1 must be 0 or more"),
        ("[accuracy.w8a8_cpu]\nmin_top1_agreement = 97.0", r"w8a8_cpu: min_top1_agreement 97\.0 must be in \[0, 1\]"),
        ("[bench]\nmin_seconds = inf", r"bench: min_seconds inf must be a finite number of seconds"),
        ("[build]\nworkspace_mib = -1", r"build: workspace_mib -1 must be 1 or more"),  # TensorRT's pool limit
    ],
)
def test_bench_and_gate_values_are_checked(config, section, words):
    with pytest.raises(PipelineError, match=rf"tiny\.toml: \S*{words}"):
        config(top=f'name = "tiny"\n{section}')


def test_more_samples_than_calibration_could_use_are_refused(config):
    """An endless data callable would be read 10**20 rows long."""
    with pytest.raises(PipelineError, match=r"tiny\.toml: calibration: samples 100000000000000000000 is more than "):
        config(calibration=f'[calibration]\nsource = "{config.net}:calibration"\nsamples = {10**20}')


def test_a_checkpoint_holding_code_is_named_so(config, tmp_path):
    """torch's advice (weights_only=False) would run the pickled code: it is not quoted."""
    import os
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo never",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"conv1.weight": Payload()}, protocol=2))
    from pipeline.sources.torch.torch_model import model_from_config

    cfg = config(model=f'[model]\nsource = "{config.net}:build"\nweights = "{tmp_path / "evil.pt"}"')
    with pytest.raises(
        PipelineError, match=r"evil\.pt: holds objects other than tensors, which trtpipe never"
    ) as caught:
        model_from_config(cfg)
    assert "weights_only" not in str(caught.value)


def test_a_state_dict_with_a_value_that_is_no_tensor(config, tmp_path):
    import torch

    from pipeline.sources.torch.torch_model import model_from_config

    torch.save({"conv1.weight": 3}, tmp_path / "odd.pt")
    cfg = config(model=f'[model]\nsource = "{config.net}:build"\nweights = "{tmp_path / "odd.pt"}"')
    with pytest.raises(PipelineError, match=r"odd\.pt: 'conv1\.weight' is a int; a state_dict maps names to tensors"):
        model_from_config(cfg)


# Writes under a file size limit (SIGXFSZ ignored) fail with EFBIG, as they fail with ENOSPC on a
# full disk: the child prints what the write raised.
_FULL_DISK_CHILD = textwrap.dedent(
    """
    import resource, signal, sys
    from pathlib import Path
    from pipeline import onnxutil
    from pipeline.fileio import write_bytes
    from tests import graphs

    folder = Path(sys.argv[1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    for write in (
        lambda: write_bytes(folder / "big.bin", bytes(100_000)),
        lambda: onnxutil.staged({folder / "model.onnx": graphs.residual()}).__enter__(),
    ):
        try:
            write()
            print("written")
        except Exception as exc:
            print(type(exc).__name__, str(exc).splitlines()[0])
    """
)


def test_a_full_disk_is_one_line_naming_the_file(tmp_path):
    child = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_CHILD, str(tmp_path)], capture_output=True, text=True, cwd=REPO
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.splitlines() == [
        f"PipelineError {tmp_path / 'big.bin'}: disk full (File too large); free space there and re-run",
        f"PipelineError {tmp_path / 'model.onnx'}: disk full (File too large); free space there and re-run",
    ]
    assert list(tmp_path.iterdir()) == []  # no temp file, no staging folder, nothing that looks complete


def test_a_full_disk_inside_a_library_is_one_line_naming_the_folder(tmp_path, monkeypatch):
    """ONNX Runtime's quantizer saving its copy of the graph in our temporary folder: its OSError
    (EFBIG, no file name) was a traceback. The line names the model's folder the temporaries live in."""
    import errno
    import tempfile

    import click

    from pipeline.cli import _user_errors

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "engines" / "tiny" / ".scratch.trtpipe-7.x1"))

    @_user_errors
    def quantize() -> None:
        raise OSError(errno.EFBIG, "File too large")

    with pytest.raises(click.ClickException) as caught, click.Context(click.Command("quantize")):
        quantize()
    folder = tmp_path / "engines" / "tiny"
    assert caught.value.message == f"{folder}: disk full (File too large); free space there and re-run"


# ONNX Runtime's profiler writes its JSON in C++: on a full disk (here a file size limit) the file is
# cut short without an error; reading it was a JSONDecodeError traceback (bench on a full disk).
_FULL_DISK_PROFILE_CHILD = textwrap.dedent(
    """
    import resource, signal, sys, tempfile
    from pathlib import Path
    import numpy as np
    from pipeline import onnxutil
    from pipeline.errors import PipelineError
    from pipeline.evaluate.profile import op_time_share
    from tests import graphs

    folder = Path(sys.argv[1])
    graph = onnxutil.save(graphs.residual(), folder / "model.onnx")
    tempfile.tempdir = str(folder)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))
    try:
        op_time_share(graph, {"x": np.ones((1, 16, 8, 8), np.float32)}, 1, runs=50)
        print("read")
    except PipelineError as exc:
        print(str(exc))
    """
)


def test_a_profile_cut_short_by_a_full_disk_is_one_line(tmp_path):
    child = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_PROFILE_CHILD, str(tmp_path)], capture_output=True, text=True, cwd=REPO
    )
    assert child.returncode == 0, child.stderr
    assert re.fullmatch(
        rf"{tmp_path}/trtpipe\.prof\.\w+/ort\S*\.json: ONNX Runtime's profile is cut short \(.*\); "
        rf"as on a full disk: free space in {tmp_path} and re-run\n",
        child.stdout,
    ), child.stdout


# --- sizes and counts a user gives are bounded at load (issue 23, item 8) --------------------------


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ("[bench]\nwarmup = 1000000000000", r"bench: warmup 1000000000000 is more than bench can use"),
        ("[bench]\nthreads = 100000", r"bench: threads 100000 is more than bench can use \(at most \d+ here\)"),
        ("[bench]\nmin_seconds = 86400.0", r"bench: min_seconds 86400.0 is more than bench can use"),
        (
            "[export]\nparity_batches = [1000000]",
            r"key 'export.parity_batches' = \[1000000\]: batch 1000000 is outside",
        ),
    ],
)
def test_counts_beyond_what_can_run_are_refused_at_load(config, section, words):
    with pytest.raises(PipelineError, match=rf"tiny\.toml: \S*{words}"):
        config(top=f'name = "tiny"\n{section}')


def test_a_profile_beyond_what_triton_or_tensorrt_serve_is_refused(config):
    """Triton's max_batch_size is an int32: max = 2**63 - 1 passed every stage and crashed deploy."""
    with pytest.raises(PipelineError, match=r"tiny\.toml: batch\[0\]: max 9223372036854775807 is more than a profile"):
        config(batch=f"[batch]\nmin = 1\nopt = 8\nmax = {2**63 - 1}")


def test_a_name_too_long_for_what_is_derived_from_it_is_refused_at_load(config):
    with pytest.raises(PipelineError, match=r"tiny\.toml: name is 230 characters; at most 100"):
        config(top=f'name = "{"n" * 230}"')


def test_an_endless_held_out_stream_stops_at_its_samples(config):
    """quantize's gate and compare read every held-out batch: an endless stream hung them."""
    source = f'[evaluation]\nsource = "{config.net}:endless_heldout"\nsamples = 100'
    rows = sum(len(feed["x"]) for feed, _ in data.heldout_batches(config(evaluation=source), 16))
    assert rows == 100


def test_labels_that_are_not_class_indices_are_refused(config):
    """String labels never equal a predicted index: top-1 read 0% for FP32 and every artifact, and passed."""
    source = f'[evaluation]\nsource = "{config.net}:labels_as_strings"'
    with pytest.raises(PipelineError, match=r"labels_as_strings' batch 0: labels of dtype <U\d+; give class indices"):
        list(data.heldout_batches(config(evaluation=source), 16))


def test_a_model_named_as_a_file_in_engines_is_refused_before_writing(tmp_path, user_model, monkeypatch):
    """A model named README.md (the checkout ships engines/README.md) wrote a folder in that file's place."""
    from pipeline import stages
    from pipeline.config import load_config
    from tests.conftest import write_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "engines").mkdir()
    (tmp_path / "engines" / "README.md").write_text("what engines/ holds\n")
    cfg = load_config(write_config(tmp_path, user_model, top='name = "README.md"'))
    with pytest.raises(PipelineError, match=r"^engines/README.md: not a folder of trtpipe's .* another name"):
        stages.run("export", cfg)
    assert (tmp_path / "engines" / "README.md").read_text() == "what engines/ holds\n"


def test_a_file_where_a_folder_should_be_is_one_line_at_the_command(tmp_path, user_model, monkeypatch):
    """An OSError on a path (here engines/tiny/logs is a file) is one line naming the path and the cause."""
    from click.testing import CliRunner

    from pipeline.cli import main
    from tests.conftest import write_config

    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, user_model)
    (tmp_path / "engines" / "tiny").mkdir(parents=True)
    (tmp_path / "engines" / "tiny" / "logs").write_text("not a folder")
    result = CliRunner().invoke(main, ["export", "-c", str(config)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    last = result.output.splitlines()[-1]
    cause = "cannot be written or read here: exists and is in the way"
    assert re.fullmatch(rf"Error: \S*/engines/tiny/logs: {cause} .*", last)


# --- errors inside the user's own code (issue 23, item 11) -------------------------------------------


@pytest.mark.parametrize(
    ("extra", "model", "calibration", "words"),
    [
        (  # the builder raises on its own argument
            "def build_checked(channels=16):\n"
            "    if channels < 1:\n"
            "        raise ValueError('channels must be positive')\n",
            '[model]\nsource = "NET:build_checked"\n[model.args]\nchannels = -1',
            None,
            r"ValueError: channels must be positive \(building the model with model.source",
        ),
        (  # a syntax error in the model's file
            "def broken(:\n",
            '[model]\nsource = "NET:build"',
            None,
            r"SyntaxError: invalid syntax \(importing model.source net.py\)",
        ),
        (  # the calibration generator raises midway
            "def data_raising(samples, batch_size):\n"
            "    yield {'x': images(batch_size)}\n"
            "    raise OSError('disk went away')\n",
            '[model]\nsource = "NET:build"',
            '[calibration]\nsource = "NET:data_raising"\nsamples = 64\nbatch_size = 16',
            r"OSError: disk went away \(reading a batch from calibration.source",
        ),
    ],
)
def test_an_error_in_the_users_code_is_one_line_naming_its_line(
    tmp_path, monkeypatch, extra, model, calibration, words
):
    from click.testing import CliRunner

    from pipeline.cli import main

    monkeypatch.chdir(tmp_path)
    net = tmp_path / "net.py"
    net.write_text(USER_MODEL + extra)
    marker = next(m for m in ("raise ValueError", "def broken", "raise OSError") if m in extra)
    line = next(i for i, text in enumerate((USER_MODEL + extra).splitlines(), 1) if marker in text)
    sections = {"model": model.replace("NET", str(net))}
    if calibration is not None:
        sections["calibration"] = calibration.replace("NET", str(net))
    (tmp_path / "tiny.toml").write_text(config_text(str(net), **sections))
    stage = "calibrate" if calibration is not None else "export"
    if stage == "calibrate":
        assert CliRunner().invoke(main, ["export", "-c", "tiny.toml"]).exit_code == 0
    result = CliRunner().invoke(main, [stage, "-c", "tiny.toml"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    last = result.output.strip().splitlines()[-1]
    assert re.search(rf"Error: {re.escape(str(net))}:{line}: {words}", last), last
    log = tmp_path / "engines" / "tiny" / "logs" / "user-code.log"
    assert f"(full traceback: {log.relative_to(tmp_path)})" in last or str(log) in last
    assert "Traceback (most recent call last)" in log.read_text()


# --- special files and hostile .npz files (issue 23, items 5, 7, 8, 9) --------------------------------


def _npz_folder(tmp_path, config):
    folder = tmp_path / "npz"
    folder.mkdir()
    return folder, config(calibration=f'[calibration]\nsource = "{folder}"\nsamples = 64\nbatch_size = 16')


def test_a_fifo_or_a_folder_named_npz_is_refused_before_it_is_opened(tmp_path, config):
    """A FIFO named a.npz hung calibrate (fingerprint and read block forever); a folder named b.npz was
    a traceback."""
    import os

    folder, cfg = _npz_folder(tmp_path, config)
    os.mkfifo(folder / "a.npz")
    with pytest.raises(PipelineError, match=r"a\.npz: not a regular file \(a folder, FIFO or device\)"):
        data.source_fingerprint(cfg)
    (folder / "a.npz").unlink()
    (folder / "b.npz").mkdir()
    with pytest.raises(PipelineError, match=r"b\.npz: not a regular file"):
        list(data.calibration_batches(cfg))


def test_a_config_that_is_a_fifo_is_refused_not_waited_on(tmp_path):
    import os

    from pipeline.config import load_config

    os.mkfifo(tmp_path / "model.toml")
    with pytest.raises(PipelineError, match=r"model\.toml: not a regular file \(a FIFO, socket or device\)"):
        load_config(tmp_path / "model.toml")


def test_an_npz_header_claiming_more_rows_than_it_holds_is_refused_before_allocation(tmp_path, config):
    """A header declaring 10**12 rows was a MemoryError traceback."""
    import io
    import zipfile

    folder, cfg = _npz_folder(tmp_path, config)
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.zeros((2, 3, 8, 8), np.float32))
    header = buffer.getvalue().replace(b"(2, 3, 8, 8)", b"(1000000000000, 3, 8, 8)".ljust(12, b" ")[:24])
    with zipfile.ZipFile(folder / "bomb.npz", "w") as archive:
        archive.writestr("x.npy", header)
    with pytest.raises(PipelineError, match=r"bomb\.npz: x\.npy declares shape \[1000000000000, 3, 8, 8\]"):
        list(data.calibration_batches(cfg))


def test_only_the_rows_calibration_uses_are_read_from_a_file_that_inflates(tmp_path, config):
    """A 1.4 MB .npz inflating to 1.5 GB was loaded whole for 64 samples."""
    import resource

    folder, cfg = _npz_folder(tmp_path, config)
    np.savez_compressed(folder / "large.npz", x=np.zeros((200_000, 3, 8, 8), np.float32))  # 154 MB inflated
    assert (folder / "large.npz").stat().st_size < 2_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows = sum(len(f["x"]) for f in data.calibration_batches(cfg))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert rows == 64 and grown_mb < 50


def test_a_file_named_npz_that_is_not_one_says_so(tmp_path, config):
    """It was reported as pickled data."""
    folder, cfg = _npz_folder(tmp_path, config)
    (folder / "notes.npz").write_text("just text")
    with pytest.raises(PipelineError, match=r"notes\.npz: not a readable \.npz file \(File is not a zip file\)"):
        list(data.calibration_batches(cfg))


def test_weights_that_are_a_folder_are_named_so(tmp_path, config):
    """A weights folder was reported as "does not exist"."""
    from pipeline import stages

    (tmp_path / "weights.pt").mkdir()
    cfg = config(model=f'[model]\nsource = "{config.net}:build"\nweights = "weights.pt"')
    with pytest.raises(PipelineError, match=r"model\.weights \S+weights\.pt is not a regular file"):
        stages.run("export", cfg, root=tmp_path)


def test_weights_that_are_no_checkpoint_are_one_line(config):
    """weights = "/etc/passwd" was an IndexError traceback from torch's weights-only unpickler."""
    from pipeline import stages

    cfg = config(model=f'[model]\nsource = "{config.net}:build"\nweights = "/etc/passwd"')
    with pytest.raises(
        PipelineError, match=r"/etc/passwd: not a readable state_dict \(truncated, corrupt or not one\)"
    ):
        stages.run("export", cfg, root=config.net.parent)


def test_deploy_from_another_folder_says_so_and_leaves_nothing_there(tmp_path, user_model, monkeypatch):
    """It said "no saved build" and left an empty engines/ behind in that folder."""
    from click.testing import CliRunner

    from pipeline.cli import main
    from tests.conftest import write_config

    config = write_config(tmp_path, user_model)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = CliRunner().invoke(main, ["deploy", "-c", str(config), "--to", "served"])
    assert result.exit_code == 1
    said = r"no saved build; run trtpipe build first \(in \S+elsewhere: trtpipe runs from the project"
    assert re.search(said, result.output)
    assert list(elsewhere.iterdir()) == []


def test_a_held_out_batch_without_rows_is_refused(config, tmp_path):
    """A held-out batch with zero rows was accepted (issue 23, item 8)."""
    net = tmp_path / "zero.py"
    net.write_text(USER_MODEL + "\ndef zero_rows(batch_size):\n    yield {'x': images(0)}, np.zeros(0, np.int64)\n")
    cfg = config(evaluation=f'[evaluation]\nsource = "{net}:zero_rows"')
    with pytest.raises(PipelineError, match=r"zero_rows' batch 0: a batch without rows"):
        list(data.heldout_batches(cfg, 8))


def test_token_ids_outside_the_embedding_are_one_line_naming_the_users_line(tmp_path, monkeypatch):
    """Token ids beyond an embedding's rows were a torch IndexError traceback during export."""
    from click.testing import CliRunner

    from pipeline.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tok.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            import torch
            from torch import nn

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.embed = nn.Embedding(10, 8)
                    self.head = nn.Linear(8, 4)

                def forward(self, ids):
                    return self.head(self.embed(ids).mean(1))

            def build():
                return Net()

            def calibration(samples, batch_size):
                yield {"ids": np.full((batch_size, 6), 50, np.int64)}  # 50: beyond the 10 rows
            """
        )
    )
    (tmp_path / "tok.toml").write_text(
        'name = "tok"\n[model]\nsource = "tok.py:build"\n[[inputs]]\nname = "ids"\nshape = ["batch", 6]\n'
        'dtype = "int64"\n[[outputs]]\nname = "logits"\nshape = ["batch", 4]\n[batch]\nmin = 1\nopt = 8\nmax = 8\n'
        '[calibration]\nsource = "tok.py:calibration"\nsamples = 8\nbatch_size = 8\n'
    )
    result = CliRunner().invoke(main, ["export", "-c", "tok.toml"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert re.search(r"tok\.py:\d+: IndexError: index out of range in self \(running the model's forward\)", last), last
