"""The wire contract's version and the JSON Schema of a stored job record (see docs/protocol.md).

The schema is generated from the msgspec types of :mod:`.job`, and shipped with the package as
``oqron_nats/schema/job-record.json``; tests/test_protocol.py keeps the two in step. Regenerate
it with ``python -c 'from oqron_nats.core.wire import schema_text as s; print(s(), end="")' >
oqron_nats/schema/job-record.json``.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Final

import msgspec

from .job import Job, JobState, Transition

PROTOCOL_VERSION: Final = 1
"""The version of the wire contract; a change a foreign publisher must follow bumps it."""
RECORD_LAYOUT: Final = 1
"""The record's ``v`` field as this version writes it."""
NEVER_STORED: Final = ("data_error", "result_error")
"""Fields of Job that a reader fills in and no writer stores: not part of the record."""
FIRST_STATES: Final = (JobState.WAITING, JobState.DELAYED)
"""The states a foreign publisher may create a record in."""
SCHEMA_ID: Final = f"urn:oqron-nats:job-record:{PROTOCOL_VERSION}"


def record_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of a job record as stored in a queue's jobs bucket."""
    generated = msgspec.json.schema(Job[Any])
    defs: dict[str, Any] = generated["$defs"]
    top = defs.pop(generated["$ref"].rsplit("/", 1)[1])
    for name in NEVER_STORED:
        del top["properties"][name]
    _mark_times(top, Job[Any])
    _mark_times(defs["Transition"], Transition)
    top["title"] = "oqron_nats job record"
    top["description"] = (
        f"A job record as stored in KV (wire protocol {PROTOCOL_VERSION}, layout v="
        f"{RECORD_LAYOUT}): JSON, key <queue>.<job_id> of bucket oqron_<ns>_jobs_<queue>. "
        "Readers ignore fields they do not know; see docs/protocol.md."
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "x-oqron-protocol": PROTOCOL_VERSION,
        **top,
        "$defs": dict(sorted(defs.items())),
    }


def _mark_times(schema: dict[str, Any], struct: Any) -> None:
    """Give the datetime fields of ``struct`` the RFC 3339 ``date-time`` format."""
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    for field in info.fields:
        kinds = (
            field.type.types if isinstance(field.type, msgspec.inspect.UnionType) else (field.type,)
        )
        if any(isinstance(kind, msgspec.inspect.DateTimeType) for kind in kinds):
            prop = schema["properties"][field.encode_name]
            for option in prop.get("anyOf", [prop]):
                if option.get("type") == "string":
                    option["format"] = "date-time"


def schema_text() -> str:
    """The schema as the shipped file holds it (sorted, indented, one newline at the end)."""
    return json.dumps(record_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def shipped_schema() -> str:
    """The schema file shipped in the package."""
    return (resources.files("oqron_nats") / "schema" / "job-record.json").read_text("utf-8")
