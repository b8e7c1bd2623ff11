"""Shared fixtures.

`redis_url`: a real redis-server for the Redis store tests. `./dev test`
starts one and exports ``AARM_TEST_REDIS_URL``; without it the fixture
starts its own when ``redis-server`` is on PATH, else the tests skip — except
under CI (``CI`` set), where a missing Redis fails them, so that CI can
never pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest


def _ping(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _no_redis(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI needs a Redis for the Redis store tests: {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """``redis://127.0.0.1:PORT/0`` of a running redis-server (tests keep apart by key prefix, never FLUSHDB)."""
    url = os.environ.get("AARM_TEST_REDIS_URL")
    if url:
        yield url
        return
    server = shutil.which("redis-server")
    if server is None:
        _no_redis("AARM_TEST_REDIS_URL is not set and redis-server is not on PATH")
    workdir = tmp_path_factory.mktemp("redis")
    for _ in range(5):  # another process may take the free port first
        port = _free_port()
        proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                 "no", "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        limit = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < limit and not _ping("127.0.0.1", port, 0.2):
            time.sleep(0.02)
        if proc.poll() is None and _ping("127.0.0.1", port, 1.0):
            break
        proc.kill()
        proc.wait()
    else:
        _no_redis("redis-server did not start")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
