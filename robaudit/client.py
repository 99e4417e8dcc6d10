"""A small HTTP client for the robaudit API (stdlib only, so pipelines need nothing extra)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

TERMINAL = ("succeeded", "failed", "cancelled")


class ApiError(Exception):
    """A problem+json answer, or no answer at all."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status


class Client:
    """`Client.from_env()` reads ROBAUDIT_URL and ROBAUDIT_API_KEY."""

    def __init__(self, url: str, key: str, timeout: float = 300) -> None:
        self.url, self.key, self.timeout = url.rstrip("/"), key, timeout

    @classmethod
    def from_env(cls) -> Client:
        from infra.config import Settings

        settings = Settings.from_env()
        url, key = settings.api_url, settings.api_key and settings.api_key.get_secret_value()
        if not url or not key:
            raise ApiError(0, "Not configured", "set ROBAUDIT_URL and ROBAUDIT_API_KEY")
        return cls(url, key)

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> tuple[bytes, str]:
        req = urllib.request.Request(self.url + path, data=body, method=method)  # noqa: S310
        req.add_header("Authorization", f"Bearer {self.key}")
        if content_type:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                return resp.read(), resp.headers.get_content_type()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                problem = json.loads(raw)
                raise ApiError(
                    exc.code, problem.get("title", exc.reason), problem.get("detail", "")
                ) from exc
            except (ValueError, AttributeError):
                raise ApiError(
                    exc.code, str(exc.reason), raw[:300].decode(errors="replace")
                ) from exc
        except urllib.error.URLError as exc:
            raise ApiError(0, "Unreachable", f"{self.url}: {exc.reason}") from exc

    def get(self, path: str) -> Any:
        return json.loads(self.request("GET", path)[0])

    def post_json(self, path: str, body: dict[str, Any]) -> Any:
        return json.loads(
            self.request("POST", path, json.dumps(body).encode(), "application/json")[0]
        )

    def upload(self, path: str, filename: str, payload: bytes, fields: dict[str, str]) -> Any:
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
            for k, v in fields.items()
            if v is not None
        ]
        disposition = f'form-data; name="file"; filename="{filename}"'
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        parts.append(
            (head + "Content-Type: application/octet-stream\r\n\r\n").encode() + payload + b"\r\n"
        )
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        raw, _ = self.request("POST", path, body, f"multipart/form-data; boundary={boundary}")
        return json.loads(raw)

    def wait(
        self,
        audit_id: str,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        poll: float = 1.0,
    ) -> dict[str, Any]:
        """Poll until the audit is succeeded, failed or cancelled."""
        while True:
            audit: dict[str, Any] = self.get(f"/v1/audits/{urllib.parse.quote(audit_id)}")
            if on_progress is not None:
                on_progress(audit)
            if audit["status"] in TERMINAL:
                return audit
            time.sleep(poll)
