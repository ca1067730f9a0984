import contextlib
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

from ddpm.datasets import load_digits, to_model_range


@pytest.fixture(scope="session")
def digits():
    """The first 16 real digits, scaled to [-1, 1]: (16, 1, 8, 8)."""
    return to_model_range(load_digits()[:16])


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.set_num_threads(2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(db_path):
    """A real ``mlflow server`` on 127.0.0.1 over the SQLite store ``db_path``; yields its URL."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db_path}", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    server.kill()
                    pytest.fail(f"mlflow server did not start: {server.stdout.read()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
