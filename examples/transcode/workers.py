"""The tutorial's worker (docs/tutorial.md): transcodes "videos", reporting progress.

Run it from the repository root, beside a running server:

    tidings worker examples.transcode.workers:worker --url http://127.0.0.1:8000

The encoding is simulated (ten steps of 0.2 s) so the example needs no ffmpeg: put the
real work where `time.sleep` is.
"""

from __future__ import annotations

import time
from pathlib import PurePosixPath
from typing import Any

from tidings import JobContext, Worker

STEPS = 10
STEP_SECONDS = 0.2

worker = Worker(concurrency=2)


@worker.handler("transcode")
def transcode(job: JobContext) -> dict[str, Any]:
    """Transcode the video named in the payload (`{"name": "holiday.mov", "size": …}`)."""
    name = str(job.payload["name"])
    for step in range(1, STEPS + 1):
        job.raise_if_cancelled()  # a cancel reaches the worker with its next heartbeat
        time.sleep(STEP_SECONDS)  # encode one tenth of the video here
        job.progress(100 * step / STEPS, f"encoding {name}: {100 * step // STEPS} %")
    stem = PurePosixPath(name).stem or "video"
    return {"url": f"/videos/{stem}.mp4", "source": name}
