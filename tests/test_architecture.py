"""One owner per concept: the store's state and writer, the option definitions, the import graph."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import MISSING, asdict, fields
from pathlib import Path

import numpy as np
import pytest

from lpclip_cache.errors import StoreError
from lpclip_cache.store import ATTR, FeatureStore, Layout, StoreWriter, state

ROOT = Path(__file__).resolve().parents[1]


def manifest(**extra):
    return {"model": {"name": "m"}, "classnames": ["a", "b"],
            "teacher": {"logit_scale": 100.0, "temperature": 1.0}, **extra}


def shard_arrays(layout: Layout, shard: int) -> dict[str, np.ndarray]:
    rows = min(layout.n, (shard + 1) * layout.shard_size) - shard * layout.shard_size
    emb = np.zeros((rows, layout.dim), np.float16)
    emb[:, 0] = 1
    return {"clean/emb": emb, "clean/label": np.zeros(rows, np.int16), "clean/conf": np.ones(rows, np.float32),
            "labels": np.zeros(rows, np.int32), "valid": np.array([True] * (rows - 1) + [False]),
            "keys": np.array([f"k{shard}-{i}" for i in range(rows)]),
            "reason": np.array([""] * (rows - 1) + ["broken"])}


def test_state_is_missing_partial_or_complete_and_the_writer_moves_it(tmp_path):
    path = tmp_path / "s.zarr"
    assert str(state(path)) == "missing"
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "zarr.json").write_text("{}")  # a Zarr file that is not ours
    assert state(tmp_path / "folder").kind == "missing"

    layout = Layout(n=10, dim=4, n_classes=2, weak_views=0, strong_views=0, shard_size=4)
    head = np.eye(2, 4, dtype=np.float32)
    writer = StoreWriter(path, layout, manifest())
    try:
        assert writer.begin(head) == "new"
        assert Path(f"{path}.lock").exists()  # the lock is held while writing
        assert (state(path).kind, state(path).done, state(path).shards) == ("partial", 0, 3)
        writer.write_shard(2, shard_arrays(layout, 2))
        assert str(state(path)) == "partial (1 of 3 shards)" and writer.todo(lambda s: True) == [0, 1]
        assert writer.todo(lambda s: s % 2 == 0) == [0]  # only the shards this process owns
        with pytest.raises(StoreError, match="2 shard"):
            writer.finish()
        assert "1 of 3 shards" in writer.left()
        for shard in (0, 1):
            writer.write_shard(shard, shard_arrays(layout, shard))
        invalid = writer.finish()
    finally:
        writer.release()
    assert not Path(f"{path}.lock").exists()
    assert state(path).kind == "complete" and str(state(path)) == "complete"
    assert invalid == [("k0-3", "broken"), ("k1-3", "broken"), ("k2-1", "broken")]
    store = FeatureStore(path)
    assert store.state == state(path)
    np.testing.assert_array_equal(store.head(), head)
    assert store.spans() == [(0, 4), (4, 8), (8, 10)]
    assert store.read("keys")[9] == "k2-1" and not store.read("valid")[9]


def test_the_writer_resumes_the_same_configuration_and_refuses_another(tmp_path):
    path = tmp_path / "s.zarr"
    layout = Layout(n=6, dim=4, n_classes=2, weak_views=0, strong_views=0, shard_size=3)
    head = np.eye(2, 4, dtype=np.float32)
    first = StoreWriter(path, layout, manifest())
    assert first.begin(head) == "new"
    first.write_shard(0, shard_arrays(layout, 0))
    first.release()
    again = StoreWriter(path, layout, manifest())
    assert again.begin(head) == "resume" and again.todo(lambda s: True) == [1]
    again.write_shard(1, shard_arrays(layout, 1))
    again.finish()
    again.release()
    assert StoreWriter(path, layout, manifest()).begin(head) == "complete"
    before = (path / "zarr.json").read_bytes()
    other = StoreWriter(path, layout, manifest(extra=1))
    with pytest.raises(StoreError, match="differs in: extra"):
        other.begin(head)
    other.release()
    assert (path / "zarr.json").read_bytes() == before


def test_a_store_whose_metadata_cannot_be_read_is_one_error(tmp_path):
    path = tmp_path / "s.zarr"
    writer = StoreWriter(path, Layout(4, 4, 2, 0, 0, 4), manifest())
    writer.begin(np.eye(2, 4, dtype=np.float32))
    writer.release()
    meta = json.loads((path / "zarr.json").read_text())
    assert ATTR in meta["attributes"]
    (path / "done" / "zarr.json").write_text("not json")
    with pytest.raises(StoreError, match="damaged"):
        state(path)


def test_evaluate_expands_a_folder_of_stores_by_asking_the_store(tmp_path):
    from lpclip_cache.store import expand_stores

    for name in ("b.zarr", "a.zarr"):
        writer = StoreWriter(tmp_path / "folder" / name, Layout(4, 4, 2, 0, 0, 4), manifest())
        writer.begin(np.eye(2, 4, dtype=np.float32))
        writer.release()
    (tmp_path / "folder" / "notes").mkdir()
    folder = str(tmp_path / "folder")
    assert expand_stores([folder]) == [f"{folder}/a.zarr", f"{folder}/b.zarr"]
    assert expand_stores([f"{folder}/a.zarr"]) == [f"{folder}/a.zarr"]


def command_defaults():
    from lpclip_cache import cli
    from lpclip_cache.config import AblationConfig, DemoConfig, ExtractConfig, SelectConfig, TrainConfig

    return [(cli.main.commands[name], config) for name, config in (
        ("extract", ExtractConfig), ("train", TrainConfig), ("select", SelectConfig), ("ablate", AblationConfig),
        ("demo", DemoConfig))]


@pytest.mark.parametrize("index", range(5))
def test_command_line_options_are_the_config_fields(index):
    """Every option of the command is a Config field with the same default and help, and every
    Config field meant for the command line is an option."""
    from lpclip_cache.config import flag_of

    command, config = command_defaults()[index]
    params = {p.name: p for p in command.params if p.name not in ("as_json", "quiet")}
    shown = {spec.name: spec for spec in fields(config) if spec.metadata.get("cli")}
    assert set(params) == set(shown), (command.name, set(params) ^ set(shown))
    for name, spec in shown.items():
        param = params[name]
        assert param.opts == [flag_of(spec)]
        assert param.help == (spec.metadata["help"] or None)
        required = spec.default is MISSING and spec.default_factory is MISSING
        assert param.required == required
        if isinstance(spec.default, tuple):  # written comma-separated, parsed back to the default
            assert tuple(float(v) for v in param.default.split(",")) == spec.default
        elif not required and spec.default_factory is MISSING and not param.is_flag:
            assert param.default == spec.default, name
        if spec.metadata["choices"]:
            assert tuple(param.type.choices) == spec.metadata["choices"]


def test_recipe_keys_are_the_config_fields_and_a_recipe_adds_no_default(tmp_path):
    from lpclip_cache import recipe as R
    from lpclip_cache.config import ExtractConfig, TrainConfig

    in_recipes = {s.name for s in fields(ExtractConfig) if s.metadata.get("recipe")}
    covered = set(R.MODEL_KEYS.values()) | set(R.DATASET_KEYS.values()) - {""}
    assert covered == in_recipes
    assert set(R.TRAIN_KEYS.values()) == {s.name for s in fields(TrainConfig) if s.metadata.get("recipe")}
    assert R.DATASET_KEYS["workers"] == "num_workers" and R.VIEW_KEYS["weak"] == "weak_views"

    path = tmp_path / "r.toml"
    path.write_text('name = "t"\nout = "o"\n[model]\nname = "test-tiny"\n[datasets.a]\nrole = "adapt"\n'
                    'data = "shapes:train:n=8"\n[datasets.b]\nrole = "test"\ndata = "shapes:test:n=8"\n'
                    '[train.p]\nmethod = "lpclip"\n')
    stages = R.plan(R.load_recipe(path))
    adapt, test, train = stages[0], stages[1], stages[2]
    defaults = {k: v for k, v in asdict(ExtractConfig(data="", out="")).items() if k not in R.NOT_OPTIONS}
    assert adapt.options == {**defaults, "data": "shapes:train:n=8", "model": "test-tiny"}
    assert test.options == {**defaults, "data": "shapes:test:n=8", "model": "test-tiny", "weak_views": 0,
                            "strong_views": 0}  # evaluated sets need no views
    assert train.options == {"store": adapt.out, "method": "lpclip"}


def module_imports(package: Path) -> dict[str, set[str]]:
    """Every module of the package -> the package modules it imports (anywhere in its body)."""
    graph: dict[str, set[str]] = {}
    for file in package.rglob("*.py"):
        parts = file.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package_of = name if parts[-1] == "__init__" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package_of
                for _ in range(max(node.level - 1, 0)):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.level and node.module else (node.module or base)
                for alias in node.names:
                    candidate = f"{target}.{alias.name}"
                    found.add(candidate if (package.parent / (candidate.replace(".", "/") + ".py")).exists()
                              else target)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {m for m in found if m.startswith(package.name + ".") and m != name}
    return graph


def test_the_package_has_no_import_cycle():
    graph = module_imports(ROOT / "lpclip_cache")
    assert "lpclip_cache.data" in graph and "lpclip_cache.world.shapes" in graph["lpclip_cache.data"]
    cycles = []
    state_of: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state_of[node] = 1
        for child in sorted(graph.get(node, ())):
            if state_of.get(child) == 1:
                cycles.append(path[path.index(child):] + [child])
            elif child not in state_of:
                visit(child, [*path, child])
        state_of[node] = 2

    for module in sorted(graph):
        if module not in state_of:
            visit(module, [module])
    assert not cycles, cycles


def test_matplotlib_is_imported_only_by_the_figures_package_and_only_inside_functions():
    """Every figure has one home: ``lpclip_cache.figures``. Matplotlib is imported there alone, and
    lazily (inside a function), so importing the package never loads it."""
    package = ROOT / "lpclip_cache"
    home = package / "figures"
    found = []
    for file in sorted(package.rglob("*.py")):
        tree = ast.parse(file.read_text())
        in_functions = {id(node) for function in ast.walk(tree)
                        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
                        for node in ast.walk(function)}
        for node in ast.walk(tree):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(name == "matplotlib" or name.startswith("matplotlib.") for name in names):
                found.append((file.relative_to(package).as_posix(), node.lineno, id(node) in in_functions))
    assert found, "the figures package imports matplotlib somewhere"
    assert [(where, line) for where, line, _ in found if not (package / where).is_relative_to(home)] == []
    assert [(where, line) for where, line, lazy in found if not lazy] == []


def package_functions():
    """Every function and method of the package: (file, qualified name, lines, docstring)."""
    package = ROOT / "lpclip_cache"
    for file in sorted(package.rglob("*.py")):
        tree = ast.parse(file.read_text())
        stack: list[tuple[ast.AST, str]] = [(tree, "")]
        while stack:
            node, prefix = stack.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    name = f"{prefix}{child.name}"
                    if not isinstance(child, ast.ClassDef):
                        yield (file.relative_to(package).as_posix(), name, child.end_lineno - child.lineno + 1,
                               ast.get_docstring(child) or "")
                    stack.append((child, f"{name}."))


LONG_FUNCTION = 60  # lines; a longer function says why in its docstring ("long because ...")


def test_no_function_is_longer_than_a_screen_without_saying_why():
    long = [(file, name, lines) for file, name, lines, doc in package_functions()
            if lines > LONG_FUNCTION and "long because" not in " ".join(doc.split()).lower()]
    assert long == []


def test_only_the_command_line_writes_to_stderr():
    """The library reports through ``logging`` and ``warnings`` (and progress through tqdm), so a
    Python caller can silence or redirect it; the command line alone configures where it goes."""
    package = ROOT / "lpclip_cache"
    writes = []
    for file in sorted(package.rglob("*.py")):
        if file.name == "cli.py" or file.name == "progress.py":  # progress bars: tqdm on stderr, its own default
            continue
        for node in ast.walk(ast.parse(file.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr in {"stderr", "stdout"}
                    and isinstance(node.value, ast.Name) and node.value.id == "sys"):
                writes.append((file.relative_to(package).as_posix(), node.lineno))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                writes.append((file.relative_to(package).as_posix(), node.lineno))
    assert writes == []


def test_the_troubleshooting_page_lists_every_message_the_code_raises():
    """docs/troubleshooting.md is generated from the error classes' raise sites: its one owner is
    the code, and this checks the page was regenerated after a message moved or changed."""
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "build_troubleshooting.py"), "--check"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
