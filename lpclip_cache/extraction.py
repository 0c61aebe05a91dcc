"""Stage one: run CLIP once over clean, weak and strong views and write the feature store.

data source -> DataLoader workers (decode to uint8) -> device views (augment) -> encoder
-> teacher outputs -> store, one shard at a time.
"""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .config import ExtractConfig, check_choices
from .data import AdmitsRows, HasPixels, HasTemplates, Source, local_roots, open_source
from .errors import InputError, Interrupted
from .outputs import refuse_output_inside
from .problems import labels_outside
from .progress import Progress

log = logging.getLogger(__name__)


def check_config(config: ExtractConfig) -> None:
    """Reject impossible numbers before anything is loaded or written."""
    for name in ("weak_views", "strong_views"):
        if getattr(config, name) < 0:
            raise InputError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(config, name)}")
    for name in ("shard_size", "batch_size"):
        if getattr(config, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if not config.temperature > 0:
        raise InputError(f"--temperature must be positive, got {config.temperature}")
    corruption_plan(config.corrupt)
    check_choices(config)
    refuse_output_inside(config.out, local_roots(config.data), "--out")


def parse_corruption(spec: str | None) -> tuple[str, int] | None:
    """``gaussian_noise:3`` -> (name, severity), or None; a clear error for anything else."""
    pairs = corruption_plan(spec)
    if len(pairs) > 1:
        raise InputError(f"--corrupt '{spec}' names {len(pairs)} corruptions: the command line and "
                         "lpclip_cache.extract write one store per corruption into the folder --out")
    return pairs[0] if pairs else None


def corruption_plan(spec: str | None) -> list[tuple[str, int]]:
    """Every (name, severity) a ``--corrupt`` value asks for: NAME:SEVERITY, NAME:all, all:SEVERITY or all."""
    from .corruptions import CORRUPTIONS, expand

    if not spec:
        return []
    try:
        return expand(spec)
    except ValueError as exc:
        raise InputError(
            f"--corrupt '{spec}': {exc}; write NAME:SEVERITY, NAME:all, all:SEVERITY or all, with NAME one of "
            f"{', '.join(CORRUPTIONS)} and SEVERITY 1-5"
        ) from None


def default_templates(identity: dict[str, Any]) -> str:
    """The template set the CLIP literature uses for a dataset kind."""
    kinds = {"cifar10": "cifar10", "cifar100": "cifar100", "cifar10c": "cifar10", "cifar100c": "cifar100",
             "shapes": "shapes"}
    return kinds.get(identity["kind"], "imagenet")


def library_versions() -> dict[str, str]:
    """Versions of every library that touches the numbers."""
    import kornia
    import open_clip
    import torch
    import torchvision
    import zarr

    from . import __version__

    return {"lpclip_cache": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "open_clip": open_clip.__version__,
            "kornia": kornia.__version__, "zarr": zarr.__version__, "numpy": np.__version__}


def autocast_dtype(precision: str, device_type: str) -> Any:
    """The autocast dtype: bf16 on CUDA by default, full precision on the CPU."""
    import torch

    if precision == "auto":
        precision = "bf16" if device_type == "cuda" else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def resolve_device(config: ExtractConfig) -> str:
    """The device to load on: under torchrun with CUDA, each rank takes its LOCAL_RANK's GPU."""
    import os

    import torch

    wants_cuda = config.device == "auto" and torch.cuda.is_available()
    if wants_cuda and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return config.device


class Encoder(NamedTuple):
    """What every shard goes through on the device: the loaded CLIP model, the zero-shot head
    the store holds (rank 0's), the (weak, strong) view policies, and the autocast dtype (None:
    full precision)."""

    loaded: Any
    head: np.ndarray
    policies: tuple[dict[str, Any], dict[str, Any]]
    cast: Any


class Written(NamedTuple):
    """What ``write_store`` did: the store's state before (new, resume or complete), the images
    this rank wrote, the seconds writing took, and the invalid samples' (key, reason)."""

    state: str
    images: int
    seconds: float
    invalid: list[tuple[str, str]]


def extract(config: ExtractConfig) -> dict[str, Any]:
    """Run stage one and return a summary; resumes a store left incomplete by the same configuration.

    Under torchrun every rank runs this function: the ranks first check they agree on the
    manifest and layout (the same data, model, weights and options) and take rank 0's zero-shot
    head; rank 0 creates (or checks) the store and holds its lock, each rank writes only the
    shards it owns, rank 0 marks the store complete. A failure to agree or to open the store stops
    every rank with the same error.
    """
    from . import distributed
    from .augment import load_policy
    from .models import load_model, zero_shot_head
    from .store import Layout, StoreWriter, cache_key

    check_config(config)
    source, classnames, templates = open_with_names(config)
    policies = (load_policy(config.weak_policy), load_policy(config.strong_policy))
    loaded = load_model(config.model, config.pretrained, resolve_device(config), config.cache_dir, config.seed)
    ranks = distributed.from_environment()
    cast = autocast_dtype(config.precision, loaded.device.type)
    head = ranks.share(zero_shot_head(loaded, classnames, templates).numpy())  # rank 0's, the one the store holds
    encoder = Encoder(loaded, head, policies, cast)
    manifest = store_manifest(config, source, encoder, classnames, templates)
    layout = Layout(n=len(source), dim=int(head.shape[1]), n_classes=len(classnames), weak_views=config.weak_views,
                    strong_views=config.strong_views, shard_size=config.shard_size)
    done = write_store(config, source, encoder, StoreWriter(config.out, layout, manifest), ranks)
    report_invalid(done.invalid)
    views_per_image = 1 + config.weak_views + config.strong_views
    rate = done.images / done.seconds if done.seconds > 0 else 0.0
    return {
        "store": str(config.out),
        "state": done.state,
        "cache_key": cache_key(manifest),
        "images": len(source),
        "written": done.images,
        "views_per_image": views_per_image,
        "images_per_s": round(rate, 2),
        "views_per_s": round(rate * views_per_image, 2),
        "invalid": [k for k, _ in done.invalid],
        "classes": len(classnames),
        "embed_dim": layout.dim,
        "ranks": ranks.world,
    }


def open_with_names(config: ExtractConfig) -> tuple[Source, list[str], list[str]]:
    """Open the data with the class names and the prompt templates of its zero-shot head; a source
    that found problems in its data admits them once the classes are known (refused in one line,
    or kept with ``--skip-bad``)."""
    source = open_source(config.data, config.split, config.download, config.progress)
    templates = prompt_templates(config, source)
    classnames = class_names(config, source)
    if isinstance(source, AdmitsRows):
        source.admit(len(classnames), config.skip_bad)
    if config.classnames and labels_outside(source.labels, len(classnames)).size:
        raise InputError(
            f"--classnames '{config.classnames}' lists {len(classnames)} classes but the data has labels up to "
            f"{int(source.labels.max())}: give one name per data class"
        )
    return source, classnames, templates


def prompt_templates(config: ExtractConfig, source: Source) -> list[str]:
    """``--templates``, else the source's own (a CLIP_benchmark root's), else the set the CLIP
    literature uses for the data's kind."""
    from .prompts import load_templates

    given = source.templates if isinstance(source, HasTemplates) else None
    if config.templates or not given:
        return load_templates(config.templates or default_templates(source.identity))
    return list(given)


def class_names(config: ExtractConfig, source: Source) -> list[str]:
    """``--classnames`` (one name per data class, in the data's label order), else the source's own."""
    from .prompts import load_classnames

    if config.classnames:
        classnames = load_classnames(config.classnames)
    elif source.classnames:
        classnames = list(source.classnames)
    else:
        raise InputError(f"data '{config.data}' has no class names: pass --classnames FILE")
    if config.classnames and source.classnames and len(source.classnames) != len(classnames):
        shown = ", ".join(source.classnames[:4]) + (", ..." if len(source.classnames) > 4 else "")
        raise InputError(
            f"--classnames '{config.classnames}' lists {len(classnames)} classes but data '{config.data}' has "
            f"{len(source.classnames)} ({shown}): give one name per data class, in the data's label order"
        )
    return classnames


def store_manifest(config: ExtractConfig, source: Source, encoder: Encoder, classnames: list[str],
                   templates: list[str]) -> dict[str, Any]:
    """Everything that changes a number in the store; its hash is the store's cache key."""
    from .store import ROW_ORDER
    from .zeroshot import head_sha256

    loaded, cast = encoder.loaded, encoder.cast
    weak_policy, strong_policy = encoder.policies
    return {
        "model": loaded.describe(),
        "classnames": classnames,
        "templates": templates,
        "teacher": {"logit_scale": loaded.logit_scale, "temperature": config.temperature,
                    "head_sha256": head_sha256(encoder.head)},
        "views": {"weak": config.weak_views, "strong": config.strong_views, "weak_policy": weak_policy,
                  "strong_policy": strong_policy, "seed": config.seed, "shard_size": config.shard_size},
        "rows": ROW_ORDER,
        "dataset": {**source.identity, "n": len(source), "fingerprint": source.fingerprint()},
        "precision": str(cast).replace("torch.", "") if cast else "fp32",
        "device": loaded.device.type,
        "versions": library_versions(),
        "storage": {"compression": config.compression},
        "corruption": config.corrupt,
        **config.extra_manifest,
    }


def write_store(config: ExtractConfig, source: Source, encoder: Encoder, writer: Any, ranks: Any) -> Written:
    """Check the ranks agree, create or resume the store (rank 0), write this rank's missing
    shards, and mark the store complete (rank 0); the lock is released whatever happens."""
    try:
        ranks.agree({"manifest": writer.manifest, "layout": writer.layout.__dict__}, "data or settings",
                    "nothing was written; give every rank the same data (the same copy of every shard), model, "
                    "weights and options, then run the same command again")
        state = ranks.on_main(lambda: writer.begin(encoder.head, config.overwrite))
        written = 0
        started = time.perf_counter()
        if state != "complete":
            written = write_shards(config, source, encoder, writer, ranks)
        ranks.barrier()
        seconds = time.perf_counter() - started
        invalid = writer.finish() if ranks.is_main else []
    except KeyboardInterrupt as exc:  # the writer is joined by now: every shard marked done is whole
        raise Interrupted.of(exc, writer.left()) from None
    finally:
        writer.release()
        ranks.close()
    return Written(state, written, seconds, invalid)


def report_invalid(invalid: list[tuple[str, str]]) -> None:
    """Log the samples marked invalid, each with its reason."""
    if invalid:
        log.info("%d sample(s) are marked invalid, each for its reason:", len(invalid))
        for key, reason in invalid:
            log.info("  %s: %s", key, reason)


def extract_stores(config: ExtractConfig) -> dict[str, Any]:
    """``extract``: one store, or with ``corrupt`` naming several corruptions (``all``,
    ``fog:all``) one store per corruption in the folder ``out`` (see ``extract_corruptions``)."""
    return extract_corruptions(config) if len(corruption_plan(config.corrupt)) > 1 else extract(config)


def extract_corruptions(config: ExtractConfig) -> dict[str, Any]:
    """One store per (corruption, severity) that ``config.corrupt`` names, inside the folder
    ``config.out`` as ``NAME-SEVERITY.zarr``; stores already complete are kept as they are."""
    from dataclasses import replace

    from .storage import is_url
    from .store import is_store

    plan = corruption_plan(config.corrupt)
    if not plan:
        raise InputError("extract_corruptions needs --corrupt")
    if not is_url(config.out):
        folder = Path(config.out)
        if folder.exists() and not folder.is_dir():
            raise InputError(f"--out '{folder}' is a file; --corrupt '{config.corrupt}' writes one store per "
                             "corruption into a folder: pass a folder path")
        if is_store(folder):
            raise InputError(f"--out '{folder}' is a store; --corrupt '{config.corrupt}' writes one store per "
                             "corruption into a folder: pass a folder path")
        folder.mkdir(parents=True, exist_ok=True)
    summaries = []
    for index, (name, severity) in enumerate(plan, 1):
        out = f"{config.out.rstrip('/')}/{name}-{severity}.zarr"
        if config.progress:
            log.info("[%d/%d] %s:%d -> %s", index, len(plan), name, severity, out)
        summaries.append(extract(replace(config, out=out, corrupt=f"{name}:{severity}")))
    return {
        "folder": config.out,
        "stores": summaries,
        "images": sum(s["images"] for s in summaries),
        "written": sum(s["written"] for s in summaries),
    }


def corruption_size(source: Source, size: tuple[int, ...]) -> tuple[int, ...]:
    """Where to corrupt: at the images' own resolution when they all share one that is smaller
    than the model's and square like it (CIFAR at 32 px, as the published -C files are made),
    otherwise at the model's input resolution."""
    if not isinstance(source, HasPixels) or source.pixels.ndim != 4:
        return size
    native = tuple(int(v) for v in source.pixels.shape[1:3])
    square = native[0] == native[1] and size[0] == size[1]
    return native if square and native[0] < size[0] else size


def corrupted(pixels: Any, corruption: tuple[str, int], seed: int, shard: int, size: tuple[int, ...],
              device: Any) -> Any:
    """One shard's uint8 batch corrupted on the device (seeded per shard), as float in [0, 1] at
    the model's size (resized bicubically when corrupted at the images' own resolution)."""
    import torch

    from .corruptions import corrupt_batch, corruption_seed

    name, severity = corruption
    generator = torch.Generator(device=device).manual_seed(corruption_seed(seed, shard, name, severity))
    batch = corrupt_batch(pixels.to(device, non_blocking=True), name, severity, generator)
    images = batch.float().div_(255.0)
    if tuple(images.shape[-2:]) != tuple(size):
        images = torch.nn.functional.interpolate(images, size=tuple(size), mode="bicubic", align_corners=False)
        images = images.clamp_(0.0, 1.0)
    return images


def leave_signals_to_the_main_process(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT and SIGTERM (a Ctrl-C reaches the whole process group):
    the main process handles the interrupt and shuts its workers down, so none of them prints
    a traceback or dies under the loader.

    A worker hands its batches over by file descriptor, served from a thread of the standard
    library's ``resource_sharer``; when the main process stops in the middle of that handshake,
    the thread's connection is reset and it reports the error through ``sys.excepthook``. Such
    a connection error is the expected end of an interrupted run, so the worker keeps it quiet;
    every other error is still reported.
    """
    import signal
    import sys

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    report = sys.excepthook

    def quiet_when_the_main_process_left(kind: type[BaseException], value: BaseException, trace: Any) -> None:
        if not issubclass(kind, (ConnectionError, EOFError)):
            report(kind, value, trace)

    sys.excepthook = quiet_when_the_main_process_left


def write_shards(config: ExtractConfig, source: Source, encoder: Encoder, writer: Any, ranks: Any) -> int:
    """Extract this rank's shards that are not done yet; return how many images it wrote.

    Decoding runs in DataLoader workers, views and the encoder on the device, and writing in a
    background thread, so the device does not wait for the disk.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .store import row_order, store_name

    layout = writer.layout
    todo = writer.todo(ranks.owns)
    order = row_order(layout.n)
    batches = [order[s * layout.shard_size: (s + 1) * layout.shard_size].tolist() for s in todo]
    corruption = parse_corruption(config.corrupt)
    loader = shard_loader(config, source, encoder.loaded, batches, corruption)
    outputs = ShardOutputs(config, source, encoder, corruption)
    progress = Progress(sum(len(b) for b in batches), f"extract {store_name(config.out)}", "img",
                        enabled=config.progress)
    pending = []
    with ThreadPoolExecutor(max_workers=1) as background:
        for shard, (indices, pixels, ok, reasons) in zip(todo, loader):
            refuse_undecoded(source, indices.tolist(), ok.tolist(), reasons, config.skip_bad)
            arrays = outputs.of(shard, indices, pixels, ok, reasons)
            pending.append(background.submit(writer.write_shard, shard, arrays))
            if len(pending) > 2:  # at most two shards wait for the disk; errors surface here
                pending.pop(0).result()
            progress.update(len(indices))
        for future in pending:
            future.result()
    progress.close()
    return sum(len(b) for b in batches)


def shard_loader(config: ExtractConfig, source: Source, loaded: Any, batches: list[list[int]],
                 corruption: tuple[str, int] | None) -> Any:
    """A DataLoader yielding each shard's decoded ``(indices, uint8 pixels, ok, reasons)``, decoded
    in ``--workers`` processes at the model's input size (or the images' own, to be corrupted)."""
    import torch

    from .decode import DecodedDataset, default_collate_shard

    size = tuple(loaded.preprocess["size"])
    decode_size = corruption_size(source, size) if corruption else size
    decoded = DecodedDataset(source, decode_size, loaded.preprocess["resize_mode"], loaded.preprocess["interpolation"],
                             int(loaded.preprocess.get("fill_color", 0)))
    return torch.utils.data.DataLoader(
        decoded,
        batch_sampler=batches,
        num_workers=config.num_workers,
        collate_fn=default_collate_shard,
        pin_memory=loaded.device.type == "cuda",
        worker_init_fn=leave_signals_to_the_main_process,
    )


def refuse_undecoded(source: Source, indices: list[int], ok: list[bool], reasons: list[str], skip_bad: bool) -> None:
    """Stop at a shard's first image that could not be decoded, unless ``--skip-bad`` keeps it as
    an invalid row."""
    bad = [(source.keys[i], r) for i, good, r in zip(indices, ok, reasons) if not good]
    if bad and not skip_bad:
        key, reason = bad[0]
        raise InputError(
            f"cannot decode image '{key}' ({reason}): remove or replace it and run the same command "
            "again (finished shards are kept), or pass --skip-bad to record it as invalid"
        )


class ShardOutputs:
    """What one shard of decoded images becomes in the store: its clean view and every weak and
    strong view encoded, the teacher's label and confidence for each, and its rows' labels,
    validity, keys and reasons."""

    def __init__(self, config: ExtractConfig, source: Source, encoder: Encoder,
                 corruption: tuple[str, int] | None) -> None:
        from .augment import ViewMaker

        loaded = encoder.loaded
        self.config, self.source, self.encoder, self.corruption = config, source, encoder, corruption
        self.size = tuple(loaded.preprocess["size"])
        self.views = ViewMaker(loaded.preprocess, *encoder.policies, config.seed, loaded.device)
        self.keys = np.array(source.keys, dtype=str)

    def of(self, shard: int, indices: Any, pixels: Any, ok: Any, reasons: list[str]) -> dict[str, np.ndarray]:
        """The store's arrays for one shard, from its decoded batch."""
        import torch

        from .zeroshot import teacher_outputs

        head, scale, temperature = self.encoder.head, self.encoder.loaded.logit_scale, self.config.temperature
        images = self.images(shard, pixels)
        with torch.no_grad():
            emb = self.encode(self.views.clean(images))
        arrays: dict[str, np.ndarray] = {"clean/emb": emb}
        arrays["clean/label"], arrays["clean/conf"] = teacher_outputs(emb, head, scale, temperature)
        for kind, count in (("weak", self.config.weak_views), ("strong", self.config.strong_views)):
            if count == 0:
                continue
            stacked = np.stack([self.encode(self.views.view(images, kind, shard, v)) for v in range(count)], axis=1)
            arrays[f"{kind}/emb"] = stacked
            arrays[f"{kind}/label"], arrays[f"{kind}/conf"] = teacher_outputs(stacked, head, scale, temperature)
        arrays["labels"] = self.source.labels[indices.numpy()]
        arrays["valid"] = ok.numpy()
        arrays["keys"] = self.keys[indices.numpy()]
        arrays["reason"] = np.array(reasons, dtype=str)
        return arrays

    def images(self, shard: int, pixels: Any) -> Any:
        """The shard's uint8 batch as float images in [0, 1] on the device, corrupted when asked."""
        if self.corruption is not None:
            return corrupted(pixels, self.corruption, self.config.seed, shard, self.size, self.encoder.loaded.device)
        return self.views.to_float(pixels)

    def encode(self, images: Any) -> np.ndarray:
        """Unit-norm fp16 embeddings of a batch of views, encoded ``--batch-size`` images at a time."""
        import torch

        model, device, cast = self.encoder.loaded.model, self.encoder.loaded.device, self.encoder.cast
        parts = []
        with torch.no_grad():
            for start in range(0, images.shape[0], self.config.batch_size):
                chunk = images[start : start + self.config.batch_size]
                with torch.autocast(device.type, dtype=cast, enabled=cast is not None):
                    features = model.encode_image(chunk)
                features = torch.nn.functional.normalize(features.float(), dim=-1)
                parts.append(features.half().cpu().numpy())
        return np.concatenate(parts)
