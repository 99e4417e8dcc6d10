"""Nothing enters the store unvalidated; the sweep removes leftovers, never a referenced file."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from infra.persistence.models import Audit, Model
from infra.storage import ArtifactStore, TooLarge
from infra.sweep import sweep_artifacts
from tests.factories import hostile
from tests.factories.api import upload_dataset, upload_model

pytestmark = pytest.mark.integration
HOUR = 3600.0


class Disconnect(io.RawIOBase):
    """An upload whose client goes away after `after` bytes."""

    def __init__(self, after: int) -> None:
        self.left = after

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self.left <= 0:
            raise ConnectionResetError("client went away")
        n = min(len(buffer), self.left)
        buffer[:n] = b"\1" * n
        self.left -= n
        return n


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_interrupted_and_oversized_uploads_leave_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    with pytest.raises(ConnectionResetError), store.staged(Disconnect(3 << 20), max_bytes=1 << 30):
        pass
    with pytest.raises(TooLarge), store.staged(Disconnect(3 << 20), max_bytes=1 << 20):
        pass
    with pytest.raises(ValueError, match="refused"), store.staged(io.BytesIO(b"abc"), max_bytes=9):
        raise ValueError("refused by validation")
    assert _files(tmp_path) == []


def _age(path: Path, seconds: float) -> None:
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))


def test_sweep_removes_leftovers_and_keeps_every_referenced_artifact(
    app: Flask, client: FlaskClient, auth: dict[str, str], db_session: Session
) -> None:
    store: ArtifactStore = app.extensions["robaudit.store"]
    made = upload_model(client, auth, hostile.linear_classifier().SerializeToString())
    x, y = np.zeros((2, 4), np.float32), np.array([0, 1])
    data = upload_dataset(client, auth, hostile.npz_bytes(x=x, y=y)).get_json()
    assert client.delete(f"/v1/datasets/{data['id']}", headers=auth).status_code == 204
    model = db_session.scalar(select(Model).where(Model.id == made.get_json()["id"]))
    assert model is not None
    png = store.save_stream(io.BytesIO(b"\x89PNG picture"), max_bytes=100)
    db_session.add(
        Audit(
            tenant_id=model.tenant_id,
            model_id=model.id,
            dataset_id=data["id"],
            config={},
            config_hash="0" * 64,
            status="succeeded",
            result={"landscapes": [{"k": 0, "png_sha256": png.sha256}]},
        )
    )
    db_session.commit()
    orphan = store.save_stream(io.BytesIO(b"an upload whose row never committed"), max_bytes=100)
    fresh_orphan = store.save_stream(io.BytesIO(b"an upload committing right now"), max_bytes=100)
    store.tmp_dir.mkdir(exist_ok=True)
    old_tmp, new_tmp = store.tmp_dir / "tmpold", store.tmp_dir / "tmpnew"
    old_tmp.write_bytes(b"left by a killed process")
    new_tmp.write_bytes(b"an upload in flight")
    for path in [*_files(store.root)]:
        if path not in (fresh_orphan.path, new_tmp):
            _age(path, 2 * HOUR)

    removed = sweep_artifacts(session=db_session, store=store, older_than=HOUR)

    assert sorted(removed) == sorted([orphan.path, old_tmp])
    kept = {p.name for p in _files(store.root)}
    assert {model.sha256, data["sha256"], png.sha256, fresh_orphan.sha256, "tmpnew"} == kept
    assert client.get(f"/v1/models/{model.id}", headers=auth).status_code == 200
