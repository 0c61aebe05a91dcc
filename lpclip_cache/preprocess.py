"""open_clip's evaluation preprocessing on the CPU: resize and crop a PIL image to the model's
input size, for every ``resize_mode``, exactly as open_clip's transform does before ``ToTensor``.
"""

from __future__ import annotations

from PIL import Image

RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def _resize_exact(image: Image.Image, width: int, height: int, resample: int) -> Image.Image:
    """Resize to exactly ``width`` x ``height``; an image already that size is returned as it is
    (torchvision's ``resize`` skips the resampling then, and so must we)."""
    return image if image.size == (width, height) else image.resize((width, height), resample)


def _keep_ratio_size(image: Image.Image, height: int, width: int, longest: bool) -> tuple[int, int]:
    """(width, height) after scaling so that the shorter (or longer) side fits, each side rounded:
    open_clip's ``ResizeKeepRatio`` rule for non-square targets and ``resize_mode`` longest."""
    ratios = (image.height / height, image.width / width)
    ratio = max(ratios) if longest else min(ratios)
    return round(image.width / ratio), round(image.height / ratio)


def _center_crop(image: Image.Image, height: int, width: int, fill: int) -> Image.Image:
    """torchvision's ``center_crop``: pad a side that is too short (left/top get the smaller half),
    then cut the centre, offsets rounded half to even as Python's ``round`` does."""
    if width > image.width or height > image.height:
        pad_w, pad_h = max(0, width - image.width), max(0, height - image.height)
        canvas = Image.new(image.mode, (image.width + pad_w, image.height + pad_h), (fill,) * len(image.getbands()))
        canvas.paste(image, (pad_w // 2, pad_h // 2))
        image = canvas
        if image.size == (width, height):
            return image
    top = int(round((image.height - height) / 2.0))
    left = int(round((image.width - width) / 2.0))
    return image.crop((left, top, left + width, top + height))


def resize_to_model(image: Image.Image, size: tuple[int, int], mode: str, interpolation: str,
                    fill: int = 0) -> Image.Image:
    """Resize and crop as open_clip's evaluation preprocessing does, for each ``resize_mode``.

    - shortest, square target: torchvision's ``Resize(int)``: the shorter side becomes the
      target and the longer side is *truncated* (``int(size * long / short)``: 500x375 -> 298x224),
      then a centre crop;
    - shortest, non-square target: open_clip's ``ResizeKeepRatio`` (sides rounded, and always
      bicubic, whatever ``interpolation`` says, as open_clip does), then a centre crop;
    - longest: ``ResizeKeepRatio`` on the longer side with ``interpolation``, then a centre pad
      with ``fill``;
    - squash: a plain resize to the target.

    The image is resized in its own mode and converted to RGB afterwards by the caller, as
    open_clip does (so palette images resize with PIL's nearest neighbour, as there).
    """
    height, width = size
    resample = RESAMPLE[interpolation]
    if mode == "squash":
        return _resize_exact(image, width, height, resample)
    if mode == "longest":
        return _center_crop(_resize_exact(image, *_keep_ratio_size(image, height, width, True), resample),
                            height, width, fill)
    if height == width:
        short, long = sorted(image.size)
        new_long = int(height * long / short)
        new_size = (height, new_long) if image.width <= image.height else (new_long, height)
        image = _resize_exact(image, *new_size, resample)
    else:
        image = _resize_exact(image, *_keep_ratio_size(image, height, width, False), Image.BICUBIC)
    return _center_crop(image, height, width, 0)

