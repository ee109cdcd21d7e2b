"""Image files (PNG, JPEG, BMP) to model input as ``[calibration.image]`` declares, read with Pillow.

An image's size is read from its header and refused beyond ``MAX_IMAGE_PIXELS`` before a pixel is
decoded, so a small file that would decode to gigabytes costs nothing. Pillow's own limit
(``Image.MAX_IMAGE_PIXELS``) is process-wide and left as it is.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from pipeline.config import MAX_IMAGE_PIXELS, ImageSection
from pipeline.errors import PipelineError

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def is_image(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES


def read_image(path: Path, spec: ImageSection) -> np.ndarray:
    """One image as one sample (no batch axis), preprocessed as ``spec`` says."""
    from PIL import Image

    try:
        with warnings.catch_warnings():  # Pillow warns of a large image that the check below refuses
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise PipelineError(_too_large(path, width, height))
            pixels = _fitted(image.convert("RGB" if spec.channels == "BGR" else spec.channels), spec)
    except Image.DecompressionBombError:  # Pillow's own check, on formats whose header it trusts less
        raise PipelineError(_too_large(path, 0, 0)) from None
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's errors on a damaged or foreign file
        raise PipelineError(f"{path}: not a readable image ({exc}); give PNG, JPEG or BMP files") from None
    return _normalized(pixels, spec)


def _too_large(path: Path, width: int, height: int) -> str:
    size = f"{width}x{height} pixels" if width else "more pixels than Pillow allows"
    return f"{path}: the image is {size}, more than {MAX_IMAGE_PIXELS} pixels; shrink it before calibrating"


def _fitted(image, spec: ImageSection) -> np.ndarray:
    """The image at ``spec.size`` (H, W[, C]), by the resize mode."""
    from PIL import Image

    height, width = spec.size
    if spec.resize == "resize":
        return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
    cover = spec.resize == "center-crop"
    ratio = (max if cover else min)(width / image.width, height / image.height)
    scaled = (max(1, round(image.width * ratio)), max(1, round(image.height * ratio)))
    image = image.resize(scaled, Image.Resampling.BILINEAR)
    left, top = (scaled[0] - width) // 2, (scaled[1] - height) // 2
    if cover:
        return np.asarray(image.crop((left, top, left + width, top + height)))
    canvas = Image.new(image.mode, (width, height))  # black
    canvas.paste(image, (-left, -top))
    return np.asarray(canvas)


def _normalized(pixels: np.ndarray, spec: ImageSection) -> np.ndarray:
    if pixels.ndim == 2:  # one channel ("L")
        pixels = pixels[:, :, None]
    if spec.channels == "BGR":
        pixels = pixels[:, :, ::-1]
    if spec.dtype == "uint8":
        out = pixels.astype(np.uint8)
    else:
        out = pixels.astype(np.float32) / 255.0
        if spec.mean is not None:
            out = out - np.asarray(spec.mean, np.float32)
        if spec.std is not None:
            out = out / np.asarray(spec.std, np.float32)
        out = out.astype(spec.dtype)
    return np.ascontiguousarray(out.transpose(2, 0, 1) if spec.layout == "NCHW" else out)
