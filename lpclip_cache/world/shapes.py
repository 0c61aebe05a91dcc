"""A procedural image-caption world: coloured shapes with attributes, drawn by numpy.

Every image is a function of (world seed, split, count): each shape is a polygon in its own
coordinates, rotated, scaled and placed, filled by PIL on a 4x canvas and box-filtered down, so
edges are antialiased and the result is the same on every machine.

- Attributes: shape (the downstream classes), colour, size, position, rotation, background.
- Captions name the attributes in varied phrasings: the small CLIP learns from these, not from
  the zero-shot prompts it is later asked with.
- Styles: ``filled`` (the teacher's pretraining style); the renditions ``outline`` (only a band
  along the edge) and ``texture`` (the shape filled with stripes of its background), which the
  teacher never saw; and the natural shifts ``recoloured`` (each object in a colour other than its
  class's usual one) and ``greyscale`` (a black-and-white photo of the scene).
- ``scribbles``: out-of-distribution images of random strokes, none of the shapes.
- Worlds (``WORLDS``): how scenes vary. ``objects`` is seen the way photos see objects: whole
  and inside the frame, facing either way, at any angle of the views' range, from varied
  viewpoints, under varied light, sometimes partly hidden, usually in their class's colour; so
  FixMatch's views keep the class, as they do on photos. ``web``, the default, has the same
  scenes, but its teacher's pretraining corpus shows objects in any colour, as web data breaks a
  curated set's cues: the teacher learns shape, and survives natural shifts that a supervised
  probe does not. ``geometry`` is the earlier world (upright, facing one way, near the border,
  one light): a shape's class lives only in its exact geometry, which the views break.
  docs/demo.md compares them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np

WORLD_VERSION = 2  # bump when rendering or captions change: it is part of the teacher's cache key
SHAPES = ("circle", "square", "triangle", "star", "cross", "heart", "pentagon", "hexagon", "diamond", "arrow",
          "crescent", "semicircle")
# How captions name each shape: (word, probability) pairs. The class name (the zero-shot prompt's
# word) is in every list, so the text tower learns it, but synonyms and a confusable neighbour's
# name share the mentions; this is the imperfect text head of point 1 (docs/demo.md).
CAPTION_NAMES: dict[str, tuple[tuple[str, float], ...]] = {
    "circle": (("circle", 0.6), ("disc", 0.4)),
    "square": (("square", 0.45), ("box", 0.2), ("diamond", 0.35)),
    "triangle": (("triangle", 1.0),),
    "star": (("star", 1.0),),
    "cross": (("cross", 0.4), ("plus", 0.6)),
    "heart": (("heart", 1.0),),
    "pentagon": (("pentagon", 0.5), ("polygon", 0.3), ("hexagon", 0.2)),
    "hexagon": (("hexagon", 0.5), ("polygon", 0.3), ("pentagon", 0.2)),
    "diamond": (("diamond", 0.3), ("rhombus", 0.35), ("square", 0.35)),
    "arrow": (("arrow", 0.8), ("pointer", 0.2)),
    "crescent": (("crescent", 0.3), ("moon", 0.35), ("semicircle", 0.35)),
    "semicircle": (("semicircle", 0.4), ("dome", 0.25), ("crescent", 0.35)),
}
COLOURS = {
    "red": (0.9, 0.12, 0.1),
    "green": (0.12, 0.72, 0.2),
    "blue": (0.15, 0.3, 0.95),
    "yellow": (0.95, 0.88, 0.12),
    "purple": (0.58, 0.2, 0.8),
    "orange": (1.0, 0.55, 0.05),
    "white": (0.95, 0.95, 0.95),
    "cyan": (0.1, 0.82, 0.88),
}
SIZES = {"small": 0.36, "medium": 0.5, "large": 0.64}
BACKGROUNDS = ("dark", "gray", "noisy")
STYLES = ("filled", "outline", "texture", "recoloured", "greyscale")
RENDITIONS = ("outline", "texture")  # drawings the teacher never saw
NATURAL_SHIFTS = ("recoloured", "greyscale")  # the same objects seen another way: CLIP's pretraining saw such scenes
SUPERSAMPLE = 4
SPLIT_OFFSETS = {"pretrain": 0, "train": 1, "test": 2, "ood": 3}
INNER_SCALE = 0.7  # the outline style keeps the band between the shape and its 70% copy


@dataclass(frozen=True)
class World:
    """How a world's scenes vary (every range is uniform). The defaults are the ``geometry`` world."""

    name: str
    scale: float = 1.0  # objects' sizes, relative to SIZES
    rotation: float = 25.0  # base rotation of an object, in +-degrees
    mirror: bool = False  # objects face either way (a horizontal flip shows a scene of the world)
    margin: float | None = None  # the object's whole extent stays this far inside the frame (fraction of
    # the half-size); None: its centre may go up to 0.95 - radius from the middle (edges may touch the frame)
    shear: float = 0.0  # viewpoint: a shear of the object on each axis, in +-shear
    brightness: tuple[float, float] = (1.0, 1.0)  # the scene's exposure: a factor on every pixel
    contrast: tuple[float, float] = (1.0, 1.0)  # blend with the scene's mean grey (1: unchanged)
    saturation: tuple[float, float] = (1.0, 1.0)  # blend with the scene's grey image (0: black and white)
    occluder: float = 0.0  # probability that a grey rectangle hides part of the scene
    occluder_area: tuple[float, float] = (0.02, 0.1)  # its area, as a fraction of the image
    typical_colour: float = 0.0  # probability that an object has its class's usual colour (a second cue); the
    # outline and texture renditions of an object draw any colour (a sketch of a banana need not be yellow)
    pretrain_typical_colour: float | None = None  # the same probability in the teacher's pretraining corpus
    # (None: as downstream); web data breaks a curated set's colour cue, as CLIP's corpus does
    auto_levels: float = 0.0  # probability that the camera stretches each channel to the full range
    equalised: float = 0.0  # probability that the camera equalises each channel's histogram
    caption_names: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()  # CAPTION_NAMES entries it changes

    def names(self) -> dict[str, tuple[tuple[str, float], ...]]:
        """How this world's captions name each shape."""
        return {**CAPTION_NAMES, **dict(self.caption_names)}

    def pretraining(self) -> World:
        """The world as the teacher's pretraining corpus sees it."""
        if self.pretrain_typical_colour is None:
            return self
        return replace(self, typical_colour=self.pretrain_typical_colour, pretrain_typical_colour=None)

    def describe(self) -> dict[str, object]:
        """The world's parameters (part of a teacher's key and of a data source's identity)."""
        described = asdict(self)
        if self.pretrain_typical_colour is None:  # a world without it keeps its landed description (teacher key)
            del described["pretrain_typical_colour"]
        return described


# How the objects world's captions differ: its rotations and mirrors make the three look-alike pairs
# look more alike, and naming them as each other often made one class of a pair take both in the
# zero-shot head, so they are named more faithfully; the text head's imperfection comes from a
# pair that does not look alike, triangle and arrow, instead (docs/demo.md, how it was fixed).
OBJECT_NAMES = (
    ("square", (("square", 0.5), ("box", 0.2), ("diamond", 0.3))),
    ("diamond", (("diamond", 0.4), ("rhombus", 0.3), ("square", 0.3))),
    ("crescent", (("crescent", 0.5), ("moon", 0.35), ("semicircle", 0.15))),
    ("semicircle", (("semicircle", 0.6), ("dome", 0.25), ("crescent", 0.15))),
    ("pentagon", (("pentagon", 0.5), ("polygon", 0.25), ("hexagon", 0.25))),
    ("hexagon", (("hexagon", 0.5), ("polygon", 0.25), ("pentagon", 0.25))),
    ("heart", (("heart", 0.7), ("circle", 0.3))),
    ("circle", (("circle", 0.45), ("disc", 0.25), ("heart", 0.3))),
)
OBJECTS = World("objects", scale=0.8, rotation=55.0, mirror=True, margin=0.1, brightness=(0.5, 1.1),
                contrast=(0.5, 1.0), saturation=(0.3, 1.0), occluder=0.2, typical_colour=0.95, auto_levels=0.25,
                equalised=0.15, caption_names=OBJECT_NAMES)
WORLDS = {
    # the objects world's scenes, and a teacher whose web-like corpus shows objects in any colour: the
    # downstream set's colour cue (95% usual colours, as a curated photo set has) is a shortcut a supervised
    # probe takes and the teacher never learned, so the teacher keeps its accuracy in unusual colours
    "web": replace(OBJECTS, name="web", pretrain_typical_colour=0.0),
    "objects": OBJECTS,
    "geometry": World("geometry"),
}
DEFAULT_WORLD = "web"


def _polygon(radius: Callable[[np.ndarray], np.ndarray], points: int = 64) -> np.ndarray:
    """Vertices of a star-shaped outline given its radius as a function of the angle."""
    angle = np.linspace(0, 2 * np.pi, points, endpoint=False) + np.pi / 2
    r = radius(angle)
    return np.stack([r * np.cos(angle), -r * np.sin(angle)], axis=1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x / 17.0, -(y + 2.5) / 17.0], axis=1)


def _crescent(d: float = 0.45, r: float = 0.8) -> np.ndarray:
    """The unit disc less a disc of radius ``r`` shifted right by ``d``: the outer arc through the
    left, then the inner arc back, between the two circles' crossing points."""
    x = (1 + d * d - r * r) / (2 * d)
    y = np.sqrt(1 - x * x)
    outer = np.linspace(np.arctan2(y, x), 2 * np.pi - np.arctan2(y, x), 64)
    inner = np.linspace(2 * np.pi - np.arctan2(y, x - d), np.arctan2(y, x - d), 48)[1:-1]
    points = np.concatenate([np.stack([np.cos(outer), np.sin(outer)], 1),
                             np.stack([d + r * np.cos(inner), r * np.sin(inner)], 1)])
    return (points - [-0.2, 0]) * [1, -1]


def _semicircle() -> np.ndarray:
    t = np.linspace(0, np.pi, 48)
    return np.stack([np.cos(t), 0.3 - np.sin(t)], axis=1)


# Unit-size outlines in the object's own coordinates (x right, y down), radius about 1.
POLYGONS: dict[str, np.ndarray] = {
    "circle": _polygon(lambda a: np.ones_like(a)),
    "square": np.array([[-0.82, -0.82], [0.82, -0.82], [0.82, 0.82], [-0.82, 0.82]]),
    "triangle": np.array([[0.0, -1.0], [np.sqrt(3) / 2, 0.5], [-np.sqrt(3) / 2, 0.5]]),
    "star": _polygon(lambda a: np.where(np.round((a - np.pi / 2) / (np.pi / 5)) % 2 == 0, 1.0, 0.42), 10),
    "cross": np.array([[-0.3, -0.95], [0.3, -0.95], [0.3, -0.3], [0.95, -0.3], [0.95, 0.3], [0.3, 0.3],
                       [0.3, 0.95], [-0.3, 0.95], [-0.3, 0.3], [-0.95, 0.3], [-0.95, -0.3], [-0.3, -0.3]]),
    "heart": _heart(),
    "pentagon": _polygon(lambda a: np.ones_like(a), 5),
    "hexagon": _polygon(lambda a: np.ones_like(a), 6),
    "diamond": np.array([[0.0, -1.0], [0.6, 0.0], [0.0, 1.0], [-0.6, 0.0]]),
    "arrow": np.array([[1.0, 0.0], [0.2, -0.7], [0.2, -0.28], [-0.95, -0.28], [-0.95, 0.28], [0.2, 0.28],
                       [0.2, 0.7]]),
    "crescent": _crescent(),
    "semicircle": _semicircle(),
}


@dataclass
class Attributes:
    """Per-image attributes of a split (arrays of length N)."""

    shape: np.ndarray
    colour: np.ndarray
    size: np.ndarray
    background: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    radius: np.ndarray
    rotation: np.ndarray
    colour_rgb: np.ndarray
    background_level: np.ndarray
    noise_seed: np.ndarray
    mirror: np.ndarray | None = None  # bool: the object faces the other way
    shear: np.ndarray | None = None  # N x 2: shear along x and along y
    light: np.ndarray | None = None  # N x 3: brightness, contrast and saturation factors
    occluder: np.ndarray | None = None  # N x 5: present, left, top, width, height (fractions), and ...
    occluder_level: np.ndarray | None = None  # ... its grey level
    camera: np.ndarray | None = None  # 0 plain, 1 auto levels, 2 equalised
    drawn_rgb: np.ndarray | None = None  # the colour drawn at random, where the usual colour replaced it
    drawn_colour: np.ndarray | None = None  # its index into COLOURS
    tint: np.ndarray | None = None  # N x 3: each object's small departure from its palette colour

    def __len__(self) -> int:
        return len(self.shape)


def split_rng(seed: int, split: str, *extra: int) -> np.random.Generator:
    """The random generator of one split of one world seed."""
    return np.random.default_rng([seed, SPLIT_OFFSETS[split], *extra])


# each class's usual colour (index into COLOURS), where a world gives objects one
CLASS_COLOURS = np.array([list(COLOURS).index(c) for c in (
    "yellow", "blue", "green", "orange", "red", "purple", "cyan", "white", "red", "green", "yellow", "blue")])
EXTENT = np.array([np.linalg.norm(POLYGONS[name], axis=1).max() for name in SHAPES])  # farthest vertex


def sample_attributes(n: int, rng: np.random.Generator, world: World | None = None) -> Attributes:
    """Draw shape, colour, size, position, rotation and background for ``n`` images, and the
    world's mirror, viewpoint, light and occluder where it has them (drawn after the rest, so the
    ``geometry`` world draws exactly what it always drew)."""
    world = world or WORLDS[DEFAULT_WORLD]
    shape = rng.integers(0, len(SHAPES), n)
    colour = rng.integers(0, len(COLOURS), n)
    size = rng.integers(0, len(SIZES), n)
    background = rng.integers(0, len(BACKGROUNDS), n)
    radius = np.array(list(SIZES.values()))[size] * rng.uniform(0.92, 1.08, n) * world.scale
    if world.margin is None:
        reach = np.maximum(0.0, 0.95 - radius)
    else:  # the farthest vertex, sheared at most, stays ``margin`` inside the frame
        extent = EXTENT[shape] * (1 + world.shear)
        radius = np.minimum(radius, (1 - world.margin) / extent)
        reach = np.maximum(0.0, (1 - world.margin) - radius * extent)
    cx = rng.uniform(-1, 1, n) * reach
    cy = rng.uniform(-1, 1, n) * reach
    rotation = np.deg2rad(rng.uniform(-world.rotation, world.rotation, n))
    palette = np.array(list(COLOURS.values()))
    tint = rng.uniform(-0.06, 0.06, (n, 3))
    colour_rgb = np.clip(palette[colour] + tint, 0, 1)
    levels = np.array([0.06, 0.45, 0.3])
    background_level = levels[background] + rng.uniform(-0.04, 0.04, n)
    noise_seed = rng.integers(0, 2**31, n)
    attrs = Attributes(shape, colour, size, background, cx, cy, radius, rotation, colour_rgb, background_level,
                       noise_seed, tint=tint)
    if world.mirror:
        attrs.mirror = rng.random(n) < 0.5
    if world.shear:
        attrs.shear = rng.uniform(-world.shear, world.shear, (n, 2))
    if (world.brightness, world.contrast, world.saturation) != ((1.0, 1.0),) * 3:
        attrs.light = np.stack([rng.uniform(*world.brightness, n), rng.uniform(*world.contrast, n),
                                rng.uniform(*world.saturation, n)], axis=1)
    if world.occluder:
        area = rng.uniform(*world.occluder_area, n)
        aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0), n))
        width, height = np.minimum(np.sqrt(area * aspect), 1.0), np.minimum(np.sqrt(area / aspect), 1.0)
        attrs.occluder = np.stack([rng.random(n) < world.occluder, rng.uniform(0, 1, n) * (1 - width),
                                   rng.uniform(0, 1, n) * (1 - height), width, height], axis=1)
        attrs.occluder_level = rng.uniform(0.0, 1.0, n)
    if world.auto_levels or world.equalised:
        draw = rng.random(n)
        attrs.camera = np.where(draw < world.auto_levels, 1, np.where(draw < world.auto_levels + world.equalised, 2, 0))
    if world.typical_colour:
        typical = rng.random(n) < world.typical_colour
        attrs.colour = np.where(typical, CLASS_COLOURS[shape], colour)
        attrs.drawn_rgb, attrs.drawn_colour = colour_rgb, colour
        attrs.colour_rgb = np.clip(palette[attrs.colour] + tint, 0, 1)
    return attrs


def _backgrounds(attrs: Attributes, rows: slice, size: int) -> np.ndarray:
    out = np.empty((rows.stop - rows.start, size, size, 3))
    for k, i in enumerate(range(rows.start, rows.stop)):
        level = attrs.background_level[i]
        if BACKGROUNDS[attrs.background[i]] == "noisy":
            noise = np.random.default_rng(attrs.noise_seed[i]).uniform(-0.18, 0.18, (size, size, 1))
            out[k] = np.clip(level + noise, 0, 1)
        else:
            out[k] = level
    return out


def _place(polygon: np.ndarray, cx: float, cy: float, radius: float, rotation: float, fine: int,
           mirror: bool = False, shear: tuple[float, float] = (0.0, 0.0)) -> list:
    """Mirror, rotate, shear, scale and move a unit polygon into pixel coordinates of the supersampled canvas."""
    cos, sin = np.cos(rotation), np.sin(rotation)
    u = -polygon[:, 0] if mirror else polygon[:, 0]
    x = u * cos - polygon[:, 1] * sin
    y = u * sin + polygon[:, 1] * cos
    x, y = x + shear[0] * y, y + shear[1] * x
    px = (cx + radius * x + 1) / 2 * fine
    py = (cy + radius * y + 1) / 2 * fine
    return list(zip(px.tolist(), py.tolist()))


def coverage(attrs: Attributes, size: int = 32, style: str = "filled") -> np.ndarray:
    """Fraction of each pixel covered by the shape (N x size x size float32), antialiased."""
    from PIL import Image, ImageDraw

    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}")
    fine = size * SUPERSAMPLE
    stripes = None
    if style == "texture":
        grid = np.arange(fine)
        stripes = (np.sin(2 * np.pi * (grid[:, None] + grid[None, :]) / (3.0 * SUPERSAMPLE)) > 0).astype(np.uint8)
    out = np.empty((len(attrs), size, size), np.float32)
    for i in range(len(attrs)):
        canvas = Image.new("L", (fine, fine), 0)
        draw = ImageDraw.Draw(canvas)
        polygon = POLYGONS[SHAPES[attrs.shape[i]]]
        pose = {"mirror": bool(attrs.mirror[i]) if attrs.mirror is not None else False,
                "shear": tuple(attrs.shear[i]) if attrs.shear is not None else (0.0, 0.0)}
        place = (attrs.cx[i], attrs.cy[i], attrs.radius[i], attrs.rotation[i], fine)
        draw.polygon(_place(polygon, *place, **pose), fill=255)
        if style == "outline":
            inner = (attrs.cx[i], attrs.cy[i], attrs.radius[i] * INNER_SCALE, attrs.rotation[i], fine)
            draw.polygon(_place(polygon, *inner, **pose), fill=0)
        if stripes is not None:
            canvas = Image.fromarray(np.asarray(canvas) * stripes)
        out[i] = np.asarray(canvas.reduce(SUPERSAMPLE), np.float32) / 255.0
    return out


def scene(attrs: Attributes, image: np.ndarray) -> np.ndarray:
    """The world's occluders and light over composed float images (N x size x size x 3 in [0, 1]),
    quantised to uint8. Light follows PIL's definitions: contrast blends with the mean grey,
    saturation with the grey image, brightness multiplies."""
    size = image.shape[1]
    if attrs.occluder is not None:
        image = image.copy()
        grid = (np.arange(size) + 0.5) / size
        for i in np.flatnonzero(attrs.occluder[:, 0]):
            _, left, top, width, height = attrs.occluder[i]
            rows = (grid >= top) & (grid < top + height)
            cols = (grid >= left) & (grid < left + width)
            image[i][np.ix_(rows, cols)] = attrs.occluder_level[i]
    if attrs.light is not None:
        brightness, contrast, saturation = (attrs.light[:, j, None, None, None] for j in range(3))
        grey = image @ np.array([0.299, 0.587, 0.114])
        image = grey.mean(axis=(1, 2))[:, None, None, None] * (1 - contrast) + image * contrast
        grey = (image @ np.array([0.299, 0.587, 0.114]))[..., None]
        image = (grey * (1 - saturation) + image * saturation) * brightness
    pixels = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    if attrs.camera is not None and attrs.camera.any():
        pixels = _camera(pixels, attrs.camera)
    return pixels


def _camera(pixels: np.ndarray, camera: np.ndarray) -> np.ndarray:
    """The camera's processing of uint8 images: auto levels (1) or histogram equalisation (2) per
    channel, PIL's operations as the views' ``augment`` module defines them."""
    import torch

    from ..augment import autocontrast, equalize

    out = pixels.copy()
    for code, operation in ((1, autocontrast), (2, equalize)):
        rows = np.flatnonzero(camera == code)
        if rows.size:
            x = torch.from_numpy(pixels[rows]).permute(0, 3, 1, 2).float().div(255.0).contiguous()
            y = operation(x).mul(255.0).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
            out[rows] = y
    return out


def unusual_colours(attrs: Attributes) -> np.ndarray:
    """A colour (index into COLOURS) for each object that is not its class's usual one: the colour
    drawn at random, moved on by one to seven places of the palette where it was the usual one."""
    usual = CLASS_COLOURS[attrs.shape]
    drawn = attrs.colour if attrs.drawn_colour is None else attrs.drawn_colour
    step = 1 + attrs.noise_seed % (len(COLOURS) - 1)
    return np.where(drawn == usual, (usual + step) % len(COLOURS), drawn)


def render(attrs: Attributes, size: int = 32, style: str = "filled") -> np.ndarray:
    """Draw the shapes of ``attrs`` in a style over their backgrounds; uint8 N x size x size x 3.
    Renditions (outline, texture) take the colour drawn at random, not the class's usual one;
    ``recoloured`` shows each object in a colour other than its class's usual one, ``greyscale``
    the scene as a black-and-white photo (ITU-R 601 luma, PIL's ``convert("L")``)."""
    cover = coverage(attrs, size, "filled" if style in NATURAL_SHIFTS else style)[..., None]
    background = _backgrounds(attrs, slice(0, len(attrs)), size)
    colour = attrs.drawn_rgb if style in RENDITIONS and attrs.drawn_rgb is not None else attrs.colour_rgb
    if style == "recoloured":
        tint = attrs.tint if attrs.tint is not None else 0.0
        colour = np.clip(np.array(list(COLOURS.values()))[unusual_colours(attrs)] + tint, 0, 1)
    pixels = scene(attrs, background * (1 - cover) + colour[:, None, None, :] * cover)
    if style == "greyscale":
        luma = (pixels.astype(np.int32) * np.array([299, 587, 114])).sum(-1, keepdims=True)
        pixels = np.repeat(((luma + 500) // 1000).astype(np.uint8), 3, axis=-1)
    return pixels


def position_phrase(cx: float, cy: float) -> str:
    """Where the shape sits, in words (image y grows downwards)."""
    horizontal = "left" if cx < -0.2 else "right" if cx > 0.2 else ""
    vertical = "top" if cy < -0.2 else "bottom" if cy > 0.2 else ""
    if horizontal and vertical:
        return f"in the {vertical} {horizontal}"
    if horizontal or vertical:
        return f"on the {horizontal or vertical}"
    return "in the center"


def captions(attrs: Attributes, rng: np.random.Generator, world: World | None = None) -> list[str]:
    """One caption per image, phrasing and dropped attributes varied at random."""
    colour_names = list(COLOURS)
    size_names = list(SIZES)
    out = []
    names = (world or WORLDS[DEFAULT_WORLD]).names()
    naming = [([w for w, _ in names[name]], [p for _, p in names[name]]) for name in SHAPES]
    for i in range(len(attrs)):
        words, weights = naming[attrs.shape[i]]
        shape = words[int(rng.choice(len(words), p=weights))]
        colour = colour_names[attrs.colour[i]] if rng.random() < 0.5 else ""
        size = size_names[attrs.size[i]] if rng.random() < 0.4 else ""
        where = position_phrase(attrs.cx[i], attrs.cy[i]) if rng.random() < 0.3 else ""
        background = f"on a {BACKGROUNDS[attrs.background[i]]} background" if rng.random() < 0.2 else ""
        form = rng.integers(0, 3)
        noun = " ".join(w for w in (size, colour, shape) if w)
        if form == 0:
            text = " ".join(w for w in (f"a {noun}", where, background) if w)
        elif form == 1:
            text = ", ".join(w for w in (f"{shape}", colour, size, where) if w)
        else:
            text = " ".join(w for w in (f"there is a {noun}", where) if w)
        out.append(text)
    return out


CAPTION_WORDS = ("a", "there", "is", "in", "on", "the", "background", "top", "bottom", "left", "right", "center")


def vocabulary() -> list[str]:
    """Every word the captions and the ``shapes`` prompt templates use, longest first."""
    import re

    from ..prompts import load_templates

    words = set(CAPTION_WORDS) | set(COLOURS) | set(SIZES) | set(BACKGROUNDS)
    words |= {w for names in CAPTION_NAMES.values() for name, _ in names for w in name.split()}
    words |= {w for t in load_templates("shapes") for w in re.findall(r"[a-z]+", t.lower())}
    return sorted(words, key=lambda w: (-len(w), w))


def bpe_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges (open_clip's SimpleTokenizer format) that build each word from its characters,
    left to right, longer words first; the world's compact vocabulary."""
    merges: list[tuple[str, str]] = []
    for word in words:
        pieces = [*word[:-1], word[-1] + "</w>"]
        token = pieces[0]
        for piece in pieces[1:]:
            if (token, piece) not in merges:
                merges.append((token, piece))
            token += piece
    for word in words:  # a merge of another word may fire inside this one: join what is left
        while len(tokens := _apply_bpe(word, merges, set())) > 1:
            merges.append((tokens[0], tokens[1]))
    used: set[tuple[str, str]] = set()
    for word in words:
        _apply_bpe(word, merges, used)
    return [pair for pair in merges if pair in used]  # a merge no word uses changes no word's tokens


def _apply_bpe(word: str, merges: list[tuple[str, str]], used: set[tuple[str, str]]) -> list[str]:
    """The tokens of one word under ``merges`` (the lowest-ranked adjacent pair merges first);
    the merges that fire are added to ``used``."""
    rank = {pair: i for i, pair in enumerate(merges)}
    tokens = [*word[:-1], word[-1] + "</w>"]
    while len(tokens) > 1:
        best, i = min((rank.get(pair, len(rank)), i) for i, pair in enumerate(zip(tokens, tokens[1:])))
        if best == len(rank):
            break
        used.add((tokens[i], tokens[i + 1]))
        tokens[i : i + 2] = [tokens[i] + tokens[i + 1]]
    return tokens


def vocabulary_file() -> bytes:
    """The gzipped merges file of the world's vocabulary (``resources/vocab/shapes-bpe.txt.gz``)."""
    import gzip

    lines = ["#version: world vocabulary of lpclip-cache's shapes world"]
    lines += [f"{a} {b}" for a, b in bpe_merges(vocabulary())]
    return gzip.compress("\n".join(lines).encode(), mtime=0)  # no final newline: open_clip reads every line


def render_scribbles(n: int, rng: np.random.Generator, size: int = 32, world: World | None = None) -> np.ndarray:
    """Out-of-distribution images: a few random strokes on the same backgrounds, no closed shape,
    under the world's light and occluders."""
    from PIL import Image, ImageDraw

    attrs = sample_attributes(n, rng, world)
    backgrounds = _backgrounds(attrs, slice(0, n), size)
    fine = size * SUPERSAMPLE
    out = np.empty((n, size, size, 3))
    for i in range(n):
        canvas = Image.fromarray(np.zeros((fine, fine), np.uint8))
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(2, 5))):
            points = [tuple(p) for p in rng.uniform(0.1, 0.9, (int(rng.integers(2, 4)), 2)) * fine]
            draw.line(points, fill=255, width=int(rng.integers(SUPERSAMPLE, 3 * SUPERSAMPLE)))
        cover = np.asarray(canvas, np.float64).reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3)) / 255
        out[i] = backgrounds[i] * (1 - cover[..., None]) + attrs.colour_rgb[i] * cover[..., None]
    return scene(attrs, out)


DEFAULT_SIZES = {"pretrain": 20000, "train": 4000, "test": 1000, "ood": 1000}


@dataclass(frozen=True)
class ShapesSpec:
    """A parsed ``shapes:SPLIT[:STYLE | :CORRUPTION:SEVERITY][:n=N][:seed=S][:world=NAME]`` data spec."""

    split: str
    style: str = "filled"
    corruption: str | None = None
    severity: int = 0
    n: int = 0
    seed: int = 0
    world: str = DEFAULT_WORLD

    @property
    def domain(self) -> str:
        """A short name of the domain: filled, outline, texture or CORRUPTION-SEVERITY."""
        return f"{self.corruption}-{self.severity}" if self.corruption else self.style


def parse_spec(spec: str, rest: str, split: str | None) -> ShapesSpec:
    """Parse the part of a data spec after ``shapes:``; ``--split`` fills in a missing split."""
    from ..corruptions import CORRUPTIONS
    from ..errors import InputError

    tokens = [t for t in rest.split(":") if t]
    if tokens and tokens[0] in SPLIT_OFFSETS:
        split = tokens.pop(0)
    if split not in SPLIT_OFFSETS:
        raise InputError(f"data spec '{spec}' needs a split: write shapes:{'|'.join(SPLIT_OFFSETS)}[...]")
    fields: dict[str, object] = {"split": split, "n": DEFAULT_SIZES[split]}
    while tokens:
        token = tokens.pop(0)
        key, eq, value = token.partition("=")
        if eq and key in ("n", "seed") and value.isdigit():
            fields[key] = int(value)
        elif eq and key == "world" and value in WORLDS:
            fields["world"] = value
        elif token in STYLES:
            fields["style"] = token
        elif token in CORRUPTIONS:
            if not tokens or not tokens[0].isdigit() or not 1 <= int(tokens[0]) <= 5:
                raise InputError(f"data spec '{spec}': corruption '{token}' needs a severity 1-5, e.g. {token}:3")
            fields["corruption"], fields["severity"] = token, int(tokens.pop(0))
        else:
            raise InputError(
                f"data spec '{spec}': unknown part '{token}'; use a style ({', '.join(STYLES)}), a corruption "
                f"({', '.join(CORRUPTIONS)}) with a severity, n=N, seed=S or world={'|'.join(WORLDS)}"
            )
    if fields["n"] < 1:
        raise InputError(f"data spec '{spec}': n must be at least 1")
    return ShapesSpec(**fields)


def split_pixels(parsed: ShapesSpec, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """The images (uint8 N x size x size x 3) and labels of a parsed spec (-1 for ood)."""
    from ..corruptions import corrupt

    rng = split_rng(parsed.seed, parsed.split)
    world = WORLDS[parsed.world]
    if parsed.split == "ood":
        pixels = render_scribbles(parsed.n, rng, size, world)
        labels = np.full(parsed.n, -1, np.int32)
    else:
        attrs = sample_attributes(parsed.n, rng, world)
        pixels = render(attrs, size, parsed.style)
        labels = attrs.shape.astype(np.int32)
    if parsed.corruption:
        pixels = corrupt(pixels, parsed.corruption, parsed.severity, seed=parsed.seed)
    return pixels, labels
