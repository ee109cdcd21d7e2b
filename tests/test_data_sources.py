"""The data and metrics users have (issue 21): folders of .npy files and images, any iterable a data
callable returns, held-out folders with labels, top5/mse/psnr and a user's metric, checkpoint dicts.

Every file is written in tmp_path and read back through the pipeline; models run on ONNX Runtime.
The model is the tiny user net (conftest.USER_MODEL): x [batch, 3, 8, 8] -> logits [batch, 4].
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import results, stages
from pipeline.config import load_config
from pipeline.data import calibration_batches, heldout_batches
from pipeline.errors import PipelineError
from pipeline.evaluate.accuracy import accuracy_table
from pipeline.evaluate.metrics import SquaredError, TopK, task_metric
from pipeline.layout import Layout
from tests.conftest import write_config

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.5)
IMAGE = f"[calibration.image]\nsize = [8, 8]\nmean = {list(MEAN)}\nstd = {list(STD)}"


def _pixels(seed: int, height: int = 8, width: int = 8) -> np.ndarray:
    """An RGB image whose pixels differ from image to image, as uint8 (height, width, 3)."""
    yy, xx = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    channel = np.arange(3)[None, None, :]
    return ((37 * seed + 11 * yy[..., None] + 29 * xx[..., None] + 83 * channel) % 256).astype(np.uint8)


def _pngs(folder: Path, count: int, start: int = 0) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    made = [_pixels(start + i) for i in range(count)]
    for i, pixels in enumerate(made):
        Image.fromarray(pixels).save(folder / f"img{start + i:03d}.png")
    return made


def _by_hand(pixels: np.ndarray) -> np.ndarray:
    """[calibration.image] with MEAN and STD at its own size: (x / 255 - mean) / std, NCHW."""
    x = (pixels.astype(np.float32) / 255.0 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return x.transpose(2, 0, 1)


def _calibration(source: str, extra: str = "", samples: int = 64) -> str:
    return f'[calibration]\nsource = "{source}"\nsamples = {samples}\nbatch_size = 16\n{extra}'


def _all_rows(cfg) -> np.ndarray:
    return np.concatenate([feed["x"] for feed in calibration_batches(cfg)])


def test_a_png_folder_calibrates_from_the_config_alone(tmp_path, user_model):
    made = _pngs(tmp_path / "cfg" / "images", 20)
    cfg = load_config(write_config(tmp_path, user_model, calibration=_calibration("images", IMAGE)))
    rows = _all_rows(cfg)
    assert rows.shape == (20, 3, 8, 8) and rows.dtype == np.float32
    np.testing.assert_allclose(rows, np.stack([_by_hand(p) for p in made]), rtol=1e-6, atol=1e-6)

    stages.run("export", cfg, root=tmp_path)
    stages.run("calibrate", cfg, root=tmp_path)
    stats = json.loads(Layout.of(cfg, tmp_path).ranges.read_text())
    assert stats["whole_graph"]["samples"] == 20  # every image, none made up
    record = json.loads((tmp_path / "engines" / "tiny" / "records" / "calibrate.json").read_text())
    assert any(key.startswith("calibration data images") for key in record["inputs"])


def test_center_crop_and_letterbox_keep_the_aspect(tmp_path, user_model):
    """
    center-crop: a 4x8 (h x w) image to 4x4 needs no scaling and keeps columns 2..5;
    letterbox: a 2x4 image to 4x4 needs no scaling, sits in rows 1..2, rows 0 and 3 black.
    """
    wide, flat = _pixels(1, 4, 8), _pixels(2, 2, 4)
    (tmp_path / "cfg" / "crop").mkdir(parents=True)
    (tmp_path / "cfg" / "box").mkdir(parents=True)
    Image.fromarray(wide).save(tmp_path / "cfg" / "crop" / "a.png")
    Image.fromarray(flat).save(tmp_path / "cfg" / "box" / "a.bmp")
    inputs = '[[inputs]]\nname = "x"\nshape = ["batch", 4, 4, 3]\ndtype = "uint8"'
    for folder, mode, expected in (
        ("crop", "center-crop", wide[:, 2:6]),
        ("box", "letterbox", np.concatenate([np.zeros((1, 4, 3)), flat, np.zeros((1, 4, 3))]).astype(np.uint8)),
    ):
        image = f'[calibration.image]\nsize = [4, 4]\nresize = "{mode}"\nlayout = "NHWC"\ndtype = "uint8"'
        cfg = load_config(write_config(tmp_path, user_model, inputs=inputs, calibration=_calibration(folder, image)))
        np.testing.assert_array_equal(_all_rows(cfg), expected[None])


def test_an_image_folder_is_refused_in_one_line_when_broken_or_too_large(tmp_path, user_model):
    _pngs(tmp_path / "cfg" / "images", 2)
    cfg = load_config(write_config(tmp_path, user_model, calibration=_calibration("images")))
    with pytest.raises(
        PipelineError, match=r"img000.png: an image; declare its preprocessing in \[calibration.image\]"
    ):
        _all_rows(cfg)

    cfg = load_config(write_config(tmp_path, user_model, calibration=_calibration("images", IMAGE)))
    (tmp_path / "cfg" / "images" / "img001.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(PipelineError, match=r"img001.png: not a readable image \(.*\); give PNG, JPEG or BMP files$"):
        _all_rows(cfg)

    # 10000 x 10000 pixels in a few kilobytes: refused from its header, before a pixel is decoded.
    Image.new("L", (10_000, 10_000)).save(tmp_path / "cfg" / "images" / "img001.png", optimize=True)
    assert (tmp_path / "cfg" / "images" / "img001.png").stat().st_size < 200_000
    with pytest.raises(PipelineError, match=r"img001.png: the image is 10000x10000 pixels, more than 67108864"):
        _all_rows(cfg)


def test_image_preprocessing_is_checked_against_the_input_on_load(tmp_path, user_model):
    for image, message in (
        ("size = [8, 9]", r"makes NCHW images \[3, 8, 9\], input 'x' is \['batch', 3, 8, 8\] \(axis 3\)"),
        ('size = [8, 8]\nlayout = "NHWC"', r"makes NHWC images \[8, 8, 3\], input 'x' is"),
        ('size = [8, 8]\ndtype = "uint8"', r"'calibration.image.dtype' = 'uint8', input 'x' is float32"),
        ("size = [8, 8]\nmean = [0.5]", r"mean \[0.5\] needs 3 value\(s\), one per RGB channel"),
        ("size = [0, 8]", r"size \[0, 8\] must be \[height, width\], each 1 to 4096"),
        ('size = [8, 8]\nresize = "squash"', r"'calibration.image.resize' should be one of 'resize'"),
    ):
        path = write_config(tmp_path, user_model, calibration=_calibration("images", f"[calibration.image]\n{image}"))
        with pytest.raises(PipelineError, match=message):
            load_config(path)


def test_an_npy_folder_holds_samples_or_batches_told_apart_by_rank(tmp_path, user_model):
    folder = tmp_path / "cfg" / "npy"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    one, batch = rng.standard_normal((3, 8, 8), np.float32), rng.standard_normal((5, 3, 8, 8), np.float32)
    np.save(folder / "a_one.npy", one)
    np.save(folder / "b_batch.npy", batch)
    cfg = load_config(write_config(tmp_path, user_model, calibration=_calibration("npy", samples=4)))
    np.testing.assert_array_equal(_all_rows(cfg), np.concatenate([one[None], batch[:3]]))  # 4 samples asked

    np.save(folder / "c_wrong.npy", np.zeros((8, 8), np.float32))
    cfg = load_config(write_config(tmp_path, user_model, calibration=_calibration("npy", samples=64)))
    with pytest.raises(PipelineError, match=r"c_wrong.npy: array of shape \[8, 8\]; input 'x' is .*give rank 4"):
        _all_rows(cfg)
    (folder / "c_wrong.npy").unlink()
    np.save(folder / "c_objects.npy", np.array([{"x": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(PipelineError, match=r"c_objects.npy: cannot read without pickle: .* holds Python objects"):
        _all_rows(cfg)


DATA_CALLABLES = textwrap.dedent(
    """
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Dataset, TensorDataset

    def rows(n):
        return np.linspace(-1, 1, n * 3 * 8 * 8, dtype=np.float32).reshape(n, 3, 8, 8)

    def loader(samples, batch_size):
        dataset = TensorDataset(torch.from_numpy(rows(20)), torch.arange(20) % 4)
        return DataLoader(dataset, batch_size=6)  # (x, y) lists, y left for calibration

    class Pairs(Dataset):
        def __len__(self):
            return 20

        def __getitem__(self, i):
            return {"x": torch.from_numpy(rows(20)[i])}, i % 4

    def dataset(samples, batch_size):
        return TensorDataset(torch.from_numpy(rows(20)))  # one sample at a time

    def one_array(samples, batch_size):
        return rows(20)

    def heldout_loader(batch_size):
        return DataLoader(TensorDataset(torch.from_numpy(rows(20)), torch.arange(20) % 4), batch_size=7)

    def heldout_pairs(batch_size):
        return Pairs()
    """
)


def test_a_data_callable_may_return_a_dataloader_a_dataset_or_one_array(tmp_path, user_model):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "data.py").write_text(DATA_CALLABLES)
    expected = np.linspace(-1, 1, 20 * 3 * 8 * 8, dtype=np.float32).reshape(20, 3, 8, 8)
    for name in ("loader", "dataset", "one_array"):
        cfg = load_config(write_config(tmp_path, user_model, calibration=_calibration(f"data.py:{name}")))
        batches = list(calibration_batches(cfg))
        assert [len(b["x"]) for b in batches] == [16, 4], name  # re-batched to [calibration] batch_size
        np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), expected)
    for name in ("heldout_loader", "heldout_pairs"):
        evaluation = f'[evaluation]\nsource = "data.py:{name}"'
        cfg = load_config(write_config(tmp_path, user_model, evaluation=evaluation))
        pairs = list(heldout_batches(cfg, 8))
        assert [len(labels) for _, labels in pairs] == [8, 8, 4], name
        np.testing.assert_array_equal(np.concatenate([f["x"] for f, _ in pairs]), expected)
        np.testing.assert_array_equal(np.concatenate([labels for _, labels in pairs]), np.arange(20) % 4)


def test_held_out_folders_carry_their_labels(tmp_path, user_model):
    """.npz files with a labels array; images in one subfolder per class, the classes read in turn."""
    folder = tmp_path / "cfg" / "heldout"
    folder.mkdir(parents=True)
    x = np.linspace(0, 1, 6 * 3 * 8 * 8, dtype=np.float32).reshape(6, 3, 8, 8)
    np.savez(folder / "part0.npz", x=x[:4], target=np.array([3, 1, 2, 0]))
    np.savez(folder / "part1.npz", x=x[4:], target=np.array([1, 1]))
    cfg = load_config(
        write_config(tmp_path, user_model, evaluation='[evaluation]\nsource = "heldout"\nlabels = "target"')
    )
    (feed, labels), *rest = heldout_batches(cfg, 8)
    assert not rest and labels.tolist() == [3, 1, 2, 0, 1, 1]
    np.testing.assert_array_equal(feed["x"], x)

    evaluation = '[evaluation]\nsource = "classes"'
    made = {name: _pngs(tmp_path / "cfg" / "classes" / name, 2, start) for name, start in (("cat", 0), ("ant", 5))}
    cfg = load_config(
        write_config(tmp_path, user_model, calibration=_calibration("classes", IMAGE), evaluation=evaluation)
    )
    (feed, labels), *rest = heldout_batches(cfg, 8)
    assert not rest and labels.tolist() == [0, 1, 0, 1]  # ant = 0, cat = 1 (sorted), one of each in turn
    order = [made["ant"][0], made["cat"][0], made["ant"][1], made["cat"][1]]
    np.testing.assert_allclose(feed["x"], np.stack([_by_hand(p) for p in order]), rtol=1e-6, atol=1e-6)

    cfg = load_config(write_config(tmp_path, user_model, evaluation='[evaluation]\nsource = "heldout"'))
    with pytest.raises(PipelineError, match=r"part0.npz: no array 'labels' holding the labels \(\[evaluation\] labels"):
        list(heldout_batches(cfg, 8))


def test_top5_mse_and_psnr_equal_the_hand_computed_figures():
    logits = np.array([[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [0, 0, 9, 0, 0, 1]], np.float32)
    labels = np.array([0, 0, 1])  # row 0: class 0 is the 6th best (miss); row 1: best (hit); row 2: tied 3rd (hit)
    top5, top1 = TopK(5), TopK(1)
    top5.update(logits[:2], labels[:2])
    top5.update(logits[2:], labels[2:])
    top1.update(logits, labels)
    assert top5.value == pytest.approx(200 / 3) and top1.value == pytest.approx(100 / 3)

    out = np.array([[0.5, 0.25], [1.0, 0.0]])
    target = np.array([[0.5, 0.75], [0.0, 0.0]])
    mse, psnr = SquaredError(), SquaredError(peak=2.0)
    for stream in (mse, psnr):
        stream.update(out[:1], target[:1])
        stream.update(out[1:], target[1:])
    assert mse.value == pytest.approx((0.25 + 1.0) / 4)  # errors 0, -0.5, 1, 0
    assert psnr.value == pytest.approx(10 * np.log10(4.0 / 0.3125))
    with pytest.raises(PipelineError, match=r"labels of shape \[2\], the first output is \[2, 2\]"):
        SquaredError().update(out, np.zeros(2))


USER_METRIC = textwrap.dedent(
    """
    import numpy as np

    def distance(outputs, labels):
        return float(np.mean((outputs - labels) ** 2))
    """
)


def test_a_user_metric_gates_compare_by_its_name(tmp_path, user_model, monkeypatch, capsys):
    """The labels are the PyTorch net's own logits, so FP32 scores about 0 and the quantized graph more:
    a gate allowing no drop fails naming the metric, a loose one passes."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("user_net_for_metric", user_model)
    net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(net)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg" / "heldout").mkdir(parents=True)
    (tmp_path / "cfg" / "metric.py").write_text(USER_METRIC)
    x = net.images(24, 1000)
    with torch.no_grad():
        logits = net.build()(torch.from_numpy(x)).numpy()
    np.savez(tmp_path / "cfg" / "heldout" / "rows.npz", x=x, labels=logits)
    evaluation = '[evaluation]\nsource = "heldout"\nmetric = "metric.py:distance"\nhigher_is_better = false'
    strict = "[accuracy.w8a8-cpu]\nmax_metric_drop = 1e-9"
    cpu = '[quantize]\ntargets = ["onnxruntime-cpu"]'
    cfg = load_config(write_config(tmp_path, user_model, evaluation=evaluation, accuracy=strict, quantize=cpu))
    stages.run("export", cfg)
    stages.run("quantize", cfg, force=True)
    stages.run("build", cfg, backend="onnxruntime")
    with pytest.raises(PipelineError, match=r"accuracy gate failed for w8a8-cpu.*distance [0-9.e-]+, [0-9.e-]+ worse"):
        stages.run("compare", cfg)
    assert "distance" in capsys.readouterr().err  # the table's column is the metric's name

    loose = load_config(
        write_config(
            tmp_path,
            user_model,
            evaluation=evaluation,
            accuracy="[accuracy.w8a8-cpu]\nmax_metric_drop = 10",
            quantize=cpu,
        )
    )
    stages.run("quantize", loose, force=True)
    stages.run("build", loose, backend="onnxruntime")
    rows = [r for r in stages.run("compare", loose) if r.output == "logits"]
    quantized = next(r for r in rows if "w8a8-cpu" in r.artifact)
    assert quantized.reference_metric < 1e-9 < quantized.metric  # FP32's score, then the quantized graph's
    assert quantized.metric_name == "distance" and not quantized.failures
    record = json.loads((tmp_path / "engines" / "tiny" / "records" / "compare.json").read_text())
    assert "metric metric.py:distance" in record["inputs"]  # an edited metric re-runs compare
    saved = results.load(results.CompareResult, Layout.of(loose))  # what the report tables
    headers, _ = accuracy_table(saved.rows)
    assert headers[-3:-1] == ["distance", "FP32 distance"]


def test_a_user_metric_declares_its_direction(tmp_path, user_model):
    path = write_config(tmp_path, user_model, evaluation='[evaluation]\nsource = "heldout"\nmetric = "metric.py:fn"')
    with pytest.raises(PipelineError, match=r"metric 'metric.py:fn' needs higher_is_better = true or false"):
        load_config(path)
    path = write_config(
        tmp_path, user_model, evaluation='[evaluation]\nsource = "x"\nmetric = "mse"\nhigher_is_better = true'
    )
    with pytest.raises(PipelineError, match=r"metric 'mse' is lower is better; drop higher_is_better"):
        load_config(path)
    cfg = load_config(write_config(tmp_path, user_model, evaluation='[evaluation]\nsource = "x"\nmetric = "psnr"'))
    assert task_metric(cfg).higher_is_better and task_metric(cfg).drop(30.0, 32.5) == 2.5


@pytest.mark.parametrize("key", ["model", "state_dict"])
def test_a_checkpoint_dict_loads_the_weights_under_its_key(tmp_path, user_model, key, capsys):
    from pipeline.sources.torch.torch_model import model_from_config

    cfg = load_config(write_config(tmp_path, user_model))
    net = model_from_config(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.5)
    torch.save({key: net.state_dict(), "epoch": 3}, tmp_path / "cfg" / "ckpt.pt")
    model = f'[model]\nsource = "{user_model}:build"\nweights = "ckpt.pt"'
    loaded = model_from_config(load_config(write_config(tmp_path, user_model, model=model)))
    assert f"loading the weights under its key {key!r}" in capsys.readouterr().err
    for name, value in loaded.state_dict().items():
        torch.testing.assert_close(value, net.state_dict()[name])


def test_a_whole_pickled_model_is_refused_with_the_fix(tmp_path, user_model):
    from pipeline.sources.torch.torch_model import model_from_config

    cfg = load_config(write_config(tmp_path, user_model))
    torch.save(model_from_config(cfg), tmp_path / "cfg" / "whole.pt")
    model = f'[model]\nsource = "{user_model}:build"\nweights = "whole.pt"'
    with pytest.raises(
        PipelineError,
        match=r"whole.pt: holds objects other than tensors.*\(a whole pickled model\?\); .*model.state_dict\(\)",
    ):
        model_from_config(load_config(write_config(tmp_path, user_model, model=model)))


def test_init_reads_image_class_folders_and_npy_folders(tmp_path, user_model, monkeypatch):
    """trtpipe init on an ONNX model and images in class subfolders: [calibration.image] from the
    model's input, the folder named as labelled held-out data; on a PyTorch model and .npy samples:
    the input's shape from the data. Both configs load and read their data."""
    from click.testing import CliRunner

    from pipeline.cli import main
    from tests.test_onnx_source import _exported_elsewhere

    monkeypatch.chdir(tmp_path)
    _exported_elsewhere(user_model, tmp_path / "model")
    for name, start in (("ant", 0), ("cat", 5)):
        _pngs(tmp_path / "images" / name, 3, start)
    init = CliRunner().invoke(main, ["init", "model/net.onnx", "--data", "images", "-o", "net.toml"])
    assert init.exit_code == 0, init.output
    text = (tmp_path / "net.toml").read_text()
    assert "[calibration.image]\nsize = [8, 8]" in text and 'layout = "NCHW"' in text
    assert '[evaluation]\nsource = "images"\nmetric = "top1"' in text
    cfg = load_config(tmp_path / "net.toml")
    assert cfg.calibration.image.mean == (0.485, 0.456, 0.406)
    assert [labels.tolist() for _, labels in heldout_batches(cfg, 8)] == [[0, 1, 0, 1, 0, 1]]

    (tmp_path / "npy").mkdir()
    for i in range(3):
        np.save(tmp_path / "npy" / f"{i}.npy", _by_hand(_pixels(i)))  # one (3, 8, 8) sample each
    init = CliRunner().invoke(main, ["init", f"{user_model}:build", "--data", "npy", "-o", "torch.toml"])
    assert init.exit_code == 0, init.output
    cfg = load_config(tmp_path / "torch.toml")
    assert cfg.inputs[0].shape == ("batch", 3, 8, 8) and cfg.outputs[0].shape == ("batch", 4)
    assert sum(len(b["input"]) for b in calibration_batches(cfg)) == 3


def test_the_budget_judges_a_lower_is_better_metric_by_its_direction(tmp_path, user_model):
    from pipeline.config import Budget
    from pipeline.evaluate.budget import meets
    from pipeline.evaluate.metrics import Score

    cfg = load_config(write_config(tmp_path, user_model, evaluation='[evaluation]\nsource = "x"\nmetric = "mse"'))
    task, budget = task_metric(cfg), Budget(max_metric_drop=0.1)
    assert meets(Score(1.0, 1.0, 0.0, 0.5), budget, 0.45, task)  # 0.05 worse than FP32's MSE
    assert not meets(Score(1.0, 1.0, 0.0, 0.6), budget, 0.45, task)  # 0.15 worse
    assert meets(Score(1.0, 1.0, 0.0, 0.2), budget, 0.45, task)  # better than FP32


def test_a_user_metric_that_raises_or_returns_no_number_is_one_line(tmp_path, user_model):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "bad.py").write_text(
        "def broken(outputs, labels):\n    return 1 / 0\n\ndef text(o, l):\n    return 'x'\n"
    )
    for fn, message in (
        ("broken", r"bad.py:2: ZeroDivisionError: division by zero \(computing evaluation.metric"),
        ("text", r"evaluation.metric 'bad.py:text' returned str, not a number"),
    ):
        evaluation = f'[evaluation]\nsource = "x"\nmetric = "bad.py:{fn}"\nhigher_is_better = true'
        stream = task_metric(load_config(write_config(tmp_path, user_model, evaluation=evaluation))).stream()
        with pytest.raises(PipelineError, match=message):
            stream.update(np.zeros((2, 4), np.float32), np.zeros(2))
