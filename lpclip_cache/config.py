"""Every command's options, defined once: the Config dataclasses.

Each field is its option's one definition: its default, its help text and, in the field's
metadata, the command-line flag when it differs from the field name (``num_workers`` is
``--workers``) and the recipe key (``views.weak`` is ``weak_views``). The command line builds its
options from these (``cli.options_of``) and recipes their allowed keys (``recipe_keys``), so a
new option is one field here plus its docs. This module imports nothing heavy: the command line
reads it to build ``--help``.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

NEIGHBORS_K = 10  # neighbours per point of ``analyze latent neighbors`` and of recipes' neighbour analyses


def option(default: Any = MISSING, help: str = "", *, flag: str | None = None, recipe: str | None = None,
           choices: tuple[str, ...] | None = None, cli: bool = True) -> Any:
    """A Config field: ``recipe`` is ``SECTION.KEY`` (``views.weak``), ``cli=False`` keeps it off
    the command line. A list or tuple default is copied for each instance."""
    metadata = {"help": help, "flag": flag, "recipe": recipe, "choices": choices, "cli": cli}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def flag_of(spec: Field) -> str:
    """The command-line flag of a field (``--weak-views``)."""
    return spec.metadata.get("flag") or "--" + spec.name.replace("_", "-")


MAX_SEED = 2**63 - 1  # what torch.manual_seed and numpy's generators both take


def check_choices(config: Any) -> None:
    """An InputError for a field whose value is not one of its choices (a value from the Python
    API or a recipe; click checks the command line's)."""
    from .errors import InputError

    for spec in fields(config):
        allowed, value = spec.metadata.get("choices"), getattr(config, spec.name)
        if allowed and value not in allowed:
            raise InputError(f"{flag_of(spec)} must be one of {', '.join(allowed)}, got '{value}'")
        if spec.name.endswith("seed") and value is not None and not (
                isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEED):
            raise InputError(f"{flag_of(spec)} must be a whole number from 0 to {MAX_SEED}, got {value!r}")


def recipe_keys(config: type, section: str) -> dict[str, str]:
    """Recipe key -> field name of a Config's fields in one recipe section (``model``, ``views``,
    ``extract``, ``dataset`` or ``train``)."""
    out = {}
    for spec in fields(config):
        where = spec.metadata.get("recipe")
        if where and where.split(".")[0] == section:
            out[where.split(".", 1)[1]] = spec.name
    return out


@dataclass
class ExtractConfig:
    """Everything ``extract`` needs; all of it that changes a number goes into the manifest."""

    data: str = option(help="ImageFolder path, or cifar10:ROOT / cifar100:ROOT.", recipe="dataset.data")
    out: str = option(help="Store to create (a Zarr v3 directory).")
    model: str = option("test-tiny", "open_clip architecture name.", recipe="model.name")
    pretrained: str | None = option(
        "none", "Pretrained tag (e.g. openai, laion2b_s34b_b79k), checkpoint file, or none (random init).",
        recipe="model.pretrained")
    split: str | None = option(None, "Split: a sub-folder of an ImageFolder root, or train/test for CIFAR.",
                               recipe="dataset.split")
    weak_views: int = option(2, "Weak (teacher) views per image.", recipe="views.weak")
    strong_views: int = option(2, "Strong (student) views per image.", recipe="views.strong")
    weak_policy: str = option("weak", "Weak view policy: name or JSON file.", recipe="views.weak_policy")
    strong_policy: str = option("strong", "Strong view policy: name or JSON file.", recipe="views.strong_policy")
    templates: str | None = option(None, "Template set (cifar10, cifar100, imagenet, simple) or file.",
                                   recipe="extract.templates")
    classnames: str | None = option(None, "Class-name set (cifar10, cifar100, imagenet) or file.",
                                    recipe="extract.classnames")
    temperature: float = option(1.0, "Teacher softmax temperature.", recipe="extract.temperature")
    seed: int = option(0, "Seed of every augmentation, and of the random network with --pretrained none.",
                       recipe="views.seed")
    shard_size: int = option(256, "Samples per shard (unit of writing).", recipe="extract.shard_size")
    batch_size: int = option(256, "Encoder batch size.", recipe="extract.batch_size")
    num_workers: int = option(2, "Decode workers.", flag="--workers", recipe="extract.workers")
    device: str = option("auto", "auto, cpu, cuda or cuda:N.", recipe="model.device")
    precision: str = option("auto", "auto (bf16 on CUDA), fp32, bf16, fp16.", choices=("auto", "fp32", "bf16", "fp16"),
                            recipe="model.precision")
    download: bool = option(False, "Let torchvision download the dataset (connected machines).",
                            recipe="extract.download")
    skip_bad: bool = option(False, "Record undecodable images and bad samples as invalid instead of stopping.",
                            recipe="extract.skip_bad")
    compression: str = option("none", "Codec of the embedding arrays (uncompressed reads fastest).",
                              choices=("none", "zstd"), recipe="extract.compression")
    corrupt: str | None = option(
        None, "Corrupt every image on the device: NAME:SEVERITY (e.g. gaussian_noise:5), NAME:all, all:SEVERITY "
        "or all (15 types x 5 severities); more than one writes NAME-SEVERITY.zarr stores into --out.",
        recipe="dataset.corrupt")
    overwrite: bool = option(False, "Replace --out if it exists (only if it is ours).")
    cache_dir: str | None = option(None, "Where open_clip caches downloaded weights.", recipe="model.cache_dir")
    progress: bool = option(True, cli=False)
    extra_manifest: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Options of ``train``; all of them are recorded in run.json."""

    store: str = option(help="Feature store made by extract.")
    out: str = option(help="Run directory to create.")
    method: str = option("lpclip", "LP-CLIP on pseudo-labels, or the supervised reference on true labels.",
                         choices=("lpclip", "supervised"), recipe="train.method")
    epochs: int = option(10, "Passes over the store.", recipe="train.epochs")
    batch_size: int = option(256, "Pairs per optimisation step.", recipe="train.batch_size")
    lr: float = option(1e-3, "AdamW learning rate.", recipe="train.lr")
    weight_decay: float = option(0.0, "AdamW weight decay.", recipe="train.weight_decay")
    seed: int = option(0, "Seed of the initialisation and of the pair sampling.", recipe="train.seed")
    init: str = option("zeroshot", "Start from the zero-shot head (A = s W_t, b = 0) or at random.",
                       choices=("zeroshot", "random"), recipe="train.init")
    weighting: str = option("confidence", "Weight each sample's loss by the teacher's confidence, or not.",
                            choices=("confidence", "none"), recipe="train.weighting")
    targets: str = option("hard", "Teacher's argmax, or its whole distribution.", choices=("hard", "soft"),
                          recipe="train.targets")
    threshold: float = option(0.0, "Drop samples whose teacher confidence is below this.", recipe="train.threshold")
    student: str = option("strong", "Views the student sees (weak: no consistency between views).",
                          choices=("strong", "weak"), recipe="train.student")
    max_views: int | None = option(None, "Use only the first K cached views of each kind.", recipe="train.max_views")
    ensemble: int = option(1, "Train M probes in one pass (different seeds and view samples).",
                           recipe="train.ensemble")
    device: str = option("auto", "auto (CUDA when available), cpu, cuda or cuda:N.", recipe="train.device")
    block_rows: int | None = option(None, cli=False)  # rows per gradient block; None: per device (training.py)
    holdout: float = option(0.0, cli=False, recipe="train.holdout")
    overwrite: bool = option(False, "Replace --out if it exists (only if it is ours).")
    progress: bool = option(True, cli=False)
    memory_budget: int | None = option(None, cli=False)


@dataclass
class SelectConfig:
    """The search of ``select``: a grid of learning rates and weight decays, up to ``epochs`` epochs each."""

    store: str = option(help="Training store.")
    out: str = option(help="Run directory for the chosen probe.")
    lrs: tuple[float, ...] = option((1e-3, 1e-2), "Learning rates to try.", flag="--lr")
    weight_decays: tuple[float, ...] = option((0.0, 1e-4), "Weight decays to try.", flag="--weight-decay")
    epochs: int = option(20, "Most epochs; the best epoch is chosen.")
    holdout: float = option(0.1, "Fraction of shards held out.")
    seed: int = option(0, "Seed of the held-out shards and of training.")
    device: str = option("auto", "auto (CUDA when available), cpu, cuda or cuda:N.")
    overwrite: bool = option(False, "Replace --out if it exists (only if it is ours).")
    progress: bool = option(True, cli=False)


@dataclass
class AblationConfig:
    """One ablation study (``ablate``)."""

    store: str = option(help="Training store (with weak and strong views).")
    eval_stores: list[str] = option(help="Store to score every variant on.", flag="--eval")
    out: str = option(help="Folder for the runs and the table.")
    ood: list[str] = option([], "OOD store (repeatable).")
    epochs: int = option(10, "Training epochs of every variant.")
    lr: float = option(1e-3, "AdamW learning rate of every variant.")
    batch_size: int = option(256, cli=False)
    seed: int = option(0, "Seed of every variant.")
    thresholds: tuple[float, ...] = option((0.3, 0.5, 0.7, 0.9), "Confidence thresholds to sweep.")
    device: str = option("auto", "auto (CUDA when available), cpu, cuda or cuda:N.")
    overwrite: bool = option(False, "Replace --out if it exists (only if it is ours).")
    progress: bool = option(True, cli=False)


@dataclass
class DemoConfig:
    """Sizes and seeds of one demo run (``demo``): overrides of the demo recipe."""

    out: str = option("demo-out", "Output folder.")
    world: str = option("web", "The shapes world: web (the teacher learned from a web-like corpus: it survives "
                        "natural shifts), objects (the same scenes, a teacher that learned the downstream colour cue: "
                        "no signal under shift) or geometry (the earlier world, whose views break the class).",
                        choices=("web", "objects", "geometry"))
    seed: int = option(0, "First seed of the world's data, the views and the probes.")
    seeds: int = option(3, "Seeds to run (seed, seed+1, ...): the table gives their mean, spread and intervals.")
    train_n: int = option(4000, "Images in the adaptation split.")
    test_n: int = option(1000, "Images in the test set and in each style shift and OOD set.")
    corrupt_n: int = option(200, "Images in each corruption and severity (15 x 5 sets).")
    views: int = option(4, "Weak and strong views per training image.")
    epochs: int = option(30, "Probe training epochs.")
    lr: float = option(1e-2, "Probe learning rate (AdamW).")
    ensemble: int = option(5, "Members of the LP-CLIP ensemble.")
    teacher_seed: int | None = option(None, "Seed of the small CLIP's training (default: the teacher's own).")
    teacher_steps: int | None = option(None, "Training steps of the small CLIP (default: the world's teacher's own).")
    teacher_pool: int = option(20000, "Image-caption pairs it learns from.")
    severities: tuple[int, ...] = option((1, 2, 3, 4, 5), "Corruption severities to run (comma-separated, 1-5).")
    ablations: bool = option(True, cli=False)
    overwrite: bool = option(False, "Replace --out if it exists (only if it is ours).")
    progress: bool = option(True, cli=False)
