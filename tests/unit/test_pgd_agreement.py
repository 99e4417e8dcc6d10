"""robaudit's PGD accuracy matches torchattacks at equal settings (metric.md: within ~1 point)."""

from __future__ import annotations

import pytest
import torch
import torchattacks

from robustness.attacks.fgsm import FGSM
from robustness.attacks.pgd import PGD
from robustness.config import Norm
from tests.factories.models import digits_split, natural_cnn, to_onnx
from tests.unit.engine_helpers import load_cpu

EPS, STEPS = 0.1, 20


@pytest.mark.parametrize("seed", [0, 1])
def test_pgd_accuracy_matches_torchattacks(seed: int) -> None:
    split = digits_split()
    x, y = torch.from_numpy(split.x_test), torch.from_numpy(split.y_test)
    net = natural_cnn()
    alpha = 2.5 * EPS / STEPS
    torch.manual_seed(seed)
    reference = torchattacks.PGD(net, eps=EPS, alpha=alpha, steps=STEPS, random_start=True)
    x_adv = reference(x, y)
    with torch.no_grad():
        ta_acc = float((net(x_adv).argmax(1) == y).double().mean())
    backend = load_cpu(to_onnx(net), split.x_test).backend
    ours = PGD(backend, norm=Norm.LINF, eps=EPS, steps=STEPS, alpha=alpha)
    our_acc = float(ours(x, y, torch.Generator().manual_seed(seed)).double().mean())
    clean = float((backend.scores(x).argmax(1) == y).double().mean())
    assert our_acc < clean - 0.2  # the attack does real work on this model
    assert abs(our_acc - ta_acc) <= 0.015, (our_acc, ta_acc)


def test_fgsm_accuracy_matches_torchattacks() -> None:
    split = digits_split()
    x, y = torch.from_numpy(split.x_test), torch.from_numpy(split.y_test)
    net = natural_cnn()
    x_adv = torchattacks.FGSM(net, eps=EPS)(x, y)
    with torch.no_grad():
        ta_acc = float((net(x_adv).argmax(1) == y).double().mean())
    backend = load_cpu(to_onnx(net), split.x_test).backend
    our_acc = float(FGSM(backend, norm=Norm.LINF, eps=EPS)(x, y).double().mean())
    assert abs(our_acc - ta_acc) <= 0.005, (our_acc, ta_acc)
