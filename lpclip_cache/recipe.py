"""Recipes: one TOML file names a whole experiment, and ``lpclip-cache run`` carries it out.

A recipe gives the model, the datasets and their roles (``adapt``: the unlabelled adaptation
set; ``test``: the in-distribution test set; ``shift``: shifted test sets, corruptions included;
``ood``: out-of-distribution sets), the cached views, the probes to train and what to report.
``plan`` turns it into stages (extract each dataset, train each probe, evaluate each probe on
every test/shift/OOD store, analyse the latent space) with their outputs under ``out``;
``run_recipe`` executes them in order. A stage whose output is complete for the same
configuration is skipped: a store is complete when every shard is written (an incomplete one
resumes), and a run, report or analysis when the stamp written after it finished
(``OUT/.recipe/STAGE.json``) holds the same configuration key. Stores are never deleted by a
recipe: one made with another configuration is an error that names the differing fields.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import operator
import os
import re
import time
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import ExtractConfig, TrainConfig, recipe_keys
from .errors import InputError
from .storage import local_path

log = logging.getLogger(__name__)

ROLES = ("adapt", "test", "shift", "ood")
TOP_KEYS = {"name", "description", "out", "gpu_wall_time", "model", "views", "extract", "datasets", "train",
            "evaluate", "analyze"}
# the keys of each table, from the option definitions (config.py): key -> ExtractConfig or TrainConfig field
MODEL_KEYS = recipe_keys(ExtractConfig, "model")
VIEW_KEYS = recipe_keys(ExtractConfig, "views")
EXTRACT_KEYS = recipe_keys(ExtractConfig, "extract")
DATASET_KEYS = {"role": "", **recipe_keys(ExtractConfig, "dataset"), **VIEW_KEYS, **EXTRACT_KEYS}
TRAIN_KEYS = recipe_keys(TrainConfig, "train")
EVALUATE_KEYS = {"report", "transclip"}
ANALYZE_KEYS = {"clusters", "neighbors", "projection", "views", "k", "sweep", "neighbors_k", "seed"}
NOT_OPTIONS = {"out", "overwrite", "progress", "extra_manifest", "memory_budget"}  # not the stage's configuration
SHAPES_TEACHER = "shapes-teacher"  # the project's offline teacher, trained once and cached
NAMED_TABLES = {"datasets": "dataset", "train": "probe"}  # tables whose keys the recipe names itself
NAMED_EXAMPLES = {"datasets": '{role = "test", data = "cifar10:~/data"}', "train": '{method = "lpclip"}'}
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class Stage:
    """One step of a recipe: what runs, with which options, writing where."""

    kind: str  # extract | train | evaluate | analyze
    name: str
    out: str
    options: dict[str, Any]
    needs: list[str] = field(default_factory=list)
    key: str = ""
    origin: str = ""  # the recipe table that makes it, for refusals


    @property
    def id(self) -> str:
        return f"{self.kind}-{self.name}"


@dataclass
class Recipe:
    """A parsed recipe and where it came from."""

    path: Path
    name: str
    description: str
    out: str
    gpu_wall_time: str
    model: dict[str, Any]
    datasets: dict[str, dict[str, Any]]
    train: dict[str, dict[str, Any]]
    evaluate: dict[str, Any]
    analyze: dict[str, Any]
    unresolved: list[str] = field(default_factory=list)


def _fail(path: Path, where: str, message: str) -> InputError:
    return InputError(f"recipe '{path}': {where}: {message}")


def _check_keys(path: Path, where: str, table: Any, allowed: Any) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise _fail(path, where, f"should be a table, got {type(table).__name__}")
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise _fail(path, where, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return table


def _recipe_type(annotation: Any) -> Any:
    """``int | None`` -> ``int``: the type a recipe value must have (TOML has no null)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kept = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return functools.reduce(operator.or_, kept)
    return annotation


def _key_types(keys: dict[str, str] | set[str], config: type | None) -> dict[str, Any]:
    """The type of each key of a recipe table: its Config field's (``typing.get_type_hints``), or
    for a key that is no field (``role``, ``[evaluate]``, ``[analyze]``) its ``OTHER_TYPES`` entry."""
    hints = typing.get_type_hints(config) if config else {}
    fields_of = keys if isinstance(keys, dict) else {}
    return {key: _recipe_type(hints[fields_of[key]]) if fields_of.get(key) else OTHER_TYPES[key] for key in keys}


OTHER_TYPES = {"report": bool, "transclip": bool | list[str], "clusters": bool, "neighbors": bool,
               "projection": bool, "views": bool, "k": int, "neighbors_k": int, "seed": int,
               "sweep": list[int], "role": str}
# the type of every key of every table a recipe has
TABLE_TYPES = {"[model]": _key_types(MODEL_KEYS, ExtractConfig), "[views]": _key_types(VIEW_KEYS, ExtractConfig),
               "[extract]": _key_types(EXTRACT_KEYS, ExtractConfig),
               "[datasets.NAME]": _key_types(DATASET_KEYS, ExtractConfig),
               "[train.NAME]": _key_types(TRAIN_KEYS, TrainConfig), "[evaluate]": _key_types(EVALUATE_KEYS, None),
               "[analyze]": _key_types(ANALYZE_KEYS, None)}
# how a value of each type is recognised, and how a refusal names it; a type a recipe key has
# and this table lacks fails the test suite (tests/test_recipes.py), never passes unchecked
CHECKS: dict[Any, tuple[Callable[[Any], bool], str]] = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
    float: (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    str: (lambda v: isinstance(v, str), "a quoted string"),
    list[int]: (lambda v: isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v),
                "a list of whole numbers"),
    bool | list[str]: (lambda v: isinstance(v, bool) or (isinstance(v, list) and all(isinstance(x, str) for x in v)),
                       "true, false or a list of probe names"),
}


def check_of(expected: Any) -> tuple[Callable[[Any], bool], str]:
    """How a recipe value of type ``expected`` is checked; a TypeError for a type without a check."""
    if expected not in CHECKS:
        raise TypeError(f"recipe values of type {expected} have no check: add one to recipe.CHECKS")
    return CHECKS[expected]


def _check_types(path: Path, where: str, table: dict[str, Any], types: dict[str, Any]) -> None:
    """Every value of a table has its option's type (``types``: one of ``TABLE_TYPES``):
    ``report = "false"`` or ``epochs = 2.7`` is one line naming the key, before any stage runs
    (``--dry-run`` included)."""
    for key, value in table.items():
        accepts, wanted = check_of(types[key])
        if not accepts(value):
            shown = json.dumps(value) if not isinstance(value, str) else repr(value)
            raise _fail(path, where, f"{key} should be {wanted}, got {shown}")


def apply_overrides(doc: dict[str, Any], overrides: list[str], path: Path) -> None:
    """``--set a.b.c=value`` edits: the value is read as TOML (a number, true/false, a quoted
    string or a list), or taken as a plain string when it is not valid TOML."""
    import tomllib

    for item in overrides:
        dotted, eq, raw = item.partition("=")
        if not eq or not dotted.strip():
            raise InputError(f"--set '{item}' should read KEY=VALUE, e.g. model.pretrained=laion2b_s34b_b79k")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = doc
        parts = dotted.strip().split(".")
        named = doc.get(parts[0]) if parts[0] in NAMED_TABLES else None
        if isinstance(named, dict) and len(parts) >= 3 and parts[1] not in named:
            raise InputError(f"--set '{item}': recipe '{path}' has no [{parts[0]}.{parts[1]}] (it has "
                             f"{', '.join(named) or 'none'}): --set changes a {NAMED_TABLES[parts[0]]}, it does not "
                             f"create one; to add it, give its whole table, e.g. --set "
                             f"'{parts[0]}.{parts[1]}={NAMED_EXAMPLES[parts[0]]}'")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InputError(f"--set '{item}': '{part}' in recipe '{path}' is not a table")
            node = child
        node[parts[-1]] = value


def _expand(value: Any, unresolved: list[str], where: str) -> Any:
    """``${VAR}`` from the environment (``${VAR:-default}`` when it is unset) and a leading ``~``
    in strings; unset variables without a default are kept as written and listed, so a dry run
    can still show the plan."""
    if isinstance(value, str):
        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if os.environ.get(name):
                return os.environ[name]
            if name in os.environ and default is None:  # set, but to nothing: as unusable as unset
                unresolved.append(f"{where} uses ${{{name}}}, which is empty")
                return match.group(0)
            if default is not None:
                return default
            unresolved.append(f"{where} uses ${{{name}}}")
            return match.group(0)

        text = VARIABLE.sub(substitute, value)
        return os.path.expanduser(text) if text.startswith("~") else text
    if isinstance(value, list):
        return [_expand(v, unresolved, where) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, unresolved, f"{where}.{k}") for k, v in value.items()}
    return value


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read and check a recipe file; every problem is one InputError naming the file and key."""
    path = Path(path)
    doc, unresolved = _read(path, overrides or [])
    model = _checked(path, "[model]", doc["model"], TABLE_TYPES["[model]"])
    if "name" not in model:
        raise _fail(path, "[model]", "needs name (an open_clip model, e.g. ViT-B-32)")
    views = _checked(path, "[views]", doc.get("views", {}), TABLE_TYPES["[views]"])
    engine = _checked(path, "[extract]", doc.get("extract", {}), TABLE_TYPES["[extract]"])
    datasets = _datasets(path, doc["datasets"], views, engine)
    train = _probes(path, doc["train"])
    evaluate = _checked(path, "[evaluate]", doc.get("evaluate", {}), TABLE_TYPES["[evaluate]"])
    chosen = evaluate.get("transclip", False)
    unknown = [n for n in chosen if n not in train] if isinstance(chosen, list) else []
    if unknown:
        raise _fail(path, "[evaluate]", f"transclip names no probe '{unknown[0]}': name tables of [train] "
                    f"({', '.join(train)}), or write true for all")
    analyze = _checked(path, "[analyze]", doc.get("analyze", {}), TABLE_TYPES["[analyze]"])
    for name in list(datasets) + list(train):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise _fail(path, name, "names of datasets and probes become file names: use letters, digits, _ . -")
    return Recipe(path, str(doc["name"]), str(doc.get("description", "")), str(doc["out"]),
                  str(doc.get("gpu_wall_time", "")), model, datasets, train, evaluate, analyze, unresolved)


def _read(path: Path, overrides: list[str]) -> tuple[dict[str, Any], list[str]]:
    """A recipe file's TOML with the ``--set`` edits and the environment's variables applied, its
    top-level keys and ``out`` checked; and the variables it uses that are unset."""
    import tomllib

    if not path.is_file():
        raise InputError(f"recipe '{path}' not found: pass a .toml recipe file (examples in pipelines/)")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"recipe '{path}' is not valid TOML ({exc}): fix the file") from None
    apply_overrides(doc, overrides, path)
    _check_keys(path, "top level", doc, TOP_KEYS)
    unresolved: list[str] = []
    doc = _expand(doc, unresolved, "")
    for required in ("name", "out", "model", "datasets", "train"):
        if required not in doc:
            raise _fail(path, required, "missing; see docs/recipes.md for the form of a recipe")
    out = doc["out"]
    if not isinstance(out, str) or not out.strip() or Path(out).expanduser().resolve() == Path("/"):
        raise _fail(path, "out", f"is {out!r}: give the folder the recipe writes into (not empty, not the root)")
    if local_path(out) is None:
        raise _fail(path, "out", f"is {out!r}, on object storage: a recipe writes runs, reports and its stamps into "
                    "a local folder; give a local path")
    return doc, unresolved


def _checked(path: Path, where: str, table: Any, types: dict[str, Any]) -> dict[str, Any]:
    """A recipe table whose keys are those of ``types`` (one of ``TABLE_TYPES``), each value of its type."""
    table = _check_keys(path, where, table, types)
    _check_types(path, where, table, types)
    return table


def _datasets(path: Path, tables: Any, views: dict[str, Any], engine: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``[datasets]`` of a recipe, checked, each with the ``[views]`` and ``[extract]`` it
    inherits (a dataset that is evaluated caches no views unless it says so)."""
    datasets: dict[str, dict[str, Any]] = {}
    for name, table in _check_keys(path, "[datasets]", tables, set(tables)).items():
        where = f"[datasets.{name}]"
        table = _checked(path, where, table, TABLE_TYPES["[datasets.NAME]"])
        if table.get("role") not in ROLES:
            raise _fail(path, where, f"role should be one of {', '.join(ROLES)}, got {table.get('role')!r}")
        if not isinstance(table.get("data"), str):
            raise _fail(path, where, "needs data (a --data spec: a folder, cifar10:ROOT, imagenet:ROOT, ...)")
        evaluated = table["role"] != "adapt"
        defaults = {**views, **({"weak": 0, "strong": 0} if evaluated else {})}
        datasets[name] = {**engine, **defaults, **table}
    roles = [d["role"] for d in datasets.values()]
    if roles.count("adapt") != 1:
        raise _fail(path, "[datasets]", f"needs exactly one dataset with role 'adapt', found {roles.count('adapt')}")
    if "test" not in roles:
        raise _fail(path, "[datasets]", "needs at least one dataset with role 'test'")
    return datasets


def _probes(path: Path, tables: Any) -> dict[str, dict[str, Any]]:
    """The ``[train]`` tables of a recipe, checked: at least one probe."""
    train_doc = _check_keys(path, "[train]", tables, set(tables))
    if not train_doc:
        raise _fail(path, "[train]", "names no probe: add e.g. [train.lpclip] method = \"lpclip\"")
    train = {name: _check_keys(path, f"[train.{name}]", table, TRAIN_KEYS) for name, table in train_doc.items()}
    for name, table in train.items():
        _check_types(path, f"[train.{name}]", table, TABLE_TYPES["[train.NAME]"])
    return train


def transclip_for(recipe: Recipe, probe: str) -> bool:
    """Whether the probe's evaluation adds TransCLIP's rows: ``[evaluate] transclip`` is true (every
    probe) or a list that names it (zero-shot TransCLIP is the same in every report of a store, so
    one probe's report may be enough)."""
    return transclip_chosen(recipe.evaluate.get("transclip", False), probe, f"recipe '{recipe.path}': [evaluate]")


def transclip_chosen(value: Any, probe: str, where: str) -> bool:
    """Whether a ``transclip`` value (a recipe's, or the Python API's) asks for TransCLIP on
    ``probe``: true, false, or a list of probe names; anything else is one InputError."""
    accepts, wanted = check_of(OTHER_TYPES["transclip"])
    if not accepts(value):
        shown = repr(value) if isinstance(value, str) else json.dumps(value, default=repr)
        raise InputError(f"{where}: transclip should be {wanted}, got {shown}")
    return probe in value if isinstance(value, list) else value


def _key(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan(recipe: Recipe) -> list[Stage]:
    """The stages of a recipe in execution order, each with its configuration key."""
    out = recipe.out.rstrip("/")
    stages: list[Stage] = []
    stores: dict[str, Stage] = {}
    for name, table in recipe.datasets.items():
        given = {field: table[key] for key, field in DATASET_KEYS.items() if key in table and field}
        given.update({field: recipe.model[key] for key, field in MODEL_KEYS.items() if key in recipe.model})
        options = {k: v for k, v in asdict(ExtractConfig(out="", **given)).items() if k not in NOT_OPTIONS}
        stage = Stage("extract", name, f"{out}/stores/{name}" + ("" if _many(options["corrupt"]) else ".zarr"),
                      options, origin=f"[datasets.{name}]")
        stage.key = _key(options)
        stages.append(stage)
        stores[name] = stage
    adapt = next(s for s in stores.values() if recipe.datasets[s.name]["role"] == "adapt")
    by_role = {role: [s for s in stores.values() if recipe.datasets[s.name]["role"] == role] for role in ROLES}
    runs: dict[str, Stage] = {}
    for name, table in recipe.train.items():
        options = {TRAIN_KEYS[key]: value for key, value in table.items()}
        stage = Stage("train", name, f"{out}/runs/{name}", {"store": adapt.out, **options}, [adapt.id],
                      origin=f"[train.{name}]")
        resolved = asdict(TrainConfig(out="", **stage.options))
        stage.key = _key([{k: v for k, v in resolved.items() if k not in NOT_OPTIONS}, adapt.key])
        stages.append(stage)
        runs[name] = stage
    evaluated = by_role["test"] + by_role["shift"]
    for name, run in runs.items():
        report = bool(recipe.evaluate.get("report", True))
        options = {"run": run.out, "stores": [s.out for s in evaluated], "ood": [s.out for s in by_role["ood"]],
                   "report": report, **({"transclip": True} if transclip_for(recipe, name) else {})}
        # the path the stage writes, which its completion check reads: a report folder, or one JSON file
        stage = Stage("evaluate", name, f"{out}/reports/{name}" + ("" if report else ".json"), options,
                      [run.id, *(s.id for s in evaluated + by_role["ood"])], origin=f"[train.{name}] (its report)")
        stage.key = _key([options, run.key, *(s.key for s in evaluated + by_role["ood"])])
        stages.append(stage)
    analyses = [kind for kind in ("clusters", "neighbors", "projection") if recipe.analyze.get(kind, False)]
    for store in by_role["test"]:
        for run_name, run in runs.items():
            for kind in analyses:
                options = {"kind": kind, "store": store.out, "run": run.out,
                           "k": recipe.analyze.get("neighbors_k" if kind == "neighbors" else "k"),
                           "sweep": recipe.analyze.get("sweep", []), "seed": recipe.analyze.get("seed", 0)}
                suffix = "png" if kind == "projection" else "json"
                stage = Stage("analyze", f"{kind}-{store.name}-{run_name}",
                              f"{out}/analysis/{kind}-{store.name}-{run_name}.{suffix}", options, [store.id, run.id],
                              origin=f"[analyze] {kind} of [datasets.{store.name}] with [train.{run_name}]")
                stage.key = _key([options, store.key, run.key])
                stages.append(stage)
    if recipe.analyze.get("views", False):  # do the adaptation store's views keep the class
        options = {"kind": "views", "store": adapt.out, "seed": recipe.analyze.get("seed", 0)}
        stage = Stage("analyze", f"views-{adapt.name}", f"{out}/analysis/views-{adapt.name}.json", options, [adapt.id],
                      origin=f"[analyze] views of [datasets.{adapt.name}]")
        stage.key = _key([options, adapt.key])
        stages.append(stage)
    return stages


def check_plan(recipe: Recipe, stages: list[Stage]) -> None:
    """What the plan shows before any stage runs (``--dry-run`` included), each one InputError
    naming the recipe keys: two stages writing one place (``[datasets.a.zarr]`` with a corrupt
    folder and ``[datasets.a]``), ``[analyze] views`` on an adaptation store without views, and
    TransCLIP on a dataset whose spec says it is too small for its neighbour graph."""
    from .data import known_size
    from .storage import place
    from .transclip import check_size

    where = [(stage, place(stage.out)) for stage in stages]
    for index, (first, at) in enumerate(where):
        for second, other in where[index + 1 :]:
            if at == other or other.startswith(at + "/") or at.startswith(other + "/"):
                raise _fail(recipe.path, first.origin, f"writes '{first.out}', and {second.origin} writes "
                            f"'{second.out}': one would overwrite the other; rename one")
    views = next((s for s in stages if s.kind == "analyze" and s.options["kind"] == "views"), None)
    if views is not None:
        adapt = next(s for s in stages if s.kind == "extract" and s.out == views.options["store"])
        if adapt.options["weak_views"] == 0 and adapt.options["strong_views"] == 0:
            raise _fail(recipe.path, "[analyze]", f"views = true analyses the views of the adaptation dataset "
                        f"'{adapt.name}', which caches none (weak = 0, strong = 0): give it views ([views] weak, "
                        "strong), or set views = false")
    transduced = {store for stage in stages if stage.kind == "evaluate" and stage.options.get("transclip")
                  for store in stage.options["stores"] + stage.options["ood"]}
    for stage in stages:
        if stage.kind == "extract" and stage.out in transduced:
            size = known_size(stage.options["data"], stage.options["split"])
            try:
                if size is not None:
                    check_size(size, f"the images of '{stage.options['data']}' (which [evaluate] transclip transduces)")
            except InputError as exc:
                raise _fail(recipe.path, f"{stage.origin} data", f"{exc.message}; give it more images (n=), or leave "
                            "its probes out of transclip") from None


def _many(corrupt: str | None) -> bool:
    from .corruptions import expand

    try:
        return bool(corrupt) and len(expand(corrupt)) > 1
    except ValueError:
        return False


def _stamp_path(recipe: Recipe, stage: Stage) -> Path:
    return Path(recipe.out) / ".recipe" / f"{stage.id}.json"


def stage_state(recipe: Recipe, stage: Stage) -> str:
    """What running the stage would do: skip (complete), resume, or run."""
    from .store import state

    stamp = _stamp_path(recipe, stage)
    stamped = stamp.is_file() and json.loads(stamp.read_text()).get("key") == stage.key
    if stage.kind == "extract":
        if _many(stage.options["corrupt"]):
            from .corruptions import expand

            states = [state(f"{stage.out}/{n}-{s}.zarr").kind for n, s in expand(stage.options["corrupt"])]
            done = states.count("complete")
            if done == len(states):
                return "skip (complete)" if stamped else "check (complete; configuration not yet compared)"
            return f"resume ({done}/{len(states)} stores complete)" if done or "partial" in states else "run"
        now = state(stage.out)
        if now.kind == "complete":
            return "skip (complete)" if stamped else "check (complete; configuration not yet compared)"
        return f"resume {now}" if now.kind == "partial" else "run"
    output = Path(stage.out)
    if stamped and output.exists():
        damage = output_damage(stage)
        return f"{DAMAGED} ({damage})" if damage else "skip (complete)"
    return "run (replacing an older output)" if output.exists() else "run"


DAMAGED = "redo (its output is damaged)"


def output_damage(stage: Stage) -> str | None:
    """Why a finished stage's output is not whole (a run that does not load, a report or analysis
    that does not parse, a plot that is not a PNG), or None when it is."""
    from .errors import LpclipError

    out = Path(stage.out)
    try:
        if stage.kind == "train":
            from .runs import load_run

            load_run(out)
        elif out.suffix == ".png":
            from PIL import Image

            with Image.open(out) as image:
                image.verify()
        else:
            json.loads((out / "report.json" if out.is_dir() else out).read_text())
    except (LpclipError, OSError, ValueError, SyntaxError) as exc:
        return str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
    return None


def remove_own_output(recipe: Recipe, stage: Stage) -> None:
    """Delete a damaged output that this recipe's stamp shows it wrote, and the stamp, so the stage
    runs again into a clean place (nothing else is ever deleted)."""
    import shutil

    out = Path(stage.out)
    if out.is_dir():
        shutil.rmtree(out)
    else:
        out.unlink(missing_ok=True)
    _stamp_path(recipe, stage).unlink(missing_ok=True)


def format_plan(recipe: Recipe, stages: list[Stage]) -> str:
    """The plan as text: one line per stage with what would happen."""
    lines = [f"recipe {recipe.name}: {recipe.description}".rstrip(": ")]
    if recipe.gpu_wall_time:
        lines.append(f"expected wall time: {recipe.gpu_wall_time}")
    pretrained = stages[0].options["pretrained"]  # every store is extracted with the one model
    lines.append(f"model: {recipe.model['name']} ({pretrained}); outputs under {recipe.out}")
    for stage in stages:
        detail = ""
        if stage.kind == "extract":
            o = stage.options
            role = recipe.datasets[stage.name]["role"]
            detail = f"{role}: {o['data']}" + (f" --split {o['split']}" if o["split"] else "")
            detail += f", {o['weak_views']} weak + {o['strong_views']} strong views"
            detail += f", --corrupt {o['corrupt']}" if o["corrupt"] else ""
        elif stage.kind == "train":
            detail = ", ".join(f"{k}={v}" for k, v in stage.options.items() if k != "store")
        elif stage.kind == "evaluate":
            detail = f"{len(stage.options['stores'])} store(s), {len(stage.options['ood'])} OOD"
        lines.append(f"  {stage.id:<34} {stage_state(recipe, stage):<32} -> {stage.out}" + (f"  [{detail}]"
                                                                                          if detail else ""))
    for item in recipe.unresolved:
        lines.append(f"  needs an environment variable: {item.lstrip('.')}")
    return "\n".join(lines)


def _write_stamp(recipe: Recipe, stage: Stage, seconds: float) -> None:
    from .outputs import write_json_atomic

    write_json_atomic(_stamp_path(recipe, stage), {"key": stage.key, "stage": stage.id, "seconds": round(seconds, 2),
                                                   "options": stage.options})


def _resolve_pretrained(value: Any, progress: bool) -> Any:
    if value == SHAPES_TEACHER:
        from .world.teacher import ensure_teacher

        return str(ensure_teacher(progress=progress))
    return value


def execute_stage(recipe: Recipe, stage: Stage, progress: bool) -> dict[str, Any]:
    """Run one stage by calling its command's function; return its summary."""
    o = dict(stage.options)
    if stage.kind == "extract":
        from .extraction import extract_stores

        o["pretrained"] = _resolve_pretrained(o["pretrained"], progress)
        return extract_stores(ExtractConfig(out=stage.out, progress=progress, **o))
    if stage.kind == "train":
        from .training import train

        return train(TrainConfig(out=stage.out, overwrite=True, progress=progress, **o))
    Path(stage.out).parent.mkdir(parents=True, exist_ok=True)
    if stage.kind == "evaluate":  # stage.out is the report folder, or the JSON file without one
        from .report import evaluate_into

        named = f"out (recipe '{recipe.path}')"  # the stage writes under the recipe's out
        return evaluate_into(o["run"], o["stores"], o["ood"], out=None if o["report"] else stage.out,
                             report=stage.out if o["report"] else None, overwrite=True,
                             transclip=o.get("transclip", False), names={"out": named, "report": named})
    from .analysis import analyze

    if o["kind"] == "views":
        return analyze("views", store=o["store"], out=stage.out, seed=o["seed"], overwrite=True)
    return analyze(o["kind"], store=o["store"], run=o["run"], out=stage.out, k=o["k"], sweep=o["sweep"],
                   seed=o["seed"], overwrite=True)


def run_recipe(path: str | Path, dry_run: bool = False, overrides: list[str] | None = None,
               progress: bool = True) -> dict[str, Any]:
    """Plan a recipe and, unless ``dry_run``, run every stage that is not complete yet."""
    recipe = load_recipe(path, overrides)
    stages = plan(recipe)
    check_plan(recipe, stages)
    text = format_plan(recipe, stages)
    summary: dict[str, Any] = {"recipe": recipe.name, "out": recipe.out, "plan": text,
                               "stages": [{"id": s.id, "out": s.out, "state": stage_state(recipe, s)} for s in stages]}
    if dry_run:
        return summary
    if recipe.unresolved:
        first = recipe.unresolved[0].lstrip(".")
        why = "" if first.endswith("which is empty") else ", which is not set"
        raise InputError(f"recipe '{recipe.path}': {first}{why}: export it, or pass --set KEY=VALUE for that key")
    started = time.perf_counter()
    ran, skipped = [], []
    for index, stage in enumerate(stages, 1):
        state = stage_state(recipe, stage)
        if state.startswith("skip"):
            skipped.append(stage.id)
            if progress:
                log.info(f"[{index}/{len(stages)}] {stage.id}: complete, skipped")
            continue
        if progress:
            log.info(f"[{index}/{len(stages)}] {stage.id}: {state} -> {stage.out}")
        if state.startswith(DAMAGED):
            remove_own_output(recipe, stage)
        began = time.perf_counter()
        execute_stage(recipe, stage, progress)
        _write_stamp(recipe, stage, time.perf_counter() - began)
        ran.append(stage.id)
    summary.update({"ran": ran, "skipped": skipped, "seconds": round(time.perf_counter() - started, 2)})
    return summary
