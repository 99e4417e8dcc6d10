"""Black-box backend: onnxruntime forward passes, gradients by batched finite differences.

Current onnxruntime gives no input gradients, so the vector-Jacobian product that autograd
needs is estimated from forward passes alone (one batched session call per estimate):

- coordinate-wise central differences when the input has at most `coordinate_limit`
  features per sample, or no more than the directions asked for (2·d queries, exact up to
  O(h²); h = 1e-3 measured best against autograd on ReLU/max-pool CNNs);
- otherwise antithetic random directions, NES/SPSA style (2·q queries; Ilyas et al., ICML
  2018, "Black-box Adversarial Attacks with Limited Queries and Information"), orthogonal
  to each other (a random q-frame), which estimates better than i.i.d. Gaussians.

On CUDA (onnxruntime-gpu) the session runs on the torch device's GPU, and each batch is
handed over by IO binding (`bound_run`): onnxruntime reads torch's buffer in place, and the
perturbed copies are built on the GPU, so no input crosses to the host.

Shapes: x [N, *input_shape] float32; scores [N, C].
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch

from robustness.backends.base import to_scores
from robustness.config import AuditConfig, BackendKind, Norm

MAX_PERTURBED = 1 << 26
# ψ of the default search on random-direction gradients over ψ on autograd's, measured on
# a ReLU/max-pool CNN with 576 input features (benchmarks/bench_blackbox.py), keyed by the
# directions q: (L∞ ε = 0.1, L2 ε = 3). The estimate's quality follows q/d, hence the key
# used is the nearest q·576/d. Central differences measured 1.000 (≤ 256 features).
MEASURED_FEATURES = 576
MEASURED_NES_RATIO = {64: (0.28, 0.39), 256: (0.63, 0.75)}


# The audit config's default, defined there once.
DEFAULT_DIRECTIONS: int = AuditConfig.model_fields["fd_directions"].default


class OrtBackend:
    """Scores from an onnxruntime session; the backward pass is a finite-difference estimate."""

    kind = BackendKind.ONNXRUNTIME

    def __init__(
        self,
        graph: onnx.ModelProto,
        *,
        log_probabilities: bool,
        device: torch.device,
        directions: int = DEFAULT_DIRECTIONS,
        coordinate_limit: int = 256,
        fd_step: float = 1e-3,
        seed: int = 0,
        max_batch: int = 4096,
        orthogonal: bool = True,
    ) -> None:
        import onnxruntime as ort

        self.device = device
        self.log_probabilities = log_probabilities
        self.directions = directions
        self.coordinate_limit = coordinate_limit
        self.fd_step = fd_step
        self.max_batch = max_batch
        self.orthogonal = orthogonal
        self.queries = 0
        self._generator = torch.Generator().manual_seed(seed)
        providers: list[Any] = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            # The torch device's GPU, not the default one: bound buffers must live there.
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        options = ort.SessionOptions()
        options.log_severity_level = 4  # failures surface as exceptions; the C++ log is noise
        # onnxruntime keeps its own thread pool, one thread per core by default: follow the
        # worker's share (torch's count, set from worker/threads.py), or workers oversubscribe
        # the cores, and do not spin between runs on cores that other workers share.
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            graph.SerializeToString(), sess_options=options, providers=providers
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.bound = "CUDAExecutionProvider" in self.session.get_providers()
        self.batched = self._accepts_batches()

    def gradient_note(self, features: int, norm: Norm) -> str | None:
        """The expected shortfall of ψ against autograd, as measured, when it is material."""
        q = self.directions
        if features <= max(self.coordinate_limit, q):
            return None  # central differences: within 0.1% of autograd on ReLU/max-pool CNNs
        scaled = q * MEASURED_FEATURES / features
        near = min(MEASURED_NES_RATIO, key=lambda k: abs(k - scaled))
        ratio = MEASURED_NES_RATIO[near][0 if norm is Norm.LINF else 1]
        return (
            f"black-box gradients from {q} random directions for {features} input features: "
            f"with {near} directions for {MEASURED_FEATURES} features this search reached "
            f"{ratio:.2f} of the autograd divergence on a CNN (expected shortfall "
            f"{1 - ratio:.0%}; fewer directions per feature fall shorter). Raise fd_directions "
            f"(up to {features} gives exact central differences) or use the torch backend"
        )

    def reseed(self, seed: int) -> None:
        """Restart the random-direction stream (a cached session serves many audits)."""
        self._generator.manual_seed(seed)

    def raw_outputs(self, x: torch.Tensor) -> torch.Tensor:
        return self.run_tensor(x).to(self.device)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return _FiniteDifference.apply(x, self)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Forward pass in chunks of at most `max_batch` rows (one row at a time if fixed)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        step = self.max_batch if self.batched else 1
        outs = [
            self.session.run(None, {self.input_name: x[i : i + step]})[0]
            for i in range(0, len(x), step)
        ]
        self.queries += len(x)
        return np.concatenate(outs).astype(np.float32)

    def run_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """`run` on a tensor: bound in place on `device` when the session is on CUDA (the
        result is on `device`), else through numpy on the CPU (the result is on the CPU)."""
        if not self.bound:
            return torch.from_numpy(self.run(x.detach().cpu().numpy()))
        x = x.detach().to(self.device, torch.float32).contiguous()
        step = self.max_batch if self.batched else 1
        outs = [
            bound_run(self.session, self.input_name, self.output_name, x[i : i + step])
            for i in range(0, len(x), step)
        ]
        self.queries += len(x)
        return torch.cat(outs)

    def vjp(self, x: torch.Tensor, grad_scores: torch.Tensor) -> torch.Tensor:
        """Estimate gᵀ ∂scores/∂x per sample from forward passes only."""
        n = x.shape[0]
        work = self.device if self.bound else torch.device("cpu")  # where the copies are built
        flat = x.detach().to(work).reshape(n, -1).float()
        d = flat.shape[1]
        g = grad_scores.detach().to(work).float()
        # With as many directions as features, exact coordinates cost no more.
        coordinate = d <= max(self.coordinate_limit, self.directions)
        k = d if coordinate else self.directions
        # Perturbed copies are n·k·d floats each way: bound them (2^26 floats = 256 MiB).
        chunk = max(1, MAX_PERTURBED // (k * d))
        grads = [
            self._vjp_chunk(flat[i : i + chunk], g[i : i + chunk], x.shape[1:], coordinate)
            for i in range(0, n, chunk)
        ]
        return torch.cat(grads).reshape(x.shape).to(x.device, x.dtype)

    def _vjp_chunk(
        self, flat: torch.Tensor, g: torch.Tensor, shape: torch.Size, coordinate: bool
    ) -> torch.Tensor:
        n, d = flat.shape
        if coordinate:
            dirs = torch.eye(d, device=flat.device).unsqueeze(0).expand(n, d, d)
        else:
            # Drawn on the CPU generator on every device: the same seed, the same directions.
            dirs = (
                self._orthogonal_directions(n, d)
                if self.orthogonal
                else torch.randn(n, self.directions, d, generator=self._generator)
            ).to(flat.device)
        h = self.fd_step
        k = dirs.shape[1]
        plus = (flat.unsqueeze(1) + h * dirs).reshape(n * k, *shape)
        minus = (flat.unsqueeze(1) - h * dirs).reshape(n * k, *shape)
        both = self._scores(torch.cat([plus, minus]))
        f_plus, f_minus = both[: n * k].reshape(n, k, -1), both[n * k :].reshape(n, k, -1)
        slope = ((f_plus - f_minus) * g.unsqueeze(1)).sum(-1) / (2 * h)  # [n, k]
        grad = (slope.unsqueeze(-1) * dirs).sum(1)
        return grad if coordinate else grad / k

    def _orthogonal_directions(self, n: int, d: int) -> torch.Tensor:
        """q orthogonal directions of norm √d per sample (a random q-frame, scaled).

        The estimate (d/q)·Σ (v·∇)v projects the gradient on a random q-dimensional subspace:
        cosine ≈ √(q/d) to the true gradient, where i.i.d. Gaussian directions reach only
        √(q/(q+d)) (0.71 vs 1.0 at q = d = 64; measured in benchmarks/README.md).
        """
        gaussian = torch.randn(n, d, self.directions, generator=self._generator)
        q, _ = torch.linalg.qr(gaussian)
        return q.transpose(1, 2) * d**0.5

    def _scores(self, x: torch.Tensor) -> torch.Tensor:
        return to_scores(self.run_tensor(x), log_probabilities=self.log_probabilities)

    def _accepts_batches(self) -> bool:
        shape = self.session.get_inputs()[0].shape
        if isinstance(shape[0], int) and shape[0] == 1:
            return False
        probe = np.zeros([2, *[s if isinstance(s, int) else 1 for s in shape[1:]]], np.float32)
        try:
            out = self.session.run(None, {self.input_name: probe})[0]
        except Exception:
            return False
        return bool(out.shape[0] == 2)


class _FiniteDifference(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, backend: OrtBackend) -> torch.Tensor:
        ctx.backend = backend
        ctx.save_for_backward(x)
        return backend._scores(x).to(x.device)

    @staticmethod
    def backward(ctx: Any, grad_scores: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        return ctx.backend.vjp(x, grad_scores), None


def bound_run(session: Any, input_name: str, output_name: str, x: torch.Tensor) -> torch.Tensor:
    """One session call on a contiguous float32 tensor, read in place through IO binding.

    The input is torch's own buffer on its device (a CUDA session reads GPU memory; no copy
    to the host). The output, [N, C] and small, comes back through the host as float32,
    on x's device. torch's stream is synchronized first: onnxruntime runs on its own.
    """
    kind, index = x.device.type, x.device.index or 0
    binding = session.io_binding()
    binding.bind_input(input_name, kind, index, np.float32, list(x.shape), x.data_ptr())
    binding.bind_output(output_name, kind, index)
    if kind == "cuda":
        torch.cuda.current_stream(x.device).synchronize()
    session.run_with_iobinding(binding)
    out = np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)
    return torch.from_numpy(out).to(x.device)
