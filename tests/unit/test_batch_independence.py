"""Each sample's scores must not depend on its batch; checked at intake (issue 6.4)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from robustness.config import BackendKind
from robustness.errors import AuditInputError
from tests.factories.models import digits_split, natural_cnn, to_onnx
from tests.unit.engine_helpers import load_cpu


def _bn_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 64, 10),
    )
    bn = net[1]
    assert isinstance(bn, nn.BatchNorm2d)
    with torch.no_grad():  # running statistics unlike any single batch's
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    return net


def _export_train_mode(net: nn.Module) -> bytes:
    """What a user gets exporting without model.eval(): BatchNormalization training_mode=1."""
    net.train()
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the tracer warns about BatchNorm's size check
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (torch.rand(2, 1, 8, 8),), buf, input_names=["input"], output_names=["scores"],
            dynamo=False, dynamic_axes={"input": {0: "N"}, "scores": {0: "N"}}, opset_version=17,
            training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
        )  # fmt: skip
    return buf.getvalue()


class BatchCentered(nn.Module):
    """Subtracts the batch mean: batch dependent with nothing in the graph to fix it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc(x.flatten(1))
        return z - z.mean(dim=0, keepdim=True)


def test_training_mode_batchnorm_graph_really_depends_on_its_batch() -> None:
    session = ort.InferenceSession(_export_train_mode(_bn_net()))
    x = digits_split().x_test[:8]
    together = session.run(None, {"input": x})[0]
    alone = np.concatenate([session.run(None, {"input": x[i : i + 1]})[0] for i in range(8)])
    assert np.abs(together - alone).max() > 0.05


def test_training_mode_batchnorm_is_rewritten_to_inference_mode() -> None:
    net = _bn_net()
    x = digits_split().x_test[:32]
    loaded = load_cpu(_export_train_mode(net), x)
    assert any("BatchNormalization" in note and "checked" in note for note in loaded.notes)
    assert loaded.backend.kind is BackendKind.TORCH  # onnx2pytorch converts the rewrite
    with torch.no_grad():
        want = net.eval()(torch.from_numpy(x)).numpy()
        got = loaded.backend.raw_outputs(torch.from_numpy(x)).numpy()
        single = loaded.backend.raw_outputs(torch.from_numpy(x[:1])).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)  # what model.eval() would have exported
    np.testing.assert_allclose(single, got[:1], atol=1e-5)


def test_batch_statistics_without_a_rewrite_are_refused_with_the_fix() -> None:
    x = digits_split().x_test[:16]
    with pytest.raises(AuditInputError, match=r"depend on the rest of its batch.*model\.eval\(\)"):
        load_cpu(to_onnx(BatchCentered().eval()), x)


def test_one_sample_probe_still_catches_batch_dependence() -> None:
    x = digits_split().x_test[:1]
    with pytest.raises(AuditInputError, match=r"model\.eval\(\)"):
        load_cpu(to_onnx(BatchCentered().eval()), x)


def test_independent_model_records_the_check() -> None:
    loaded = load_cpu(to_onnx(natural_cnn()), digits_split().x_test[:8])
    assert any(note.startswith("batch independence checked") for note in loaded.notes)
    assert loaded.backend.kind is BackendKind.TORCH
