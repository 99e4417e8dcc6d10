"""The Python client of the robaudit API (httpx): streaming uploads, timeouts, retries.

    with Client.from_env() as api:
        model = api.upload_model(Path("model.onnx"), name="resnet")
        dataset = api.upload_dataset(Path("holdout.npz"))
        audit = api.wait(api.create_audit(model["id"], dataset["id"], {"epsilons": [0.03]})["id"])

Files are streamed from disk in 64 KiB chunks, never read whole into memory. Connection
failures and 429/503 answers are retried with exponential backoff (a server's Retry-After
wins); every other error answer raises `ApiError` carrying the problem+json `detail`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import quote

import httpx

from infra.signing import DEFAULT_TOLERANCE_S
from infra.signing import verify_signature as _verify

TERMINAL = ("succeeded", "failed", "cancelled")
RETRY_STATUSES = frozenset({429, 503})
# Reads may wait on a model's intake; connecting or waiting for a pooled connection may not.
DEFAULT_TIMEOUT = httpx.Timeout(300.0, connect=10.0, pool=10.0)


class ApiError(Exception):
    """A problem+json answer, or no answer at all (status 0)."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(f"{status} {title}: {detail}" if status else f"{title}: {detail}")
        self.status, self.title, self.detail = status, title, detail


@dataclass(frozen=True)
class Retry:
    """How often, and how patiently, a refused or unreachable call is tried again."""

    attempts: int = 5  # in all, the first try included
    backoff: float = 0.5  # seconds before the second try; doubles after each
    max_wait: float = 30.0  # no single wait is longer, whatever Retry-After says


def target_from_env() -> tuple[str, str]:
    """The server and key of the client commands: ROBAUDIT_URL and ROBAUDIT_API_KEY."""
    from infra.config import Settings

    settings = Settings.from_env()
    url, key = settings.api_url, settings.api_key and settings.api_key.get_secret_value()
    if not url or not key:
        raise ApiError(0, "Not configured", "set ROBAUDIT_URL and ROBAUDIT_API_KEY")
    return url, key


class Client:
    """One API key on one server; use it as a context manager to close its connections."""

    def __init__(
        self,
        url: str,
        key: str,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retry: Retry | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retry = retry or Retry()
        self._http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout
        )

    @classmethod
    def from_env(cls, **kwargs: Any) -> Client:
        url, key = target_from_env()
        return cls(url, key, **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    # The transport: every call goes through here.

    def request(
        self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any
    ) -> httpx.Response:
        """Send, retrying what is safe to retry; raise `ApiError` on any error answer.

        A connection that never opened, and a 429 or 503, mean nothing was done: those are
        retried for every method. A call that broke midway is retried only when repeating it
        cannot do twice what was asked (`idempotent`, by default GET, HEAD and DELETE).
        """
        if idempotent is None:
            idempotent = method in ("GET", "HEAD", "DELETE")
        for attempt in range(1, self.retry.attempts + 1):
            last = attempt == self.retry.attempts
            try:
                response = self._http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                if last:
                    raise ApiError(0, "Unreachable", f"{self.url}: {exc}") from exc
                self._sleep(attempt, None)
                continue
            except httpx.TransportError as exc:
                if last or not idempotent:
                    raise ApiError(0, "No answer", f"{method} {self.url}{path}: {exc!r}") from exc
                self._sleep(attempt, None)
                continue
            if response.status_code in RETRY_STATUSES and not last:
                self._sleep(attempt, response.headers.get("Retry-After"))
                continue
            if response.is_error:
                raise _api_error(response)
            return response
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        wait = _seconds_until(retry_after)
        if wait is None:
            wait = self.retry.backoff * 2 ** (attempt - 1)
        time.sleep(min(wait, self.retry.max_wait))

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.request("GET", path, params=params).json()

    def post_json(self, path: str, body: Mapping[str, Any], *, idempotency_key: str = "") -> Any:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        response = self.request(
            "POST", path, json=body, headers=headers, idempotent=bool(idempotency_key)
        )
        return response.json()

    def upload(
        self,
        path: str,
        filename: str,
        content: IO[bytes] | bytes,
        fields: Mapping[str, str | None],
    ) -> Any:
        """POST a multipart form; a file object is streamed (and rewound on a retry)."""
        data = {k: v for k, v in fields.items() if v is not None}
        files = {"file": (filename, content, "application/octet-stream")}
        return self.request("POST", path, data=data, files=files).json()

    # The API's resources.

    def upload_model(
        self,
        file: Path,
        *,
        name: str | None = None,
        version: str | None = None,
        input_range: str | None = None,
        output: str | None = None,
        class_names: Sequence[str] | None = None,
        preprocessing: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """POST /v1/models. The same bytes again return the existing model.

        `preprocessing`: {"scale", "mean", "std", "layout"} (robustness.preprocessing); the
        audit then runs in pixel space [0, scale]."""
        fields = {
            "name": name,
            "version": version,
            "input_range": input_range,
            "output": output,
            "class_names": ",".join(class_names) if class_names is not None else None,
            "preprocessing": json.dumps(dict(preprocessing)) if preprocessing is not None else None,
        }
        with file.open("rb") as stream:
            model: dict[str, Any] = self.upload("/v1/models", file.name, stream, fields)
        return model

    def upload_dataset(self, file: Path, *, name: str | None = None) -> dict[str, Any]:
        """POST /v1/datasets: an .npz with arrays x (float) and y (int labels)."""
        with file.open("rb") as stream:
            dataset: dict[str, Any] = self.upload("/v1/datasets", file.name, stream, {"name": name})
        return dataset

    def create_audit(
        self,
        model_id: str,
        dataset_id: str,
        config: Mapping[str, Any] | None = None,
        *,
        force: bool = False,
    ) -> dict[str, Any]:
        """POST /v1/audits, with an Idempotency-Key so that a retry cannot queue it twice."""
        body = {"model_id": model_id, "dataset_id": dataset_id, "force": force}
        if config is not None:
            body["config"] = dict(config)
        created: dict[str, Any] = self.post_json(
            "/v1/audits", body, idempotency_key=uuid.uuid4().hex
        )
        return created

    def audit(self, audit_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.get(f"/v1/audits/{quote(audit_id, safe='')}")
        return found

    def report(self, audit_id: str) -> bytes:
        """The self-contained HTML report."""
        return self.request("GET", f"/v1/audits/{quote(audit_id, safe='')}/report").content

    def compare(self, audit_ids: Sequence[str], max_increase: float) -> dict[str, Any]:
        """GET /v1/compare: each audit after the first judged against the first."""
        query = {"audits": ",".join(audit_ids), "max_increase": max_increase}
        found: dict[str, Any] = self.get("/v1/compare", query)
        return found

    def wait(
        self,
        audit_id: str,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        poll: float = 1.0,
    ) -> dict[str, Any]:
        """Poll until the audit is succeeded, failed or cancelled."""
        while True:
            audit = self.audit(audit_id)
            if on_progress is not None:
                on_progress(audit)
            if audit["status"] in TERMINAL:
                return audit
            time.sleep(poll)


def _api_error(response: httpx.Response) -> ApiError:
    """The problem+json title and detail, or the start of whatever else came back."""
    reason = response.reason_phrase or "Error"
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if isinstance(problem, dict) and ("detail" in problem or "title" in problem):
        return ApiError(
            response.status_code, str(problem.get("title", reason)), str(problem.get("detail", ""))
        )
    return ApiError(response.status_code, reason, response.text[:300])


def _seconds_until(retry_after: str | None) -> float | None:
    """Retry-After as seconds: either a number of seconds or an HTTP date."""
    if not retry_after:
        return None
    try:
        return max(0.0, float(retry_after))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(retry_after)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def verify_signature(
    secret: str, body: bytes, header: str, *, tolerance_s: float = DEFAULT_TOLERANCE_S
) -> bool:
    """Whether a webhook delivery is genuine: `header` is its `Robaudit-Signature`, `body`
    the raw bytes received (before parsing), `secret` the one shown when the endpoint was
    created. Deliveries signed more than `tolerance_s` seconds ago are refused (replays)."""
    return _verify(secret, body, header, tolerance_s=tolerance_s)
