"""What the Python benchmarks share: loopback ports, bounded waits, and moto with its
per-operation request counter (bench/moto_counting.py)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def wait_until(check, limit, what):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise SystemExit(f"[{Path(sys.argv[0]).stem}] {what} not ready within {limit} s")


class Moto:
    """moto on a free 127.0.0.1 port, counting requests per DynamoDB operation."""

    def __init__(self, tmp):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = open(Path(tmp) / "moto.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "moto_counting.py"), "127.0.0.1", str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: listening(self.port), 60, "moto")

    def counts(self, reset=False):
        """The requests per operation so far; `reset` also zeroes them."""
        request = urllib.request.Request(self.endpoint + "/__bench/counts", method="DELETE" if reset else "GET")
        # moto answers one request at a time: after an overloaded run (the per-decision path
        # offered 1,000/s), the count waits behind what the servers left queued.
        with urllib.request.urlopen(request, timeout=180) as r:
            return json.loads(r.read())

    def cpu_s(self):
        """moto's CPU time so far (user + system), in seconds."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.proc.kill()
        self.proc.wait(timeout=10)
