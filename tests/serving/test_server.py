"""`genret serve` over real HTTP: every endpoint, bad requests, concurrent batching, reload and rollback."""

import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from genret.decoding.export import export_checkpoint


def test_retrieve_answers_what_the_retriever_answers(server):
    ref = server.reference(server.first)
    body = {"histories": [[100, 101, 102], []], "k": 5, "user_features": {"segment": [2, None]}}
    got = server.client.post("/retrieve", json=body)
    assert got.status_code == 200
    want = ref.retrieve(body["histories"], k=5, user_features={"segment": [2, None]})
    answer = got.json()
    assert answer["items"] == want.items and np.allclose(answer["scores"], want.scores)
    assert answer["model_version"] == ref.model_version
    seen = server.client.post("/retrieve", json={"histories": [[100, 101]], "k": 5, "exclude_seen": False}).json()
    assert seen["items"] == ref.retrieve([[100, 101]], k=5, exclude_seen=False).items
    assert server.client.post("/retrieve", json={"histories": []}).json()["items"] == []


BAD = [
    (b"{not json", 400, "not valid JSON"),
    (b"[[100]]", 400, "must be a JSON object"),
    (b'{"k": 5}', 400, "needs 'histories'"),
    (b'{"histories": [100, 101]}', 400, r"histories\[0\] must be a list of item ids"),
    (b'{"histories": [[true]]}', 400, r"histories\[0\]\[0\] must be an item id"),
    (b'{"histories": [[100]], "k": 2.5}', 400, "k must be an integer"),
    (b'{"histories": [[100]], "k": 0}', 400, r"k must lie in \[1, 40\]"),
    (b'{"histories": [[100]], "k": 31}', 400, "--max_k is 30"),
    (b'{"histories": [[100]], "unknown": "skip"}', 400, "unknown must be one of"),
    (b'{"histories": [[100]], "exclude_seen": "no"}', 400, "exclude_seen must be true or false"),
    (b'{"histories": [[100]], "user_features": {"segment": [9]}}', 400, r"must be an integer id in \[0, 3\)"),
    (b'{"histories": [[100]], "user_features": {"segment": 1}}', 400, "one entry per history"),
    (b'{"histories": [[100]], "side": {"rating": [[1]]}}', 400, "trained without side features"),
    (b'{"histories": [[100]], "kk": 3}', 400, r"unexpected fields \['kk'\]"),
    (b'{"histories": [[100, 7]]}', 422, "item id 7 in history 0 is not in the catalogue"),
]


@pytest.mark.parametrize("body, status, message", BAD)
def test_bad_requests_get_4xx_and_the_server_keeps_serving(server, body, status, message):
    got = server.client.post("/retrieve", content=body, headers={"content-type": "application/json"})
    assert got.status_code == status and re.search(message, got.json()["error"]), got.text
    assert server.client.post("/retrieve", json={"histories": [[100]], "k": 3}).status_code == 200


def test_unknown_drop_and_missing_routes(server):
    got = server.client.post("/retrieve", json={"histories": [[100, 7]], "k": 3, "unknown": "drop"})
    assert got.json()["items"] == server.client.post("/retrieve", json={"histories": [[100]], "k": 3}).json()["items"]
    assert server.client.get("/nope").status_code == 404 and "error" in server.client.get("/nope").json()
    assert server.client.get("/retrieve").status_code == 405


def test_concurrent_requests_are_batched_and_equal_sequential_answers(server):
    bodies = [{"histories": [[100 + (i * 7 + j) % 40 for j in range(i % 6)]], "k": 4 + i % 2,
               "user_features": {"segment": [i % 3]}} for i in range(24)]
    bodies.append({"histories": [[100, 7]], "k": 4})  # a bad request in the crowd fails alone
    sequential = [server.client.post("/retrieve", json=b).json() for b in bodies]

    def post(body):
        with httpx.Client(base_url=server.url, timeout=30) as client:
            return client.post("/retrieve", json=body)

    with ThreadPoolExecutor(16) as pool:
        concurrent = [r.json() for r in pool.map(post, bodies)]
    assert [a.get("items") for a in concurrent] == [a.get("items") for a in sequential]
    assert concurrent[-1]["error"].startswith("item id 7")
    metrics = server.client.get("/metrics").text
    requests_per_batch = float(re.search(r"genret_batch_requests_sum (\S+)", metrics).group(1))
    batches = float(re.search(r"genret_batch_requests_count (\S+)", metrics).group(1))
    assert batches < requests_per_batch  # some batch merged several requests


def test_health_ready_metrics(server):
    assert server.client.get("/health").json() == {"status": "ok"}
    ready = server.client.get("/ready").json()
    assert ready["ready"] is True and ready["n_items"] == 40 and ready["model_version"].startswith("sha256:")
    assert ready["user_features"] == ["segment"] and ready["side_features"] == []  # what a request may carry
    server.client.post("/retrieve", json={"histories": [[100]], "k": 3})
    server.client.post("/retrieve", content=b"{")
    metrics = server.client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    for line in ('genret_requests_total{endpoint="/retrieve",status="200"}',
                 'genret_request_errors_total{endpoint="/retrieve",status="400"} 1.0',
                 'genret_request_latency_seconds_bucket{endpoint="/retrieve",le="+Inf"}',
                 "genret_batch_histories_count", "genret_batch_requests_count"):
        assert line in text, line


def test_reload_swaps_the_catalogue_and_a_failed_reload_keeps_the_old_model(server, tmp_path):
    old = server.client.get("/ready").json()["model_version"]
    # A checkpoint that fails to load: 422 with the reason, the old model keeps serving.
    (tmp_path / "broken.ckpt").write_bytes(b"garbage")
    for path in (tmp_path / "broken.ckpt", tmp_path / "missing.ckpt"):
        got = server.client.post("/reload", json={"checkpoint": str(path)})
        assert got.status_code == 422 and f"still serving {old}" in got.json()["error"]
    assert server.client.post("/reload", json={"path": "x"}).status_code == 400
    assert server.client.post("/retrieve", json={"histories": [[100]], "k": 3}).json()["model_version"] == old

    # A slow reload to the second model's export: requests keep being answered by the old model meanwhile.
    export = export_checkpoint(server.second, tmp_path / "second_export")
    server.load_delay["seconds"] = 1.0
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(lambda: httpx.post(server.url + "/reload", json={"checkpoint": str(export)}, timeout=30))
        during = [server.client.post("/retrieve", json={"histories": [[100]], "k": 3}).json() for _ in range(3)]
        reloaded = pending.result()
    assert all(a["model_version"] == old for a in during)
    assert reloaded.status_code == 200, reloaded.text
    new = reloaded.json()["model_version"]
    assert new != old and reloaded.json()["previous_model_version"] == old and reloaded.json()["n_items"] == 50
    # The new catalogue: the old ids are unknown now, the new ones answer as the new model does.
    assert server.client.post("/retrieve", json={"histories": [[100]], "k": 3}).status_code == 422
    answer = server.client.post("/retrieve", json={"histories": [[500, 501]], "k": 5}).json()
    assert answer["model_version"] == new
    assert answer["items"] == server.reference(export).retrieve([[500, 501]], k=5).items
    assert server.client.get("/ready").json()["model_version"] == new
    assert 'genret_reloads_total{outcome="failed"} 2.0' in server.client.get("/metrics").text


def test_serve_without_the_extra_says_what_to_install(monkeypatch, tmp_path):
    import sys

    from genret.cli import main

    (tmp_path / "model.ckpt").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if the extra were not installed
    monkeypatch.delitem(sys.modules, "genret.serving.app", raising=False)
    with pytest.raises(SystemExit, match=r"pip install 'genret\[serve\]'"):
        main(["serve", "--checkpoint", str(tmp_path / "model.ckpt")])


def test_a_checkpoint_that_fails_at_start_up_is_reported_and_a_reload_recovers(tmp_path, server):
    import time

    from fastapi.testclient import TestClient

    from genret.serving.app import create_app

    (tmp_path / "broken.ckpt").write_bytes(b"garbage")
    with TestClient(create_app(tmp_path / "broken.ckpt", kernel="torch")) as client:
        deadline = time.time() + 30
        while (ready := client.get("/ready")).json()["error"] == "loading" and time.time() < deadline:
            time.sleep(0.05)
        assert ready.status_code == 503 and "cannot read checkpoint" in ready.json()["error"]
        retrieve = client.post("/retrieve", json={"histories": [[100]]})
        assert retrieve.status_code == 503 and "no model is loaded" in retrieve.json()["error"]
        assert client.get("/health").status_code == 200
        assert client.post("/reload", json={"checkpoint": str(server.first)}).status_code == 200
        assert client.post("/retrieve", json={"histories": [[100]], "k": 3}).status_code == 200
