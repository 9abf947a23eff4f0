"""moto's server application, one request at a time, counting DynamoDB requests.

Usage: python moto_counting.py HOST PORT

Like table/tests/py/moto_locked.py (moto's in-memory update_item is not atomic across its
request threads, DynamoDB is, so requests are serialised), plus a per-operation request
counter, so that zael-server and the Python library are measured by the same neutral
party:

  GET    /__bench/counts   -> {"UpdateItem": n, "GetItem": n, ...}
  DELETE /__bench/counts   -> resets the counters (answers the counts before the reset)

It exits when its parent goes away.
"""

import collections
import json
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

COUNTS_PATH = "/__bench/counts"


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
    counts: collections.Counter = collections.Counter()

    def serve(environ, start_response):
        if environ.get("PATH_INFO") == COUNTS_PATH:
            with lock:
                body = json.dumps(dict(counts)).encode()
                if environ.get("REQUEST_METHOD") == "DELETE":
                    counts.clear()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        operation = target.rsplit(".", 1)[-1] if target else "other"
        with lock:
            counts[operation] += 1
            return list(app(environ, start_response))

    run_simple(host, port, serve, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
