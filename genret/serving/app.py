"""The HTTP app of `genret serve` (FastAPI, run by uvicorn).

Endpoints:
    POST /retrieve  {"histories": [[id, ...], ...], "k": 10, "exclude_seen": true,
                     "unknown": "error" | "drop", "side": {...}, "user_features": {...}}
                    -> {"items": [[...]], "scores": [[...]], "model_version": "..."}
    GET  /health    200 while the process serves HTTP
    GET  /ready     200 once a model is loaded (its version, catalogue size and the side / user feature
                    names a request may carry), else 503 (with the load error, if any)
    GET  /metrics   Prometheus text: requests, errors, latency, batch sizes, reloads
    POST /reload    {"checkpoint": "path"} -> swaps in that model atomically, or keeps the old one
                    and answers 422 with the reason
Errors answer {"error": "..."}: 400 for a malformed request, 422 for an unknown item id (with
"unknown": "error") or a checkpoint that cannot be loaded, 503 before a model is loaded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, Callable

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(f"genret serve needs the serving extra: pip install 'genret[serve]' ({err})") from err

from genret.decoding.requests import RequestError, UnknownItemError, check_flag, check_histories, check_k, check_unknown
from genret.serving import load_retriever
from genret.serving.batching import DynamicBatcher
from genret.serving.metrics import ServerMetrics

log = logging.getLogger("genret.serve")

RETRIEVE_FIELDS = ("histories", "k", "exclude_seen", "unknown", "side", "user_features")
ENDPOINTS = ("/retrieve", "/health", "/ready", "/metrics", "/reload")


class _State:
    """The model being served. Batches read `retriever` once when they start, and a reload only
    replaces the reference, so a batch in flight finishes on the model it started with."""

    def __init__(self) -> None:
        self.retriever: Any = None
        self.checkpoint: str | None = None
        self.load_error: str | None = None
        self.reload_lock = asyncio.Lock()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _per_history(value: Any, name: str, n: int) -> dict[str, list] | None:
    """`side` / `user_features` must map names to lists with one entry per history (so the batches
    of several requests stay aligned); the retriever checks the values themselves."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RequestError(f"{name} must be an object mapping names to lists (one entry per history), "
                           f"got {type(value).__name__}")
    for key, column in value.items():
        if not isinstance(column, list) or len(column) != n:
            raise RequestError(f"{name}[{key!r}] must be a list with one entry per history ({n}), got {column!r}")
    return value


def _merge_columns(payloads: list[dict], name: str) -> dict[str, list] | None:
    """Concatenate the per-history columns of several requests; a request without a column gets None."""
    keys = sorted({key for p in payloads for key in (p[name] or {})})
    if not keys:
        return None
    return {key: [v for p in payloads for v in (p[name] or {}).get(key, [None] * len(p["histories"]))]
            for key in keys}


def create_app(checkpoint: str | Path | None = None, *, device: str | None = "cpu", max_batch_size: int = 32,
               max_wait_ms: float = 2.0, max_k: int = 1000, max_histories: int = 256,
               loader: Callable[..., Any] = load_retriever, retriever: Any = None, **load_kwargs: Any) -> FastAPI:
    """The serving app.

    Args:
        checkpoint: what to load at start-up (a `.ckpt` or an export directory), in the background:
            /health answers at once, /ready once it is loaded.
        device: where the model runs ("cpu", "cuda"; None = CUDA when present).
        max_batch_size / max_wait_ms: the dynamic batcher's limits (histories per batch; wait).
        max_k: the largest k a request may ask for (and at most the catalogue size).
        max_histories: the most histories one request may carry.
        loader: path, device -> retriever (see genret.serving's docstring for the interface).
        retriever: an already loaded retriever to serve instead of `checkpoint`.
        load_kwargs: passed to `loader` on every load (e.g. kernel="torch").
    """
    state = _State()
    metrics = ServerMetrics()

    def run_batch(payloads: list[dict]) -> list[Any]:
        retriever = state.retriever  # one model for the whole batch, whatever a reload does meanwhile
        try:
            return _retrieve_group(retriever, payloads)
        except Exception:  # noqa: BLE001 - find the request at fault: decode them one by one
            if len(payloads) == 1:
                raise
            results = []
            for payload in payloads:
                try:
                    results.append(_retrieve_group(retriever, [payload])[0])
                except Exception as err:  # noqa: BLE001 - that request's own answer
                    results.append(err)
            return results

    batcher = DynamicBatcher(run_batch, max_batch_size, max_wait_ms, on_batch=metrics.observe_batch)

    async def load(path: str | Path) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, partial(loader, path, device, **load_kwargs))

    async def initial_load() -> None:
        async with state.reload_lock:  # a /reload sent meanwhile waits, then wins
            try:
                state.retriever = await load(checkpoint)
                state.checkpoint = str(checkpoint)
                log.info("serving %s (%s, %d items)", checkpoint, state.retriever.model_version,
                         len(state.retriever.item_ids))
            except Exception as err:  # noqa: BLE001 - reported by /ready; a /reload can still fix it
                state.load_error = f"{type(err).__name__}: {err}"
                log.error("could not load %s: %s", checkpoint, state.load_error)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        loading = None
        if retriever is not None:
            state.retriever, state.checkpoint = retriever, "in-process"
        elif checkpoint is not None:
            loading = asyncio.create_task(initial_load())
        yield
        if loading is not None and not loading.done():
            loading.cancel()
        await batcher.stop()

    app = FastAPI(title="genret", lifespan=lifespan)
    app.state.genret = state

    @app.middleware("http")
    async def observe(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        path = request.url.path
        metrics.observe_request(path if path in ENDPOINTS else "other", response.status_code,
                                time.perf_counter() - start)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("internal error on %s", request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    async def read_json(request: Request) -> Any:
        body = await request.body()
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RequestError(f"the request body is not valid JSON ({err})") from None

    @app.post("/retrieve")
    async def retrieve(request: Request):
        current = state.retriever
        if current is None:
            return _error(503, "no model is loaded yet" + (f" ({state.load_error})" if state.load_error else ""))
        try:
            body = await read_json(request)
            if not isinstance(body, dict):
                raise RequestError(f"the request body must be a JSON object with 'histories', "
                                   f"got {type(body).__name__}")
            extra = sorted(set(body) - set(RETRIEVE_FIELDS))
            if extra:
                raise RequestError(f"unexpected fields {extra}; a request may hold {list(RETRIEVE_FIELDS)}")
            if "histories" not in body:
                raise RequestError("the request needs 'histories': a list of item-id lists, oldest first")
            histories = check_histories(body["histories"])
            if len(histories) > max_histories:
                raise RequestError(f"a request may carry at most {max_histories} histories (--max-histories), "
                                   f"got {len(histories)}; split it")
            n_items = len(current.item_ids)
            k = check_k(body.get("k", 10), n_items)
            if k > max_k:
                raise RequestError(f"k must lie in [1, {min(max_k, n_items):,}] (this server's --max_k is {max_k}), "
                                   f"got {k}")
            payload = {
                "histories": histories, "k": k,
                "exclude_seen": check_flag(body.get("exclude_seen", True), "exclude_seen"),
                "unknown": check_unknown(body.get("unknown", "error")),
                "side": _per_history(body.get("side"), "side", len(histories)),
                "user_features": _per_history(body.get("user_features"), "user_features", len(histories)),
            }
            if not histories:
                return {"items": [], "scores": [], "model_version": current.model_version}
            # Requests decode together when they agree on everything but the histories and values.
            key = (k, payload["exclude_seen"], payload["unknown"], tuple(sorted(payload["side"] or ())))
            items, scores, version = await batcher.submit(key, payload, len(histories))
        except UnknownItemError as err:
            return _error(422, str(err))
        except RequestError as err:
            return _error(400, str(err))
        return {"items": items, "scores": scores, "model_version": version}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        if state.retriever is None:
            return JSONResponse({"ready": False, "error": state.load_error or "loading"}, status_code=503)
        r = state.retriever
        # What a request may carry besides histories: the per-action side fields and the user's fields.
        return {"ready": True, "model_version": r.model_version, "checkpoint": state.checkpoint,
                "n_items": len(r.item_ids), "side_features": list(getattr(r, "side_features", None) or []),
                "user_features": list(getattr(r, "user_feature_names", None) or [])}

    @app.get("/metrics")
    async def prometheus():
        text, content_type = metrics.render()
        return Response(text, media_type=content_type)

    @app.post("/reload")
    async def reload(request: Request):
        try:
            body = await read_json(request)
            if not isinstance(body, dict) or not isinstance(body.get("checkpoint"), str) or set(body) != {"checkpoint"}:
                raise RequestError('the body must be {"checkpoint": "path"} (a .ckpt or a genret export directory)')
        except RequestError as err:
            return _error(400, str(err))
        async with state.reload_lock:
            previous = state.retriever
            old_version = previous.model_version if previous is not None else None
            try:
                new = await load(body["checkpoint"])
            except Exception as err:  # noqa: BLE001 - any load failure leaves the old model serving
                metrics.reloads.labels("failed").inc()
                still = f"still serving {old_version}" if previous is not None else "no model is loaded"
                return _error(422, f"cannot load {body['checkpoint']} ({still}): {type(err).__name__}: {err}")
            state.retriever, state.checkpoint, state.load_error = new, body["checkpoint"], None
        metrics.reloads.labels("ok").inc()
        log.info("reloaded %s: %s -> %s", body["checkpoint"], old_version, new.model_version)
        return {"model_version": new.model_version, "previous_model_version": old_version,
                "checkpoint": body["checkpoint"], "n_items": len(new.item_ids)}

    return app


def _retrieve_group(retriever: Any, payloads: list[dict]) -> list[tuple[list, list, str]]:
    """Decode several requests (equal batching keys) as one batch; split the answer per request."""
    first = payloads[0]
    histories = [h for p in payloads for h in p["histories"]]
    result = retriever.retrieve(histories, first["k"], unknown=first["unknown"], exclude_seen=first["exclude_seen"],
                                side=_merge_columns(payloads, "side"),
                                user_features=_merge_columns(payloads, "user_features"),
                                batch_size=max(len(histories), 1))
    out, start = [], 0
    for p in payloads:
        stop = start + len(p["histories"])
        out.append((result.items[start:stop], result.scores[start:stop], retriever.model_version))
        start = stop
    return out
