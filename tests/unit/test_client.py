"""The httpx client against a real local HTTP server that answers from a script: retries on
refusals and dead ports, problem+json surfaced, uploads streamed from the file."""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from robaudit.client import ApiError, Client, Retry

NO_WAIT = Retry(attempts=3, backoff=0.0)


class Scripted(ThreadingHTTPServer):
    """Answers each request with the next (status, headers, body) of `script`; records them."""

    def __init__(self, script: list[tuple[int, dict[str, str], bytes]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = script
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class _Handler(BaseHTTPRequestHandler):
    server: Scripted

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.server.seen.append((self.command, self.path, dict(self.headers), body))
        status, headers, payload = self.server.script.pop(0)
        if status == 0:  # hang up without an answer
            self.close_connection = True
            return
        self.send_response(status)
        for name, value in {"Content-Length": str(len(payload)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer  # noqa: N815

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[Scripted] = []

    def start(*script: tuple[int, dict[str, str], bytes]) -> Scripted:
        httpd = Scripted(list(script))
        threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True).start()
        servers.append(httpd)
        return httpd

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


JSON = {"Content-Type": "application/json"}
PROBLEM = {"Content-Type": "application/problem+json"}


def problem(status: int, title: str, detail: str) -> bytes:
    return json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail})\
        .encode()  # fmt: skip


def test_503_and_429_are_retried_and_retry_after_is_read(serve: Any) -> None:
    httpd = serve(
        (503, {"Retry-After": "0", **PROBLEM}, problem(503, "Unavailable", "broker down")),
        (429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT", **PROBLEM}, problem(429, "x", "y")),
        (200, JSON, b'{"id": "a1", "status": "queued"}'),
    )
    with Client(httpd.url, "k", retry=NO_WAIT) as client:
        assert client.audit("a1") == {"id": "a1", "status": "queued"}
    assert [s[1] for s in httpd.seen] == ["/v1/audits/a1"] * 3
    assert httpd.seen[0][2]["Authorization"] == "Bearer k"


def test_refusals_past_the_last_attempt_surface_the_problem_detail(serve: Any) -> None:
    busy = (429, {"Retry-After": "0", **PROBLEM}, problem(429, "Too Many Requests", "slow down"))
    httpd = serve(busy, busy, busy)
    with Client(httpd.url, "k", retry=NO_WAIT) as client, pytest.raises(ApiError) as caught:
        client.get("/v1/audits")
    assert str(caught.value) == "429 Too Many Requests: slow down"
    assert len(httpd.seen) == 3


def test_other_errors_are_not_retried_and_keep_their_message(serve: Any) -> None:
    httpd = serve((422, PROBLEM, problem(422, "Unprocessable", "steps must be ≥ 1")))
    with Client(httpd.url, "k", retry=NO_WAIT) as client, pytest.raises(ApiError) as caught:
        client.post_json("/v1/audits", {"config": {"steps": 0}})
    assert caught.value.status == 422
    assert caught.value.detail == "steps must be ≥ 1"
    assert len(httpd.seen) == 1
    assert json.loads(httpd.seen[0][3]) == {"config": {"steps": 0}}


def test_a_dead_port_is_tried_again_then_named() -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = Client(f"http://127.0.0.1:{port}", "k", retry=NO_WAIT)
    with client, pytest.raises(ApiError) as caught:
        client.audit("a1")
    assert caught.value.status == 0
    assert str(caught.value).startswith(f"Unreachable: http://127.0.0.1:{port}")


def test_a_post_that_broke_midway_is_not_repeated_unless_keyed(serve: Any) -> None:
    httpd = serve((0, {}, b""), (0, {}, b""), (201, JSON, b'{"id": "a2"}'))
    with Client(httpd.url, "k", retry=NO_WAIT) as client:
        with pytest.raises(ApiError, match="No answer"):
            client.post_json("/v1/audits", {"model_id": "m"})
        assert len(httpd.seen) == 1  # no second audit behind the user's back
        assert client.create_audit("m", "d") == {"id": "a2"}
    keys = [s[2].get("Idempotency-Key") for s in httpd.seen[1:]]
    assert len(keys) == 2
    assert keys[0] == keys[1]  # the retry carries the same key: the server replays it


class CountingFile(io.FileIO):
    """A real file that records how much each read asked for."""

    sizes: list[int]

    def read(self, size: int | None = -1) -> bytes:
        self.sizes.append(-1 if size is None else size)
        return super().read(size)


def test_uploads_stream_from_the_file_and_arrive_whole(serve: Any, tmp_path: Path) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    (tmp_path / "model.onnx").write_bytes(payload)
    httpd = serve((201, JSON, b'{"id": "m1"}'))
    with (
        Client(httpd.url, "k", retry=NO_WAIT) as client,
        CountingFile(tmp_path / "model.onnx") as f,
    ):
        f.sizes = []
        fields = {"name": "resnet", "version": None}
        assert client.upload("/v1/models", "model.onnx", f, fields) == {"id": "m1"}
    _, path, headers, body = httpd.seen[0]
    assert path == "/v1/models"
    assert headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert int(headers["Content-Length"]) == len(body)  # sized up front from the file
    assert payload in body
    assert b'name="name"\r\n\r\nresnet' in body
    assert b'name="version"' not in body  # unset fields are not sent as "None"
    assert b'filename="model.onnx"' in body
    assert f.sizes
    assert all(0 < n <= 64 * 1024 for n in f.sizes)  # never the whole file at once
