"""Jobs on the wire: the public form, the leased form, and the answers around them."""

from __future__ import annotations

import msgspec
import pytest

from tidings.protocol.codecs import encode_json
from tidings.protocol.errors import ErrorCode
from tidings.protocol.jobs import (
    JOB_STATUSES,
    JOB_TIME_FIELDS,
    TERMINAL_STATUSES,
    Job,
    JobWire,
    LeaseAnswerWire,
    LeasedJobWire,
    ReportAnswerWire,
    job_channel,
)
from tidings.sdk.client import JobInfo
from tidings.sdk.worker import LeasedJob

RUNNING = Job(
    id="j2",
    type="resize",
    payload={"w": 3},
    status="running",
    progress=50.0,
    message="half",
    attempt=2,
    max_attempts=5,
    priority=-3,
    timeout=30.0,
    created_at=1700000000.1,
    updated_at=1700000001.2,
    run_at=1700000000.1,
    started_at=1700000001.0,
    lease_token="tok",  # noqa: S106 - a test lease token
    lease_expires_at=1700000031.0,
    lease_seconds=30.0,
    submitted_by="ann",
)
QUEUED = Job(id="j1", type="t", created_at=1.5, updated_at=2.25, run_at=3.0)


def test_statuses_and_the_terminal_ones():
    assert JOB_STATUSES == ("waiting", "queued", "running", "succeeded", "failed", "cancelled")
    assert {"succeeded", "failed", "cancelled"} == TERMINAL_STATUSES
    assert not RUNNING.terminal
    assert Job(id="x", type="t", status="failed").terminal


def test_the_public_form_keeps_nulls_and_the_field_order_and_leaves_out_the_lease_token():
    body = msgspec.json.decode(encode_json(QUEUED.to_wire()))
    assert list(body) == [
        "id", "type", "status", "payload", "progress", "message", "result", "error",
        "errors", "attempt", "max_attempts", "priority", "timeout", "cancel_requested",
        "submitted_by", "worker", "unique_key", "group", "created_at", "updated_at",
        "run_at", "started_at", "finished_at", "lease_expires_at", "links",
    ]  # fmt: skip
    assert body["progress"] is None and body["started_at"] is None
    assert body["created_at"] == "1970-01-01T00:00:01.500000Z"
    assert "lease_token" not in msgspec.json.decode(encode_json(RUNNING.to_wire()))


def test_a_job_links_to_itself_its_streams_and_its_channel():
    links = msgspec.json.decode(encode_json(RUNNING.to_wire()))["links"]
    assert links == {
        "self": "/v1/jobs/j2",
        "events": "/v1/jobs/j2/events",
        "ws": "/v1/jobs/j2/ws",
        "channel": f"/v1/channels/{job_channel('j2')}/messages",
    }


def test_a_job_event_carries_the_public_form_without_the_payload():
    body = msgspec.json.decode(encode_json(RUNNING.event_wire()))
    assert "payload" not in body
    assert body["status"] == "running"


FAILED_TWICE = Job(
    id="j3",
    type="t",
    status="queued",
    attempt=2,
    error={"type": "E", "message": "m", "traceback": "T" * 16_000, "attempt": 2},
    errors=[
        {"type": "E", "message": "m", "attempt": 1},
        {"type": "E", "message": "m", "attempt": 2},
    ],
)


def test_a_job_event_carries_the_last_error_without_its_traceback_nor_the_errors():
    """A retried job's events must not each copy a 16 KiB traceback."""
    body = msgspec.json.decode(encode_json(FAILED_TWICE.event_wire()))
    assert body["error"] == {"type": "E", "message": "m", "attempt": 2}
    assert "errors" not in body and "payload" not in body
    assert len(encode_json(body)) < 2048
    assert FAILED_TWICE.error["traceback"]  # the job itself keeps it


def test_the_public_form_shows_the_traceback_and_errors_unless_left_out():
    whole = msgspec.json.decode(encode_json(FAILED_TWICE.to_wire()))
    assert whole["error"]["traceback"] == "T" * 16_000 and len(whole["errors"]) == 2
    listed = msgspec.json.decode(
        encode_json(FAILED_TWICE.to_wire(with_errors=False, with_traceback=False))
    )
    assert "errors" not in listed and "traceback" not in listed["error"]
    assert "payload" in listed


@pytest.mark.parametrize("job", [QUEUED, RUNNING], ids=["queued", "running"])
def test_a_job_encoded_as_the_server_does_decodes_in_the_sdk_to_the_same_values(job: Job):
    info = JobInfo.from_wire(msgspec.json.decode(encode_json(job.to_wire()), type=JobWire))
    assert (info.id, info.type, info.status, info.payload) == (
        job.id,
        job.type,
        job.status,
        job.payload,
    )
    assert (info.progress, info.message, info.attempt, info.max_attempts) == (
        job.progress,
        job.message,
        job.attempt,
        job.max_attempts,
    )
    assert (info.priority, info.timeout, info.submitted_by) == (
        job.priority,
        job.timeout,
        job.submitted_by,
    )
    for name in JOB_TIME_FIELDS:
        assert getattr(info, name) == pytest.approx(getattr(job, name), abs=1e-6), name
    assert info.links["self"] == f"/v1/jobs/{job.id}"


def test_the_sdk_job_has_every_field_of_the_public_form():
    # `served` and `deduplicated` belong to a submit's answer, not to the job: the SDK
    # keeps them on the handle; `ref` to a batch submit's, whose handles it keys.
    answer_only = {"served", "deduplicated", "ref"}
    assert set(JobInfo.__struct_fields__) == set(JobWire.__struct_fields__) - answer_only


def test_a_job_event_decodes_with_no_payload():
    wire = msgspec.json.decode(encode_json(RUNNING.event_wire()), type=JobWire)
    assert wire.payload is msgspec.UNSET
    assert JobInfo.from_wire(wire).payload is None


def test_a_leased_job_encoded_as_the_server_does_decodes_in_the_worker_to_the_same_values():
    body = encode_json(RUNNING.lease_to_wire())
    assert list(msgspec.json.decode(body)) == [
        "id", "type", "payload", "attempt", "max_attempts", "timeout", "lease_token",
        "lease_expires_at",
    ]  # fmt: skip
    leased = LeasedJob.from_wire(msgspec.json.decode(body, type=LeasedJobWire))
    assert leased == LeasedJob(
        id="j2",
        type="resize",
        payload={"w": 3},
        attempt=2,
        max_attempts=5,
        timeout=30.0,
        lease_token="tok",  # noqa: S106 - a test lease token
        lease_expires_at=1700000031.0,
    )


def test_a_lease_answer_with_results_decodes_each_outcome():
    body = (
        b'{"jobs":[' + encode_json(RUNNING.lease_to_wire()) + b'],"results":['
        b'{"id":"a","status":"succeeded"},'
        b'{"id":"b","error":{"code":"conflict","message":"stale token"}}]}'
    )
    answer = msgspec.json.decode(body, type=LeaseAnswerWire)
    assert [j.id for j in answer.jobs] == ["j2"]
    assert answer.results is not msgspec.UNSET
    applied, refused = answer.results
    assert (applied.status, applied.error) == ("succeeded", msgspec.UNSET)
    assert refused.error is not msgspec.UNSET and refused.error.code == ErrorCode.CONFLICT


def test_a_lease_answer_without_results_has_none():
    answer = msgspec.json.decode(b'{"jobs":[]}', type=LeaseAnswerWire)
    assert answer.results is msgspec.UNSET
    with pytest.raises(msgspec.ValidationError, match="missing required field `results`"):
        msgspec.json.decode(b"{}", type=ReportAnswerWire)
