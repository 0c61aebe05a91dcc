"""A small CLIP trained by the project on the shapes world's captions, with open_clip's own loss.

The model is the ``lpclip-shapes`` open_clip configuration. It learns from captions that
describe shape, colour, size, position and background in varied phrasings; the demo then asks
it zero-shot "a photo of a {shape}." style questions it never saw as such. Training is
deterministic for a given configuration on a given machine, and its result is cached under a
name derived from the configuration's hash, as a safetensors state dict that loads through the
ordinary ``--pretrained PATH`` path.

The default configuration's weights also ship with the package, in fp16
(``resources/teachers/``, under the same name): ``ensure_teacher`` takes them when their
configuration is the one asked for, so a cold demo does not train. ``ship_teacher`` writes that
file from a trained checkpoint; the test suite retrains the default configuration and checks
that its regime figures match the shipped weights' within stated tolerances.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..progress import Progress

MODEL_NAME = "lpclip-shapes"


@dataclass(frozen=True)
class TeacherConfig:
    """Everything that decides the trained weights (the defaults: the web world's teacher, shipped).
    Its world's parameters, its steps and its seed were fixed from the regime figures alone, in the
    order docs/demo.md gives: of the teachers trained with a colour-free corpus, seed 1 at 5000
    steps is the one that meets every requirement (seed 2 missed the weak-view one at 5000 and at
    6000 steps)."""

    seed: int = 1
    world: str = "web"  # shapes.DEFAULT_WORLD (a test checks they agree)
    pool: int = 20000
    captions_per_image: int = 3
    steps: int = 5000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: int = 50
    threads: int = 2

    def key(self) -> str:
        """A short hash of the configuration (and of the model configuration file)."""
        import hashlib

        from ..models import CONFIG_DIR
        from .shapes import WORLD_VERSION, WORLDS

        text = json.dumps({**asdict(self), "version": WORLD_VERSION, "world": self.world,
                           **({"scenes": WORLDS[self.world].describe()} if self.world != "geometry" else {})},
                          sort_keys=True)
        text += (CONFIG_DIR / f"{MODEL_NAME}.json").read_text()
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# How far a retrained default teacher's regime figures may lie from the shipped weights'
# (``pipelines/train_shapes_clip.py --compare-shipped`` checks it). Retraining is not repeatable
# across machines, sessions or thread counts (docs/demo.md): on 2026-12-05 the configuration on 2
# threads moved the probe by 0.009, zero-shot by 0.020, OOD AUROC by 0.036, weak-view keep by 0.004,
# strong-view keep by 0.001 and the teacher on weak views by 0.011; the landed geometry teacher
# moved zero-shot by 0.034 between machines.
RETRAIN_TOLERANCE = {"supervised_probe": 0.03, "zeroshot": 0.05, "ood_msp_auroc": 0.08, "weak_keeps": 0.02,
                     "strong_keeps": 0.05, "weak_teacher": 0.05}


# Each world's own teacher, where it differs from TeacherConfig's defaults (the web world's): the
# objects and geometry worlds keep the teachers they landed with.
WORLD_TEACHERS: dict[str, dict[str, Any]] = {"web": {}, "objects": {"seed": 2, "steps": 2000},
                                             "geometry": {"seed": 1, "steps": 1000}}


def world_teacher(world: str, **changes: Any) -> TeacherConfig:
    """The teacher configuration of a world, with ``changes`` (None values keep the world's own)."""
    given = {k: v for k, v in changes.items() if v is not None}
    return TeacherConfig(world=world, **{**WORLD_TEACHERS[world], **given})


def checkpoint_path(config: TeacherConfig) -> Path:
    """The cache file of a configuration's weights."""
    from ..storage import cache_dir

    return cache_dir() / "teachers" / f"{MODEL_NAME}-{config.key()}.safetensors"


def train_teacher(config: TeacherConfig, out: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Train the small CLIP contrastively on generated image-caption pairs; save and describe it."""
    import torch

    from ..models import load_model
    from .shapes import split_rng

    torch.manual_seed(config.seed)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        loaded = load_model(MODEL_NAME, "none", device="cpu")
        model = loaded.model.train()
        rng = split_rng(config.seed, "pretrain")
        pairs = _pairs(config, loaded, rng)
        losses, seconds = _fit(model, pairs, rng, config, progress)
    finally:
        torch.set_num_threads(previous_threads)

    path = out or checkpoint_path(config)
    record = {
        "model": MODEL_NAME,
        "checkpoint": str(path),
        "config": asdict(config),
        "key": config.key(),
        "seconds": round(seconds, 1),
        "loss_first": float(np.mean(losses[:10])),
        "loss_last": float(np.mean(losses[-10:])),
        "logit_scale": float(model.logit_scale.detach().exp()),
    }
    _save(model, config, path, record)
    return record


def _pairs(config: TeacherConfig, loaded: Any, rng: np.random.Generator) -> tuple[Any, Any, Any, Any]:
    """The training pool: its images (uint8, N x 3 x H x W), ``captions_per_image`` tokenised
    captions of each (N x captions x tokens), and the model's normalisation mean and std."""
    import torch

    from .shapes import WORLDS, captions, render, sample_attributes

    attrs = sample_attributes(config.pool, rng, WORLDS[config.world].pretraining())
    images = torch.from_numpy(render(attrs)).permute(0, 3, 1, 2).contiguous()
    tokenizer = loaded.tokenizer
    texts = torch.stack([tokenizer(captions(attrs, rng, WORLDS[config.world]))
                         for _ in range(config.captions_per_image)], dim=1)
    mean = torch.tensor(loaded.preprocess["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(loaded.preprocess["std"]).view(1, 3, 1, 1)
    return images, texts, mean, std


def _learning_rate(config: TeacherConfig, step: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine decay to 0 at ``steps``."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    done = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1 + np.cos(np.pi * done))


def _fit(model: Any, pairs: tuple[Any, Any, Any, Any], rng: np.random.Generator, config: TeacherConfig,
         progress: bool) -> tuple[list[float], float]:
    """``config.steps`` steps of open_clip's contrastive loss with AdamW (weight decay on the
    matrices only), the logit scale clamped to at most 100; each step's loss, and the seconds taken."""
    import open_clip
    import torch

    images, texts, mean, std = pairs
    loss_fn = open_clip.ClipLoss()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    bar = Progress(config.steps, "train teacher", "steps", enabled=progress)
    started = time.perf_counter()
    losses = []
    for step in range(config.steps):
        rows = torch.from_numpy(rng.choice(config.pool, config.batch_size, replace=False))
        variant = torch.from_numpy(rng.integers(0, config.captions_per_image, config.batch_size))
        batch = (images[rows].float() / 255.0 - mean) / std
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(config, step)
        image_features = model.encode_image(batch, normalize=True)
        text_features = model.encode_text(texts[rows, variant], normalize=True)
        loss = loss_fn(image_features, text_features, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        losses.append(loss.item())
        bar.update()
    return losses, time.perf_counter() - started


def _save(model: Any, config: TeacherConfig, path: Path, record: dict[str, Any]) -> None:
    """Write the teacher's description, then its checkpoint (what ``ensure_teacher`` looks for),
    each whole or absent."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from ..outputs import atomic_file, rust_io_error, write_json_atomic

    write_json_atomic(path.with_suffix(".json"), record, "teacher description")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_file(path, "teacher checkpoint") as staging:
        try:
            save_file(state, str(staging), metadata={"model": MODEL_NAME, "config": json.dumps(asdict(config))})
        except SafetensorError as exc:  # how the Rust writer reports an I/O error, a full disk included
            raise rust_io_error(exc) from exc


def shipped_path(config: TeacherConfig) -> Path:
    """Where the package keeps a configuration's shipped fp16 weights (present for the default one)."""
    from importlib import resources

    return Path(str(resources.files("lpclip_cache") / "resources" / "teachers")) / checkpoint_path(config).name


def ship_teacher(checkpoint: Path, config: TeacherConfig, out: Path | None = None) -> Path:
    """Write a trained checkpoint's weights in fp16 where ``shipped_path`` finds them (or to ``out``)."""
    from safetensors.torch import load_file, save_file

    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in load_file(str(checkpoint)).items()}
    target = out or shipped_path(config)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(target), metadata={"model": MODEL_NAME, "config": json.dumps(asdict(config)),
                                            "key": config.key(), "dtype": "float16"})
    return target


def ensure_teacher(config: TeacherConfig | None = None, progress: bool = True) -> Path:
    """The checkpoint of ``config``: the shipped weights when the package has them, else the
    cached checkpoint, trained first if it is not there yet."""
    config = config or TeacherConfig()
    if shipped_path(config).is_file():
        return shipped_path(config)
    path = checkpoint_path(config)
    if not path.is_file():
        train_teacher(config, progress=progress)
    return path
