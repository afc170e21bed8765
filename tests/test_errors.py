"""Every error a user can meet is an OqronError: the exported ones, the whole errors module, and
every exception class of the package but the few internal ones that never leave it."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import oqron_nats
from oqron_nats.core import errors
from oqron_nats.core.errors import OqronError

INTERNAL = {
    "oqron_nats._nats.conn._Failed": "turned into ConnectionFailed by Connection.connect",
    "oqron_nats.loop_thread.CallTimeout": "each oqron_nats.sync call turns it into a typed error",
    "oqron_nats.runtime.execution.Discarded": "ctx.discard(): the worker fails the job with it",
    "oqron_nats.storage.lease.LeaseLost": "caught by the heartbeat and the maintenance leader",
}
"""Exception classes that are not OqronErrors, and what keeps each from reaching a user."""


def exception_classes(module: object) -> dict[str, type[BaseException]]:
    """The exception classes defined in ``module``, by name."""
    return {
        name: value
        for name, value in vars(module).items()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == getattr(module, "__name__", None)
    }


def test_every_exported_exception_is_an_oqron_error() -> None:
    exported = {name: getattr(oqron_nats, name) for name in oqron_nats.__all__}
    exceptions = {
        name: value
        for name, value in exported.items()
        if inspect.isclass(value) and issubclass(value, BaseException)
    }
    assert len(exceptions) >= 20  # the tree of oqron_nats.core.errors, not a listing gone empty
    assert [name for name, cls in exceptions.items() if not issubclass(cls, OqronError)] == []


def test_the_errors_module_holds_only_the_tree_and_exports_it_whole() -> None:
    defined = exception_classes(errors)
    public = {name: cls for name, cls in defined.items() if not name.startswith("_")}
    assert public == defined  # no private error class hides in the public module
    assert [name for name, cls in public.items() if not issubclass(cls, OqronError)] == []
    assert sorted(set(public) - set(oqron_nats.__all__)) == []  # importable from oqron_nats
    assert errors.__doc__ is not None
    assert [name for name in public if name not in errors.__doc__] == []  # drawn in the tree


def test_no_other_exception_class_of_the_package_is_outside_the_tree() -> None:
    """A new exception class is an OqronError, or listed in INTERNAL with what keeps it in."""
    outside: set[str] = set()
    for info in pkgutil.walk_packages(oqron_nats.__path__, "oqron_nats."):
        if info.name.endswith("__main__"):  # runs the CLI when imported
            continue
        module = importlib.import_module(info.name)
        for name, cls in exception_classes(module).items():
            if not issubclass(cls, OqronError):
                outside.add(f"{info.name}.{name}")
    assert outside == set(INTERNAL)
    names = {path.rpartition(".")[2] for path in INTERNAL}
    assert [name for name in names if hasattr(oqron_nats, name)] == []  # none is exported


def test_cas_conflict_is_a_jetstream_error() -> None:
    """A compare-and-set that lost, should one reach a user, is still an OqronError."""
    from oqron_nats._nats import CasConflict

    assert issubclass(CasConflict, oqron_nats.JetStreamError)
    assert issubclass(CasConflict, OqronError)
