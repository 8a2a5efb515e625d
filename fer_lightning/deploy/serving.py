"""``fer-serve``: a trained model behind HTTP, on LitServe, with a browser page.

:class:`FERServeAPI` is the LitAPI the inference workers run (decode an upload, predict a dynamic batch, encode
the answer); :func:`build_server` wires it into a :class:`litserve.LitServer` whose FastAPI app also serves:

* ``POST /predict``: an image as a multipart upload (any field name) or as the raw body (``image/jpeg``,
  ``image/png``, ``image/tiff``, ``image/webp``, ``application/octet-stream``) -> the JSON answer of
  :meth:`~fer_lightning.deploy.served.ServedModel.answer`. The body is read here, within ``max_bytes``, and handed
  to the workers as bytes; a refused request is a 4xx with one line of JSON ``{"error": "..."}`` and never
  reaches the model, an undecodable image is refused alone, never with the batch it arrived in.
* ``GET /`` and ``/app.js``: the page (plain HTML and JavaScript in the package, no CDN: it works offline);
* ``GET /health``, ``GET /info`` (LitServe's own; ``/info``'s ``model`` is :func:`describe`), ``GET /metrics``
  (:class:`~fer_lightning.deploy.metrics.ServeMetrics`, Prometheus text).
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import signal
import sys
import time
from importlib import resources
from typing import Any

import litserve as ls
from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError
from litserve.loops.simple_loops import BatchedLoop
from litserve.server import RegularRequestHandler
from litserve.utils import LitAPIStatus, LoopResponseType

from fer_lightning.data.images import ImageTooLarge
from fer_lightning.deploy.metrics import ServeMetrics
from fer_lightning.deploy.served import ServedModel, set_threads
from fer_lightning.errors import FERError

log = logging.getLogger("fer_lightning.serve")

RAW_TYPES = ("image/jpeg", "image/png", "image/tiff", "image/webp", "application/octet-stream")
MULTIPART = "multipart/form-data"
PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript")}


class Refused(Exception):
    """A request answered with ``status`` and the one-line JSON ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def response(self) -> JSONResponse:
        return JSONResponse({"error": " ".join(str(self).split())}, status_code=self.status)


class WaitingBatchedLoop(BatchedLoop):
    """LitServe's batched loop, but a worker waits for requests instead of polling for them: it sleeps until a
    request arrives, then takes more until ``max_batch_size`` or until ``batch_timeout`` has passed since that first
    request. (LitServe's own loop polls its queue every millisecond, idle or not: on 2 cores an idle server took
    ~0.15 of a core from the busy ones.)"""

    def get_batch_requests(self, lit_api: ls.LitAPI, request_queue: Any, transport: Any) -> tuple[list, list]:
        payloads, timed_out, deadline = [], [], None
        while len(payloads) < lit_api.max_batch_size:
            try:
                item = request_queue.get(timeout=1.0 if deadline is None else max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if item == _SENTINEL_VALUE:
                raise _StopLoopError()
            response_queue_id, uid, timestamp, x_enc = item
            deadline = deadline or time.monotonic() + lit_api.batch_timeout
            self.put_response(transport, response_queue_id, uid, (), LitAPIStatus.START, LoopResponseType.REGULAR)
            if lit_api.request_timeout not in (-1, False) and time.monotonic() - timestamp > lit_api.request_timeout:
                timed_out.append((response_queue_id, uid))
            else:
                payloads.append((response_queue_id, uid, x_enc))
        return payloads, timed_out


class FERServeAPI(ls.LitAPI):
    """The LitAPI of ``fer-serve``: each inference worker loads the model once (:meth:`setup`) and answers batches.

    Args:
        model_path: the checkpoint or exported file (:class:`~fer_lightning.deploy.served.ServedModel`).
        max_pixels: an upload with more pixels is refused (413) from its header, before decoding.
        threads: torch / onnxruntime intra-op threads of each worker; None: the libraries' default.
        max_batch_size: requests a worker classifies at once (1: no batching).
        batch_timeout: seconds a worker waits to fill a batch.
    """

    def __init__(self, model_path: str, max_pixels: int, threads: int | None = None, max_batch_size: int = 1,
                 batch_timeout: float = 0.0) -> None:
        super().__init__(max_batch_size=int(max_batch_size), batch_timeout=float(batch_timeout),
                         loop=WaitingBatchedLoop() if int(max_batch_size) > 1 else "auto")
        self.model_path, self.max_pixels, self.threads = str(model_path), int(max_pixels), threads

    def setup(self, device: str) -> None:
        set_threads(self.threads)
        self.model = ServedModel(self.model_path, device, self.threads)

    def decode_request(self, request: dict) -> dict[str, Any]:
        """bytes -> the prepared face; an unreadable image becomes a refusal carried to :meth:`encode_response`
        (raising here would fail the whole batch)."""
        try:
            return self.model.prepare(request["image"], self.max_pixels)
        except FERError as e:
            return {"refused": 413 if isinstance(e, ImageTooLarge) else 400, "error": str(e)}

    def predict(self, x: Any) -> Any:
        items = x if self.max_batch_size > 1 else [x]
        ready = [p for p in items if "refused" not in p]
        probs = iter(self.model.probabilities([p["face"] for p in ready]) if ready else [])
        out = [p if "refused" in p else {**self.model.answer(next(probs), p), "batch": len(ready)} for p in items]
        return out if self.max_batch_size > 1 else out[0]

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


def describe(model: ServedModel, max_batch_size: int, batch_timeout: float, max_bytes: int,
             max_pixels: int) -> dict[str, Any]:
    """``/info``'s ``model``: the model (:meth:`ServedModel.info`), the package version and the request limits."""
    from fer_lightning import __version__

    return {**model.info(), "version": __version__, "max_batch_size": int(max_batch_size),
            "batch_timeout": float(batch_timeout), "max_bytes": int(max_bytes), "max_pixels": int(max_pixels)}


async def read_upload(request: Request, max_bytes: int) -> bytes:
    """The image bytes of a ``/predict`` request, read within ``max_bytes``; :class:`Refused` otherwise."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != MULTIPART and kind not in RAW_TYPES:
        raise Refused(415, f"content type '{kind or 'none'}' is not accepted: send the image as a multipart "
                           f"upload or as the body with one of {', '.join(RAW_TYPES)}")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise Refused(413, f"the body ({int(declared)} bytes) is larger than max_bytes={max_bytes}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise Refused(413, f"the body is larger than max_bytes={max_bytes}")
    if not body:
        raise Refused(400, "the body is empty: send an image")
    if kind != MULTIPART:
        return bytes(body)
    request._body = bytes(body)  # starlette parses the form from the body already read
    try:
        form = await request.form()
    except Exception as e:  # a malformed multipart body (starlette's parsers raise several kinds)
        raise Refused(400, f"the multipart body cannot be parsed ({e.__class__.__name__})") from e
    files = [v for _, v in form.multi_items() if hasattr(v, "read")]
    if not files:
        raise Refused(400, "the multipart body holds no file: upload the image as a file field")
    data = await files[0].read()  # the upload's content; its file name is never used
    if not data:
        raise Refused(400, "the uploaded file is empty")
    return data


def build_server(model_path: str, *, accelerator: str = "auto", devices: Any = "auto", workers_per_device: int = 1,
                 max_batch_size: int = 1, batch_timeout: float = 0.0, max_bytes: int = 20_000_000,
                 max_pixels: int = 40_000_000, threads: int | None = None, timeout: float = 30) -> ls.LitServer:
    """The LitServer of ``fer-serve`` (:func:`run` starts it). The model is loaded once here, to check it and to
    describe it in ``/info``, then by each inference worker."""
    for name, value, least in (("max_batch_size", max_batch_size, 1), ("workers_per_device", workers_per_device, 1),
                               ("max_bytes", max_bytes, 1), ("max_pixels", max_pixels, 1),
                               ("batch_timeout", batch_timeout, 0), ("timeout", timeout, 0.001)):
        if not value >= least:
            raise FERError(f"{name}={value} is not allowed: give a number >= {least}")
    model = ServedModel(model_path, "cpu")
    api = FERServeAPI(model_path, max_pixels, threads, max_batch_size, batch_timeout)
    server = ls.LitServer(api, accelerator=accelerator, devices=devices, workers_per_device=int(workers_per_device),
                          timeout=timeout,
                          model_metadata=describe(model, max_batch_size, batch_timeout, max_bytes, max_pixels))
    app, metrics, handler = server.app, ServeMetrics(), RegularRequestHandler(api, server)
    # LitServe's own "/" (a text line) and "/predict" (JSON or a form only) give way to the page and the route below
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) not in ("/", api.api_path)]

    @app.post(api.api_path)
    async def predict(request: Request) -> Response:
        start = time.perf_counter()
        try:
            out = await handler.handle_request({"image": await read_upload(request, max_bytes)}, dict)
            if "refused" in out:
                raise Refused(out["refused"], out["error"])
        except Refused as e:
            metrics.record(e.status, time.perf_counter() - start)
            return e.response()
        except HTTPException as e:  # LitServe's own: a request that waited past `timeout` (504), a worker's error
            metrics.record(e.status_code, time.perf_counter() - start)
            return Refused(e.status_code, str(e.detail)).response()
        metrics.record(200, time.perf_counter() - start, out.pop("batch"))
        return JSONResponse(out)

    @app.get("/metrics")
    async def metrics_text() -> Response:
        return PlainTextResponse(metrics.text())

    for path, (name, media) in PAGE_FILES.items():
        page = (resources.files("fer_lightning.deploy") / "page" / name).read_bytes()
        app.add_api_route(path, lambda page=page, media=media: Response(page, media_type=media), methods=["GET"])
    return server


def run(server: ls.LitServer, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> None:
    """Serve until Ctrl-C: one HTTP server process (forked: the routes and the metrics live there) in front of the
    inference worker processes. SIGTERM stops it as Ctrl-C does (LitServe's graceful shutdown)."""
    signal.signal(signal.SIGTERM, functools.partial(_interrupt, os.getpid()))
    log.info("fer-serve: http://%s:%d/ (the page), POST /predict, GET /health /info /metrics", host, port)
    server.run(host=host, port=int(port), num_api_servers=1, api_server_worker_type="process",
               generate_client_file=False, log_level=log_level)


def _interrupt(main_pid: int, signum: int, frame: Any) -> None:
    """SIGTERM: Ctrl-C in the main process; a quiet exit in the HTTP server process forked from it (uvicorn has
    already stopped there, and passes the signal on)."""
    if os.getpid() != main_pid:
        sys.exit(0)
    raise KeyboardInterrupt
