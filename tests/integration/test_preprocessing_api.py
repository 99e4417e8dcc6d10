"""Issue 8, req. 1: a model declares its preprocessing at upload; audits run in pixel space."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from onnx import TensorProto, helper, numpy_helper
from sqlalchemy.orm import Session

from infra.config import Settings
from robaudit.client import Client
from robustness.config import AuditConfig
from robustness.engine import run_audit
from robustness.loading import load
from robustness.spec import spec_from_config
from tests.factories import hostile
from tests.factories.api import upload_dataset, upload_model
from tests.factories.models import MEAN, STD, pixels, twins
from tests.integration.test_worker_execution import ONE_DATABASE, run
from tests.unit.engine_helpers import CPU

DECLARED = {"scale": 1, "mean": list(MEAN), "std": list(STD), "layout": "NCHW"}
CONFIG = {
    "epsilons": [8 / 255],
    "steps": 5,
    "baselines": ["clean"],
    "landscape": {"samples": 0},
}


def _audit(client: FlaskClient, auth: dict[str, str], model_id: str, dataset_id: str) -> str:
    body = {"model_id": model_id, "dataset_id": dataset_id, "config": CONFIG}
    resp = client.post("/v1/audits", json=body, headers=auth)
    assert resp.status_code == 202, resp.get_json()
    return str(resp.get_json()["id"])


@ONE_DATABASE
def test_declared_preprocessing_audits_in_pixel_space_like_its_baked_in_twin(
    client: FlaskClient, auth: dict[str, str], db_session: Session, settings: Settings
) -> None:
    inside, outside = twins()
    baked = upload_model(client, auth, inside, name="baked").get_json()
    assert baked["preprocessing"] is None
    assert any("already normalizes its input (Sub by" in n for n in baked["notes"])
    resp = upload_model(client, auth, outside, name="declared", preprocessing=json.dumps(DECLARED))
    assert resp.status_code == 201, resp.get_json()
    declared = resp.get_json()
    assert declared["preprocessing"] == DECLARED
    assert declared["input_range"] == [0.0, 1.0]
    x, y = pixels(n=8)
    dataset_id = upload_dataset(client, auth, hostile.npz_bytes(x=x, y=y)).get_json()["id"]
    audit_id = _audit(client, auth, declared["id"], dataset_id)
    result = run(db_session, settings, audit_id).result or {}
    # One worker audit (a sandbox child loads the model: slow); its twin runs in-process.
    loaded = load(inside, x, device=CPU)
    spec = spec_from_config(AuditConfig.model_validate(CONFIG), [0.0, 1.0])
    twin = run_audit(loaded.backend, x, y, spec, device=CPU)
    psi = np.asarray(result["per_epsilon"][0]["per_sample"])
    baked_psi = np.asarray(twin.per_epsilon[0].per_sample)
    assert baked_psi.mean() > 1e-4
    np.testing.assert_allclose(psi, baked_psi, rtol=1e-3, atol=1e-6)
    manifest = result["manifest"]
    assert manifest["preprocessing"] == DECLARED
    assert manifest["input_range"] == [0.0, 1.0]
    assert any("(x − mean [0.485, 0.456, 0.406])" in n for n in manifest["notes"])
    html = client.get(f"/v1/audits/{audit_id}/report", headers=auth).get_data(as_text=True)
    assert "ε = 8/255 (0.03137) in pixel space [0, 1]" in html
    assert "(x − mean [0.485, 0.456, 0.406]) / std [0.229, 0.224, 0.225] prepended" in html


def _flat_model() -> bytes:
    """Takes [N, 4]: no channel axis to put last."""
    w = numpy_helper.from_array(np.ones((4, 2), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "flat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


@ONE_DATABASE
@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"preprocessing": json.dumps({"mean": [0.5], "std": [0.2]})}, "has 3 channels on axis 1"),
        ({"preprocessing": json.dumps({**DECLARED, "std": [0.2, 0.0, 0.2]})}, "must be > 0"),
        ({"preprocessing": '{"mean": [NaN, 0, 0], "std": [1, 1, 1]}'}, "finite number"),
        ({"preprocessing": json.dumps({"layout": "NCWH"})}, "preprocessing.layout"),
        ({"preprocessing": json.dumps({"scale": 100})}, "preprocessing.scale"),
        ({"preprocessing": json.dumps({"mean": [1, 2]})}, "give mean and std together"),
        ({"preprocessing": "scale=255"}, "preprocessing is not JSON"),
        ({"preprocessing": "[1, 255]"}, "must be a JSON object"),
        ({"preprocessing": json.dumps({"scale": 255}), "input_range": "0,1"}, "contradicts"),
    ],
)
def test_bad_preprocessing_is_422_saying_what_to_fix(
    client: FlaskClient, auth: dict[str, str], fields: dict[str, Any], says: str
) -> None:
    resp = upload_model(client, auth, twins()[1], **fields)
    assert resp.status_code == 422, resp.get_json()
    assert says in resp.get_json()["detail"]


@ONE_DATABASE
def test_nhwc_on_a_flat_input_is_422_and_other_preprocessing_for_the_same_bytes_a_new_version(
    client: FlaskClient, auth: dict[str, str], server: str, tmp_path: Path
) -> None:
    flat = _flat_model()
    resp = upload_model(client, auth, flat, preprocessing=json.dumps({"layout": "NHWC"}))
    assert resp.status_code == 422
    assert "layout NHWC needs" in resp.get_json()["detail"]
    path = tmp_path / "flat.onnx"
    path.write_bytes(flat)
    with Client(server, auth["Authorization"].split()[1]) as api:  # what `submit` sends
        first = api.upload_model(path, preprocessing={"scale": 255})
    assert first["preprocessing"] == {"scale": 255, "mean": None, "std": None, "layout": "NCHW"}
    assert first["input_range"] == [0.0, 255.0]
    # the name is part of a model's metadata: `submit` named it after the file
    again = upload_model(client, auth, flat, name="flat", preprocessing=json.dumps({"scale": 255}))
    assert again.status_code == 200
    assert again.get_json()["id"] == first["id"]
    # the same bytes declaring another pixel space: another model (a version), never ignored
    other = upload_model(client, auth, flat, name="flat", preprocessing=json.dumps({"scale": 1}))
    assert other.status_code == 201, other.get_json()
    assert other.get_json()["id"] != first["id"]
    assert other.get_json()["input_range"] == [0.0, 1.0]
    assert other.get_json()["sha256"] == first["sha256"]
