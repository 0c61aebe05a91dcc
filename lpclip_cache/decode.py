"""Decoding images for extraction: a source's image as uint8 pixels at the model's input size,
in DataLoader workers, with a one-line reason for an image that cannot be used.

What an image is *not* (``BadImage``: its bytes are read but unusable) and what cannot be read
*now* (``DataUnavailable``: an I/O error, exhausted memory) are told apart here: the first may
become an invalid row, the second stops the run, and the same command retries it.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .errors import BadImage, DataUnavailable
from .preprocess import resize_to_model

if TYPE_CHECKING:
    from .data import Source


def high_bit_depth(image: Image.Image) -> bool:
    """Whether PIL would clip the image's values when converting it to 8 bits (integer and float modes)."""
    return image.mode.startswith("I") or image.mode == "F"


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB, keeping the brightness of high-bit-depth images.

    PIL clips 16- and 32-bit integer pixels to 0-255 when converting to RGB, so a 16-bit image
    would come out nearly all white. Integer modes (``I;16*``, ``I``) are read as 16-bit
    intensities (0-65535, scaled to 0-255) and float images (``F``) as 0-1 intensities. Other
    modes use PIL's conversion, as open_clip does (alpha is dropped, CMYK and palettes mapped).
    """
    if high_bit_depth(image):
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            values = np.nan_to_num(values * 255.0, nan=0.0, posinf=255.0, neginf=0.0)
        else:
            values = values / 257.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    return image.convert("RGB")


class DecodedDataset:
    """A map-style dataset yielding ``(index, uint8 CHW tensor, ok, reason)`` for DataLoader workers.

    An image that cannot be decoded (or that its data marks bad) yields zeros with ``ok`` False
    and the reason, so the main process decides (a clear error, or ``--skip-bad``) instead of a
    worker traceback. An image that cannot be *read* now (an I/O error, exhausted memory) is no
    property of the image: it raises ``DataUnavailable``, which stops the run in one line, and
    running the same command again retries it; it never becomes an invalid row.
    """

    def __init__(
        self,
        source: Source,
        size: tuple[int, int],
        mode: str,
        interpolation: str,
        fill: int = 0,
    ) -> None:
        self.source = source
        self.size = size
        self.mode = mode
        self.interpolation = interpolation
        self.fill = fill

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[int, Any, bool, str]:
        import torch

        try:
            pixels = self.decode(index)
        except BadImage as exc:
            blank = torch.zeros((3, *self.size), dtype=torch.uint8)
            return index, blank, False, str(exc)
        return index, torch.from_numpy(pixels).permute(2, 0, 1), True, ""

    def decode(self, index: int) -> np.ndarray:
        """The image at ``index`` as resized uint8 H x W x 3 pixels, equal to what open_clip's
        evaluation transform makes of it before ``ToTensor``.

        The image is resized in its own mode and converted to RGB afterwards, in open_clip's order;
        only high-bit-depth images are converted first (see ``to_rgb``). An image over PIL's
        ``MAX_IMAGE_PIXELS`` (a possible decompression bomb) is refused here, where PIL itself only
        warns until twice that size. Raises ``BadImage`` (with its one-line reason) for an image
        that cannot be used, ``DataUnavailable`` for one that cannot be read now: an OSError with
        an errno (the operating system's, as PIL's decoding errors have none) or a MemoryError.
        """
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with self.source.image(index) as image:
                    if high_bit_depth(image):
                        image = to_rgb(image)
                    image = to_rgb(resize_to_model(image, self.size, self.mode, self.interpolation, self.fill))
                    return np.asarray(image, dtype=np.uint8).copy()
        except (BadImage, DataUnavailable):
            raise
        except MemoryError:
            raise DataUnavailable(f"out of memory decoding image '{self.source.keys[index]}': free memory or pass "
                                  "fewer --workers, then run the same command again (finished shards are kept)"
                                  ) from None
        except OSError as exc:
            if exc.errno is None:
                raise BadImage(one_line(exc)) from exc
            raise DataUnavailable(f"cannot read image '{self.source.keys[index]}' ({exc.strerror or one_line(exc)}): "
                                  "check that it is readable (its permissions, the disk, the mount), then run the "
                                  "same command again (finished shards are kept)") from None
        except Exception as exc:  # the file is read: whatever else fails is the untrusted image's own
            raise BadImage(one_line(exc)) from exc


def one_line(exc: BaseException) -> str:
    """An exception as ``Type: first line of its message``."""
    text = str(exc).splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def default_collate_shard(items: list[tuple[int, Any, bool, str]]) -> tuple[Any, Any, Any, list[str]]:
    """Stack one shard of decoded items: (indices, uint8 pixels, ok flags, reasons)."""
    import torch

    indices, pixels, ok, reasons = zip(*items)
    return torch.tensor(indices), torch.stack(pixels), torch.tensor(ok, dtype=torch.bool), list(reasons)
