"""What the Worker runtime makes of a failing handler and of a server that refuses it.

The handler runs in the runtime as it would for a leased job (`_Runner._call`: sync
handlers in the runtime's threads, async ones on the loop); no server runs here — the
server's side of a failure is in tests/contract and tests/e2e.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tidings.protocol.jobs import JobOutcome
from tidings.sdk.common import TidingsHTTPError
from tidings.sdk.worker import (
    JobContext,
    LeasedJob,
    Worker,
    WorkerRefused,
    _Outcome,
    _refusal,
    _Runner,
)

pytestmark = pytest.mark.timeout(10)


def nested_sync_helper(depth: int) -> None:
    if depth == 0:
        raise ValueError("bad frame")
    nested_sync_helper(depth - 1)


def resize_sync(job: JobContext) -> None:
    nested_sync_helper(2)


def ping(depth: int) -> None:
    if depth == 0:
        raise ValueError("bad frame")
    pong(depth - 1)


def pong(depth: int) -> None:
    ping(depth - 1)  # alternating frames: Python does not fold them as repeats


async def resize_async(job: JobContext) -> None:
    await asyncio.sleep(0)
    raise KeyError("missing")


def run_handler(handler: Any) -> tuple[str, Any]:
    async def main() -> tuple[str, Any]:
        runner = _Runner(Worker(), None, asyncio.Event(), asyncio.Event())  # type: ignore[arg-type]
        leased = LeasedJob(id="j1", type="resize", lease_token="t", max_attempts=3)  # noqa: S106
        try:
            return await runner._call(handler, JobContext(leased, asyncio.get_running_loop()))
        finally:
            runner.threads.shutdown()

    return asyncio.run(main())


@pytest.mark.parametrize(
    ("handler", "kind", "last_line"),
    [
        (resize_sync, "ValueError", "ValueError: bad frame"),
        (resize_async, "KeyError", "KeyError: 'missing'"),
    ],
)
def test_a_handler_exception_fails_the_attempt_with_the_handler_frames(
    handler: Any, kind: str, last_line: str
) -> None:
    """The error carries the formatted traceback from the handler's frame down (not the
    runtime's frames above it), retried while attempts remain."""
    verdict, error = run_handler(handler)
    assert verdict == "retry"
    assert error["type"] == kind
    tb = error["traceback"]
    assert tb.startswith("Traceback (most recent call last):\n")
    assert tb.rstrip().endswith(last_line)
    assert f"in {handler.__name__}\n" in tb
    assert "sdk/worker.py" not in tb and "asyncio" not in tb
    if handler is resize_sync:
        assert tb.count("in nested_sync_helper") == 3


def test_a_huge_traceback_is_cut_to_its_last_16_kib() -> None:
    def deep(job: JobContext) -> None:
        ping(400)

    _, error = run_handler(deep)
    tb = error["traceback"]
    assert len(tb.encode()) <= 16 * 1024
    assert tb.startswith("[traceback cut")
    assert tb.rstrip().endswith("ValueError: bad frame")
    assert "in deep\n" not in tb  # the outer frames went


def outcome(kind: str, last: bool) -> _Outcome:
    error = {"type": "ValueError", "message": "bad", "traceback": "Traceback ...\nValueError: bad"}
    word = JobOutcome("j1", "t", kind == "complete", error, kind == "retry")
    return _Outcome(word, "job resize j1 attempt 1", kind, 0.5, 1e18, False, last)


def test_a_failure_is_logged_with_its_traceback_warning_then_error_on_the_last_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tidings.worker")
    outcome("retry", last=False).log_reported()
    outcome("retry", last=True).log_reported()
    outcome("fail", last=True).log_reported()
    levels = [r.levelno for r in caplog.records]
    assert levels == [logging.WARNING, logging.ERROR, logging.ERROR]
    first, second, third = (r.getMessage() for r in caplog.records)
    assert "to be retried" in first and "not retried" in second and "not retried" in third
    # The traceback is the record's exception text (the JSON format's `exception`), not
    # part of its message.
    assert all("Traceback" not in m for m in (first, second, third))
    assert all(r.exc_text == "Traceback ...\nValueError: bad" for r in caplog.records)
    assert caplog.text.count("failed after 0.50s (ValueError: bad)") == 3
    assert caplog.text.count("Traceback ...\nValueError: bad") == 3


def test_a_401_on_lease_says_to_pass_a_token_made_for_a_worker_user() -> None:
    refused = _refusal(
        TidingsHTTPError(401, "unauthorized", "this server requires authentication"),
        "http://127.0.0.1:8000",
        ["resize"],
    )
    assert isinstance(refused, WorkerRefused) and isinstance(refused, ValueError)
    text = str(refused)
    assert refused.status == 401
    for needed in ("--token", "TIDINGS_TOKEN", "tidings tokens create USER", "--work TYPE"):
        assert needed in text, text
    assert "resize" in text and "login" not in text


def test_a_403_on_lease_names_the_types_it_may_not_work() -> None:
    refused = _refusal(
        TidingsHTTPError(403, "forbidden", "bob may not work 'crop': ask for a grant"),
        "http://h:1",
        ["resize", "crop"],
    )
    assert refused is not None and refused.status == 403
    assert "resize, crop" in str(refused) and "'crop'" in str(refused)
    assert "tidings users grant USER --work TYPE" in str(refused)


def test_a_403_of_another_gate_puts_the_servers_words_first_without_work_advice() -> None:
    said = "Host 'box:8000' is not this loopback server's: ... list the name in --allowed-hosts"
    refused = _refusal(TidingsHTTPError(403, "forbidden", said), "http://box:8000", ["a"])
    assert refused is not None and refused.status == 403
    assert str(refused).startswith(said)
    assert "--work" not in str(refused) and "grant" not in str(refused)
    jobs = "bob may not work jobs: ask for a work grant"
    refused = _refusal(TidingsHTTPError(403, "forbidden", jobs), "http://h:1", None)
    assert refused is not None and str(refused).startswith(jobs)
    assert "--work TYPE" in str(refused)


def test_other_failures_are_not_refusals() -> None:
    assert _refusal(TidingsHTTPError(503, "store_unavailable", "x"), "http://h:1", None) is None
    assert _refusal(OSError("refused"), "http://h:1", None) is None
