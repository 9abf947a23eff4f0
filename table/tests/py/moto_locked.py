"""moto's server application (what `moto_server` runs), one request at a time.

Usage: python moto_locked.py HOST PORT

moto_server serves requests on threads, and moto's in-memory DynamoDB backend checks a
condition and applies the update without a lock, so two concurrent conditional writes can
both pass: DynamoDB never does that. The zael-table tests count admissions exactly under
concurrency, so this launcher serialises request handling with one lock. It also exits when
its parent (the test binary) goes away.
"""

import os
import sys
import threading
import time

from werkzeug.serving import run_simple

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)


def _watch_parent(ppid: int) -> None:
    while True:
        if os.getppid() != ppid:
            os._exit(0)
        time.sleep(0.5)


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    os.environ.setdefault("MOTO_PORT", str(port))
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialized(environ, start_response):
        with lock:
            return list(app(environ, start_response))

    run_simple(host, port, serialized, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
