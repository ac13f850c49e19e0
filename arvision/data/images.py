"""Encoded image bytes <-> uint8 tensors: decoding with a PIL fallback, short-side resizing, encoding.

torchvision's decoders (libjpeg-turbo, libpng) are used first: on this project's 2-core CPU,
``decode_jpeg`` reads a 256-px JPEG about 1.5x faster than PIL (see docs/data.md). Formats
torchvision does not read (BMP, TIFF, CMYK oddities) go through PIL. Anything neither can decode
raises :class:`BadImageError` with a short reason.
"""

import io
import re
import warnings

import numpy as np
import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, encode_jpeg, encode_png
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from .unreadable import BadImageError

__all__ = ["decode", "encode", "resize_short_side"]

# torchvision 0.29 deprecates its image io in favour of torchcodec; it still works, and PIL is the
# fallback the day it does not.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

_MODES = {1: ImageReadMode.GRAY, 3: ImageReadMode.RGB}
_PIL_MODES = {1: "L", 3: "RGB"}
_JPEG_MAGIC = b"\xff\xd8\xff"


def _reason(exc: Exception) -> str:
    """The readable part of a torchvision or PIL error (no C++ source locations, no object ids)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # "decode_jpeg, /.../decode_jpeg.cpp:171, Image is incomplete or truncated"
    text = re.sub(r"^\w+, \S+\.cpp:\d+, ", "", text)
    if text.startswith("cannot identify image file"):
        return "not an image file (unknown format)"
    return text


def decode(data: bytes, channels: int) -> Tensor:
    """Decode an encoded image to uint8 ``(channels, H, W)``; ``channels`` is 1 (grey) or 3 (RGB)."""
    if not data:
        raise BadImageError("empty file (0 bytes)")
    buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    try:
        if data[:3] == _JPEG_MAGIC:
            return decode_jpeg(buffer, mode=_MODES[channels])
        image = decode_image(buffer, mode=_MODES[channels])
        return image[0] if image.ndim == 4 else image  # animated GIF: first frame
    except RuntimeError as exc:
        first = _reason(exc)
    return _decode_pil(data, channels, None if "Unsupported image file" in first else first)


def _decode_pil(data: bytes, channels: int, first: str | None) -> Tensor:
    """PIL's try; on failure the reason is torchvision's (``first``) when it had one."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            array = np.array(image.convert(_PIL_MODES[channels]))
    except UnidentifiedImageError:
        raise BadImageError(first or "not an image file (unknown format)") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        raise BadImageError(first or _reason(exc)) from None
    tensor = torch.from_numpy(array)
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def resize_short_side(image: Tensor, short_side: int) -> Tensor:
    """Resize uint8 ``(C, H, W)`` so its shorter side is ``short_side`` (aspect kept, bicubic,
    antialiased); an image already that small or smaller is returned as it is (never upscaled)."""
    height, width = image.shape[-2:]
    if min(height, width) <= short_side:
        return image
    scale = short_side / min(height, width)
    size = [max(1, round(height * scale)), max(1, round(width * scale))]
    size[0 if height <= width else 1] = short_side  # exact on the short side despite rounding
    return F.resize(image, size, interpolation=InterpolationMode.BICUBIC, antialias=True)


def encode(image: Tensor, image_format: str, quality: int = 95) -> bytes:
    """Encode uint8 ``(C, H, W)`` as ``"jpeg"`` (at ``quality``) or ``"png"`` (lossless)."""
    if image_format == "jpeg":
        return encode_jpeg(image, quality=quality).numpy().tobytes()
    if image_format == "png":
        return encode_png(image, compression_level=9).numpy().tobytes()
    raise ValueError(f"unknown image format {image_format!r}; expected 'jpeg' or 'png'")
