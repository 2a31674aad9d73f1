"""JSON has one number type: `2.0` is the integer 2 where an integer is asked for.

Found by schemathesis: an integer field spelled `2.0` (as Python's json module writes a
float) was refused with 422, though the document (JSON Schema) counts it as an integer.
"""

from __future__ import annotations

import httpx

from tests.conftest import ServerFactory


def test_a_whole_number_written_as_a_float_is_taken_where_an_integer_is_asked(
    tidings_server: ServerFactory,
) -> None:
    srv = tidings_server()
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        r = http.post(
            "/v1/jobs",
            content=b'{"type": "t", "payload": {"x": 1.0}, "max_attempts": 2.0, "priority": 3.0}',
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["max_attempts"] == 2
        assert job["priority"] == 3
        # Only the integer fields change: the payload keeps the float it was sent.
        assert http.get(f"/v1/jobs/{job['id']}").text.count('"x":1.0') == 1


def test_a_fraction_where_an_integer_is_asked_is_still_422(
    tidings_server: ServerFactory,
) -> None:
    srv = tidings_server()
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        r = http.post(
            "/v1/jobs",
            content=b'{"type": "t", "payload": {}, "max_attempts": 2.5}',
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 422, r.text
        assert "Expected `int`, got `float`" in r.json()["error"]["message"]
