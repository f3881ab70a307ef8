"""The rules of docs/architecture.md that code can break without a test failing elsewhere: every module has
its row in the module table, every row names a module that exists, and imports run one way between the
layers (the data path never reaches up into the mount process or the command line; only the backends see
pyarrow.fs; nothing installed imports what is not installed). Read from the source, in process."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit  # in process, no kernel: `pytest -m unit`

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pfs", "csi", "testservers")

# What each layer of pfs may import from pfs (a module counts as any name under these prefixes).
MAY_IMPORT = {
    "pfs/backends": ("pfs.backends", "pfs.errors"),
    "pfs/cache": ("pfs.backends", "pfs.cache", "pfs.counters", "pfs.errors", "pfs.options"),
    "pfs/fs": (
        "pfs.backends", "pfs.cache", "pfs.counters", "pfs.errors", "pfs.options", "pfs.fs",
        "pfs.mount.control",  # the names of the control xattrs the filesystem serves
    ),
    "pfs/snapshots": (
        "pfs.backends", "pfs.cache", "pfs.counters", "pfs.errors", "pfs.options", "pfs.snapshots",
        "pfs.datasets.listing", "pfs.datasets.partition",
    ),
    "pfs/datasets": ("pfs.backends", "pfs.errors", "pfs.datasets", "pfs.mount.control", "pfs.mount.kernel"),
    "pfs/counters.py": (),
    "pfs/errors.py": (),
    "pfs/options.py": ("pfs.backends", "pfs.errors"),
    # the plugin stands beside pfs: the node uses the CLI, the mount table and the control xattrs
    "csi": (
        "pfs.__version__", "pfs.backends", "pfs.errors", "pfs.mount.kernel", "pfs.mount.control",
        "pfs.snapshots.store", "pfs.snapshots.backend",
    ),
}  # fmt: skip
NOT_INSTALLED = ("testservers", "tests", "benchmarks")


def modules(*tops: str) -> list[Path]:
    found = [path for top in tops for path in sorted((ROOT / top).rglob("*.py"))]
    return [path for path in found if "pb2" not in path.name]


def imported(path: Path) -> list[tuple[str, ...]]:
    """Every import of `path`, each as the names it may be judged by: `from a import b` by `a` or `a.b`
    (b may be a module or a name in a)."""
    found: list[tuple[str, ...]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name,) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.module, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def test_every_module_has_its_row_and_every_row_its_module():
    doc = (ROOT / "docs/architecture.md").read_text()
    named: set[str] = set()
    for row in doc.splitlines():
        if row.startswith("| `"):
            named.update(re.findall(r"`([\w./]+(?:\.py|/))`", row.split("|")[1]))
    assert [name for name in sorted(named) if not (ROOT / name).exists()] == []
    whole = tuple(name for name in named if name.endswith("/"))
    rel = [str(path.relative_to(ROOT)) for path in modules(*PACKAGES)]
    missing = [
        name
        for name in rel
        if name not in named
        and not name.endswith(("__init__.py", "__main__.py"))
        and not name.startswith(whole)
    ]
    assert missing == [], "modules without a row in docs/architecture.md"


def test_imports_run_one_way_between_the_layers():
    wrong = []
    for place, allowed in MAY_IMPORT.items():
        for path in modules(place) if not place.endswith(".py") else [ROOT / place]:
            for names in imported(path):
                ours = [name for name in names if name.split(".")[0] == "pfs"]
                if ours and not any(under(name, allowed) for name in ours if name != "pfs"):
                    wrong.append(f"{path.relative_to(ROOT)}: {names[-1]}")
    assert sorted(wrong) == []


def test_only_the_backends_see_pyarrow_fs_and_nothing_installed_imports_what_is_not():
    wrong = []
    for path in modules("pfs", "csi"):
        rel = str(path.relative_to(ROOT))
        for name in (names[0] for names in imported(path)):
            if under(name, ("pyarrow.fs",)) and not rel.startswith("pfs/backends/"):
                wrong.append(f"{rel}: {name}")
            if name.split(".")[0] in NOT_INSTALLED:
                wrong.append(f"{rel}: {name}")
            if name.split(".")[0] == "torch" and rel != "pfs/torch.py":
                wrong.append(f"{rel}: {name}")
    assert wrong == []
