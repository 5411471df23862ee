"""A real `genret serve` app on a free 127.0.0.1 port, in a background thread, over tiny checkpoints."""

import importlib.util
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

pytest.importorskip("fastapi")

import uvicorn  # noqa: E402

from genret.serving import load_retriever  # noqa: E402
from genret.serving.app import create_app  # noqa: E402

# The tiny checkpoint writer lives beside the decoding tests (importlib import mode: load it by path).
_spec = importlib.util.spec_from_file_location("decoding_tiny_checkpoints",
                                               Path(__file__).parents[1] / "decoding" / "conftest.py")
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)


@pytest.fixture
def server(tmp_path):
    first = tiny.write_tiny_checkpoint(tmp_path / "first.ckpt")
    second = tiny.write_tiny_checkpoint(tmp_path / "second.ckpt", seed=5, n_items=50, first_id=500)
    load_delay = {"seconds": 0.0}

    def loader(path, device, **kwargs):
        time.sleep(load_delay["seconds"])  # lets a test hold a reload open while requests run
        return load_retriever(path, device, **kwargs)

    app = create_app(first, device="cpu", max_wait_ms=30, max_batch_size=32, max_k=30, max_histories=64,
                     loader=loader, kernel="torch")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=30)
    deadline = time.time() + 30
    while True:
        try:
            if client.get("/ready").status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.time() > deadline:
            raise RuntimeError("the test server did not become ready in 30 s")
        time.sleep(0.05)
    yield SimpleNamespace(url=url, client=client, first=first, second=second, load_delay=load_delay,
                          reference=lambda path: load_retriever(path, "cpu", kernel="torch"))
    client.close()
    uv.should_exit = True
    thread.join(10)
    sock.close()
