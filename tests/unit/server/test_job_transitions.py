"""A job's state machine as plain values: each transition `(job, now) -> (job', event)` from
tidings.server.transitions, with no store, no clock and no server.

The stores apply these same functions atomically (tests/contract); the API's view of them
is in tests/e2e/jobs/.
"""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from tidings.protocol.codecs import encode_json
from tidings.protocol.errors import Conflict, InvalidBody
from tidings.protocol.jobs import KEPT_ERRORS, Job, bound_traceback
from tidings.server.jobs import MAX_ERROR_BYTES, MAX_ERROR_MESSAGE_BYTES, error_object
from tidings.server.transitions import (
    MIN_LEASE,
    Backoff,
    after_failure,
    cancel,
    cancel_queued,
    check_lease,
    complete,
    expire,
    fail,
    heartbeat,
    lease,
    lease_end,
    release,
    retry,
    settle,
)

NOW = 1_000.0
BACKOFF = Backoff(first=2.0, cap=30.0)


def queued(**fields: object) -> Job:
    """A job as submitted at NOW - 10."""
    defaults: dict[str, object] = {
        "id": "j1",
        "type": "video.transcode",
        "payload": {"video": "a.mp4"},
        "created_at": NOW - 10,
        "updated_at": NOW - 10,
        "run_at": NOW - 10,
    }
    return Job(**{**defaults, **fields})  # type: ignore[arg-type]


def running(seconds: float = 30.0, at: float = NOW, **fields: object) -> Job:
    """A job leased at `at` for `seconds`."""
    job, _ = lease(seconds)(queued(**fields), at)
    return job


# -- Backoff -----------------------------------------------------------------------------


def test_backoff_starts_at_first_doubles_per_attempt_and_stops_at_the_cap() -> None:
    assert [BACKOFF.delay(n) for n in (1, 2, 3, 4, 5, 6)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert BACKOFF.delay(0) == 2.0  # no attempt made yet: the first delay
    assert Backoff(first=0.05, cap=1.0).delay(1) == 0.05


# -- lease, lease_end --------------------------------------------------------------------


def test_lease_runs_a_queued_job_as_its_next_attempt_under_a_new_token() -> None:
    job = queued(progress=12.0, message="left over")
    leased, event = lease(30.0)(job, NOW)
    assert event == "running"
    assert leased.status == "running"
    assert leased.attempt == 1
    assert leased.lease_token
    assert leased.lease_seconds == 30.0
    assert leased.lease_expires_at == NOW + 30.0
    assert leased.started_at == NOW
    assert leased.updated_at == NOW
    assert (leased.progress, leased.message) == (None, None)
    assert (leased.id, leased.payload) == (job.id, job.payload)
    assert job.status == "queued"  # the input is left as it was


def test_each_lease_gets_a_token_of_its_own() -> None:
    tokens = {lease(30.0)(queued(), NOW)[0].lease_token for _ in range(20)}
    assert len(tokens) == 20


def test_a_lease_never_runs_past_the_attempts_timeout() -> None:
    short = running(seconds=30.0, timeout=5.0)
    assert short.lease_expires_at == NOW + 5.0
    long = running(seconds=3.0, timeout=5.0)
    assert long.lease_expires_at == NOW + 3.0


def test_lease_end_is_now_plus_seconds_unless_the_timeout_comes_first() -> None:
    job = running(timeout=10.0)  # started at NOW
    assert lease_end(job, NOW + 2, 3.0) == NOW + 5
    assert lease_end(job, NOW + 8, 3.0) == NOW + 10
    assert lease_end(running(), NOW + 8, 3.0) == NOW + 11  # no timeout
    assert lease_end(queued(timeout=10.0), NOW, 30.0) == NOW + 30  # not started


# -- check_lease -------------------------------------------------------------------------


def test_check_lease_accepts_only_the_token_the_job_runs_under() -> None:
    job = running()
    assert job.lease_token is not None
    check_lease(job, job.lease_token)
    with pytest.raises(Conflict, match="leased again"):
        check_lease(job, "not-" + job.lease_token)
    with pytest.raises(Conflict, match="leased again"):
        check_lease(job, "é" * 24)  # beyond ASCII: a conflict, not a TypeError
    with pytest.raises(Conflict, match="not leased"):
        check_lease(queued(), job.lease_token)


# -- release -----------------------------------------------------------------------------


def test_release_queues_the_job_again_without_counting_the_attempt() -> None:
    job = running()
    assert job.lease_token is not None
    back, event = release(job.lease_token)(job, NOW + 1)
    assert event == "queued"
    assert back.status == "queued"
    assert back.attempt == 0
    assert (back.lease_token, back.lease_expires_at, back.started_at) == (None, None, None)
    assert back.updated_at == NOW + 1


def test_release_leaves_a_job_no_longer_held_by_the_token_alone() -> None:
    job = running()
    assert release("another-token")(job, NOW + 1) == (job, None)
    ended, _ = cancel(queued(), NOW)
    assert release("any")(ended, NOW + 1) == (ended, None)


# -- heartbeat ---------------------------------------------------------------------------


def test_heartbeat_extends_the_lease_and_records_progress() -> None:
    job = running(seconds=30.0)
    assert job.lease_token is not None
    beat, event = heartbeat(job.lease_token, 40.0, "transcoding", 60.0)(job, NOW + 20)
    assert event == "progress"
    assert beat.lease_expires_at == NOW + 80
    assert beat.lease_seconds == 60.0
    assert (beat.progress, beat.message) == (40.0, "transcoding")
    assert beat.updated_at == NOW + 20
    assert beat.lease_token == job.lease_token


def test_a_silent_heartbeat_extends_by_the_last_length_and_publishes_nothing() -> None:
    job = running(seconds=30.0, progress=None)
    assert job.lease_token is not None
    first, _ = heartbeat(job.lease_token, 40.0, "half", None)(job, NOW + 5)
    beat, event = heartbeat(job.lease_token, None, None, None)(first, NOW + 20)
    assert event is None
    assert beat.lease_expires_at == NOW + 50
    assert (beat.progress, beat.message) == (40.0, "half")  # kept


def test_a_heartbeat_on_a_job_with_no_lease_length_extends_by_the_shortest_lease() -> None:
    job = running()
    assert job.lease_token is not None
    bare = replace(job, lease_seconds=None)
    beat, _ = heartbeat(job.lease_token, None, None, None)(bare, NOW + 1)
    assert beat.lease_expires_at == NOW + 1 + MIN_LEASE
    assert beat.lease_seconds == MIN_LEASE


def test_a_message_alone_is_reported_as_progress() -> None:
    job = running()
    assert job.lease_token is not None
    _, event = heartbeat(job.lease_token, None, "still here", None)(job, NOW + 1)
    assert event == "progress"


def test_a_heartbeat_never_extends_past_the_timeout() -> None:
    job = running(seconds=5.0, timeout=20.0)
    assert job.lease_token is not None
    beat, _ = heartbeat(job.lease_token, None, None, 60.0)(job, NOW + 4)
    assert beat.lease_expires_at == NOW + 20


def test_a_heartbeat_with_a_stale_token_is_a_conflict() -> None:
    job = running()
    with pytest.raises(Conflict):
        heartbeat("stale", 10.0, None, None)(job, NOW + 1)


# -- complete ----------------------------------------------------------------------------


def test_complete_ends_the_job_succeeded_with_its_result() -> None:
    job = running()
    assert job.lease_token is not None
    done, event = complete(job.lease_token, {"url": "a.webm"})(job, NOW + 3)
    assert event == "succeeded"
    assert done.status == "succeeded"
    assert done.terminal
    assert done.result == {"url": "a.webm"}
    assert done.progress == 100.0
    assert (done.lease_token, done.lease_expires_at) == (None, None)
    assert done.finished_at == NOW + 3
    assert done.updated_at == NOW + 3


def test_completing_twice_is_a_conflict() -> None:
    job = running()
    assert job.lease_token is not None
    done, _ = complete(job.lease_token, 1)(job, NOW + 1)
    with pytest.raises(Conflict):
        complete(job.lease_token, 2)(done, NOW + 2)


# -- fail, after_failure, expire ---------------------------------------------------------


def test_a_failed_attempt_with_attempts_left_is_queued_after_the_backoff() -> None:
    job = running(max_attempts=3)
    assert job.lease_token is not None
    error = {"type": "OSError", "message": "disk full"}
    again, event = fail(job.lease_token, error, True, BACKOFF)(job, NOW + 1)
    assert event == "queued"
    assert again.status == "queued"
    assert again.run_at == NOW + 1 + BACKOFF.delay(1)
    assert again.error == {**error, "attempt": 1}
    assert again.attempt == 1  # counted; the next lease makes it 2
    assert (again.lease_token, again.lease_expires_at) == (None, None)
    assert again.finished_at is None
    second, _ = lease(30.0)(again, again.run_at)
    assert second.attempt == 2
    assert second.lease_token != job.lease_token


def test_the_backoff_grows_with_the_attempt_that_failed() -> None:
    job = running(max_attempts=5, attempt=2)  # this lease is attempt 3
    again, _ = after_failure(job, NOW, {"type": "E"}, True, BACKOFF)
    assert again.run_at == NOW + BACKOFF.delay(3)


def test_a_failed_last_attempt_ends_failed() -> None:
    job = running(max_attempts=1)
    assert job.lease_token is not None
    dead, event = fail(job.lease_token, {"msg": "bad"}, True, BACKOFF)(job, NOW + 1)
    assert event == "failed"
    assert dead.status == "failed"
    assert dead.error == {"msg": "bad", "attempt": 1}
    assert dead.finished_at == NOW + 1


def test_a_failure_without_retry_ends_failed_even_with_attempts_left() -> None:
    job = running(max_attempts=3)
    dead, event = after_failure(job, NOW, {"type": "E"}, False, BACKOFF)
    assert (dead.status, event) == ("failed", "failed")


def test_a_failure_after_a_cancel_request_ends_cancelled_not_retried() -> None:
    job, _ = cancel(running(max_attempts=3), NOW + 1)
    assert job.lease_token is not None
    ended, event = fail(job.lease_token, {"type": "E"}, True, BACKOFF)(job, NOW + 2)
    assert (ended.status, event) == ("cancelled", "cancelled")
    assert ended.finished_at == NOW + 2
    assert ended.lease_token is None


def test_failing_with_a_stale_token_is_a_conflict() -> None:
    with pytest.raises(Conflict):
        fail("stale", {"type": "E"}, True, BACKOFF)(running(), NOW)


def test_an_expired_lease_is_a_failed_attempt_that_says_so() -> None:
    job = running(max_attempts=2)
    again, event = expire(BACKOFF)(job, NOW + 31)
    assert (again.status, event) == ("queued", "queued")
    assert again.error["type"] == "LeaseExpired"
    assert "attempt 1" in again.error["message"]
    assert again.error["attempt"] == 1
    assert again.run_at == NOW + 31 + BACKOFF.delay(1)
    assert again.lease_token is None


def test_an_expired_last_attempt_is_a_dead_letter() -> None:
    job = running(max_attempts=1)
    dead, event = expire(BACKOFF)(job, NOW + 31)
    assert (dead.status, event) == ("failed", "failed")
    assert dead.finished_at == NOW + 31


def test_an_expired_lease_after_a_cancel_request_ends_cancelled() -> None:
    job, _ = cancel(running(max_attempts=3), NOW + 1)
    ended, event = expire(BACKOFF)(job, NOW + 31)
    assert (ended.status, event) == ("cancelled", "cancelled")


def test_a_timed_out_attempt_expires_at_its_timeout_then_retries() -> None:
    job = running(seconds=60.0, timeout=5.0, max_attempts=2)
    assert job.lease_expires_at == NOW + 5
    again, _ = expire(BACKOFF)(job, NOW + 5)
    second, _ = lease(60.0)(again, again.run_at)
    assert second.started_at == again.run_at  # each attempt has the whole timeout
    assert second.lease_expires_at == again.run_at + 5


# -- cancel ------------------------------------------------------------------------------


def test_cancelling_a_queued_job_ends_it_at_once() -> None:
    ended, event = cancel(queued(), NOW)
    assert event == "cancelled"
    assert ended.status == "cancelled"
    assert ended.finished_at == NOW
    assert ended.updated_at == NOW


def test_cancelling_a_running_job_asks_its_worker_to_stop() -> None:
    job = running()
    asked, event = cancel(job, NOW + 1)
    assert event == "cancel_requested"
    assert asked.status == "running"
    assert asked.cancel_requested is True
    assert asked.lease_token == job.lease_token
    assert asked.finished_at is None
    assert asked.lease_token is not None
    beat, _ = heartbeat(asked.lease_token, None, None, None)(asked, NOW + 2)
    assert beat.cancel_requested is True  # what the worker's heartbeat answer reads


def test_cancelling_a_running_job_twice_changes_nothing_the_second_time() -> None:
    asked, _ = cancel(running(), NOW + 1)
    assert cancel(asked, NOW + 2) == (asked, None)


@pytest.mark.parametrize("ending", ["succeeded", "failed", "cancelled"])
def test_an_ended_job_cannot_be_cancelled(ending: str) -> None:
    with pytest.raises(Conflict, match="nothing to cancel"):
        cancel(queued(status=ending, finished_at=NOW), NOW + 1)


# -- retry -------------------------------------------------------------------------------


@pytest.mark.parametrize("ending", ["failed", "cancelled"])
def test_retry_queues_a_failed_or_cancelled_job_with_fresh_attempts(ending: str) -> None:
    job = queued(
        status=ending, attempt=3, max_attempts=3, cancel_requested=True,
        result="partial", error="disk full", finished_at=NOW - 1,
    )  # fmt: skip
    again, event = retry(job, NOW)
    assert event == "queued"
    assert again.status == "queued"
    assert again.attempt == 0
    assert again.cancel_requested is False
    assert (again.result, again.finished_at) == (None, None)
    assert again.run_at == NOW
    assert again.updated_at == NOW
    assert lease(30.0)(again, NOW)[0].attempt == 1


@pytest.mark.parametrize("status", ["queued", "running", "succeeded"])
def test_only_failed_or_cancelled_jobs_can_be_retried(status: str) -> None:
    with pytest.raises(Conflict, match="only failed or cancelled"):
        retry(queued(status=status), NOW)


# -- a whole life ------------------------------------------------------------------------


def test_a_job_fails_once_is_retried_after_its_backoff_and_succeeds() -> None:
    job = queued(max_attempts=3)
    events = []
    job, event = lease(10.0)(job, NOW)
    events.append(event)
    assert job.lease_token is not None
    job, event = heartbeat(job.lease_token, 50.0, None, None)(job, NOW + 1)
    events.append(event)
    job, event = fail(job.lease_token, {"type": "E", "message": "flaky"}, True, BACKOFF)(
        job, NOW + 2
    )
    events.append(event)
    job, event = lease(10.0)(job, job.run_at)
    events.append(event)
    assert job.lease_token is not None
    job, event = complete(job.lease_token, "ok")(job, job.run_at + 1)
    events.append(event)
    assert events == ["running", "progress", "queued", "running", "succeeded"]
    assert (job.status, job.attempt, job.result) == ("succeeded", 2, "ok")


# -- the errors of failed attempts -------------------------------------------------------


def test_each_failed_attempt_keeps_its_error_with_its_number_and_the_last_ones_stay() -> None:
    """`error` is the last attempt's, `errors` the last KEPT_ERRORS (oldest first); a
    retry being leased still shows why the attempt before it failed."""
    job = running(max_attempts=KEPT_ERRORS + 3)
    for n in range(1, KEPT_ERRORS + 3):
        assert job.lease_token is not None
        job, event = fail(job.lease_token, {"type": "E", "message": f"m{n}"}, True, BACKOFF)(
            job, NOW + n
        )
        assert event == "queued"
        assert job.error == {"type": "E", "message": f"m{n}", "attempt": n}
        job, _ = lease(30.0)(job, job.run_at)
        assert job.error["attempt"] == n  # still there while the next attempt runs
    assert [e["attempt"] for e in job.errors] == list(range(3, KEPT_ERRORS + 3))
    assert job.errors[-1] == job.error


def test_an_expired_lease_joins_the_errors_like_a_reported_failure() -> None:
    job = running(max_attempts=3)
    assert job.lease_token is not None
    job, _ = fail(job.lease_token, {"type": "E", "message": "x"}, True, BACKOFF)(job, NOW)
    job, _ = lease(30.0)(job, job.run_at)
    job, _ = expire(BACKOFF)(job, NOW + 100)
    assert [(e["type"], e["attempt"]) for e in job.errors] == [("E", 1), ("LeaseExpired", 2)]


def test_a_long_traceback_keeps_its_end_after_a_line_saying_it_was_cut() -> None:
    frames = "".join(f'  File "m.py", line {n}, in f{n}\n    f{n + 1}()\n' for n in range(2000))
    text = "Traceback (most recent call last):\n" + frames + "ValueError: innermost\n"
    cut = bound_traceback(text)
    assert len(cut.encode()) <= 16 * 1024
    assert cut.startswith("[traceback cut to its last 16 KiB")
    assert cut.endswith("ValueError: innermost\n")
    assert "in f1999" in cut and "in f0\n" not in cut
    assert cut.splitlines()[1] in text.splitlines()  # cut at a line's start
    assert bound_traceback("short\n") == "short\n"


def test_a_traceback_of_wide_characters_is_cut_on_a_character() -> None:
    text = "é" * 20_000 + "\nZeroDivisionError: ü"
    cut = bound_traceback(text)
    assert len(cut.encode()) <= 16 * 1024
    assert cut.endswith("ZeroDivisionError: ü")


def test_what_a_worker_sends_as_error_becomes_an_error_object() -> None:
    """tidings.server.jobs.error_object, applied before a fail transition: an object keeps
    its keys (its traceback bounded), a string is its message,
    other values their JSON text; a traceback that is not a string is refused, a null one
    is no traceback."""
    assert error_object({"type": "E", "x": [1]}) == {"type": "E", "x": [1]}
    assert error_object({"msg": "m"}) == {"msg": "m"}
    assert error_object("disk full") == {"type": "Error", "message": "disk full"}
    assert error_object([1, "a"]) == {"type": "Error", "message": '[1,"a"]'}
    assert error_object(None)["message"] == "the worker gave no error"
    long = error_object({"type": "E", "traceback": "x\n" * 20_000})
    assert len(long["traceback"].encode()) <= 16 * 1024
    for bad in (1, ["a"], {"f": 1}):
        with pytest.raises(InvalidBody, match="traceback"):
            error_object({"type": "E", "traceback": bad})
    assert error_object({"type": "E", "message": "m", "traceback": None}) == {
        "type": "E",
        "message": "m",
    }


def test_an_error_is_bounded_whole_its_message_cut_at_its_start_its_extras_dropped() -> None:
    """The message keeps its first 4 KiB behind a note of the cut; other keys stay while
    the whole (traceback aside) fits in 8 KiB, else they go and a note says so; a value
    that is not an object becomes a message cut the same way."""
    err = error_object({"type": "E", "message": "é" * 10_000, "code": 7})
    assert len(err["message"].encode()) <= MAX_ERROR_MESSAGE_BYTES
    assert err["message"].startswith("ééé") and err["message"].endswith(
        "cut to its first 4096 bytes]"
    )
    assert err["code"] == 7 and "note" not in err
    fits = {"type": "E", "message": "m", "ctx": "x" * 7000}
    assert error_object(fits)["ctx"] == fits["ctx"]
    big = error_object(
        {"type": "E", "message": "m" * 5000, "ctx": "x" * 9000, "more": 1, "traceback": "tb"}
    )
    assert "ctx" not in big and "more" not in big and big["traceback"] == "tb"
    assert "2 other key(s)" in big["note"] and "8 KiB" in big["note"]
    assert len(encode_json({k: v for k, v in big.items() if k != "traceback"})) <= MAX_ERROR_BYTES
    assert error_object({"type": "T" * 1000})["type"].startswith("TTT")
    assert len(error_object({"type": "T" * 1000})["type"]) <= 200
    assert len(error_object(["x" * 10_000])["message"].encode()) <= MAX_ERROR_MESSAGE_BYTES
    assert len(error_object("y" * 10_000)["message"].encode()) <= MAX_ERROR_MESSAGE_BYTES
    assert error_object({"type": 3, "message": {"a": 1}}) == {"type": "3", "message": '{"a":1}'}


def test_only_the_last_failure_keeps_its_traceback_the_earlier_ones_do_not() -> None:
    job = running(max_attempts=3)
    assert job.lease_token is not None
    first = {"type": "E", "message": "one", "traceback": "tb1"}
    job, _ = fail(job.lease_token, first, True, BACKOFF)(job, NOW)
    assert job.error["traceback"] == "tb1"
    assert job.errors == [{"type": "E", "message": "one", "attempt": 1}]
    job, _ = lease(30.0)(job, job.run_at)
    assert job.lease_token is not None
    second = {"type": "E", "message": "two", "traceback": "tb2"}
    job, _ = fail(job.lease_token, second, True, BACKOFF)(job, NOW + 5)
    assert job.error == {**second, "attempt": 2}
    assert all("traceback" not in e for e in job.errors)
    assert [e["message"] for e in job.errors] == ["one", "two"]


def test_cancel_queued_cancels_a_queued_job_and_leaves_any_other_as_it_is() -> None:
    job, event = cancel_queued(queued(), NOW)
    assert (job.status, event, job.finished_at) == ("cancelled", "cancelled", NOW)
    busy = running()
    assert cancel_queued(busy, NOW) == (busy, None)
    done, _ = complete(busy.lease_token or "", 1)(busy, NOW)
    assert cancel_queued(done, NOW) == (done, None)


# -- dependencies -----------------------------------------------------------------------


def _parent(job_id: str, status: str) -> Job:
    return Job(id=job_id, type="p", status=status, result={"of": job_id})


def test_settle_queues_a_waiting_job_once_every_parent_succeeded():
    child = queued(status="waiting", after=["a", "b"], run_at=NOW - 5)
    parents = {"a": _parent("a", "succeeded"), "b": _parent("b", "running")}
    assert settle(parents)(child, NOW) == (child, None)
    parents["b"] = _parent("b", "succeeded")
    new, event = settle(parents)(child, NOW)
    assert (new.status, event, new.run_at, new.updated_at) == ("queued", "queued", NOW, NOW)
    # A delayed child keeps its later run_at.
    later = replace(child, run_at=NOW + 60)
    assert settle(parents)(later, NOW)[0].run_at == NOW + 60


@pytest.mark.parametrize(
    ("status", "kind"), [("failed", "ParentFailed"), ("cancelled", "ParentCancelled")]
)
def test_settle_cancels_a_waiting_job_whose_parent_did_not_succeed(status, kind):
    child = queued(status="waiting", after=["a", "b"])
    parents = {"a": _parent("a", "running"), "b": _parent("b", status)}
    new, event = settle(parents)(child, NOW)
    assert (new.status, event, new.finished_at) == ("cancelled", "cancelled", NOW)
    assert new.error == {
        "type": kind,
        "message": f"parent job b ended {status}",
        "parent": "b",
        "attempt": 0,
    }
    assert new.errors == [new.error]


def test_settle_cancels_a_waiting_job_whose_parent_is_gone_and_leaves_others_alone():
    child = queued(status="waiting", after=["gone"])
    new, _ = settle({})(child, NOW)
    assert new.status == "cancelled" and new.error["type"] == "ParentGone"
    for status in ("queued", "running", "cancelled"):
        other = queued(status=status, after=["gone"])
        assert settle({})(other, NOW) == (other, None)


def test_cancel_ends_a_waiting_job_and_retry_makes_a_child_wait_again():
    child = queued(status="waiting", after=["a"])
    for fn in (cancel, cancel_queued):
        ended, event = fn(child, NOW)
        assert (ended.status, event) == ("cancelled", "cancelled")
    again, event = retry(cancel(child, NOW)[0], NOW + 1)
    assert (again.status, event) == ("waiting", "waiting")
