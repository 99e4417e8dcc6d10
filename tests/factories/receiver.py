"""A real webhook receiver on 127.0.0.1, in a thread: answers from a script, keeps requests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    answers: list[tuple[int, dict[str, str], bytes]]  # popped in order; then 200
    requests: list[Received] = field(default_factory=list)


@contextmanager
def receiver(answers: list[tuple[int, dict[str, str], bytes]] | None = None) -> Iterator[Receiver]:
    state = Receiver("", list(answers or []))
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                state.requests.append(Received(dict(self.headers.items()), body))
                code, headers, answer = state.answers.pop(0) if state.answers else (200, {}, b"ok")
            self.send_response(code)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_port}/hook"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
