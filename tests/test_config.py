"""Config loading: every mistake names the file, the key and what is expected."""

from __future__ import annotations

import pytest

from pipeline.config import load_config
from pipeline.errors import PipelineError
from tests.conftest import write_config


def test_valid_config_loads_typed_and_frozen(tmp_path, user_model):
    cfg = load_config(write_config(tmp_path, user_model))
    assert cfg.name == "tiny"
    assert cfg.inputs[0].shape == ("batch", 3, 8, 8)
    assert cfg.batch[0].opt == 8
    assert cfg.calibration.method == "auto"
    with pytest.raises(AttributeError):
        cfg.name = "other"  # frozen


def _error(tmp_path, user_model, **sections) -> str:
    path = write_config(tmp_path, user_model, **sections)
    with pytest.raises(PipelineError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    return message


def test_unknown_key_is_named(tmp_path, user_model):
    msg = _error(tmp_path, user_model, calibration='[calibration]\nsource = "x:y"\nsampels = 3')
    assert "unknown key 'calibration.sampels'" in msg and "samples" in msg


def test_missing_key_is_named(tmp_path, user_model):
    msg = _error(tmp_path, user_model, inputs='[[inputs]]\nshape = ["batch", 3, 8, 8]')
    assert "missing key 'inputs[0].name'" in msg or "missing key 'inputs.name'" in msg


def test_missing_inputs_section(tmp_path, user_model):
    msg = _error(tmp_path, user_model, inputs="")
    assert "missing key 'inputs'" in msg


def test_wrong_type_is_named(tmp_path, user_model):
    msg = _error(tmp_path, user_model, batch='[batch]\nmin = 1\nopt = "eight"\nmax = 32')
    assert "'batch[0].opt'" in msg and "an integer" in msg


def test_wrong_dtype_is_refused(tmp_path, user_model):
    msg = _error(tmp_path, user_model, inputs='[[inputs]]\nname = "x"\nshape = ["batch", 3, 8, 8]\ndtype = "float64"')
    assert "dtype 'float64'" in msg and "float32" in msg


def test_bad_profile_is_refused(tmp_path, user_model):
    msg = _error(tmp_path, user_model, batch="[batch]\nmin = 8\nopt = 4\nmax = 32")
    assert "min <= opt <= max" in msg


def test_several_profiles(tmp_path, user_model):
    path = write_config(
        tmp_path, user_model, batch="[[batch]]\nmin=1\nopt=4\nmax=8\n\n[[batch]]\nmin=8\nopt=64\nmax=256"
    )
    assert [p.max for p in load_config(path).batch] == [8, 256]


def test_bad_calibration_method(tmp_path, user_model):
    msg = _error(tmp_path, user_model, calibration='[calibration]\nsource = "x:y"\nmethod = "kl"')
    assert "method 'kl'" in msg and "entropy" in msg


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(PipelineError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(PipelineError, match="not valid TOML"):
        load_config(bad)


def test_bundled_configs_load():
    for name in ("resnet_digits", "vit_digits", "vit_outliers_digits"):
        cfg = load_config(f"models/{name}.toml")
        assert cfg.resolve(cfg.model.weights).is_file()
    assert load_config("models/vit_outliers_digits.toml").quantize.smoothquant == 0.5


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "-x", "a/b", "a\\\\b", ""])
def test_name_is_one_safe_path_component(tmp_path, user_model, name):
    path = write_config(tmp_path, user_model, top=f'name = "{name}"')
    with pytest.raises(PipelineError, match="name .* may hold only"):
        load_config(path)


def test_opset_out_of_range_and_non_utf8_config(tmp_path, user_model):
    path = write_config(tmp_path, user_model, top='name = "tiny"\n[export]\nopset = 99')
    with pytest.raises(PipelineError, match="opset 99 is out of range"):
        load_config(path)
    path.write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(PipelineError, match="not UTF-8 text"):
        load_config(path)
    with pytest.raises(PipelineError, match="is a folder"):
        load_config(tmp_path)


def test_default_batch_sizes_move_into_the_profile(tmp_path, user_model):
    cfg = load_config(write_config(tmp_path, user_model))  # one profile [1, 32]
    assert cfg.accuracy.batches == (1, 32)
    assert cfg.bench.cpu_batches == (1, 16, 32) and cfg.bench.gpu_batches == (32,)
    two = write_config(
        tmp_path, user_model, batch="[[batch]]\nmin=1\nopt=4\nmax=8\n\n[[batch]]\nmin=48\nopt=64\nmax=96"
    )
    cfg = load_config(two)
    assert cfg.accuracy.batches == (1, 64) and cfg.bench.cpu_batches == (1, 8, 64)
    assert cfg.nearest_batch(30) == 48 and cfg.nearest_batch(20) == 8 and cfg.nearest_batch(500) == 96


@pytest.mark.parametrize(
    ("section", "key"),
    [("[accuracy]\nbatches = [1, 64]", "accuracy.batches"), ("[bench]\ncpu_batches = [1, 64]", "bench.cpu_batches")],
)
def test_a_set_batch_size_outside_the_profile_is_one_error_line(tmp_path, user_model, section, key):
    msg = _error(tmp_path, user_model, top=f'name = "tiny"\n{section}')
    assert f"key '{key}' = [1, 64]: batch 64 is outside every [batch] profile ([1, 32])" in msg
    assert "widen a profile or drop that batch size" in msg


def test_setting_one_key_of_a_gate_keeps_its_other_defaults(tmp_path, user_model):
    cfg = load_config(write_config(tmp_path, user_model, top='name = "tiny"\n[accuracy.fp16]\nmin_cosine = 0.9999'))
    assert cfg.accuracy.fp16.min_cosine == 0.9999
    assert cfg.accuracy.fp16.centered is False and cfg.accuracy.fp16.max_rel_error == 0.05  # fp16's, not Gate's
    assert cfg.accuracy.gate("w8a8").min_top1_agreement == 0.97


def test_accuracy_budget_loads_typed(tmp_path, user_model):
    cfg = load_config(write_config(tmp_path, user_model, accuracy="[accuracy.budget]\nmin_cosine = 0.999"))
    budget = cfg.accuracy.budget
    assert budget.min_cosine == 0.999 and budget.max_metric_drop is None
    assert budget.cap(10) == 3 and budget.cap(3) == 1  # a quarter, rounded up
    assert load_config(write_config(tmp_path, user_model)).accuracy.budget is None


@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        ("max_fp16_layers = 2", "accuracy.budget: needs min_cosine, max_metric_drop or both"),
        ("min_cosine = 1.5", "accuracy.budget: min_cosine 1.5 must be in (0, 1]"),
        ("min_cosine = 0.99\nmax_fp16_share = 0", "max_fp16_share 0.0 must be in (0, 1]"),
        ("min_cosine = 0.99\nmax_fp16_layers = -1", "max_fp16_layers -1 must be 0 or more"),
        ('min_cosine = "high"', "key 'accuracy.budget.min_cosine' should be a number"),
        ("min_cosin = 0.99", "unknown key 'accuracy.budget.min_cosin'"),
    ],
)
def test_bad_accuracy_budget_is_named(tmp_path, user_model, budget, expected):
    assert expected in _error(tmp_path, user_model, accuracy=f"[accuracy.budget]\n{budget}")


def test_metric_budget_needs_labelled_data(tmp_path, user_model):
    msg = _error(tmp_path, user_model, evaluation="", accuracy="[accuracy.budget]\nmax_metric_drop = 0.5")
    assert "'accuracy.budget.max_metric_drop' needs labelled held-out data" in msg
