"""The house plan, checked: what may touch NATS, and where the storage layout is spelled.

See ARCHITECTURE.md. nats-py is imported only by the seam, ``oqron_nats/_nats/``, and subjects of
KV keys and the streams behind buckets are built only there (``names.py``, with
``permissions.py``, which lists them for nats-server). Each part imports only the parts below
it. Comments cite the README or module docstrings, never notes kept outside the repository.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "oqron_nats"
SEAM = PACKAGE / "_nats"
LAYOUT_OWNERS = {SEAM}
KV_LAYOUT = re.compile(r"""["'](?:KV_|\$KV\.)""")
"""A string literal that starts spelling a bucket's stream (``KV_x``) or a key's subject."""


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def owned_by_layout(path: Path) -> bool:
    return any(path == owner or owner in path.parents for owner in LAYOUT_OWNERS)


def imports_nats(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            continue
        if any(name.split(".")[0] == "nats" for name in names):
            return True
    return False


def test_only_the_seam_imports_nats_py() -> None:
    outside = [p.relative_to(PACKAGE) for p in modules() if SEAM not in p.parents]
    assert outside, "the package has modules"
    importing = [str(p) for p in outside if imports_nats(PACKAGE / p)]
    assert importing == [], f"nats-py imported outside oqron_nats/_nats: {importing}"
    assert any(imports_nats(p) for p in SEAM.glob("*.py")), "the seam imports nats-py"


def test_the_kv_layout_is_spelled_only_by_the_seam_and_the_names() -> None:
    spelled = [
        f"{p.relative_to(PACKAGE)}:{n}: {line.strip()}"
        for p in modules()
        if not owned_by_layout(p)
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if KV_LAYOUT.search(line)
    ]
    assert spelled == [], "\n".join(spelled)
    assert KV_LAYOUT.search((SEAM / "kv.py").read_text()), "the check still finds the layout"


def test_comments_cite_nothing_outside_the_repository() -> None:
    outside = re.compile(r"\bnotes [A-Z]\d+|\bnotes/|DESIGN\.md|\.\./shared")
    cited = [
        f"{p.relative_to(PACKAGE)}:{n}"
        for p in modules()
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if outside.search(line)
    ]
    assert cited == [], cited


LAYERS = ("core", "_nats", "observe", "storage", "runtime", "face", "ops")
"""The parts from the bottom up: a part imports only parts at or below its own (ARCHITECTURE.md).
``face`` is the package's top-level modules (``queue.py``, ``client.py``, ...)."""
SHARED = {"observe.log", "_version"}
"""Leaves every part may import: logging and the version."""
FACADES = {"__init__.py", "__main__.py"}
"""The package's entry points, which re-export every part."""


ALIASES = {"dashboard": "ops"}
"""Parts that sit at the level of another: the web dashboard is an entry point, like ``ops``."""


def part_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    part = parts[0] if len(parts) > 1 else "face"
    return ALIASES.get(part, part)


def imported_modules(path: Path) -> set[str]:
    """The package's modules ``path`` imports, dotted from the package (``storage.store``)."""
    here = path.relative_to(PACKAGE).parent.parts
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or not node.level:
            continue
        base = list(here[: len(here) - (node.level - 1)])
        if node.module:
            found.add(".".join([*base, node.module]))
        else:
            found.update(".".join([*base, alias.name]) for alias in node.names)
    return found


def part_of_module(dotted: str) -> str:
    first = ALIASES.get(dotted.split(".", maxsplit=1)[0], dotted.split(".", maxsplit=1)[0])
    return first if first in {*LAYERS, "testing"} else "face"


def test_each_part_imports_only_the_parts_below_it() -> None:
    reaching = []
    for path in modules():
        part = part_of(path)
        if (path.name in FACADES and part == "face") or part == "testing":
            continue
        for dotted in imported_modules(path):
            target = part_of_module(dotted)
            if dotted in SHARED or target == "testing":
                continue
            if LAYERS.index(target) > LAYERS.index(part):
                reaching.append(f"{path.relative_to(PACKAGE)} ({part}) imports {dotted} ({target})")
    assert reaching == [], "\n".join(reaching)


def test_the_layers_check_sees_the_imports() -> None:
    imported = imported_modules(PACKAGE / "runtime" / "execution.py")
    assert {"storage.store", "core.job", "runtime.middlewares"} <= imported


def test_the_local_server_and_cluster_stay_off_the_job_path() -> None:
    importing = sorted(
        str(p.relative_to(PACKAGE))
        for p in modules()
        if part_of(p) != "testing"
        and any(part_of_module(m) == "testing" for m in imported_modules(p))
    )
    assert importing == ["ops/cli.py", "ops/demo.py"]
    testing = {
        part_of_module(m) for p in (PACKAGE / "testing").glob("*.py") for m in imported_modules(p)
    }
    assert testing <= {"core", "testing"}, "the testing helpers need nothing but the core"


CONNECTION = {"conn", "_conn"}
"""The attribute names under which the seam's ``Nats`` connection is kept."""


def backend_connection_reads(source: str) -> list[str]:
    """Where ``source`` reads the connection of a backend (``backend.conn``,
    ``self.rt.backend.store.events.conn``, ...)."""
    return [
        ast.unparse(node)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute)
        and node.attr in CONNECTION
        and "backend" in ast.unparse(node.value).lower()
    ]


def test_only_storage_and_the_seam_reach_a_backends_connection() -> None:
    owners = {PACKAGE / "storage", SEAM}
    reading = [
        f"{p.relative_to(PACKAGE)}: {read}"
        for p in modules()
        if not any(owner in p.parents for owner in owners)
        for read in backend_connection_reads(p.read_text())
    ]
    assert reading == [], "\n".join(reading)
    assert backend_connection_reads("self.rt.backend.conn.publish(x)") == ["self.rt.backend.conn"]


def test_the_runtime_reads_no_connection_at_all() -> None:
    reading = [
        f"{p.relative_to(PACKAGE)}:{node.lineno}"
        for p in sorted((PACKAGE / "runtime").glob("*.py"))
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Attribute) and node.attr in CONNECTION
    ]
    assert reading == [], "runtime modules go through the storage objects: " + ", ".join(reading)


def test_the_backend_hands_out_no_connection() -> None:
    from dataclasses import fields

    from oqron_nats.storage.backend import Backend

    public = {f.name: str(f.type) for f in fields(Backend) if not f.name.startswith("_")}
    assert "conn" not in public
    assert [name for name, kind in public.items() if "Nats" in kind] == []
    assert {"store", "broker", "control", "leases", "edges", "rates"} <= public.keys()


TESTS = Path(__file__).resolve().parent
REACHING_THE_CONNECTION = {
    "support.py": "the test-support module: what tests do behind the library's back",
    "test_nats_contract.py": "the seam's contract with nats-server",
    "test_requests.py": "requests over one inbox, a part of the seam",
    "test_roles.py": "the raw permissions of each role",
    "test_secure_connect.py": "what nats-py is handed, and the stored bytes that must hide secrets",
    "test_cluster.py": "a bucket's stream leader stepped down and its node hung, by hand",
    "chaos/cluster.py": "faults aimed at the leaders of raw streams",
}
"""The test files that may call ``client._connection()`` or spell the KV layout, and why; every
other test reaches NATS through ``tests/support.py`` and the domain objects, not raw subjects."""


def test_tests_reach_the_connection_only_through_the_support_module() -> None:
    files = {
        str(p.relative_to(TESTS)): p.read_text()
        for p in sorted(TESTS.rglob("*.py"))
        if p.name != "test_layout.py"
    }
    calling = {name for name, text in files.items() if "._connection()" in text}
    spelling = {name for name, text in files.items() if KV_LAYOUT.search(text)}
    allowed = REACHING_THE_CONNECTION.keys()
    assert calling - allowed == set(), "reach NATS through tests/support.py"
    assert spelling - allowed == set(), "build names with client.names(queue) in tests/support.py"
    assert allowed <= files.keys(), "the list names files that exist"
    assert "support.py" in calling, "the check still finds the calls"
