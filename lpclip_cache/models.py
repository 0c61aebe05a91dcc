"""Resolve and load open_clip models: built-in names, pretrained tags, checkpoint files.

Resolution (what the user asked for), construction (open_clip) and the zero-shot head are
separate steps. Importing this module registers the project's own model configurations
(``lpclip_cache/model_configs/*.json``) with open_clip, so ``test-tiny`` is an ordinary name.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import open_clip
import torch

from .distributed import pick_device
from .errors import ModelError

CONFIG_DIR = Path(str(resources.files("lpclip_cache") / "model_configs"))
VOCAB_DIR = Path(str(resources.files("lpclip_cache") / "resources" / "vocab"))
open_clip.add_model_config(CONFIG_DIR)

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
SCHEMAS = ("hf-hub:", "local-dir:")


@dataclass(frozen=True)
class PretrainedSource:
    """Where a model's weights come from: ``none`` (random init), a ``tag`` or a ``file``."""

    kind: str
    value: str | None = None
    sha256: str | None = None

    def describe(self) -> dict[str, Any]:
        """The source as manifest fields."""
        return {"kind": self.kind, "value": self.value, "sha256": self.sha256}


@dataclass
class LoadedModel:
    """An open_clip model ready for inference, with what the manifest needs to know of it."""

    name: str
    model: torch.nn.Module
    tokenizer: Any
    source: PretrainedSource
    preprocess: dict[str, Any]
    embed_dim: int
    logit_scale: float
    quick_gelu: bool
    device: torch.device

    def describe(self) -> dict[str, Any]:
        """The model's identity as manifest fields: everything that changes an embedding, the
        digest of the image tower's weights included (see ``weights_sha256``)."""
        return {
            "name": self.name,
            "pretrained": self.source.describe(),
            "image_tower_sha256": weights_sha256(getattr(self.model, "visual", self.model)),
            "quick_gelu": self.quick_gelu,
            "embed_dim": self.embed_dim,
            "logit_scale": self.logit_scale,
            "preprocess": self.preprocess,
            "open_clip_version": open_clip.__version__,
        }


def file_sha256(path: str | os.PathLike[str], block: int = 1 << 20) -> str:
    """The sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(module: torch.nn.Module) -> str:
    """The sha256 of a module's weights: for each tensor of its state dict, by name in sorted
    order, the line ``NAME DTYPE SHAPE`` and then the tensor's bytes (C order, the machine's byte
    order). About 0.25 s for the image tower of ViT-B-32 (88 M parameters) on one CPU core."""
    digest = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        tensor = state[name].detach()
        digest.update(f"{name} {str(tensor.dtype).removeprefix('torch.')} {list(tensor.shape)}\n".encode())
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def list_model_names() -> list[str]:
    """Every architecture name open_clip knows, the project's own included."""
    return sorted(open_clip.list_models())


def model_config(name: str) -> dict[str, Any]:
    """The open_clip configuration of a model name, or a ModelError naming close matches."""
    if name.startswith(SCHEMAS):
        return {}
    config = open_clip.get_model_config(name)
    if config is None:
        close = difflib.get_close_matches(name, list_model_names(), n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "run 'lpclip-cache models' to list them"
        raise ModelError(f"unknown model name '{name}': it is not an open_clip architecture; {hint}")
    return config


def resolve_pretrained(name: str, pretrained: str | None) -> PretrainedSource:
    """Decide what ``--pretrained`` means for ``name``: none, a known tag, or a checkpoint file."""
    if name.startswith(SCHEMAS):
        return PretrainedSource("schema", name)
    if pretrained is None or pretrained.lower() in ("none", "random", ""):
        return PretrainedSource("none")
    path = Path(pretrained).expanduser()
    try:
        if path.is_file():
            return PretrainedSource("file", str(path.resolve()), file_sha256(path))
    except OSError as exc:  # no permission to read the file or to look into its folder
        raise ModelError(f"cannot read checkpoint file '{pretrained}' ({exc.strerror or type(exc).__name__}): "
                         "check that you may read it, or pass another --pretrained") from exc
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained in tags:
        return PretrainedSource("tag", pretrained)
    if path.suffix in CHECKPOINT_SUFFIXES or os.sep in pretrained:
        where = "a directory, not a file" if path.is_dir() else "not found"
        raise ModelError(f"checkpoint file '{pretrained}' is {where}: pass the path of an open_clip state dict "
                         f"(.pt/.bin/.safetensors), a pretrained tag of {name}, or 'none'")
    known = ", ".join(tags) if tags else "none: this architecture has no published weights"
    raise ModelError(f"'{pretrained}' is neither a checkpoint file nor a pretrained tag of {name} "
                     f"(tags: {known}); pass a tag, a checkpoint path, or 'none' for random init")


def fetch_tag(name: str, tag: str, cache_dir: str | None = None) -> str:
    """Make sure the weights of a pretrained tag are in the local cache; return their path."""
    config = open_clip.get_pretrained_cfg(name, tag)
    try:
        return open_clip.download_pretrained(config, cache_dir=cache_dir)
    except Exception as exc:  # the hub client raises many types when offline
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ModelError(
            f"weights for {name} pretrained='{tag}' are not in the local cache and could not be "
            f"downloaded ({reason}); run once on a connected machine (cache: "
            f"{cache_dir or '~/.cache/huggingface'}), or pass a checkpoint file with --pretrained PATH"
        ) from exc


def load_model(
    name: str,
    pretrained: str | None = None,
    device: str = "auto",
    cache_dir: str | None = None,
    seed: int | None = None,
) -> LoadedModel:
    """Load an open_clip model for inference: resolve the weights, build, load, describe.

    With ``seed``, the network is built from a generator seeded with it, so a random one
    (``pretrained`` none) is the same on every call, and torch's global random state is left as it
    was; without, the build draws from the global state (as a caller that seeded it expects).
    """
    config = model_config(name)
    source = resolve_pretrained(name, pretrained)
    if source.kind == "tag":
        fetch_tag(name, source.value, cache_dir)
    torch_device = pick_device(device)
    weights = None if source.kind in ("none", "schema") else source.value
    try:
        model = build(name, weights, torch_device, cache_dir, seed)
    except RuntimeError as exc:
        first = load_error_summary(exc)
        if source.kind == "file":
            raise ModelError(f"checkpoint '{source.value}' does not fit architecture {name} ({first}); "
                             "pass the architecture the checkpoint was trained with") from exc
        raise ModelError(f"could not build {name}: {first}") from exc
    except Exception as exc:  # unpickling errors of untrusted or corrupt files
        if source.kind == "file":
            raise ModelError(
                f"checkpoint '{source.value}' could not be read as weights only "
                f"({type(exc).__name__}); pass an open_clip state dict saved with torch.save or safetensors"
            ) from exc
        raise
    model.eval()
    quick_gelu = bool(config.get("quick_gelu", False))
    preprocess = dict(model.visual.preprocess_cfg)
    size = preprocess["size"]
    preprocess["size"] = list(size) if isinstance(size, (tuple, list)) else [size, size]
    preprocess["mean"] = [float(v) for v in preprocess["mean"]]
    preprocess["std"] = [float(v) for v in preprocess["std"]]
    embed_dim = int(config.get("embed_dim") or model.visual.output_dim)
    return LoadedModel(
        name=name,
        model=model,
        tokenizer=tokenizer_of(name, config),
        source=source,
        preprocess=preprocess,
        embed_dim=embed_dim,
        logit_scale=float(model.logit_scale.exp().item()),
        quick_gelu=quick_gelu,
        device=torch_device,
    )


def build(name: str, weights: str | None, device: torch.device, cache_dir: str | None, seed: int | None) -> Any:
    """open_clip's model, its random initialisation drawn from ``seed`` when given. open_clip
    builds on the CPU and then moves the model, so the CPU generator is the one seeded."""
    if seed is None:
        return open_clip.create_model(name, pretrained=weights, device=device, cache_dir=cache_dir, weights_only=True)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return open_clip.create_model(name, pretrained=weights, device=device, cache_dir=cache_dir, weights_only=True)


def tokenizer_of(name: str, config: dict[str, Any]) -> Any:
    """open_clip's tokenizer of a model; a project configuration's ``tokenizer_kwargs.bpe_path``
    names a merges file in ``resources/vocab`` (a compact vocabulary, like the shapes world's)."""
    kwargs = dict(config.get("text_cfg", {}).get("tokenizer_kwargs") or {})
    if "bpe_path" in kwargs and not Path(kwargs["bpe_path"]).is_absolute():
        kwargs["bpe_path"] = str(VOCAB_DIR / kwargs["bpe_path"])
    return open_clip.get_tokenizer(name, **kwargs)


def load_error_summary(exc: RuntimeError) -> str:
    """One short line for an error of building a model or loading its weights.

    ``load_state_dict`` lists every missing, unexpected and misshapen tensor over many lines; this
    counts them and names the first misshapen one.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    if not lines[0].startswith("Error(s) in loading state_dict"):
        return lines[0][:300]
    shapes = [line[len("size mismatch for "):].split(":")[0] for line in lines if line.startswith("size mismatch for ")]
    missing = sum(line.count('"') // 2 for line in lines if line.startswith("Missing key(s)"))
    unexpected = sum(line.count('"') // 2 for line in lines if line.startswith("Unexpected key(s)"))
    parts = [f"{len(shapes)} tensor(s) of another shape, first {shapes[0]}"] if shapes else []
    parts += [f"{missing} missing tensor(s)"] if missing else []
    parts += [f"{unexpected} unexpected tensor(s)"] if unexpected else []
    return "; ".join(parts) or lines[0][:300]


@torch.no_grad()
def zero_shot_head(loaded: LoadedModel, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """The zero-shot head W_t (C x D, float32, unit rows): prompt-ensembled class text embeddings."""
    head = open_clip.build_zero_shot_classifier(
        loaded.model,
        loaded.tokenizer,
        classnames,
        templates,
        num_classes_per_batch=max(1, 2048 // len(templates)),
        device=loaded.device,
    )
    return head.T.float().cpu().contiguous()
