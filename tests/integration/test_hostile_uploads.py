"""The hostile corpus (issue 11) against the API: every case gets its documented 4xx.

One app on SQLite serves the whole corpus; the failure modes that only PostgreSQL showed
(NUL bytes, unpaired surrogates, naive times: 500s before) run again at the end on both
databases. Each corpus case also proves that:

- nothing was left in the artifact store or its temp dir (validated before stored);
- a canary file outside the data directory, named by relative and absolute paths from every
  place a graph can hold external data, was never opened by the API process (an audit hook
  on "open"; the intake child reads only the upload, under Landlock);
- /healthz still answers; after the corpus, the API's peak RSS grew by a bounded amount
  and a normal upload and audit request still work.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from onnx import numpy_helper
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from infra.config import Settings
from infra.persistence.migrate import upgrade
from infra.persistence.session import make_engine
from service.app import create_app
from tests.factories import hostile, images
from tests.factories.api import tenant_headers, upload_dataset, upload_model

pytestmark = pytest.mark.integration

MiB = 1 << 20
CANARY = f"canary-{uuid.uuid4().hex}.txt"
JSON_CAP = 64 * 1024
PEAK_RSS_GROWTH_BOUND = 300 * MiB  # the bodies below declare up to 3 GiB; none is buffered
_opened: list[str] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and args and isinstance(args[0], str | bytes | os.PathLike):
        path = os.fsdecode(args[0])
        if CANARY in path:
            _opened.append(path)


sys.addaudithook(_audit)  # process-wide and permanent; it only looks for the canary's name

Send = Callable[[FlaskClient, dict[str, str], "Env"], TestResponse]


@dataclass(frozen=True)
class Env:
    canary: Path
    tmp_dir: Path


@dataclass(frozen=True)
class Case:
    id: str
    send: Send
    status: int
    detail: str


def model(build: Callable[[Env], bytes], **fields: Any) -> Send:
    return lambda client, auth, env: upload_model(client, auth, build(env), **fields)


def dataset(build: Callable[[], bytes]) -> Send:
    return lambda client, auth, _env: upload_dataset(client, auth, build())


def post_json(path: str, text: str) -> Send:
    return lambda client, auth, _env: client.post(
        path, data=text, headers=auth, content_type="application/json"
    )


def get(path: str) -> Send:
    return lambda client, auth, _env: client.get(path, headers=auth)


class LazyBody(io.RawIOBase):
    """A body that is never built: it declares its size and counts what is read of it."""

    def __init__(self, size: int) -> None:
        self.size, self.pos, self.read_total = size, 0, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True  # werkzeug's test client measures the body by seeking to its end

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.size + offset if whence == 2 else self.pos
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), self.size - self.pos, 1 << 16))
        buffer[:n] = b"\0" * n
        self.pos += n
        self.read_total += n
        return n


def huge_json(size: int, *, chunked: bool = False) -> Send:
    """A JSON body of `size` bytes, declared up front or (chunked) only found out by reading."""

    def send(client: FlaskClient, auth: dict[str, str], _env: Env) -> TestResponse:
        body = LazyBody(size)
        streaming = {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True}
        resp = client.post(
            "/v1/audits",
            input_stream=body,
            headers=auth,
            content_type="application/json",
            environ_overrides=streaming if chunked else {},
        )
        read_at_most = JSON_CAP + 1 if chunked else 0
        assert body.read_total <= read_at_most, f"{body.read_total} bytes read before refusing"
        return resp

    return send


def _external_cases() -> list[Case]:
    cases = []
    for place, build in hostile.EXTERNAL_DATA_PLACES.items():
        for how in ("relative", "absolute"):

            def make(env: Env, build: Callable[[str], bytes] = build, how: str = how) -> bytes:
                where = os.path.relpath(env.canary, env.tmp_dir) if how == "relative" else None
                return build(where or str(env.canary))

            cases.append(Case(f"external-{place}-{how}", model(make), 422, "external data"))
    return cases


def _model_cases() -> list[Case]:
    def fixed(data: Callable[[], bytes]) -> Callable[[Env], bytes]:
        return lambda _env: data()

    linear = hostile.linear_classifier().SerializeToString()
    specs: list[tuple[str, Callable[[], bytes], int, str]] = [
        ("garbage", lambda: b"PK\x03\x04 not protobuf" * 10, 422, "not a valid ONNX file"),
        ("empty", lambda: b"", 422, "not a valid ONNX file"),
        ("truncated", hostile.truncated_model, 422, "not a valid ONNX file"),
        ("domain-main", hostile.foreign_domain_model, 422, "com.evil"),
        ("domain-function", hostile.foreign_domain_in_function, 422, "in function 'F'"),
        ("domain-if", hostile.foreign_domain_in_if, 422, "subgraph 'then_branch'"),
        ("nodes-150k", lambda: hostile.many_nodes_model(150_000), 422, "more than 1000 nodes"),
        ("nesting-20", lambda: hostile.deeply_nested_model(20), 422, "the limit is 8"),
        ("constant-of-shape", hostile.huge_constant_model, 422, "limit is"),
        ("constant-of-shape-in-loop", hostile.constant_of_shape_in_loop, 422, "'body'"),
        ("expand", hostile.expand_bomb, 422, "node 'Expand'"),
        ("tile", hostile.tile_bomb, 422, "node 'Tile'"),
        ("reshape", hostile.reshape_bomb, 422, "node 'Reshape'"),
        ("range", hostile.range_bomb, 422, "node 'Range'"),
        ("loop-trips", hostile.endless_loop, 422, "iterations"),
        ("sparse-dims", hostile.huge_sparse_initializer, 422, "sparse tensor"),
        ("huge-input", hostile.huge_input_model, 422, "elements per sample"),
        ("not-classifier", hostile.not_a_classifier_model, 422, "[batch, classes]"),
        ("two-inputs", hostile.two_input_model, 422, "2 data inputs"),
        ("int-input", hostile.int_input_model, 422, "float tensors"),
        ("too-large", lambda: bytes(5 * MiB), 413, "limit of"),
    ]
    cases = [Case(f"model-{n}", model(fixed(b)), s, d) for n, b, s, d in specs]
    for value in ("-inf,inf", "nan,1", "0,1e400", "1,0"):
        send = model(fixed(lambda: linear), input_range=value)
        cases.append(Case(f"input-range-{value}", send, 422, "two finite numbers"))
    wide = model(fixed(lambda: linear), input_range="-1e308,1e308")
    cases.append(Case("input-range-wider-than-float32", wide, 422, "wider than float32"))
    cases += [
        Case("output-unknown", model(fixed(lambda: linear), output="nope"), 422, "not found"),
        Case(
            "class-names-count",
            model(fixed(lambda: linear), class_names="a,b"),
            422,
            "class_names has 2 entries",
        ),
        Case("name-nul", model(fixed(lambda: linear), name="a\x00b"), 422, "NUL"),
    ]
    return cases


def _npz(x: np.ndarray, y: np.ndarray) -> Callable[[], bytes]:
    return lambda: hostile.npz_bytes(x=x, y=y)


F32 = np.float32
PNG = images.image_bytes(images.RED)
BOMB = images.png_claiming(4000, 4000)  # under one image's cap; over the 1 MiB total's pixels


def _dataset_cases() -> list[Case]:
    ok_x, ok_y = np.zeros((2, 4), F32), np.zeros(2, np.int64)
    specs: list[tuple[str, Callable[[], bytes], int, str]] = [
        ("pickled", hostile.pickled_npz, 422, "without unpickling"),
        ("zip-bomb", hostile.zip_bomb_npz, 422, "inflates to"),
        ("total-over-cap", lambda: hostile.total_over_cap_npz(MiB), 422, "in total"),
        ("not-zip", lambda: b"x,y\n1,2\n", 422, "not an .npz"),
        ("missing-y", lambda: hostile.npz_bytes(x=ok_x), 422, "lacks array(s) ['y']"),
        ("nested-member", hostile.nested_member_npz, 422, "'sub/x'"),
        ("duplicate-member", hostile.duplicate_member_npz, 422, "exactly the arrays"),
        (
            "extra-member",
            lambda: hostile.npz_bytes(x=ok_x, y=ok_y, z=ok_y),
            422,
            "found ['x', 'y', 'z']",
        ),
        ("many-members", hostile.many_members_npz, 422, "5000 members"),
        ("lying-header", hostile.lying_header_npz, 422, "the file is damaged"),
        ("label-2^40", _npz(ok_x, np.array([0, 1 << 40])), 422, "the label 1099511627776"),
        ("label-uint64-max", _npz(ok_x, np.array([0, 2**64 - 1], np.uint64)), 422, "label"),
        ("zero-width", _npz(np.zeros((2, 0), F32), ok_y), 422, "zero-width"),
        ("one-dim-x", _npz(np.zeros(2, F32), ok_y), 422, "N×…"),
        ("nan-x", _npz(np.full((2, 4), np.nan, F32), ok_y), 422, "NaN or inf"),
        ("inf-x", _npz(np.full((2, 4), np.inf, F32), ok_y), 422, "NaN or inf"),
        ("float-y", _npz(ok_x, np.zeros(2, F32)), 422, "integer label"),
        ("negative-y", _npz(ok_x, np.array([0, -1])), 422, "negative labels"),
        ("length-mismatch", _npz(ok_x, np.zeros(3, np.int64)), 422, "2 samples but y has 3"),
        ("too-large", lambda: bytes(5 * MiB), 413, "limit of"),
        ("image-zip-slip", lambda: images.zip_of({"../a/0.png": PNG}), 422, "climbs out"),
        ("image-symlink", lambda: images.zip_of({"a/0.png": PNG}, ("a/0.png",)), 422, "link"),
        ("image-undecodable", lambda: images.zip_of({"a/0.png": b"GIF8"}), 422, "not a readable"),
        ("image-pixels", lambda: images.zip_of({"a/0.png": BOMB}), 422, "more than 262144 pixels"),
    ]
    return [Case(f"dataset-{n}", dataset(b), s, d) for n, b, s, d in specs]


AUDIT = '{"model_id": "m", "dataset_id": "d", "config": %s}'
SURROGATE = '{"model_id": "\\ud800", "dataset_id": "d"}'  # an unpaired surrogate: not UTF-8


def _request_cases() -> list[Case]:
    configs = {
        "epsilon-infinity": ('{"epsilons": [Infinity]}', "finite"),
        "epsilon-1e400": ('{"epsilons": [1e400]}', "finite"),
        "epsilon-nan": ('{"epsilons": [NaN]}', "finite"),
        "step-size-infinity": ('{"step_size": Infinity}', "finite"),
        "landscape-span-nan": ('{"landscape": {"span": NaN}}', "finite"),
        "steps-1e400": ('{"steps": 1e400}', "finite"),
    }
    cases = [
        Case(f"config-{n}", post_json("/v1/audits", AUDIT % c), 422, d)
        for n, (c, d) in configs.items()
    ]
    nul_body = json.dumps({"model_id": "a\x00", "dataset_id": "d"})
    return [
        *cases,
        Case("audit-id-nul", post_json("/v1/audits", nul_body), 422, "NUL"),
        Case("audit-id-surrogate", post_json("/v1/audits", SURROGATE), 422, "Unicode"),
        Case("json-3GiB-declared", huge_json(3 << 30), 413, "limit for a JSON body"),
        Case("json-100MB-declared", huge_json(100 * MiB), 413, "limit for a JSON body"),
        Case("json-100MB-chunked", huge_json(100 * MiB, chunked=True), 413, "more than 65536"),
        Case("path-id-nul", get("/v1/models/abc%00def"), 422, "NUL"),
        Case("path-audit-nul", get("/v1/audits/%00"), 422, "NUL"),
        Case("path-id-invalid-utf8", get("/v1/datasets/%ff%fe"), 404, "no dataset"),
        Case("compare-bad-percent", get("/v1/compare?audits=a,b&max_increase=ten%25"), 422, "10%"),
        Case("cursor-naive", get(f"/v1/models?cursor={_naive_cursor()}"), 400, "cursor"),
        Case("compare-inf", get("/v1/compare?audits=a,b&max_increase=inf"), 422, "finite"),
    ]


def _naive_cursor() -> str:
    import base64

    raw = json.dumps(["2024-01-01T00:00:00", "x"]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


CASES = [*_external_cases(), *_model_cases(), *_dataset_cases(), *_request_cases()]


def _sqlite_app(root: Path, **overrides: Any) -> tuple[Flask, Settings]:
    url = f"sqlite:///{root / 'api.db'}"
    upgrade(url)
    settings = Settings(data_dir=root / "data", database_url=url, **overrides)
    return create_app({"ROBAUDIT_SETTINGS": settings, "TESTING": True}), settings


def _key(app: Flask, tenant: str) -> dict[str, str]:
    engine = make_engine(app.config["DATABASE_URL"])
    with Session(engine) as session:
        headers = tenant_headers(session, tenant)
    engine.dispose()
    return headers


@pytest.fixture(scope="module")
def corpus_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Flask, Env, Path]]:
    root = tmp_path_factory.mktemp("hostile")
    app, settings = _sqlite_app(
        root,
        max_model_bytes=4 * MiB,
        max_dataset_bytes=4 * MiB,
        max_npz_member_bytes=MiB,
        max_npz_total_bytes=MiB,
        max_json_bytes=JSON_CAP,
        intake_max_nodes=1000,
        intake_memory_bytes=1024 * MiB,
        intake_cpu_s=30,
        intake_wall_s=60,
    )
    canary = root / CANARY
    canary.write_text("secret outside the data directory\n")
    _opened.clear()  # that open was ours
    yield app, Env(canary=canary, tmp_dir=settings.artifact_dir / "tmp"), settings.artifact_dir
    app.extensions["robaudit.db"].engine.dispose()


@pytest.fixture(scope="module")
def corpus_auth(corpus_app: tuple[Flask, Env, Path]) -> dict[str, str]:
    return _key(corpus_app[0], "mallory")


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


@pytest.fixture(scope="module")
def rss_baseline() -> int:
    # Reset the high-water mark, so that earlier tests in this process do not hide ours.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _peak_rss()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_the_canary_hook_sees_opens() -> None:
    """The audit hook is live: it records an open of the canary's name (test of the test)."""
    probe = Path("/nonexistent") / CANARY
    with pytest.raises(FileNotFoundError):
        probe.open()
    assert _opened == [str(probe)]
    _opened.clear()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_case(
    case: Case,
    corpus_app: tuple[Flask, Env, Path],
    corpus_auth: dict[str, str],
    rss_baseline: int,
) -> None:
    app, env, artifacts = corpus_app
    client = app.test_client()
    before = _files(artifacts)
    resp = case.send(client, corpus_auth, env)
    resp.request.environ["wsgi.input"].close()  # the test client spools big bodies to a file
    assert resp.status_code == case.status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/problem+json"
    body = resp.get_json(force=True)
    assert body["status"] == case.status
    assert case.detail in body["detail"], body["detail"]
    assert _files(artifacts) == before, "a rejected upload left a file in the store"
    assert not _opened, f"the API opened {_opened}"
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_after_the_corpus_the_api_is_whole(
    corpus_app: tuple[Flask, Env, Path], corpus_auth: dict[str, str], rss_baseline: int
) -> None:
    app, env, artifacts = corpus_app
    client = app.test_client()
    assert len(CASES) >= 40
    growth = _peak_rss() - rss_baseline
    print(f"API process peak RSS grew by {growth / MiB:.1f} MiB over {len(CASES)} cases")
    assert growth < PEAK_RSS_GROWTH_BOUND, f"peak RSS grew by {growth / MiB:.0f} MiB"
    assert not _opened
    assert not list(env.tmp_dir.iterdir()), "temp files were left behind"
    made = upload_model(client, corpus_auth, hostile.linear_classifier().SerializeToString())
    assert made.status_code == 201, made.get_data(as_text=True)
    x, y = np.random.default_rng(0).random((4, 4), F32), np.arange(4) % 3
    data = upload_dataset(client, corpus_auth, hostile.npz_bytes(x=x, y=y))
    assert data.status_code == 201, data.get_data(as_text=True)
    assert data.get_json()["num_classes"] == 3
    assert len(_files(artifacts)) == 2  # the two accepted uploads, and nothing else
    audit = client.post(
        "/v1/audits",
        json={"model_id": made.get_json()["id"], "dataset_id": data.get_json()["id"]},
        headers=corpus_auth,
    )
    assert audit.status_code == 202, audit.get_data(as_text=True)


@pytest.mark.parametrize(
    ("limit", "overrides", "weights", "named"),
    [
        ("wall", {"intake_wall_s": 0.05}, 0, "s of wall time"),
        ("memory", {"intake_memory_bytes": 200 * MiB}, 30 << 20, "GiB of memory"),
    ],
)
def test_a_sandbox_limit_refuses_the_model_and_names_the_limit(
    tmp_path: Path, limit: str, overrides: dict[str, Any], weights: int, named: str
) -> None:
    """The API's intake child hits its limit: 422 naming it, and the API keeps serving."""
    app, settings = _sqlite_app(tmp_path, max_model_bytes=256 * MiB, **overrides)
    auth, client = _key(app, "acme"), app.test_client()
    graph = hostile.linear_classifier()
    if weights:  # protobuf needs several copies of 120 MB while parsing and checking
        graph.graph.initializer.append(numpy_helper.from_array(np.ones(weights, F32), "unused"))
    resp = upload_model(client, auth, graph.SerializeToString())
    resp.request.environ["wsgi.input"].close()
    assert resp.status_code == 422, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["limit"] == limit
    assert named in body["detail"], body["detail"]
    assert "ROBAUDIT_INTAKE_" in body["detail"], body["detail"]
    assert not _files(settings.artifact_dir)
    assert client.get("/healthz").status_code == 200
    app.extensions["robaudit.db"].engine.dispose()


@pytest.mark.parametrize(
    ("send", "status", "detail"),
    [
        (get("/v1/models/abc%00def"), 422, "NUL"),
        (get("/v1/audits?model_id=a%00b"), 422, "NUL"),
        (get(f"/v1/audits?cursor={_naive_cursor()}"), 400, "cursor"),
        (post_json("/v1/audits", SURROGATE), 422, "Unicode"),
        (model(lambda _env: b"", name="a\x00b"), 422, "NUL"),
    ],
    ids=["path-nul", "query-nul", "naive-cursor", "surrogate", "form-nul"],
)
def test_text_and_times_the_database_cannot_take_get_a_4xx_on_both_databases(
    client: FlaskClient, auth: dict[str, str], send: Send, status: int, detail: str
) -> None:
    resp = send(client, auth, Env(canary=Path("/nonexistent"), tmp_dir=Path("/nonexistent")))
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert detail in resp.get_json(force=True)["detail"]


def test_a_hostile_file_name_becomes_a_storable_default_name(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    data = hostile.linear_classifier().SerializeToString()
    form = {"file": (io.BytesIO(data), "evil\x00" + "n" * 300 + ".onnx")}
    resp = client.post("/v1/models", data=form, headers=auth, content_type="multipart/form-data")
    assert resp.status_code == 201, resp.get_data(as_text=True)
    assert resp.get_json()["name"] == ("evil" + "n" * 300)[:200]
