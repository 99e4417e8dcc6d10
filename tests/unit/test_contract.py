"""The audit contract: one config model (defaults once), and results readable from old rows."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from robustness.config import AuditConfig, LandscapeConfig, Norm
from robustness.results import AuditResult, Verdict
from robustness.spec import AuditSpec, spec_from_config

DIAGNOSTICS = {
    "gradient_masking_suspected": False,
    "zero_gradient_fraction": 0.0,
    "nonfinite_gradient_fraction": 0.0,
    "random_search_wins": 0,
    "parity_max_abs_diff": None,
}
EPSILON = {
    "epsilon": 0.03,
    "divergence": {"mean": 0.1, "median": 0.1, "p90": 0.2, "max": 0.3, "ci95": [0.05, 0.15]},
    "clean_accuracy": 0.9,
    "fgsm_accuracy": 0.5,
    "pgd_accuracy": 0.4,
    "per_sample": [0.1],
}


def test_the_spec_takes_its_defaults_from_the_config() -> None:
    config = AuditConfig()
    assert spec_from_config(config, (0.0, 1.0)) == AuditSpec()
    custom = AuditConfig(norm=Norm.L2, epsilons=[0.5], fd_directions=8,
                         landscape=LandscapeConfig(samples=0))  # fmt: skip
    spec = spec_from_config(custom, (-1.0, 1.0))
    assert (spec.norm, spec.epsilons, spec.fd_directions) == (Norm.L2, (0.5,), 8)
    assert (spec.landscape_samples, spec.input_range) == (0, (-1.0, 1.0))


def test_every_config_field_is_described_for_the_cli_and_openapi() -> None:
    for model in (AuditConfig, LandscapeConfig):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


def test_unknown_keys_are_refused_but_stored_rows_stay_readable() -> None:
    with pytest.raises(ValidationError, match="fd_direction"):
        AuditConfig.model_validate({"fd_direction": 8})  # a typo must not run the default
    old = AuditConfig.from_stored({"norm": "l2", "epsilons": [0.1], "retired_key": 1})
    assert old.norm is Norm.L2
    assert old.fd_directions == 64


def test_a_shard_stored_before_the_typed_results_reads_back() -> None:
    legacy = {
        "per_epsilon": [EPSILON],
        "samples": 1,
        "backend": "torch",
        "diagnostics": {**DIAGNOSTICS, "degenerate": {"kind": "constant_output", "reason": "x"}},
        "stage_seconds": {"divergence": 1.5},
        "manifest_part": {"device": "cpu", "backends": {}, "notes": ["n"]},
    }
    result = AuditResult.model_validate(legacy)
    assert result.stage_seconds == {"divergence": 1.5}
    assert result.manifest is not None
    assert result.manifest.notes == ["n"]
    assert result.verdict is Verdict.DEGENERATE  # derived: the row predates the verdict


def test_unrecorded_parts_stay_out_of_the_json() -> None:
    body = {"per_epsilon": [EPSILON], "samples": 1, "backend": "torch", "diagnostics": DIAGNOSTICS}
    out = AuditResult.model_validate(body).to_json(include_per_sample=False)
    assert not {"search", "manifest", "timing"} & out.keys()
    assert not {"per_sample", "convergence"} & out["per_epsilon"][0].keys()
    assert out["verdict"] == "measured"
    assert out["landscapes"] == []
