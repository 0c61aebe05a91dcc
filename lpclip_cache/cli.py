"""The ``lpclip-cache`` command line: thin click commands over the library functions.

Heavy libraries (torch, open_clip, kornia, zarr, faiss) are imported inside the commands, so
``--help`` is instant. A user error is one line on stderr and a documented exit code.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from . import __version__
from .config import NEIGHBORS_K, AblationConfig, DemoConfig, ExtractConfig, SelectConfig, TrainConfig
from .distributed import stopping_together
from .errors import Interrupted, LpclipError, StoreError
from .outputs import json_text


def report_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn an LpclipError into one line and its exit code (``--debug`` shows the traceback).

    SIGINT (Ctrl-C) and SIGTERM stop the command the same way, by an exception in the main
    thread, so its cleanup runs (partial outputs removed, the store lock released); the process
    then prints one ``interrupted`` line and exits 130 (SIGINT) or 143 (SIGTERM). A disk found
    full by a write no command names is one line and exit 5 too. A torchrun rank that stops on an
    error every rank shares says it and exits with its code, although torchrun sends it SIGTERM
    as soon as another rank has exited (see ``distributed``).
    """

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .outputs import DISK_FULL

        debug = click.get_current_context().find_root().params.get("debug", False)
        if not debug:
            logging.getLogger().setLevel(logging.ERROR)
        configure_logging(debug)
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
            if previous is not None:  # a torchrun rank stopping on an error every rank shares exits with its code
                signal.signal(signal.SIGTERM, signal.SIG_IGN if stopping_together() else previous)

    return wrapper


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record to the ``sys.stderr`` of the moment (click's test runner swaps it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class LineFormatter(logging.Formatter):
    """A record as the command line shows it: the message, after ``warning: `` from WARNING up."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return f"warning: {message}" if record.levelno >= logging.WARNING else message


def configure_logging(debug: bool = False) -> None:
    """The command line's one handler on the package's logger: progress and notices (INFO) and
    warnings, one line each on stderr. The library itself only logs (``logging.getLogger(__name__)``),
    so a Python caller silences or redirects it as with any library."""
    logger = logging.getLogger("lpclip_cache")
    for handler in [h for h in logger.handlers if isinstance(h, StderrHandler)]:
        logger.removeHandler(handler)
    handler = StderrHandler()
    handler.setFormatter(LineFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False


def interrupt_on_sigterm() -> Any:
    """Make SIGTERM raise ``Interrupted`` in the main thread, as SIGINT raises KeyboardInterrupt,
    except while a torchrun rank stops on an error every rank shares; return the handler it
    replaced (None off the main thread, where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: Any) -> None:
        if stopping_together():  # torchrun SIGTERMs every rank once one exits: this one finishes its line
            return
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, interrupt)
    return signal.SIG_DFL if previous is None else previous  # None: set outside Python


def emit(summary: dict[str, Any], as_json: bool, text: str | None = None) -> None:
    """Print the human summary, or the machine-readable JSON summary with ``--json``."""
    if as_json:
        click.echo(json_text(summary))
    elif text is not None:
        click.echo(text)


json_option = click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON summary.")
overwrite_option = click.option("--overwrite", is_flag=True, help="Replace --out if it exists (only if it is ours).")


def options_of(config: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The click options of a Config dataclass's fields (see ``config``): one per field the
    command line shows, with the field's default, help and choices; a list field repeats, a
    tuple of numbers is written comma-separated."""
    from dataclasses import MISSING, fields

    from .config import flag_of

    params = []
    for spec in fields(config):
        meta = spec.metadata
        if not meta.get("cli", False):
            continue
        default = spec.default if spec.default is not MISSING else None
        kind = str(spec.type)
        settings: dict[str, Any] = {"help": meta["help"] or None, "required": spec.default is MISSING
                                    and spec.default_factory is MISSING}
        if kind == "bool":
            settings.update(is_flag=True)
        elif kind.startswith("list"):
            settings.update(multiple=True)
        elif kind.startswith("tuple"):
            settings.update(default=",".join(f"{v:g}" for v in default), show_default=True,
                            callback=lambda ctx, param, text: float_list(text, param.opts[0]))
        else:
            settings.update(default=default, show_default=default is not None,
                            type=click.Choice(meta["choices"]) if meta["choices"] else
                            int if kind.startswith("int") else float if kind == "float" else None)
        if spec.name in ("out",):
            settings["type"] = click.Path()
        params.append(click.option(flag_of(spec), spec.name, **settings))

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for param in reversed(params):
            command = param(command)
        return command

    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lpclip-cache")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def main(debug: bool) -> None:
    """LP-CLIP with a feature cache: extract once, train probes in seconds, evaluate robustness."""


@main.command()
@options_of(ExtractConfig)
@click.option("--quiet", is_flag=True, help="No progress line.")
@json_option
@report_errors
def extract(as_json: bool, quiet: bool, **options: Any) -> None:
    """Run CLIP once over clean, weak and strong views of a dataset and write a feature store."""
    from .extraction import extract_stores

    summary = extract_stores(ExtractConfig(progress=not quiet, **options))
    if "stores" in summary:  # several corruptions: one store each
        lines = [f"wrote {s['store']}: {s['images']} images, {s['views_per_s']:.1f} views/s" for s in summary["stores"]]
        return emit(summary, as_json, "\n".join(lines))
    emit(summary, as_json, f"wrote {summary['store']}: {summary['images']} images x {summary['views_per_image']} "
         f"views, {summary['views_per_s']:.1f} views/s")


@main.command()
@options_of(TrainConfig)
@click.option("--quiet", is_flag=True, help="No progress line.")
@json_option
@report_errors
def train(as_json: bool, quiet: bool, **options: Any) -> None:
    """Train the linear probe from cached weak/strong pairs (LP-CLIP) or true labels (reference)."""
    from .training import train as run_train

    summary = run_train(TrainConfig(progress=not quiet, **options))
    emit(summary, as_json,
        f"wrote {summary['run']}: {summary['method']} x{summary['ensemble']}, {summary['epochs']} epochs, final loss "
        f"{summary['final_loss']:.4f}, teacher agreement {summary['teacher_agreement']:.3f}, "
        f"{summary['kept']:.1%} of samples kept, {summary['samples_per_s']:,.0f} samples/s",
    )


@main.command()
@click.option("--run", "run_path", required=True, help="Run directory made by train.")
@click.option("--store", "stores", multiple=True, required=True, help="In-distribution store (repeatable).")
@click.option("--ood", multiple=True, help="Out-of-distribution store (repeatable).")
@click.option("--out", default=None, type=click.Path(), help="Report JSON to write.")
@click.option("--report", "report_dir", default=None, type=click.Path(),
              help="Folder for report.json, report.md and PNG plots.")
@click.option("--transclip", is_flag=True,
              help="Also score TransCLIP, transductive over each store: on the zero-shot head and atop the probe.")
@click.option("--predictions", default=None, type=click.Path(),
              help="HDF5 file (.h5) for every method's probabilities on every image, by store.")
@overwrite_option
@json_option
@report_errors
def evaluate(run_path: str, stores: tuple[str, ...], ood: tuple[str, ...], out: str | None, report_dir: str | None,
             transclip: bool, predictions: str | None, overwrite: bool, as_json: bool) -> None:
    """Accuracy, calibration and OOD detection of the teacher and the probe on stores."""
    from .errors import InputError
    from .evaluation import format_table
    from .report import evaluate_into

    if not out and not report_dir and not predictions:
        raise InputError("evaluate needs --out REPORT.json, --report DIR or --predictions FILE.h5 (one or more)")
    report = evaluate_into(run_path, list(stores), list(ood), out=out, report=report_dir, overwrite=overwrite,
                           transclip=transclip, predictions=predictions)
    written = ", ".join(p for p in (out, report_dir, predictions) if p)
    emit(report, as_json, format_table(report) + f"\nwrote {written}")


@main.group()
def analyze() -> None:
    """Analyses of the cached embedding spaces."""


@analyze.command()
@click.option("--store", required=True, help="Feature store whose weak and strong views to check (adaptation store).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the halves and of the image sample.")
@click.option("--max-images", type=int, default=None,
              help="Analyse at most this many images, a seeded sample (default 10000).")
@click.option("--out", required=True, type=click.Path(), help="Report JSON to write.")
@overwrite_option
@json_option
@report_errors
def views(store: str, seed: int, max_images: int | None, out: str, overwrite: bool, as_json: bool) -> None:
    """Do the views keep the class? Teacher agreement, cosine and confidence per view kind; with
    labels, the teacher's accuracy, label preservation and the consistency ceiling."""
    from .analysis import analyze
    from .viewcheck import format_views

    report = analyze("views", store, out=out, seed=seed, max_images=max_images, overwrite=overwrite)
    emit(report, as_json, format_views(report) + f"\nwrote {out}")


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
    from .analysis import analyze, format_table

    ks = tuple(int(v) for v in float_list(sweep, "--sweep")) if sweep else ()
    report = analyze("clusters", store, out=out, run=run_path, k=k, sweep=ks, seed=seed, overwrite=overwrite)
    emit(report, as_json, format_table(report) + f"\nwrote {out}")


@latent.command()
@click.option("--store", required=True, help="Feature store to analyse (its clean view).")
@click.option("--run", "run_path", default=None, help="Also analyse this run's probe output space.")
@click.option("--k", type=int, default=NEIGHBORS_K, show_default=True, help="Neighbours per point.")
@click.option("--out", required=True, type=click.Path(), help="Report JSON to write.")
@overwrite_option
@json_option
@report_errors
def neighbors(store: str, run_path: str | None, k: int, out: str, overwrite: bool, as_json: bool) -> None:
    """kNN label agreement (FAISS), silhouette and intra/inter-class distance ratio."""
    from .analysis import analyze, format_neighbors

    report = analyze("neighbors", store, out=out, run=run_path, k=k, overwrite=overwrite)
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
    from .analysis import analyze

    summary = analyze("projection", store, out=out, run=run_path, overwrite=overwrite)
    emit(summary, as_json, f"wrote {out}")


@main.command()
@click.argument("store")
@json_option
@report_errors
def info(store: str, as_json: bool) -> None:
    """Print a store's manifest and array shapes."""
    from .store import FeatureStore

    opened = FeatureStore(store, require_complete=False)
    emit(opened.summary(), as_json, opened.describe())


@main.command("models")
@json_option
@report_errors
def list_models(as_json: bool) -> None:
    """List the open_clip architectures (the project's own included)."""
    from .models import list_model_names

    names = list_model_names()
    emit({"models": names}, as_json, "\n".join(names))


@main.command()
@options_of(DemoConfig)
@click.option("--quiet", is_flag=True, help="No progress lines.")
@json_option
@report_errors
def demo(quiet: bool, as_json: bool, **options: Any) -> None:
    """The whole method offline: a small CLIP trained here, shapes world with shifts and OOD, one table."""
    from .world.demo import format_ablation, format_table, format_views, run_demo

    results = run_demo(DemoConfig(progress=not quiet, **options))
    emit(results, as_json, f"{format_views(results)}\n\n{format_table(results)}\n\n{format_ablation(results)}\n"
         f"wrote {options['out']}/"
         f"results.json, results.md, reliability.png, severity.png, effective_robustness.png in "
         f"{results['timings_s']['total']:.0f} s")


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
    from .export import export_hdf5

    summary = export_hdf5(store, out, overwrite)
    emit(summary, as_json, f"wrote {summary['out']} ({summary['bytes']:,} bytes)")


@main.command()
@options_of(AblationConfig)
@click.option("--quiet", is_flag=True, help="No progress lines.")
@json_option
@report_errors
def ablate(quiet: bool, as_json: bool, **options: Any) -> None:
    """Train every variant of the method from one store and write one table."""
    from .ablate import format_table, run_ablation

    results = run_ablation(AblationConfig(progress=not quiet, **options))
    emit(results, as_json, format_table(results) + f"\nwrote {options['out']}/ablation.json and ablation.md")


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
@options_of(SelectConfig)
@click.option("--quiet", is_flag=True, help="No progress lines.")
@json_option
@report_errors
def select_command(quiet: bool, as_json: bool, **options: Any) -> None:
    """Choose lr, weight decay and epochs without labels (agreement with held-out pseudo-labels)."""
    from .selection import select

    result = select(SelectConfig(progress=not quiet, **options))
    chosen = result["chosen"]
    emit(result, as_json, f"chose lr={chosen['lr']:g} weight_decay={chosen['weight_decay']:g} "
         f"epochs={chosen['best_epoch']} (held-out agreement {chosen['holdout_agreement']:.4f}); "
         f"wrote {options['out']}")


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
    from .recipe import run_recipe

    summary = run_recipe(recipe, dry_run=dry_run, overrides=list(overrides), progress=not quiet)
    if dry_run:
        emit(summary, as_json, summary["plan"])
        return
    emit(summary, as_json, f"recipe {summary['recipe']}: ran {len(summary['ran'])} stage(s), skipped "
         f"{len(summary['skipped'])} already complete, in {summary['seconds']:.1f} s; outputs under {summary['out']}")
