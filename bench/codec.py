"""What payload encryption adds to a job, in CPU: ``python -m bench.codec``.

Times, per job and in this process, the sealing calls a job makes on its path: ``add()`` seals
the payload, the worker opens it and seals the result, and a reader opens both. Without a codec
those calls are the checks that no value is an envelope; with AesGcmCodec they are the AES-GCM
work, the base64 and the envelope. The JSON encode and decode a job costs anyway is timed next
to them for scale. For the whole worker, run ``bench.profile --instructions`` with and without
``OQRON_PAYLOAD_KEYS`` set (every Client of the run then encrypts).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import msgspec

from oqron_nats.core.aesgcm import AesGcmCodec
from oqron_nats.core.encryption import Sealer

SIZES = (64, 1024, 10 * 1024, 100 * 1024)


def per_call(fn: Callable[[], object], seconds: float) -> float:
    """Microseconds per call of ``fn``, the best of five runs of about ``seconds`` / 5."""
    rounds, best = 1, float("inf")
    while True:  # calibrate the number of calls per run
        started = time.perf_counter()
        for _ in range(rounds):
            fn()
        took = time.perf_counter() - started
        if took > seconds / 25:
            break
        rounds *= 2
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(rounds):
            fn()
        best = min(best, (time.perf_counter() - started) / rounds)
    return best * 1e6


def json_round_trip(value: Any) -> object:
    """Encode and decode ``value`` as JSON, as a job's data goes through anyway."""
    return msgspec.json.decode(msgspec.json.encode(value))


def job_path(sealer: Sealer, payload: bytes, result: bytes) -> Callable[[], object]:
    """The sealing calls of one job: add, the worker's open and seal, a reader's opens."""
    decoded_result = msgspec.json.decode(sealer.seal("job", "result", result))

    def one_job() -> object:
        stored = sealer.seal("job", "data", payload)  # add()
        sealer.open("job", "data", stored)  # the worker
        sealer.seal("job", "result", result)  # the worker
        return sealer.open_value("job", "result", decoded_result)  # get_job()

    return one_job


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.codec")
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    args = parser.parse_args()
    plain = Sealer(None, "bench", "q")
    sealed = Sealer(AesGcmCodec({"k1": AesGcmCodec.generate_key()}), "bench", "q")
    print("payload | JSON encode+decode | no codec: sealing calls | aes-gcm: sealing calls")
    print("--- | --- | --- | ---")
    for size in SIZES:
        value = {"blob": "x" * (size - 11)}
        payload = msgspec.json.encode(value)
        result = b'{"ok":true}'
        json_cost = per_call(partial(json_round_trip, value), args.seconds)
        none = per_call(job_path(plain, payload, result), args.seconds)
        aes = per_call(job_path(sealed, payload, result), args.seconds)
        print(f"{len(payload):,} B | {json_cost:.2f} µs | {none:.2f} µs | {aes:.2f} µs")


if __name__ == "__main__":
    main()
