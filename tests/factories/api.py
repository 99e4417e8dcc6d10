"""Builders for API tests: tenants with keys, uploads over the Flask test client."""

from __future__ import annotations

import io
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from service.auth import create_key


def tenant_headers(session: Session, name: str) -> dict[str, str]:
    key = create_key(session=session, tenant_name=name)
    session.commit()
    return {"Authorization": f"Bearer {key}"}


def upload_model(
    client: FlaskClient, headers: dict[str, str], data: bytes, **fields: Any
) -> TestResponse:
    form = {"file": (io.BytesIO(data), "model.onnx"), **fields}
    return client.post("/v1/models", data=form, headers=headers, content_type="multipart/form-data")


def upload_dataset(
    client: FlaskClient, headers: dict[str, str], data: bytes, **fields: Any
) -> TestResponse:
    form = {"file": (io.BytesIO(data), "data.npz"), **fields}
    return client.post(
        "/v1/datasets", data=form, headers=headers, content_type="multipart/form-data"
    )
