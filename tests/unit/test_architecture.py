"""The layout holds: stage subpackages one level deep, no import cycles, domain code never
imports orchestration, jobs are thin and match the registry, tables only through the
catalogue and named by its handles, steps declare what they read and write and pipelines
follow the declarations, docs/tables.md's table reference is the catalogue's, conf files hold no
defaults."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from lookbook.config import Config, flat_config, load_config, valid_keys
from lookbook.io.catalog import TABLES, Table, reference_markdown
from lookbook.pipelines import PIPELINES, RETRAIN, STEPS, pipeline_steps
from lookbook.pipelines.base import check_order
from lookbook.pipelines.runner import job_names

from helpers import REPO

PACKAGE = REPO / "lib" / "lookbook"
DOMAIN = ("io", "augment", "features", "models", "similarity", "reports", "sql", "compare")
# What each domain package may import from lookbook, besides itself.
ALLOWED = {"io": set(), "augment": {"io", "models"}, "features": {"io"},
           "models": {"io", "features"},
           "similarity": {"io"}, "reports": {"io"}, "sql": {"io"},
           "compare": {"io", "augment", "features", "similarity", "reports"}}
# Top-level modules that import nothing of lookbook: any package may use them.
LEAVES = {"faults", "metric_names", "tasks"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every lookbook module `path` imports, at the top or inside functions."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lookbook")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.startswith("lookbook"):
                found.add(target)
                # `from .pkg import module` imports a module, not a name
                found |= {f"{target}.{a.name}" for a in node.names}
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {i for i in imports_of(path) if i in modules and i != name}
            for name, path in modules.items()}


def test_stage_subpackages_are_one_level_deep():
    packages = sorted(p.parent.relative_to(PACKAGE).as_posix()
                      for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE)
    assert packages == sorted([*DOMAIN, "pipelines"])


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph as a path (first node repeated at the end), or None."""
    state: dict[str, str] = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [node])):
            return found
    return None


def test_no_import_cycles(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_can_fail():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_domain_packages_import_only_what_lies_below_them(graph):
    for name, imported in graph.items():
        parts = name.split(".")
        if len(parts) < 2 or parts[1] not in DOMAIN:
            continue
        area = parts[1]
        for target in imported:
            other = target.split(".")[1] if target.count(".") else ""
            assert other in ALLOWED[area] | LEAVES | {area}, f"{name} imports {target}"


def test_leaf_modules_import_nothing_of_lookbook(graph):
    for leaf in LEAVES:
        assert graph[f"lookbook.{leaf}"] == set()


def test_jobs_are_thin_and_match_the_registry():
    files = {p.stem: p.read_text() for p in (REPO / "jobs").glob("*.py")}
    assert sorted(files) == job_names()
    for job, text in files.items():
        code = [line for line in text.splitlines() if line.strip() and not line.startswith(("#", '"', " "))]
        assert f'run_job("{job}", sys.argv[1:])' in text, job
        assert len(text.splitlines()) <= 12, f"jobs/{job}.py should only call run_job"
        assert code == ["import sys", "from lookbook.cli import run_job",
                        'if __name__ == "__main__":'], job


def test_pipelines_and_tables_name_registered_steps():
    for name, steps in PIPELINES.items():
        assert steps and set(steps) <= set(STEPS), name
    assert {t.written_by for t in TABLES.values()} <= set(STEPS)


def test_tables_are_written_and_read_only_through_the_catalogue():
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "io":
            continue
        text = path.read_text()
        for call in ("write_table(", "read_table(", "DeltaTable("):
            assert call not in text, f"{path.relative_to(REPO)} calls {call}"


def table_literals(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string constant in `source` that names a declared table: equal to
    a table's name, or key-like (no spaces) with a table's name as a part between dots or
    slashes ("lookbook.input.products", "augmented/"); f-strings' constant parts included.
    Prose (messages, docstrings) may name tables. The config keys a `@step(settings=...)`
    declares are left out: the `neighbours` section shares the table's name."""
    tree = ast.parse(source)
    config_keys = {id(node) for call in ast.walk(tree) if isinstance(call, ast.Call)
                   and isinstance(call.func, ast.Name) and call.func.id == "step"
                   for keyword in call.keywords if keyword.arg == "settings"
                   for node in ast.walk(keyword.value)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in config_keys:
            text = node.value
            parts = set() if any(c.isspace() for c in text) else set(re.split(r"[./]", text))
            if text in TABLES or parts & set(TABLES):
                found.append((node.lineno, text))
    return found


def test_steps_name_tables_only_by_their_handles():
    """A misspelt handle fails at import; a misspelt string would fail hours into a run."""
    for path in sorted((PACKAGE / "pipelines").glob("*.py")):
        found = table_literals(path.read_text())
        assert not found, (f"pipelines/{path.name} names tables as strings (use the handles "
                           f"of lookbook.io.catalog): {found}")


def test_the_table_name_check_can_fail():
    sample = """
tables.read("features")
meta = {"lookbook.input.products": "3", f"lookbook.input.{PRODUCTS}": "3"}
source = f"augmented/{key}"
counts = {f"products.{name}": 1, f"written.{table}.bytes": 2}
message = "run the neighbours job first"
@step(reads=(NEIGHBOURS,), writes=(), settings=("neighbours.k",))
def duplicates(spark, cfg):
    return "duplicates"
"""
    assert [text for _, text in sorted(table_literals(sample))] == [
        "features", "lookbook.input.products", "augmented/", "products.", "duplicates"]


def test_each_table_is_written_by_the_step_that_declares_it():
    for name, spec in TABLES.items():
        writers = [s.name for s in STEPS.values() if name in s.writes]
        assert writers == [spec.written_by], name
    for s in STEPS.values():
        assert all(isinstance(t, Table) for t in (*s.reads, *s.writes)), s.name
        assert not set(s.reads) & set(s.writes), s.name  # reads: besides what it writes


def test_steps_declare_config_keys_that_exist():
    keys = set(valid_keys())
    sections = {k.split(".")[0] for k in keys if "." in k}
    for s in STEPS.values():
        assert s.settings, s.name
        for entry in s.settings:
            assert entry in keys or entry in sections, f"{s.name}: {entry}"


def test_every_pipeline_is_in_an_order_its_declarations_allow():
    for name, steps in PIPELINES.items():
        check_order(name, [STEPS[s] for s in steps])  # its retrain steps included
        assert set(RETRAIN.get(name, [])) <= set(steps)
        assert pipeline_steps(name, retrain=True) == steps
        assert pipeline_steps(name) == [s for s in steps if s not in RETRAIN.get(name, [])]


def test_a_step_before_the_step_writing_what_it_reads_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="pipeline 'bad': step 'neighbours' reads features, "
                                         "which the later step 'featurize' writes"):
        check_order("bad", [STEPS["ingest"], STEPS["neighbours"], STEPS["featurize"]])
    monkeypatch.setitem(PIPELINES, "bad", ["ingest", "predict", "augment", "featurize"])
    with pytest.raises(ValueError, match="step 'predict' reads features, which the later "
                                         "step 'featurize' writes; run 'featurize' first"):
        pipeline_steps("bad")


def test_only_tracking_talks_to_mlflow():
    """Runs are opened, recorded and searched in one place (a store switch, one module)."""
    for path in PACKAGE.rglob("*.py"):
        modules = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                modules.add(node.module or "")
        if any(m == "mlflow" or m.startswith("mlflow.") for m in modules):
            assert path == PACKAGE / "tracking.py", f"{path.relative_to(REPO)} imports mlflow"


def test_library_code_logs_instead_of_printing():
    allowed = {PACKAGE / "cli.py", PACKAGE / "io" / "synthetic.py"}  # command-line entry points
    for path in PACKAGE.rglob("*.py"):
        if path in allowed:
            continue
        calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Name) and n.func.id == "print"]
        assert not calls, f"{path.relative_to(REPO)}:{calls[0].lineno} prints"


def test_the_table_reference_is_the_catalogue():
    doc = (REPO / "docs" / "tables.md").read_text()
    begin, end = "<!-- tables: begin -->\n", "<!-- tables: end -->"
    assert begin in doc and end in doc, "docs/tables.md lost its generated table reference"
    shown = doc.split(begin, 1)[1].split(end, 1)[0]
    assert shown == reference_markdown(), \
        "docs/tables.md's table reference is stale: python -m lookbook.cli tables-doc"


@pytest.mark.parametrize("name", ["local.yaml", "cluster.yaml"])
def test_conf_files_hold_only_what_differs_from_the_defaults(name):
    raw = yaml.safe_load((REPO / "conf" / name).read_text()) or {}
    defaults = flat_config(Config())
    loaded = flat_config(load_config(REPO / "conf" / name))

    def keys(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict) and key != "conf":
                yield from keys(value, f"{prefix}{key}.")
            else:
                yield prefix + key

    same = [k for k in keys(raw) if loaded[k] == defaults[k]]
    assert not same, f"conf/{name} restates defaults: {same}"


def test_step_params_never_reuse_a_config_key():
    """MLflow refuses a param logged twice with two values, and every run logs the config:
    a step param named like a config key fails the job as soon as the values differ."""
    config_keys = set(flat_config(Config()))
    for path in (PACKAGE / "pipelines").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "params" and \
                    isinstance(node.value, ast.Dict):
                keys = {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
                assert not keys & config_keys, f"{path.name}: {sorted(keys & config_keys)}"
