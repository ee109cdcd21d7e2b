"""Shared fixtures: a tiny user model that lives outside the package, with its own config."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pipeline.config import Config, load_config

# A user's model file, anywhere on disk: a conv net with a residual add and real-looking data
# (deterministic sinusoid images; tests never draw random inputs for calibration).
USER_MODEL = textwrap.dedent(
    """
    import numpy as np
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, channels=16, classes=4):
            super().__init__()
            self.conv1 = nn.Conv2d(3, channels, 3, padding=1)
            self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
            self.head = nn.Linear(channels, classes)

        def forward(self, x):
            y = torch.relu(self.conv1(x))
            y = torch.relu(self.conv2(y) + y)
            return self.head(y.mean((2, 3)))

    def build(channels=16, classes=4):
        torch.manual_seed(0)
        net = Net(channels, classes)
        nn.init.zeros_(net.head.bias)  # logits come from the features, as in a trained model
        return net

    class DeadChannelNet(nn.Module):
        # Three convs and a head; conv1's channel 0 is near-dead with bias 1.0, as BatchNorm folding leaves.
        def __init__(self, channels=16, classes=4):
            super().__init__()
            self.conv0 = nn.Conv2d(3, channels, 3, padding=1)
            self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
            self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
            self.head = nn.Linear(channels, classes)
            with torch.no_grad():
                self.conv1.weight[0] *= 1e-3
                self.conv1.bias[0] = 1.0

        def forward(self, x):
            y = torch.relu(self.conv1(torch.relu(self.conv0(x))))
            return self.head(torch.relu(self.conv2(y)).mean((2, 3)))

    def build_dead_channel(channels=16, classes=4):
        torch.manual_seed(0)
        return DeadChannelNet(channels, classes)

    def images(n, offset=0):
        i = np.arange(offset, offset + n, dtype=np.float32)[:, None, None, None]
        yy, xx = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
        c = np.arange(3, dtype=np.float32)[None, :, None, None]
        # Frequency and contrast change from image to image, so pooled features (and logits) vary
        # between inputs as a trained model's do, not only a shared constant part.
        contrast = 1.0 + 0.8 * np.sin(1.7 * i)
        return (contrast * np.sin(0.3 * i + (0.3 + 0.1 * (i % 5)) * yy + 0.7 * xx * (c + 1))).astype(np.float32)

    def calibration(samples, batch_size):
        for start in range(0, samples, batch_size):
            yield {"x": images(min(batch_size, samples - start), start)}

    def heldout(batch_size):
        for start in range(0, 40, batch_size):
            x = images(min(batch_size, 40 - start), 1000 + start)
            yield {"x": x}, (np.arange(len(x)) % 4)
    """
)


# Data callables a user can get wrong, appended to USER_MODEL's file (they call its images()).
BAD_DATA = textwrap.dedent(
    """
    def returns_none(samples, batch_size):
        return None

    def labels_as_a_column(batch_size):
        for start in range(0, 40, batch_size):
            x = images(min(batch_size, 40 - start), 1000 + start)
            yield {"x": x}, (np.arange(len(x)) % 4)[:, None]

    def nothing_held_out(batch_size):
        return iter(())

    def wrong_signature(n):
        yield {"x": images(n)}

    def empty_batches_forever(samples, batch_size):
        while True:
            yield {"x": np.zeros((0, 3, 8, 8), np.float32)}

    def short(samples, batch_size):
        yield {"x": images(8)}

    def endless_heldout(batch_size):
        start = 0
        while True:
            yield {"x": images(batch_size, start)}, np.arange(batch_size) % 4
            start += batch_size

    def labels_as_strings(batch_size):
        for start in range(0, 40, batch_size):
            x = images(min(batch_size, 40 - start), 1000 + start)
            yield {"x": x}, np.array(["cat", "dog", "cow", "owl"])[np.arange(len(x)) % 4]
    """
)


def config_text(model_file: str, **sections: str) -> str:
    """A valid config for the user model; ``sections`` replace whole blocks by name."""
    blocks = {
        "top": 'name = "tiny"',
        "model": f'[model]\nsource = "{model_file}:build"\n[model.args]\nchannels = 16',
        "inputs": '[[inputs]]\nname = "x"\nshape = ["batch", 3, 8, 8]\ndtype = "float32"',
        "outputs": '[[outputs]]\nname = "logits"\nshape = ["batch", 4]\ndtype = "float32"',
        "batch": "[batch]\nmin = 1\nopt = 8\nmax = 32",
        "calibration": f'[calibration]\nsource = "{model_file}:calibration"\nsamples = 64\nbatch_size = 16',
        "evaluation": f'[evaluation]\nsource = "{model_file}:heldout"',
    }
    blocks.update(sections)
    return _search_off("\n\n".join(b for b in blocks.values() if b) + "\n")


# The CPU graph's speed search times real runs and drops the Q/DQ of regions that measure no gain:
# tests of other things turn it off, so the graph they check is the same on any machine's load.
SEARCH_OFF = "speed_search_seconds = 0"


def _search_off(text: str) -> str:
    if "speed_search_seconds" in text:
        return text
    if "[quantize]\n" in text:
        return text.replace("[quantize]\n", f"[quantize]\n{SEARCH_OFF}\n", 1)
    return f"{text}\n[quantize]\n{SEARCH_OFF}\n"


@pytest.fixture
def user_model(tmp_path: Path) -> Path:
    """The user's model file, in a folder of its own away from the config."""
    folder = tmp_path / "somewhere" / "else"
    folder.mkdir(parents=True)
    path = folder / "net.py"
    path.write_text(USER_MODEL)
    return path


@pytest.fixture
def make_config(tmp_path: Path, user_model: Path):
    """``make_config(**sections) -> Config`` written to tmp_path/cfg/tiny.toml."""

    def make(**sections: str) -> Config:
        path = write_config(tmp_path, user_model, **sections)
        return load_config(path)

    return make


def write_config(tmp_path: Path, user_model: Path, **sections: str) -> Path:
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir(exist_ok=True)
    path = cfg_dir / "tiny.toml"
    path.write_text(config_text(str(user_model), **sections))
    return path


FAST_BENCH = "[bench]\ncpu_batches = [1, 8]\nwarmup = 1\niterations = 5\nmin_seconds = 0.05"


@pytest.fixture
def pipeline_run(tmp_path, user_model, monkeypatch, request):
    """The tiny model through export, quantize and build (ONNX Runtime fallback), run from tmp_path.

    ``@pytest.mark.parametrize("pipeline_run", [extra_toml], indirect=True)`` adds config text.
    """
    monkeypatch.chdir(tmp_path)
    extra = getattr(request, "param", "")
    path = write_config(tmp_path, user_model, top=f'name = "tiny"\n{FAST_BENCH}\n{extra}')
    cfg = load_config(path)
    from pipeline import stages
    from pipeline.layout import Layout

    stages.run("export", cfg)
    # Quantize's own gate is tested on its own: here a test's stricter gate is for compare and deploy to judge.
    stages.run("quantize", cfg, force=True)
    stages.run("build", cfg, backend="onnxruntime")
    return cfg, path, Layout.of(cfg)


def rerecord(cfg: Config, out, stage: str) -> None:
    """Record a file a test changed as ``stage``'s own output, as if the stage had made it so (a
    quantizer bug, an engine copied in with its manifest): what is then tested is the next stage."""
    from pipeline import records
    from pipeline.stages import STAGES

    written = records.load_record(out, stage).outputs
    records.finish(cfg, out, STAGES[stage], [out.root / key for key in written])


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip with the capability probe's reason where TensorRT or a GPU is missing."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    from pipeline.targets.tensorrt.probe import probe

    cap = probe()
    if not cap.available:
        skip = pytest.mark.skip(reason=f"needs TensorRT and a CUDA GPU: {cap.reason}")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def no_signing_key(monkeypatch, tmp_path_factory):
    """Records unsigned unless a test sets a key: a developer's own key (environment or
    ~/.config/trtpipe/signing.key) must not sign the suite's records."""
    monkeypatch.delenv("TRTPIPE_SIGNING_KEY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config-home")))


@pytest.fixture(autouse=True)
def ctrl_c_raises():
    """Ctrl-C raises KeyboardInterrupt in every test, as in an interactive shell: run from a background
    shell, nohup or a CI runner, Python inherits SIGINT ignored and tests of Ctrl-C would see nothing."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
