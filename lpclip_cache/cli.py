"""The ``lpclip-cache`` command line: thin click commands over the library functions.

Heavy libraries (torch, open_clip, kornia, zarr, faiss) are imported inside the commands, so
``--help`` is instant. A user error is one line on stderr and a documented exit code.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from . import __version__
from .errors import Interrupted, LpclipError, StoreError


def report_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn an LpclipError into one line and its exit code (``--debug`` shows the traceback).

    SIGINT (Ctrl-C) and SIGTERM stop the command the same way, by an exception in the main
    thread, so its cleanup runs (partial outputs removed, the store lock released); the process
    then prints one ``interrupted`` line and exits 130 (SIGINT) or 143 (SIGTERM). A disk found
    full by a write no command names is one line and exit 5 too.
    """

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .atomic import DISK_FULL

        debug = click.get_current_context().find_root().params.get("debug", False)
        if not debug:
            logging.getLogger().setLevel(logging.ERROR)
        previous = interrupt_on_sigterm()
        try:
            return command(*args, **kwargs)
        except LpclipError as exc:
            if debug:
                raise
            click.echo(f"lpclip-cache: error: {exc.message}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            signum = getattr(exc, "signum", signal.SIGINT)
            message = getattr(exc, "message", "")
            if sys.stderr.isatty():
                sys.stderr.write("\n")  # end a progress line left open
            click.echo(f"lpclip-cache: interrupted by {signal.Signals(signum).name}"
                       + (f": {message}" if message else ""), err=True)
            sys.exit(128 + signum)
        except OSError as exc:
            if debug or exc.errno not in DISK_FULL:
                raise
            where = f" writing '{exc.filename}'" if exc.filename else ""
            click.echo(f"lpclip-cache: error: {DISK_FULL[exc.errno]}{where}: free space and run the same command "
                       "again", err=True)
            sys.exit(StoreError.exit_code)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


def interrupt_on_sigterm() -> Any:
    """Make SIGTERM raise ``Interrupted`` in the main thread, as SIGINT raises KeyboardInterrupt;
    return the handler it replaced (None off the main thread, where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, interrupt)
    return signal.SIG_DFL if previous is None else previous  # None: set outside Python


def emit(summary: dict[str, Any], as_json: bool, text: str | None = None) -> None:
    """Print the human summary, or the machine-readable JSON summary with ``--json``."""
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    elif text is not None:
        click.echo(text)


json_option = click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON summary.")
overwrite_option = click.option("--overwrite", is_flag=True, help="Replace --out if it exists (only if it is ours).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lpclip-cache")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def main(debug: bool) -> None:
    """LP-CLIP with a feature cache: extract once, train probes in seconds, evaluate robustness."""


@main.command()
@click.option("--data", required=True, help="ImageFolder path, or cifar10:ROOT / cifar100:ROOT.")
@click.option("--split", default=None, help="Split: a sub-folder of an ImageFolder root, or train/test for CIFAR.")
@click.option("--model", default="test-tiny", show_default=True, help="open_clip architecture name.")
@click.option(
    "--pretrained",
    default="none",
    show_default=True,
    help="Pretrained tag (e.g. openai, laion2b_s34b_b79k), checkpoint file, or none (random init).",
)
@click.option("--weak-views", type=int, default=2, show_default=True, help="Weak (teacher) views per image.")
@click.option("--strong-views", type=int, default=2, show_default=True, help="Strong (student) views per image.")
@click.option("--out", required=True, type=click.Path(), help="Store to create (a Zarr v3 directory).")
@click.option("--templates", default=None, help="Template set (cifar10, cifar100, imagenet, simple) or file.")
@click.option("--classnames", default=None, help="Class-name set (cifar10, cifar100, imagenet) or file.")
@click.option("--weak-policy", default="weak", show_default=True, help="Weak view policy: name or JSON file.")
@click.option("--strong-policy", default="strong", show_default=True, help="Strong view policy: name or JSON file.")
@click.option("--temperature", type=float, default=1.0, show_default=True, help="Teacher softmax temperature.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every augmentation.")
@click.option("--shard-size", type=int, default=256, show_default=True, help="Samples per shard (unit of writing).")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Encoder batch size.")
@click.option("--workers", "num_workers", type=int, default=2, show_default=True, help="Decode workers.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", default="auto", show_default=True, help="auto (bf16 on CUDA), fp32, bf16, fp16.")
@click.option("--download", is_flag=True, help="Let torchvision download the dataset (connected machines).")
@click.option("--skip-bad", is_flag=True, help="Record undecodable images as invalid instead of stopping.")
@click.option("--compression", type=click.Choice(["none", "zstd"]), default="none", show_default=True,
              help="Codec of the embedding arrays (uncompressed reads fastest).")
@click.option("--corrupt", default=None,
              help="Corrupt every image on the device: NAME:SEVERITY (e.g. gaussian_noise:5), NAME:all, all:SEVERITY "
                   "or all (15 types x 5 severities); more than one writes NAME-SEVERITY.zarr stores into --out.")
@click.option("--cache-dir", default=None, help="Where open_clip caches downloaded weights.")
@click.option("--quiet", is_flag=True, help="No progress line.")
@overwrite_option
@json_option
@report_errors
def extract(as_json: bool, quiet: bool, **options: Any) -> None:
    """Run CLIP once over clean, weak and strong views of a dataset and write a feature store."""
    from . import api

    summary = api.extract(progress=not quiet, **options)
    if "stores" in summary:  # several corruptions: one store each
        lines = [f"wrote {s['store']}: {s['images']} images, {s['views_per_s']:.1f} views/s" for s in summary["stores"]]
        emit(summary, as_json, "\n".join(lines))
        return
    emit(
        summary,
        as_json,
        f"wrote {summary['store']}: {summary['images']} images x {summary['views_per_image']} views, "
        f"{summary['views_per_s']:.1f} views/s",
    )


@main.command()
@click.option("--store", required=True, help="Feature store made by extract.")
@click.option("--out", required=True, type=click.Path(), help="Run directory to create.")
@click.option("--method", type=click.Choice(["lpclip", "supervised"]), default="lpclip", show_default=True)
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="AdamW learning rate.")
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--init", type=click.Choice(["zeroshot", "random"]), default="zeroshot", show_default=True,
              help="Start from the zero-shot head (A = s W_t, b = 0) or at random.")
@click.option("--weighting", type=click.Choice(["confidence", "none"]), default="confidence", show_default=True,
              help="Weight each sample's loss by the teacher's confidence, or not.")
@click.option("--targets", type=click.Choice(["hard", "soft"]), default="hard", show_default=True,
              help="Teacher's argmax, or its whole distribution.")
@click.option("--threshold", type=float, default=0.0, show_default=True,
              help="Drop samples whose teacher confidence is below this.")
@click.option("--student", type=click.Choice(["strong", "weak"]), default="strong", show_default=True,
              help="Views the student sees (weak: no consistency between views).")
@click.option("--max-views", type=int, default=None, help="Use only the first K cached views of each kind.")
@click.option("--ensemble", type=int, default=1, show_default=True,
              help="Train M probes in one pass (different seeds and view samples).")
@click.option("--quiet", is_flag=True, help="No progress line.")
@overwrite_option
@json_option
@report_errors
def train(as_json: bool, quiet: bool, **options: Any) -> None:
    """Train the linear probe from cached weak/strong pairs (LP-CLIP) or true labels (reference)."""
    from . import api

    summary = api.train(progress=not quiet, **options)
    emit(
        summary,
        as_json,
        f"wrote {summary['run']}: {summary['method']} x{summary['ensemble']}, {summary['epochs']} epochs, final loss "
        f"{summary['final_loss']:.4f}, teacher agreement {summary['teacher_agreement']:.3f}, "
        f"{summary['samples_per_s']:,.0f} samples/s",
    )


@main.command()
@click.option("--run", "run_path", required=True, help="Run directory made by train.")
@click.option("--store", "stores", multiple=True, required=True, help="In-distribution store (repeatable).")
@click.option("--ood", multiple=True, help="Out-of-distribution store (repeatable).")
@click.option("--out", default=None, type=click.Path(), help="Report JSON to write.")
@click.option("--report", "report_dir", default=None, type=click.Path(),
              help="Folder for report.json, report.md and PNG plots.")
@overwrite_option
@json_option
@report_errors
def evaluate(run_path: str, stores: tuple[str, ...], ood: tuple[str, ...], out: str | None, report_dir: str | None,
             overwrite: bool, as_json: bool) -> None:
    """Accuracy, calibration and OOD detection of the teacher and the probe on stores."""
    from . import api
    from .errors import InputError
    from .evaluation import format_table

    if not out and not report_dir:
        raise InputError("evaluate needs --out REPORT.json or --report DIR (or both)")
    report = api.evaluate(run_path, stores, ood, out=out, report=report_dir, overwrite=overwrite)
    written = ", ".join(p for p in (out, report_dir) if p)
    emit(report, as_json, format_table(report) + f"\nwrote {written}")


@main.group()
def analyze() -> None:
    """Analyses of the cached embedding spaces."""


@analyze.group()
def latent() -> None:
    """Latent-space structure of CLIP's embeddings and of the probe's outputs."""


@latent.command()
@click.option("--store", required=True, help="Feature store to analyse (its clean view).")
@click.option("--run", "run_path", default=None, help="Also analyse this run's probe output space.")
@click.option("--k", type=int, required=True, help="Number of clusters.")
@click.option("--sweep", default="", help="Other numbers of clusters to score too, e.g. 5,20,50.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(), help="Report JSON to write.")
@overwrite_option
@json_option
@report_errors
def clusters(store: str, run_path: str | None, k: int, sweep: str, seed: int, out: str, overwrite: bool,
             as_json: bool) -> None:
    """FAISS spherical k-means; purity, NMI and ARI against true labels and pseudo-labels."""
    from . import api
    from .analysis import format_table

    ks = tuple(int(v) for v in float_list(sweep, "--sweep")) if sweep else ()
    report = api.analyze("clusters", store, out=out, run=run_path, k=k, sweep=ks, seed=seed, overwrite=overwrite)
    emit(report, as_json, format_table(report) + f"\nwrote {out}")


@latent.command()
@click.option("--store", required=True, help="Feature store to analyse (its clean view).")
@click.option("--run", "run_path", default=None, help="Also analyse this run's probe output space.")
@click.option("--k", type=int, default=10, show_default=True, help="Neighbours per point.")
@click.option("--out", required=True, type=click.Path(), help="Report JSON to write.")
@overwrite_option
@json_option
@report_errors
def neighbors(store: str, run_path: str | None, k: int, out: str, overwrite: bool, as_json: bool) -> None:
    """kNN label agreement (FAISS), silhouette and intra/inter-class distance ratio."""
    from . import api
    from .analysis import format_neighbors

    report = api.analyze("neighbors", store, out=out, run=run_path, k=k, overwrite=overwrite)
    emit(report, as_json, format_neighbors(report) + f"\nwrote {out}")


@latent.command()
@click.option("--store", required=True, help="Feature store to project (its clean view).")
@click.option("--run", "run_path", default=None, help="Also project this run's probe output space.")
@click.option("--out", required=True, type=click.Path(), help="PNG file to write.")
@overwrite_option
@json_option
@report_errors
def projection(store: str, run_path: str | None, out: str, overwrite: bool, as_json: bool) -> None:
    """A 2-D PCA projection coloured by true label, pseudo-label and the teacher's correctness (PNG)."""
    from . import api

    summary = api.analyze("projection", store, out=out, run=run_path, overwrite=overwrite)
    emit(summary, as_json, f"wrote {out}")


@main.command()
@click.argument("store")
@json_option
@report_errors
def info(store: str, as_json: bool) -> None:
    """Print a store's manifest and array shapes."""
    from .store import FeatureStore

    opened = FeatureStore(store, require_complete=False)
    summary = {
        "store": store,
        "complete": bool(opened.meta.get("complete")),
        "cache_key": opened.cache_key,
        "format_version": opened.meta["format_version"],
        "layout": opened.meta["layout"],
        "arrays": {name: {"shape": list(s), "dtype": d} for name, (s, d) in opened.arrays().items()},
        "manifest": opened.manifest,
    }
    if as_json:
        emit(summary, True)
        return
    click.echo("\n".join(info_lines(store, opened, summary)))


def info_lines(store: str, opened: Any, summary: dict[str, Any]) -> list[str]:
    """The human summary of ``info``: manifest fields (``?`` where a store lacks one), then every
    array's shape and dtype."""

    def field(dotted: str) -> Any:
        value: Any = opened.manifest
        for key in dotted.split("."):
            if not isinstance(value, dict) or key not in value:
                return "?"
            value = value[key]
        return value

    names, templates, versions = field("classnames"), field("templates"), field("versions")
    pretrained = field("model.pretrained.value") or field("model.pretrained.kind")
    templates = templates if isinstance(templates, list) and templates else ["?"]
    versions = versions if isinstance(versions, dict) else {}
    lines = [
        f"store       {store} ({'complete' if summary['complete'] else 'INCOMPLETE'})",
        f"cache key   {opened.cache_key}",
        f"model       {field('model.name')} pretrained={pretrained} "
        f"quick_gelu={field('model.quick_gelu')} dim={field('model.embed_dim')}",
        f"teacher     logit_scale={opened.logit_scale:.4g} temperature={opened.temperature}",
        f"classes     {len(names)}: {', '.join(names[:10])}" + (" ..." if len(names) > 10 else ""),
        f"templates   {len(templates)}: {templates[0]!r} ...",
        f"dataset     {field('dataset.spec')} split={field('dataset.split')} n={field('dataset.n')}",
        f"views       weak={field('views.weak')} strong={field('views.strong')} "
        f"seed={field('views.seed')} shard_size={field('views.shard_size')}",
        f"precision   {field('precision')} on {field('device')}",
        f"versions    {', '.join(f'{k} {v}' for k, v in versions.items())}",
        "arrays",
    ]
    lines += [f"  {name:<14} {str(tuple(s)):<18} {d}" for name, (s, d) in opened.arrays().items()]
    return lines


@main.command("models")
@json_option
@report_errors
def list_models(as_json: bool) -> None:
    """List the open_clip architectures (the project's own included)."""
    from .models import list_model_names

    names = list_model_names()
    emit({"models": names}, as_json, "\n".join(names))


@main.command()
@click.option("--out", default="demo-out", show_default=True, type=click.Path(), help="Output folder.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the world, the views and the probes.")
@click.option("--train-n", type=int, default=4000, show_default=True, help="Images in the adaptation split.")
@click.option("--test-n", type=int, default=1000, show_default=True, help="Images in each evaluation set.")
@click.option("--views", type=int, default=4, show_default=True, help="Weak and strong views per training image.")
@click.option("--epochs", type=int, default=30, show_default=True, help="Probe training epochs.")
@click.option("--lr", type=float, default=1e-2, show_default=True, help="Probe learning rate (AdamW).")
@click.option("--teacher-steps", type=int, default=1000, show_default=True, help="Training steps of the small CLIP.")
@click.option("--teacher-pool", type=int, default=20000, show_default=True, help="Image-caption pairs it learns from.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@overwrite_option
@json_option
@report_errors
def demo(out: str, seed: int, train_n: int, test_n: int, views: int, epochs: int, lr: float, teacher_steps: int,
         teacher_pool: int, quiet: bool, overwrite: bool, as_json: bool) -> None:
    """The whole method offline: a small CLIP trained here, shapes world with shifts and OOD, one table."""
    from .errors import InputError
    from .world.demo import DemoConfig, format_table, run_demo
    from .world.teacher import TeacherConfig

    if min(train_n, test_n, views, epochs, teacher_steps) < 1 or not lr > 0:
        raise InputError("--train-n, --test-n, --views, --epochs and --teacher-steps must be at least 1, --lr > 0")
    if teacher_pool < TeacherConfig.batch_size:
        raise InputError(f"--teacher-pool must be at least the teacher's batch size ({TeacherConfig.batch_size})")
    teacher = TeacherConfig(seed=seed, steps=teacher_steps, pool=teacher_pool)
    config = DemoConfig(out=out, seed=seed, train_n=train_n, test_n=test_n, weak_views=views, strong_views=views,
                        epochs=epochs, lr=lr, teacher=teacher, overwrite=overwrite, progress=not quiet)
    results = run_demo(config)
    emit(results, as_json, f"{format_table(results)}\nwrote {out}/results.json, results.md, reliability.png, "
         f"severity.png in {results['timings_s']['total']:.0f} s")


@main.command()
@click.argument("store")
@json_option
@report_errors
def verify(store: str, as_json: bool) -> None:
    """Check a store: completeness, NaN or non-unit embeddings, labels, manifest consistency."""
    from .verify import check_ok, format_verify
    from .verify import verify as run_verify

    report = run_verify(store)
    emit(report, as_json, format_verify(report))
    check_ok(report)


@main.command()
@click.argument("store")
@click.option("--format", "fmt", type=click.Choice(["hdf5"]), default="hdf5", show_default=True)
@click.option("--out", required=True, type=click.Path(), help="File to write (.h5).")
@overwrite_option
@json_option
@report_errors
def export(store: str, fmt: str, out: str, overwrite: bool, as_json: bool) -> None:
    """Copy a store into another format for tools that cannot read Zarr (HDF5)."""
    from .verify import export_hdf5

    summary = export_hdf5(store, out, overwrite)
    emit(summary, as_json, f"wrote {summary['out']} ({summary['bytes']:,} bytes)")


@main.command()
@click.option("--store", required=True, help="Training store (with weak and strong views).")
@click.option("--eval", "eval_stores", multiple=True, required=True, help="Store to score every variant on.")
@click.option("--ood", multiple=True, help="OOD store (repeatable).")
@click.option("--out", required=True, type=click.Path(), help="Folder for the runs and the table.")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--thresholds", default="0.3,0.5,0.7,0.9", show_default=True, help="Confidence thresholds to sweep.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@overwrite_option
@json_option
@report_errors
def ablate(store: str, eval_stores: tuple[str, ...], ood: tuple[str, ...], out: str, epochs: int, lr: float,
           seed: int, thresholds: str, quiet: bool, overwrite: bool, as_json: bool) -> None:
    """Train every variant of the method from one store and write one table."""
    from .ablate import AblationConfig, format_table, run_ablation
    from .store import refuse_output_inside

    refuse_output_inside(out, [store, *eval_stores, *ood])
    results = run_ablation(AblationConfig(
        store=store, eval_stores=list(eval_stores), ood=list(ood), out=out, epochs=epochs, lr=lr, seed=seed,
        thresholds=float_list(thresholds, "--thresholds"), overwrite=overwrite, progress=not quiet,
    ))
    emit(results, as_json, format_table(results) + f"\nwrote {out}/ablation.json and ablation.md")


def float_list(text: str, option: str) -> tuple[float, ...]:
    """Parse ``1e-3,1e-2`` for an option, or fail with one clear line."""
    from .errors import InputError

    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise InputError(f"{option} must be comma-separated numbers, got '{text}'") from exc
    if not values:
        raise InputError(f"{option} needs at least one number")
    return values


@main.command("select")
@click.option("--store", required=True, help="Training store.")
@click.option("--out", required=True, type=click.Path(), help="Run directory for the chosen probe.")
@click.option("--lr", "lrs", default="1e-3,1e-2", show_default=True, help="Learning rates to try.")
@click.option("--weight-decay", "weight_decays", default="0,1e-4", show_default=True, help="Weight decays to try.")
@click.option("--epochs", type=int, default=20, show_default=True, help="Most epochs; the best epoch is chosen.")
@click.option("--holdout", type=float, default=0.1, show_default=True, help="Fraction of shards held out.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress lines.")
@overwrite_option
@json_option
@report_errors
def select_command(store: str, out: str, lrs: str, weight_decays: str, epochs: int, holdout: float, seed: int,
                   quiet: bool, overwrite: bool, as_json: bool) -> None:
    """Choose lr, weight decay and epochs without labels (agreement with held-out pseudo-labels)."""
    from .select import SelectConfig, select
    from .store import refuse_output_inside

    refuse_output_inside(out, [store])
    result = select(SelectConfig(store=store, out=out, lrs=float_list(lrs, "--lr"),
                                 weight_decays=float_list(weight_decays, "--weight-decay"), epochs=epochs,
                                 holdout=holdout, seed=seed, overwrite=overwrite, progress=not quiet))
    chosen = result["chosen"]
    emit(result, as_json, f"chose lr={chosen['lr']:g} weight_decay={chosen['weight_decay']:g} "
         f"epochs={chosen['best_epoch']} (held-out agreement {chosen['holdout_agreement']:.4f}); wrote {out}")


@main.command("run")
@click.argument("recipe", type=click.Path())
@click.option("--dry-run", is_flag=True, help="Print the plan (what would run, resume or be skipped) and stop.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value, e.g. --set model.pretrained=laion2b_s34b_b79k (repeatable).")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@json_option
@report_errors
def run_command(recipe: str, dry_run: bool, overrides: tuple[str, ...], quiet: bool, as_json: bool) -> None:
    """Run a recipe (TOML): extract, train, evaluate and analyze in order, skipping finished stages."""
    from . import api

    summary = api.run(recipe, dry_run=dry_run, overrides=overrides, progress=not quiet)
    if dry_run:
        emit(summary, as_json, summary["plan"])
        return
    emit(summary, as_json, f"recipe {summary['recipe']}: ran {len(summary['ran'])} stage(s), skipped "
         f"{len(summary['skipped'])} already complete, in {summary['seconds']:.1f} s; outputs under {summary['out']}")
