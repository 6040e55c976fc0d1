"""Real servers for the tests: `ttr serve` under uvicorn on a free port, and a Redis of the
test's own (which it may stop, hang and kill)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(base: str, path: str, method: str = "GET", headers: dict | None = None,
            timeout: float = 30) -> tuple[int, dict | str, dict]:  # fmt: skip
    """(status, body as JSON where it is JSON, headers by lower-case name) of one request on a
    new connection."""
    req = urllib.request.Request(base + path, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            body, status, got = response.read().decode(), response.status, response.headers
    except urllib.error.HTTPError as err:
        body, status, got = err.read().decode(), err.code, err.headers
    got = {name.lower(): value for name, value in got.items()}
    try:
        return status, json.loads(body), got
    except json.JSONDecodeError:
        return status, body, got


def get(base: str, path: str) -> tuple[int, dict | str]:
    status, body, _ = request(base, path)
    return status, body


def serve(repo: Path, root: Path, online: str | None = None, *extra: str,
          env: dict | None = None) -> tuple[subprocess.Popen, str]:  # fmt: skip
    """`ttr serve` on a free port, once /readyz answers 200."""
    port = free_port()
    argv = ["serve", "--port", str(port), "--repo", str(repo), "--artifacts", str(root), *extra]
    argv += ["--online-store", online] if online else []
    process = subprocess.Popen(
        [sys.executable, "-c", "from retrieval.cli import main; main()", *argv],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
        start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.stderr.read().decode()[-2000:]}")
        try:
            if get(base, "/readyz")[0] == 200:
                return process, base
        except OSError:
            pass
        time.sleep(0.3)
    process.kill()
    raise AssertionError("server not ready in 120 s")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class OwnRedis:
    """A redis-server on a free port, appending every write to its log (what a restart after a
    kill comes back with)."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.argv = ["redis-server", "--port", str(self.port), "--dir", str(folder),
                     "--save", "", "--appendonly", "yes", "--appendfsync", "always"]  # fmt: skip
        self.process = self.start()

    def start(self) -> subprocess.Popen:
        self.process = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self.process
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self.process.wait(timeout=10)

    def close(self) -> None:
        self.process.send_signal(signal.SIGCONT)
        self.process.kill()
        self.process.wait(timeout=10)
