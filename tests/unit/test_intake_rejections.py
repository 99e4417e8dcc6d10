"""Hostile or unusable models and datasets get a clear error that names the problem."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import helper

from robustness import datasets
from robustness.errors import AuditInputError, DatasetRejected, ModelRejected
from robustness.loading import load
from robustness.onnx_graph import inspect, load_model_bytes
from robustness.onnx_safety import IntakeLimits
from tests.factories import hostile


def reject(data: bytes, output: str | None = None) -> str:
    with pytest.raises(ModelRejected) as info:
        inspect(load_model_bytes(data), output)
    return str(info.value)


def test_garbage_bytes() -> None:
    assert "not a valid ONNX file" in reject(b"PK\x03\x04 definitely not protobuf" * 10)


def test_empty_graph() -> None:
    assert "not a valid ONNX file" in reject(b"")


def test_external_data_is_refused_before_anything_reads_it() -> None:
    assert "external data" in reject(hostile.external_data_model())


def test_unknown_operator_domain() -> None:
    assert "com.evil" in reject(hostile.foreign_domain_model())


def test_constant_that_would_allocate_terabytes() -> None:
    assert "limit is" in reject(hostile.huge_constant_model())


def test_huge_declared_input() -> None:
    assert "elements per sample" in reject(hostile.huge_input_model())


def test_not_a_classifier() -> None:
    assert "[batch, classes]" in reject(hostile.not_a_classifier_model())


def test_two_data_inputs() -> None:
    assert "2 data inputs" in reject(hostile.two_input_model())


def test_integer_input() -> None:
    assert "float tensors" in reject(hostile.int_input_model())


def test_unknown_output_name() -> None:
    assert "'nope' not found" in reject(hostile.linear_classifier().SerializeToString(), "nope")


def test_nan_outputs_are_named() -> None:
    with pytest.raises(AuditInputError, match="NaN or inf"):
        load(hostile.nan_model(), np.ones((4, 3), np.float32), device=torch.device("cpu"))


def test_input_rank_mismatch_is_named() -> None:
    model = hostile.linear_classifier().SerializeToString()
    with pytest.raises(
        AuditInputError, match=r"takes samples of shape \[4\] but the data's samples are \[2, 2\]"
    ):
        load(model, np.ones((4, 2, 2), np.float32), device=torch.device("cpu"))


def _npz(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "d.npz"
    path.write_bytes(data)
    return path


def test_npz_with_pickled_objects(tmp_path: Path) -> None:
    with pytest.raises(DatasetRejected, match="without unpickling"):
        datasets.load_npz(_npz(tmp_path, hostile.pickled_npz()), max_member_bytes=1 << 30)


def test_npz_zip_bomb_is_not_inflated(tmp_path: Path) -> None:
    with pytest.raises(DatasetRejected, match="inflates to"):
        datasets.load_npz(_npz(tmp_path, hostile.zip_bomb_npz()), max_member_bytes=1 << 30)


def test_not_an_npz(tmp_path: Path) -> None:
    with pytest.raises(DatasetRejected, match=r"not an \.npz"):
        datasets.load_npz(_npz(tmp_path, b"x,y\n1,2\n"), max_member_bytes=1 << 30)


def test_npz_missing_labels(tmp_path: Path) -> None:
    data = hostile.npz_bytes(x=np.zeros((2, 3), np.float32))
    with pytest.raises(DatasetRejected, match=r"lacks array\(s\) \['y'\]"):
        datasets.load_npz(_npz(tmp_path, data), max_member_bytes=1 << 30)


def test_npz_with_other_names_lists_what_it_found(tmp_path: Path) -> None:
    data = hostile.npz_bytes(images=np.zeros((2, 3), np.float32), labels=np.zeros(2, np.int64))
    with pytest.raises(DatasetRejected, match=r"found \['images', 'labels'\].*x=inputs, y=labels"):
        datasets.load_npz(_npz(tmp_path, data), max_member_bytes=1 << 30)


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.zeros((3, 4), np.float32), np.zeros(2, np.int64), "3 samples but y has 2"),
        (np.full((2, 4), np.nan, np.float32), np.zeros(2, np.int64), "NaN or inf"),
        (np.zeros((2, 4), np.uint8), np.zeros(2, np.int64), "floating point"),
        (np.zeros((2, 4), np.float32), np.zeros(2, np.float32), "integer label"),
        (np.zeros((2, 4), np.float32), np.array([0, -1]), "negative labels"),
        (np.zeros((0, 4), np.float32), np.zeros(0, np.int64), "N ≥ 1"),
    ],
    ids=["length-mismatch", "nan", "int-x", "float-y", "negative-y", "empty"],
)
def test_unusable_arrays(x: np.ndarray, y: np.ndarray, message: str) -> None:
    with pytest.raises(DatasetRejected, match=message):
        datasets.check_arrays(x, y)


def test_good_npz_round_trips(tmp_path: Path) -> None:
    x, y = np.random.default_rng(0).random((5, 1, 8, 8), np.float32), np.arange(5) % 3
    loaded_x, loaded_y = datasets.load_npz(
        _npz(tmp_path, hostile.npz_bytes(x=x, y=y)), max_member_bytes=1 << 30
    )
    facts = datasets.check_arrays(loaded_x, loaded_y)
    assert (facts.n, facts.shape, facts.num_classes) == (5, [1, 8, 8], 3)
    assert np.array_equal(loaded_x, x)


def test_dataset_outside_the_input_range_is_named() -> None:
    from robustness.engine import check_inputs
    from robustness.spec import AuditSpec

    with pytest.raises(AuditInputError, match="outside the model's declared input range"):
        check_inputs(np.full((2, 4), 255.0, np.float32), np.zeros(2, np.int64), AuditSpec())


# --- issue 11: limits checked on the raw bytes; every graph walked; npz streamed -------------


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) << 10
    return 0


def test_a_million_nodes_are_refused_from_the_bytes_before_protobuf_builds_them() -> None:
    data = hostile.many_nodes_model(1_000_000)  # 18 MB; parsed, it took the API to 1.9 GB
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
    before = _peak_rss()
    with pytest.raises(ModelRejected, match="more than 100000 nodes"):
        load_model_bytes(data)
    assert _peak_rss() - before < 64 << 20


def test_node_and_depth_limits_are_settings() -> None:
    nested = hostile.deeply_nested_model(3)
    assert inspect(load_model_bytes(nested)).num_classes == 4  # 3 deep is fine by default
    with pytest.raises(ModelRejected, match="nests subgraphs 3 deep; the limit is 2"):
        load_model_bytes(nested, IntakeLimits(max_depth=2))
    with pytest.raises(ModelRejected, match="more than 5 nodes"):
        load_model_bytes(hostile.many_nodes_model(5), IntakeLimits(max_nodes=5))


def test_subgraphs_and_functions_that_break_no_rule_are_accepted() -> None:
    identity = [helper.make_node("Identity", ["x"], ["y"])]
    if_model = hostile._if_model(hostile._branch(identity)).SerializeToString()
    fn_model = hostile._function_model([helper.make_node("Identity", ["a"], ["b"])])
    for data in (if_model, fn_model.SerializeToString()):
        assert inspect(load_model_bytes(data)).output_name == "scores"


def test_runtime_shapes_pass_intake_and_are_left_to_the_sandbox() -> None:
    """ConstantOfShape fed by Shape is only known at run time: not refusable statically."""
    model = hostile._graph_model(
        [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("ConstantOfShape", ["s"], ["zeros"]),
            helper.make_node("Add", ["x", "zeros"], ["scores"]),
        ],
        *hostile.SCORES_IO,
    )
    load_model_bytes(model.SerializeToString())


@pytest.mark.parametrize("order", ["C", "F"])
def test_streamed_scan_agrees_with_the_loaded_arrays(tmp_path: Path, order: str) -> None:
    rng = np.random.default_rng(1)
    x = np.asarray(rng.normal(size=(37, 3, 5)).astype(np.float32), order=order)
    y = np.arange(37) % 7
    path = _npz(tmp_path, hostile.npz_bytes(x=x, y=y))
    facts = datasets.scan_npz(
        path, max_member_bytes=1 << 20, max_total_bytes=1 << 20, chunk_bytes=64
    )
    assert facts == datasets.check_arrays(*datasets.load_npz(path, max_member_bytes=1 << 20))
    x[30, 1, 2] = np.nan  # in the last chunk
    path = _npz(tmp_path, hostile.npz_bytes(x=x, y=y))
    with pytest.raises(DatasetRejected, match=r"NaN or inf values in 1 sample"):
        datasets.scan_npz(path, max_member_bytes=1 << 20, max_total_bytes=1 << 20, chunk_bytes=64)


def test_members_are_matched_by_exact_name(tmp_path: Path) -> None:
    path = _npz(tmp_path, hostile.nested_member_npz())
    with pytest.raises(DatasetRejected, match=r"found \['x', 'y', 'sub/x'\]"):
        datasets.load_npz(path, max_member_bytes=1 << 20)
