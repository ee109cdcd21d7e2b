"""Data for the trained set, made here: nothing is downloaded.

Configs load this file by path (``source = "../data.py:pitch_frames"``), so it imports nothing from
the repository. Sample ``i`` depends only on ``i`` (its own seeded generator): calibration reads
samples ``0 .. samples-1``, held-out data samples from ``HELDOUT`` on, which calibration never sees,
and ``benchmarks.trained.tasks`` regenerates the held-out samples' ground truth from the same seeds.
Each kind preprocesses as the package does before its network (named per function).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import numpy as np

HELDOUT = 1_000_000  # held-out sample i is sample HELDOUT + i
SAMPLE_RATE = 16_000  # CREPE's and resemblyzer's
CREPE_FRAME = 1024


def _batches(render: Callable[[int], np.ndarray], name: str, samples: int, batch_size: int, first: int = 0):
    for start in range(first, first + samples, batch_size):
        stop = min(start + batch_size, first + samples)
        yield {name: np.stack([render(i) for i in range(start, stop)]).astype(np.float32)}


def _heldout(render: Callable[[int], np.ndarray], name: str, rows: int, batch_size: int):
    """(feed, None): no class labels; the task metric's truth comes from ``tasks``."""
    for feed in _batches(render, name, rows, batch_size, HELDOUT):
        yield feed, None


# --- CREPE: harmonic tones with vibrato and noise at known pitches -------------------------------------


def tone(index: int) -> tuple[np.ndarray, float]:
    """One 1024-sample 16 kHz frame, normalized as torchcrepe.preprocess does (zero mean, unit
    std), and its true pitch in Hz at the frame's centre. A voice-like harmonic tone: f0 from
    65 Hz to 1 kHz, vibrato of up to 30 cents, a random spectral tilt and harmonic phases, white
    noise from 0 to 35 dB SNR."""
    rng = np.random.default_rng(index)
    f0 = float(np.exp(rng.uniform(np.log(65.0), np.log(1000.0))))
    rate, depth, phase = rng.uniform(4.0, 7.0), rng.uniform(0.0, 30.0), rng.uniform(0, 2 * np.pi)
    t = (np.arange(CREPE_FRAME) - CREPE_FRAME / 2) / SAMPLE_RATE
    inst = f0 * 2 ** (depth / 1200 * np.sin(2 * np.pi * rate * t + phase))
    cycles = np.cumsum(inst) / SAMPLE_RATE
    tilt = rng.uniform(0.5, 2.0)
    wave = np.zeros(CREPE_FRAME)
    for k in range(1, int(7600 // f0) + 1):
        amp = k**-tilt * rng.uniform(0.3, 1.0)
        wave += amp * np.sin(2 * np.pi * k * cycles + rng.uniform(0, 2 * np.pi))
    snr_db = rng.uniform(0.0, 35.0)
    wave += rng.standard_normal(CREPE_FRAME) * wave.std() * 10 ** (-snr_db / 20)
    wave -= wave.mean()
    return wave / max(wave.std(), 1e-10), float(f0 * 2 ** (depth / 1200 * np.sin(phase)))


def pitch_frames(samples: int, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    yield from _batches(lambda i: tone(i)[0], "audio", samples, batch_size)


def pitch_heldout(batch_size: int, rows: int) -> Iterator[tuple[dict[str, np.ndarray], None]]:
    yield from _heldout(lambda i: tone(i)[0], "audio", rows, batch_size)


# --- MTCNN: drawn faces on cluttered backgrounds --------------------------------------------------------

SKIN = ((224, 172, 140), (198, 134, 100), (141, 85, 54), (255, 219, 172), (180, 120, 90), (95, 60, 40))


def _scene(rng: np.random.Generator, size: int):
    """A background of a colour gradient, blobs and noise, as an RGB PIL image drawn at 4x."""
    from PIL import Image, ImageDraw

    big = size * 4
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    ramp = np.linspace(0, 1, big)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, big)[:, None, None]
    pixels = np.broadcast_to(a + (b - a) * ramp, (big, big, 3)).astype(np.uint8)
    image = Image.fromarray(np.ascontiguousarray(pixels))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 7))):
        x, y = rng.uniform(0, big, 2)
        r = rng.uniform(big / 16, big / 4)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x - r, y - r * rng.uniform(0.3, 1.5), x + r, y + r), fill=tuple(int(c) for c in rng.uniform(0, 255, 3)))
    return image, draw


def _face(draw, rng: np.random.Generator, cx: float, cy: float, w: float) -> np.ndarray:
    """A frontal face (skin ellipse, hair, brows, eyes, nose, mouth) centred at (cx, cy), ``w``
    wide; its five landmarks (eyes, nose tip, mouth corners) as (x, y) rows, in drawing pixels."""
    h = w * rng.uniform(1.15, 1.35)
    skin = np.array(SKIN[int(rng.integers(len(SKIN)))]) * rng.uniform(0.85, 1.1)
    color = lambda c: tuple(int(v) for v in np.clip(c, 0, 255))  # noqa: E731
    hair = color(rng.uniform(0, 90, 3))
    draw.ellipse((cx - w * 0.55, cy - h * 0.62, cx + w * 0.55, cy + h * 0.2), fill=hair)
    draw.ellipse((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), fill=color(skin))
    ex, ey, er = w * rng.uniform(0.17, 0.22), cy - h * rng.uniform(0.06, 0.12), w * rng.uniform(0.05, 0.075)
    dx = w * rng.uniform(-0.04, 0.04)  # a slight turn
    eyes = [(cx - ex + dx, ey), (cx + ex + dx, ey)]
    for x, y in eyes:
        draw.line((x - er * 1.6, y - er * 2.2, x + er * 1.6, y - er * 2.4), fill=hair, width=max(1, int(er * 0.7)))
        draw.ellipse((x - er * 1.5, y - er, x + er * 1.5, y + er), fill=(245, 245, 240))
        draw.ellipse((x - er * 0.8, y - er * 0.8, x + er * 0.8, y + er * 0.8), fill=color(rng.uniform(10, 90, 3)))
    nose = (cx + dx * 1.5, cy + h * rng.uniform(0.08, 0.14))
    draw.polygon(
        [(nose[0], ey + er), (nose[0] - w * 0.07, nose[1]), (nose[0] + w * 0.07, nose[1])], fill=color(skin * 0.8)
    )
    my, mw = cy + h * rng.uniform(0.24, 0.3), w * rng.uniform(0.15, 0.22)
    mouth = [(cx - mw + dx, my), (cx + mw + dx, my)]
    draw.chord(
        (cx - mw + dx, my - w * 0.06, cx + mw + dx, my + w * 0.08),
        0,
        180,
        fill=color(np.array((150, 50, 60)) * rng.uniform(0.7, 1.1)),
    )
    return np.array([*eyes, nose, *mouth])


def _finish(image, rng: np.random.Generator, size: int) -> np.ndarray:
    """Down to ``size`` (anti-aliased), blurred a little, sensor noise; then facenet-pytorch's
    input normalization, (x - 127.5) / 128, channels first."""
    from PIL import Image, ImageFilter

    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 4.0))).resize((size, size), Image.LANCZOS)
    pixels = np.asarray(image, np.float32) + rng.normal(0, rng.uniform(0, 8), (size, size, 3))
    return ((np.clip(pixels, 0, 255) - 127.5) * 0.0078125).transpose(2, 0, 1)


ONET_SIZE, PNET_SIZE = 48, 96


def face_crop(index: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A 48x48 ONet input: a face box as PNet/RNet would hand it on (the face jittered in
    position and scale), or, one crop in four, background only; the face's five landmarks in
    the crop's unit square (ONet's own landmark units), or None."""
    rng = np.random.default_rng(index)
    image, draw = _scene(rng, ONET_SIZE)
    big = ONET_SIZE * 4
    marks = None
    if rng.random() >= 0.25:
        w = big * rng.uniform(0.6, 0.8)
        cx, cy = big / 2 + rng.uniform(-0.08, 0.08) * big, big / 2 + rng.uniform(-0.05, 0.1) * big
        marks = _face(draw, rng, cx, cy, w) / big
    return _finish(image, rng, ONET_SIZE), marks


def face_scene(index: int) -> np.ndarray:
    """A 96x96 PNet input: two to six faces of 10 to 20 pixels on a cluttered background, as on the
    pyramid level where MTCNN's image scale brings faces near PNet's 12-pixel window."""
    rng = np.random.default_rng(index)
    image, draw = _scene(rng, PNET_SIZE)
    big = PNET_SIZE * 4
    for _ in range(int(rng.integers(2, 7))):
        w = big * rng.uniform(10, 20) / PNET_SIZE
        _face(draw, rng, rng.uniform(w / 2, big - w / 2), rng.uniform(w / 2, big - w / 2), w)
    return _finish(image, rng, PNET_SIZE)


def onet_crops(samples: int, batch_size: int):
    yield from _batches(lambda i: face_crop(i)[0], "crop", samples, batch_size)


def onet_heldout(batch_size: int, rows: int):
    yield from _heldout(lambda i: face_crop(i)[0], "crop", rows, batch_size)


def pnet_images(samples: int, batch_size: int):
    yield from _batches(face_scene, "image", samples, batch_size)


def pnet_heldout(batch_size: int, rows: int):
    yield from _heldout(face_scene, "image", rows, batch_size)


# --- resemblyzer: mel frames of synthetic speech ---------------------------------------------------------

PARTIAL_FRAMES, MEL_CHANNELS, N_FFT, HOP = 160, 40, 400, 160  # resemblyzer.hparams
VOWELS = (
    (730, 1090, 2440),
    (530, 1840, 2480),
    (270, 2290, 3010),
    (570, 840, 2410),
    (300, 870, 2240),
    (660, 1720, 2410),
)


def _resonate(x: np.ndarray, freq: float, bandwidth: float) -> np.ndarray:
    from scipy.signal import lfilter

    r = np.exp(-np.pi * bandwidth / SAMPLE_RATE)
    a = [1.0, -2 * r * np.cos(2 * np.pi * freq / SAMPLE_RATE), r * r]
    return lfilter([1 - r], a, x)


def utterance(index: int) -> np.ndarray:
    """1.6 s of speech-like audio: syllables of a glottal pulse train (a speaker's f0 and
    intonation, jitter) through three vowel formants scaled by the speaker's vocal tract,
    fricative noise bursts between syllables, pauses; normalized to resemblyzer's -30 dBFS."""
    rng = np.random.default_rng(index)
    n = (PARTIAL_FRAMES - 1) * HOP + N_FFT
    f0, tract = rng.uniform(85, 250), rng.uniform(0.85, 1.2)
    out, at = np.zeros(n), 0
    while at < n:
        length = int(SAMPLE_RATE * rng.uniform(0.12, 0.28))
        if rng.random() < 0.15:  # a pause
            at += length // 2
            continue
        t = np.arange(length) / SAMPLE_RATE
        pitch = (
            f0
            * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t + rng.uniform(0, 6)))
            * (1 + 0.01 * rng.standard_normal(length))
        )
        cycles = np.cumsum(pitch) / SAMPLE_RATE
        pulses = np.diff(np.floor(cycles), prepend=0.0)
        source = _resonate(pulses, 0.0, 300.0)  # the glottal pulse's low-pass tilt
        voiced = sum(
            _resonate(source, f * tract, 80 + 0.05 * f) * g
            for f, g in zip(VOWELS[int(rng.integers(6))], (1, 0.6, 0.3), strict=True)
        )
        envelope = np.sin(np.pi * np.arange(length) / length) ** 0.7
        syllable = voiced * envelope / (np.abs(voiced).max() + 1e-9)
        if rng.random() < 0.4:  # a fricative onset
            k = length // 4
            syllable[:k] += 0.3 * _resonate(rng.standard_normal(k), rng.uniform(3000, 6000), 1500) * np.hanning(k)
        stop = min(n, at + length)
        out[at:stop] += syllable[: stop - at]
        at = stop
    out += 0.003 * rng.standard_normal(n)
    rms = np.sqrt(np.mean(out**2))
    return out * 10 ** (-30 / 20) / max(rms, 1e-9)  # audio_norm_target_dBFS


def _slaney_mel(hz: np.ndarray) -> np.ndarray:
    lin = hz / (200.0 / 3)
    return np.where(hz >= 1000, 15 + np.log(np.maximum(hz, 1e-9) / 1000) / (np.log(6.4) / 27), lin)


def _slaney_hz(mel: np.ndarray) -> np.ndarray:
    return np.where(mel >= 15, 1000 * np.exp((mel - 15) * (np.log(6.4) / 27)), mel * 200.0 / 3)


def mel_filters() -> np.ndarray:
    """librosa.filters.mel(sr=16000, n_fft=400, n_mels=40) at its defaults: Slaney's mel scale and
    area normalization, 0 to 8 kHz."""
    bins = np.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    edges = _slaney_hz(
        np.linspace(_slaney_mel(np.array(0.0)), _slaney_mel(np.array(SAMPLE_RATE / 2)), MEL_CHANNELS + 2)
    )
    lower = (bins[None, :] - edges[:-2, None]) / np.diff(edges)[:-1, None]
    upper = (edges[2:, None] - bins[None, :]) / np.diff(edges)[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    return weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]


def mel_frames(index: int) -> np.ndarray:
    """resemblyzer.audio.wav_to_mel_spectrogram of one utterance: librosa's power mel spectrogram
    (centred frames, zero padding, periodic Hann window of 400, hop 160), frames by channels."""
    wav = np.pad(utterance(index), N_FFT // 2)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    starts = np.arange(PARTIAL_FRAMES) * HOP
    frames = np.stack([wav[s : s + N_FFT] for s in starts]) * window
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    return (power @ mel_filters().T).astype(np.float32)


def speech_mels(samples: int, batch_size: int):
    yield from _batches(mel_frames, "mels", samples, batch_size)


def speech_heldout(batch_size: int, rows: int):
    yield from _heldout(mel_frames, "mels", rows, batch_size)


# --- RapidOCR text detection: rendered text ------------------------------------------------------------

TEXT_H, TEXT_W = 128, 320
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


@functools.cache
def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def text_image(index: int) -> np.ndarray:
    """Lines of random words in PIL's bundled font (12 to 36 px, dark or light on a contrasting
    gradient, some blobs, blur and noise), preprocessed as rapidocr's DetPreProcess does: BGR,
    (x / 255 - 0.5) / 0.5, channels first."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(index)
    light = rng.random() < 0.7
    base = rng.uniform(170, 255, 3) if light else rng.uniform(0, 80, 3)
    ramp = np.linspace(0, 1, TEXT_W)[None, :, None] * rng.uniform(-60, 60, 3)
    pixels = np.clip(np.broadcast_to(base + ramp, (TEXT_H, TEXT_W, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(np.ascontiguousarray(pixels))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 4))):
        x, y, r = rng.uniform(0, TEXT_W), rng.uniform(0, TEXT_H), rng.uniform(5, 40)
        draw.ellipse(
            (x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in np.clip(base + rng.uniform(-50, 50, 3), 0, 255))
        )
    y = rng.uniform(2, 20)
    while y < TEXT_H - 14:
        size = int(rng.integers(12, 37))
        font = _font(size)
        words = ["".join(rng.choice(list(LETTERS), int(rng.integers(2, 9)))) for _ in range(int(rng.integers(1, 5)))]
        ink = rng.uniform(0, 90, 3) if light else rng.uniform(180, 255, 3)
        draw.text((rng.uniform(2, 60), y), " ".join(words), font=font, fill=tuple(int(c) for c in ink))
        y += size * rng.uniform(1.3, 2.5)
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.0)))
    noisy = np.asarray(image, np.float32) + rng.normal(0, rng.uniform(0, 6), (TEXT_H, TEXT_W, 3))
    bgr = np.clip(noisy, 0, 255)[:, :, ::-1]
    return ((bgr / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)


def text_images(samples: int, batch_size: int):
    yield from _batches(text_image, "x", samples, batch_size)


def text_heldout(batch_size: int, rows: int):
    yield from _heldout(text_image, "x", rows, batch_size)


# --- RapidOCR text recognition: one line of text as its TextRecognizer feeds it --------------------------

LINE_H = 48  # rapidocr's rec_img_shape: 48 high, batches at least 320 wide
LINE_WIDTHS = (320, 480, 640)
LINE_WIDTH_ODDS = (0.6, 0.25, 0.15)  # most detected lines are short
LINE_BATCH = 6  # rapidocr's rec_batch_num


def line_width(index: int) -> int:
    """The width sample ``index`` is padded to. rapidocr sorts a page's crops by aspect ratio and pads each
    batch of six to its widest crop, at least 320; here six consecutive samples share a batch and its width
    is a multiple of 160, so a folder holds three shapes rather than one per batch."""
    rng = np.random.default_rng([index // LINE_BATCH, LINE_H])  # a seed of its own, not sample i's
    return int(rng.choice(LINE_WIDTHS, p=LINE_WIDTH_ODDS))


def _line_image(rng: np.random.Generator, length: float):
    """Words in PIL's bundled font (26 to 39 px, filling a detector's box), about ``length`` pixels wide,
    dark or light on a contrasting gradient, blurred a little: an RGB PIL image 48 high."""
    from PIL import Image, ImageDraw, ImageFilter

    size = int(rng.integers(26, 40))
    font = _font(size)
    text = ""
    while font.getlength(text) < length - 8:
        text += ("" if not text else " ") + "".join(rng.choice(list(LETTERS), int(rng.integers(2, 9))))
    own = int(np.ceil(font.getlength(text))) + 8
    light = rng.random() < 0.7
    base = rng.uniform(170, 255, 3) if light else rng.uniform(0, 80, 3)
    ramp = np.linspace(0, 1, own)[None, :, None] * rng.uniform(-40, 40, 3)
    pixels = np.clip(np.broadcast_to(base + ramp, (LINE_H, own, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(np.ascontiguousarray(pixels))
    ink = rng.uniform(0, 90, 3) if light else rng.uniform(180, 255, 3)
    y = (LINE_H - size) / 2 - font.getbbox(text)[1] / 2 + rng.uniform(-3, 3)
    ImageDraw.Draw(image).text((rng.uniform(2, 6), y), text, font=font, fill=tuple(int(c) for c in ink))
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.8)))


def _padded(image, rng: np.random.Generator, width: int) -> np.ndarray:
    """rapidocr's resize_norm_img (recognizer and classifier alike): squeezed to ``width`` where wider,
    sensor noise, BGR, (x / 255 - 0.5) / 0.5, channels first, zeros on the right up to ``width``."""
    from PIL import Image

    if image.width > width:
        image = image.resize((width, LINE_H), Image.BILINEAR)
    noisy = np.asarray(image, np.float32) + rng.normal(0, rng.uniform(0, 5), (LINE_H, image.width, 3))
    bgr = np.clip(noisy, 0, 255)[:, :, ::-1]
    out = np.zeros((3, LINE_H, width), np.float32)
    out[:, :, : image.width] = ((bgr / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
    return out


def text_line(index: int) -> np.ndarray:
    """A line as rapidocr's TextRecognizer feeds it: long enough to need its batch's width (a 320 batch
    also holds short lines), padded to that width (``_padded``)."""
    rng = np.random.default_rng(index)
    width = line_width(index)
    narrower = max(w for w in (0, *LINE_WIDTHS) if w < width)
    image = _line_image(rng, rng.uniform(max(narrower, width * 0.25), width))
    return _padded(image, rng, width)


CROP_W = 192  # rapidocr's cls_image_shape: 48 x 192
UPSIDE_DOWN = 0.25  # the share of crops turned 180 degrees, what the classifier is there to find


def text_crop(index: int) -> np.ndarray:
    """A detected line as rapidocr's TextClassifier feeds it: 1 to 10 times as wide as high, one in four
    upside down, squeezed into 48 x 192 where wider and padded there (``_padded``)."""
    rng = np.random.default_rng([index, CROP_W])  # not text_line's sample ``index``
    image = _line_image(rng, rng.uniform(LINE_H, 10 * LINE_H))
    if rng.random() < UPSIDE_DOWN:
        image = image.rotate(180)
    return _padded(image, rng, CROP_W)


# --- A folder of samples, as a user brings data to `trtpipe init --data DIR` ---------------------------

FOLDER_KINDS: dict[str, Callable[[int], np.ndarray]] = {
    "text": text_image,
    "text_line": text_line,
    "text_crop": text_crop,
}
MAX_FOLDER_SAMPLES = 10_000


def write_folder(kind: str, folder: str, samples: int) -> list[str]:
    """Samples ``0 .. samples-1`` of ``kind`` as one float32 ``.npy`` file each (``folder`` made, or emptied
    of earlier samples first): the data of the zoo's ``trtpipe init`` rows (issue 21). The file names."""
    from pathlib import Path

    if kind not in FOLDER_KINDS or not 0 < samples <= MAX_FOLDER_SAMPLES:
        raise SystemExit(f"write_folder: kind one of {sorted(FOLDER_KINDS)}, samples 1..{MAX_FOLDER_SAMPLES}")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for old in [path for each in FOLDER_KINDS for path in out.glob(f"{each}_*.npy")]:
        old.unlink(missing_ok=True)  # "text_*" also matches "text_line_*"
    names = [f"{kind}_{i:05d}.npy" for i in range(samples)]
    for i, name in enumerate(names):
        np.save(out / name, FOLDER_KINDS[kind](i).astype(np.float32))
    return names
