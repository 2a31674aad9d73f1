"""The patterns lab (`tidings lab`): the seed's patterns measured side by side on one
workload, against a real server, by clients on raw sockets in their own processes.

    workload.py   the patterns and the workload they share (and its bounds)
    wire.py       the clients' HTTP/1.1 and WebSocket on raw sockets, counting bytes
    clients.py    one client process: many clients of one pattern
    measure.py    the orchestrator: the server under test, its CPU, a run per pattern
    report.py     the lab's JSON, a sentence per seed claim, the sweep's notes, the SVG chart

It talks to the server over the wire only: it never imports tidings.server.
"""
