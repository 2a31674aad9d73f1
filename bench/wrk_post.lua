-- wrk script for the durable-publish measurement: POST one fixed body to the URL's path.
-- BENCH_BODY and BENCH_CTYPE (from bench/run.py) choose the body and its Content-Type.
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or "msg 0 ts=1700000000000000"
wrk.headers["Content-Type"] = os.getenv("BENCH_CTYPE") or "text/plain"
