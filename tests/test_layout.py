"""The house plan, checked: what may touch NATS, and where the storage layout is spelled.

See ARCHITECTURE.md. nats-py is imported only by the seam, ``oqron_nats/_nats/``; subjects of KV
keys and the streams behind buckets are built there and in ``names.py`` (with
``permissions.py``, which lists them for nats-server). Comments cite the README or module
docstrings, never notes kept outside the repository.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "oqron_nats"
SEAM = PACKAGE / "_nats"
LAYOUT_OWNERS = {SEAM, PACKAGE / "names.py", PACKAGE / "permissions.py"}
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


STORAGE = ["store", "index", "broker", "control", "lease", "presence", "rejects", "admission"]
RUNTIME = {"consumer", "execution", "heartbeat", "progress", "lanes", "throttle", "ratelimit",
           "lag", "maintenance"}  # fmt: skip
RUNTIME_AND_FACE = RUNTIME | {"queue", "worker", "client", "context"}


def package_imports(path: Path) -> set[str]:
    """The package's modules (first level) that ``path`` imports."""
    found: set[str] = set()
    inside = SEAM in path.parents or path.parent.name == "testing"
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or not node.level:
            continue
        if inside and node.level == 1:
            continue  # a sibling in the same subpackage
        if node.module:
            found.add(node.module.split(".")[0])
        else:
            found.update(alias.name for alias in node.names)
    return found


def test_storage_never_reaches_up_into_the_runtime_or_the_public_face() -> None:
    reaching = {m: package_imports(PACKAGE / f"{m}.py") & RUNTIME_AND_FACE for m in STORAGE}
    assert {m: up for m, up in reaching.items() if up} == {}


def test_only_the_entry_points_import_the_local_server_and_cluster() -> None:
    importing = sorted(
        str(p.relative_to(PACKAGE))
        for p in modules()
        if p.parent.name != "testing" and "testing" in package_imports(p)
    )
    assert importing == ["cli.py", "demo.py"]
