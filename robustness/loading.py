"""From untrusted ONNX bytes to a ready backend, with the torch→onnxruntime parity check."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx
import onnxruntime as ort
import torch

from robustness.backends.base import ScoreBackend
from robustness.backends.ort_backend import DEFAULT_DIRECTIONS, OrtBackend
from robustness.backends.torch_backend import TorchBackend, parity
from robustness.config import BackendKind
from robustness.conversion import PARITY_RTOL, BackendStatus, try_torch
from robustness.errors import AuditInputError, ModelRejected, device_error
from robustness.onnx_contrib import CONTRIB, contrib_ops, lower_contrib_ops
from robustness.onnx_graph import ModelInfo, data_input, inspect, load_model_bytes, scores_graph
from robustness.onnx_lowering import batchnorm_inference_mode, lower_ml_ops
from robustness.onnx_normalization import prepend_normalization
from robustness.onnx_precision import HALF_PARITY_RTOL, float32_copy, half_input_type
from robustness.preprocessing import Preprocessing

BATCH_CHECK_SAMPLES = 2  # samples scored one at a time against the batch at intake


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to audit: the chosen backend and what was learned choosing it.

    `reference` is the onnxruntime session every parity check compares against; keeping it
    lets a cached model be checked again on each new audit's own inputs (`recheck`).
    """

    info: ModelInfo
    backend: ScoreBackend
    statuses: dict[BackendKind, BackendStatus]
    reference: OrtBackend
    notes: tuple[str, ...] = ()

    @property
    def parity_max_abs_diff(self) -> float | None:
        return self.statuses[BackendKind.TORCH].parity_max_abs_diff

    def statuses_dict(self) -> dict[str, dict[str, object]]:
        """The `backends` object of the API: {torch: {...}, onnxruntime: {...}}."""
        return {kind.value: status.to_dict() for kind, status in self.statuses.items()}

    def recheck(self, probe: np.ndarray, *, seed: int = 0) -> LoadedModel:
        """The same conversion, with shape, NaN and parity checked on these inputs."""
        _check_probe_shape(self.info, probe)
        self.reference.reseed(seed)
        reference = self.reference.raw_outputs(torch.from_numpy(probe)).cpu().numpy()
        _check_scores(reference, self.info)
        if self.backend.kind is not BackendKind.TORCH:
            return self
        got = self.backend.raw_outputs(torch.from_numpy(probe)).cpu().numpy()
        diff, rel = parity(got, reference)
        statuses = dict(self.statuses)
        if not rel <= PARITY_RTOL:
            statuses[BackendKind.TORCH] = BackendStatus(
                ok=False,
                parity_max_abs_diff=diff,
                parity_relative=rel,
                reason=f"parity failed on these inputs: relative max |Δ| {rel:.2e}",
            )
            return replace(self, backend=self.reference, statuses=statuses)
        statuses[BackendKind.TORCH] = BackendStatus(
            ok=True, parity_max_abs_diff=diff, parity_relative=rel
        )
        return replace(self, statuses=statuses)


def uniform_probe(
    sample_shape: Sequence[int], input_range: Sequence[float], n: int = 4
) -> np.ndarray:
    """Seeded inputs drawn from the input range, for parity checks before real data exists."""
    lo, hi = input_range
    return np.random.default_rng(0).uniform(lo, hi, size=(n, *sample_shape)).astype(np.float32)


def default_device() -> torch.device:
    """CUDA when present, else CPU; callers pass the device on explicitly from here."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load(
    data: bytes,
    probe: np.ndarray,
    *,
    output: str | None = None,
    backend: BackendKind = BackendKind.AUTO,
    device: torch.device,
    seed: int = 0,
    fd_directions: int = DEFAULT_DIRECTIONS,
    preprocessing: Preprocessing | None = None,
    fuse: bool = True,
) -> LoadedModel:
    """Load, convert and parity-check; fall back to onnxruntime when torch cannot be trusted.

    `probe` holds real inputs (the audit's own samples) for the parity check; with
    `preprocessing` they are pixels, and its normalization is prepended to the graph.
    `fuse=False` converts the exporter's decomposed patterns node by node
    (robustness.onnx_fusion).
    """
    model = load_model_bytes(data)
    info = inspect(model, output)
    _check_probe_shape(info, probe)
    model, info, notes = _widened(model, info, output, probe)
    model, info, lowered = _lowered(model, info, output, probe)
    notes += lowered
    if preprocessing is not None:
        model, info = _preprocessed(model, info, preprocessing, notes)
    log_probs = info.kind == "probabilities" and not info.softmax_stripped

    def session(graph: onnx.ModelProto) -> tuple[OrtBackend, np.ndarray]:
        backend = OrtBackend(
            graph, log_probabilities=log_probs, device=device, directions=fd_directions, seed=seed
        )
        return backend, backend.raw_outputs(torch.from_numpy(probe)).cpu().numpy()

    graph = scores_graph(model, info, rebatch=not info.fixed_batch)
    try:
        ort_backend, reference = session(graph)
    except Exception as exc:
        if device_error(type(exc).__name__, str(exc)):
            raise  # the accelerator's failure, not the model's
        raise ModelRejected(f"onnxruntime cannot run this model on the data: {exc}") from exc
    _check_scores(reference, info)
    statuses = {BackendKind.ONNXRUNTIME: BackendStatus(ok=True)}
    if info.fixed_batch:
        graph, ort_backend = _rebatched(model, info, session, graph, ort_backend, reference)
        notes.append(
            "fixed batch of 1 made batchable (checked)"
            if ort_backend.batched
            else "fixed batch of 1 kept: samples run one at a time"
        )
    graph, ort_backend, reference, note = _batch_independent(
        model, info, graph, ort_backend, reference, session, probe
    )
    notes.append(note)
    torch_backend: TorchBackend | None = None
    if backend is BackendKind.ONNXRUNTIME:
        statuses[BackendKind.TORCH] = BackendStatus(ok=False, reason="not requested")
    else:
        torch_backend, statuses[BackendKind.TORCH], tried = try_torch(
            graph, log_probs, device, probe, reference, fuse=fuse
        )
        notes += tried
    if backend is BackendKind.TORCH and torch_backend is None:
        raise ModelRejected(
            f"the torch backend is unavailable: {statuses[BackendKind.TORCH].reason}; "
            "use backend 'auto' or 'onnxruntime'"
        )
    chosen: ScoreBackend = torch_backend if torch_backend is not None else ort_backend
    return LoadedModel(
        info=info, backend=chosen, statuses=statuses, reference=ort_backend, notes=tuple(notes)
    )


def _widened(
    model: onnx.ModelProto, info: ModelInfo, output: str | None, probe: np.ndarray
) -> tuple[onnx.ModelProto, ModelInfo, list[str]]:
    """A float16 graph computed in float32, when onnxruntime shows the copy gives its scores."""
    half = half_input_type(model)
    if half is None:
        return model, info, []
    if half != onnx.TensorProto.FLOAT16:
        raise ModelRejected("bfloat16 inputs are not supported; export in float32 or float16")
    wide = float32_copy(model)
    tolerance = HALF_PARITY_RTOL[half]
    try:
        wide_info = inspect(wide, output)
        want = _ort_run(scores_graph(model, info, rebatch=False), probe.astype(np.float16))
        got = _ort_run(scores_graph(wide, wide_info, rebatch=False), probe)
        rel = parity(got, want.astype(np.float32))[1] if got.shape == want.shape else math.inf
    except Exception as exc:
        raise ModelRejected(f"the float16 graph could not be computed in float32: {exc}") from exc
    if not rel <= tolerance:
        raise ModelRejected(
            f"the float16 graph computed in float32 differs from it by relative max |Δ| "
            f"{rel:.1e} > {tolerance:.0e}; export the model in float32"
        )
    note = f"float16 graph computed in float32 (checked: relative |Δ| {rel:.1e} ≤ {tolerance:.0e})"
    return wide, wide_info, [note]


def _preprocessed(
    model: onnx.ModelProto, info: ModelInfo, pre: Preprocessing, notes: list[str]
) -> tuple[onnx.ModelProto, ModelInfo]:
    """The graph with the declared normalization in front: it takes pixels from here on."""
    pre.check_input(info.input_shape)
    if not pre.normalizes:
        notes.append(f"preprocessing: {pre.describe()}")
        return model, info
    if info.input_normalization is not None:
        notes.append(
            f"mean/std declared although the graph normalizes its input itself "
            f"({info.input_normalization}): the input is normalized twice"
        )
    model = prepend_normalization(model, info.input_name, pre)
    notes.append(f"preprocessing: {pre.describe()}")
    return model, replace(info, input_name=data_input(model).name)


def _ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """One onnxruntime CPU run of a one-input graph, in the feed's own precision."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: x})[0])


def _lowered(
    model: onnx.ModelProto, info: ModelInfo, output: str | None, probe: np.ndarray
) -> tuple[onnx.ModelProto, ModelInfo, list[str]]:
    """Lower ai.onnx.ml and onnxruntime's fused ops when onnxruntime shows the same scores."""
    fused = contrib_ops(model)
    lowered, kept = lower_contrib_ops(lower_ml_ops(model))
    if lowered is model:
        return model, info, []
    what = _lowered_label(model, fused, kept)
    try:
        lowered_info = inspect(lowered, output)
        want, got = (
            OrtBackend(
                scores_graph(m, i, rebatch=False, strip_softmax=False),
                log_probabilities=False,
                device=torch.device("cpu"),
            ).raw_outputs(torch.from_numpy(probe))
            for m, i in ((model, info), (lowered, lowered_info))
        )
        ok = want.shape == got.shape and parity(got.numpy(), want.numpy())[1] <= PARITY_RTOL
    except Exception:
        ok = False
    if not ok:
        return model, info, [f"{what} kept: their standard-op rewrite did not match"]
    notes = [f"{what} rewritten to standard ops (checked)"]
    if kept:
        notes.append(f"{CONTRIB} {', '.join(kept)} kept: no standard-op formula for these settings")
    return lowered, lowered_info, notes


def _lowered_label(model: onnx.ModelProto, fused: list[str], kept: list[str]) -> str:
    """Which rewrites a lowering made, for the notes: 'ai.onnx.ml ops', 'com.microsoft X, Y'."""
    parts = []
    if any(n.domain == "ai.onnx.ml" for n in model.graph.node):
        parts.append("ai.onnx.ml ops")
    if lowered := [op for op in fused if op not in kept]:
        parts.append(f"{CONTRIB} {', '.join(lowered)}")
    return " and ".join(parts) or "ops"


def _rebatched(
    model: onnx.ModelProto,
    info: ModelInfo,
    session: Callable[[onnx.ModelProto], tuple[OrtBackend, np.ndarray]],
    fixed: onnx.ModelProto,
    fixed_backend: OrtBackend,
    reference: np.ndarray,
) -> tuple[onnx.ModelProto, OrtBackend]:
    """A graph exported with batch 1, made batchable if the rewrite matches the original."""
    candidate = scores_graph(model, info, rebatch=True)
    try:
        backend, got = session(candidate)
    except Exception:
        return fixed, fixed_backend
    if (
        backend.batched
        and got.shape == reference.shape
        and parity(got, reference)[1] <= PARITY_RTOL
    ):
        return candidate, backend
    return fixed, fixed_backend


def batch_dependence(backend: OrtBackend, probe: np.ndarray) -> float:
    """Relative max |Δ| between the probe's first samples scored as one batch and one at a time.

    A probe of one sample is batched with its mirror image (still in range), so the batch
    always holds distinct samples.
    """
    first = np.ascontiguousarray(probe[:BATCH_CHECK_SAMPLES], dtype=np.float32)
    batch = first if len(first) > 1 else np.concatenate([first, first[..., ::-1]])
    together = backend.session.run(None, {backend.input_name: batch})[0][: len(first)]
    alone = np.concatenate(
        [backend.session.run(None, {backend.input_name: row[None]})[0] for row in first]
    )
    return parity(together, alone)[1] if together.shape == alone.shape else float("inf")


def _batch_independent(
    model: onnx.ModelProto,
    info: ModelInfo,
    graph: onnx.ModelProto,
    backend: OrtBackend,
    reference: np.ndarray,
    session: Callable[[onnx.ModelProto], tuple[OrtBackend, np.ndarray]],
    probe: np.ndarray,
) -> tuple[onnx.ModelProto, OrtBackend, np.ndarray, str]:
    """The graph whose samples do not depend on their batch, or AuditInputError naming the fix.

    Training-mode BatchNormalization with its running statistics in the graph is rewritten
    to inference mode, and kept only if the rewrite is then batch independent.
    """
    if not backend.batched:
        return graph, backend, reference, "batch independence: samples run one at a time"
    if info.fixed_batch and len(probe) > 1:
        # _rebatched kept the batchable graph only if its batch matched one-at-a-time runs.
        return graph, backend, reference, "batch independence checked with the rebatching"
    rel = batch_dependence(backend, probe)
    if rel <= PARITY_RTOL:
        return graph, backend, reference, f"batch independence checked (relative |Δ| {rel:.1e})"
    fixed, count = batchnorm_inference_mode(model)
    if count:
        try:
            candidate = scores_graph(fixed, info, rebatch=True)
            fixed_backend, fixed_reference = session(candidate)
            fixed_rel = batch_dependence(fixed_backend, probe)
        except Exception:
            fixed_rel = float("inf")
        if fixed_rel <= PARITY_RTOL:
            return candidate, fixed_backend, fixed_reference, (
                f"{count} training-mode BatchNormalization node(s) set to inference mode with "
                f"the graph's running statistics (batch dependence {rel:.1e} before, "
                f"{fixed_rel:.1e} after; checked)"
            )  # fmt: skip
    raise AuditInputError(
        f"each sample's scores depend on the rest of its batch (relative max |Δ| {rel:.2e} "
        "between a batch and the same samples one at a time), so ψ would mean nothing; "
        "re-export the model after model.eval() (training-mode BatchNormalization or other "
        "batch statistics are in the graph)"
    )


def _check_probe_shape(info: ModelInfo, probe: np.ndarray) -> None:
    declared = list(info.input_shape[1:])
    got = list(probe.shape[1:])
    fits = len(declared) == len(got) and all(
        not isinstance(d, int) or d == g for d, g in zip(declared, got, strict=True)
    )
    if not fits:
        raise AuditInputError(
            f"the model's input {info.input_name!r} takes samples of shape {declared} "
            f"but the data's samples are {got}"
        )


def _check_scores(reference: np.ndarray, info: ModelInfo) -> None:
    if reference.ndim != 2 or reference.shape[1] < 2:
        raise ModelRejected(
            f"output {info.output_name!r} gave shape {list(reference.shape)} on the data; "
            "a classifier's scores are [N, C] with C ≥ 2"
        )
    if not np.isfinite(reference).all():
        raise AuditInputError(
            f"the model's output {info.output_name!r} contains NaN or inf on the audited inputs"
        )
