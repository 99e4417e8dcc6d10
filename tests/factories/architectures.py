"""The real-architecture corpus of issue 8, req. 3: timm and torchvision models, as exported.

Every model is built with random weights (`pretrained=False` / `weights=None`: nothing
downloads), 10 classes, eval mode, and small inputs (32×32, or 64×64 where the architecture
downsamples too far for 32). Each case names its exporter (TorchScript `dynamo=False` or
`dynamo=True`) and opset; together they span opsets 13 to 20. The variants are the graphs
users upload after a tool touched them: a float16 export, files saved by an onnxruntime
session (com.microsoft FusedConv, BiasGelu), and an export made in training mode.

Exports are the slow part (a dynamo export takes 10 s to a minute on two busy cores), so a
test session builds each file once (`ArchCase.export`, cached in a directory it is given).
The whole corpus takes minutes on two cores, so `make test` runs the CORE cases, one per
path through the intake (plain, dynamo, float16, onnxruntime-fused, training-mode), and
`ROBAUDIT_CORPUS=full` runs all of them.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

Exporter = Literal["torchscript", "dynamo"]
Variant = Literal["", "float16", "ort-extended", "train-bn"]
NUM_CLASSES = 10


@dataclass(frozen=True)
class ArchCase:
    """One corpus entry: an architecture, how it was exported, and what touched the file."""

    name: str
    family: str
    source: Literal["timm", "torchvision"]
    model: str
    size: int
    exporter: Exporter
    opset: int
    variant: Variant = ""
    patch: int | None = None  # ViT patch size at these small inputs

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)

    def build(self) -> nn.Module:
        """The architecture with seeded random weights, in eval mode (train mode for train-bn)."""
        torch.manual_seed(0)
        if self.source == "timm":
            import timm

            kwargs: dict[str, Any] = {}
            if self.patch is not None:
                kwargs = {"img_size": self.size, "patch_size": self.patch}
            module = timm.create_model(
                self.model, pretrained=False, num_classes=NUM_CLASSES, **kwargs
            )
        else:
            import torchvision

            factory = getattr(torchvision.models, self.model)
            module = factory(weights=None, num_classes=NUM_CLASSES)
        module.eval()
        if self.variant == "train-bn":
            _calibrate_batchnorm(module, self.input_shape)
        return module

    def probe(self, n: int = 4) -> np.ndarray:
        """Seeded inputs in [0, 1], the audit's default input range."""
        rng = np.random.default_rng(0)
        return rng.uniform(0, 1, size=(n, *self.input_shape)).astype(np.float32)

    def export(self, directory: Path) -> bytes:
        """The ONNX file a user would upload, exported once per directory."""
        path = directory / f"{self.name}.onnx"
        if not path.exists():
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                path.write_bytes(self._export(directory))
        return path.read_bytes()

    def _export(self, directory: Path) -> bytes:
        module = self.build()
        sample = torch.from_numpy(self.probe(2))
        if self.variant == "float16":
            module, sample = module.half(), sample.half()
        data = torch_export(
            module, sample, dynamo=self.exporter == "dynamo", opset=self.opset,
            training=self.variant == "train-bn",
        )  # fmt: skip
        if self.variant == "ort-extended":
            data = ort_optimised(data, directory / f"{self.name}.plain.onnx")
        return data


def torch_export(
    module: nn.Module, sample: torch.Tensor, *, dynamo: bool, opset: int, training: bool = False
) -> bytes:
    """torch.onnx.export with a dynamic batch, as users call it."""
    buf = io.BytesIO()
    if dynamo:
        torch.onnx.export(
            module, (sample,), buf, input_names=["input"], output_names=["scores"], dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("N")},), opset_version=opset, verbose=False,
        )  # fmt: skip
    else:
        mode = torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL
        torch.onnx.export(
            module, (sample,), buf, input_names=["input"], output_names=["scores"], dynamo=False,
            dynamic_axes={"input": {0: "N"}, "scores": {0: "N"}}, opset_version=opset,
            training=mode, do_constant_folding=not training,
        )  # fmt: skip
    return buf.getvalue()


def ort_optimised(data: bytes, scratch: Path) -> bytes:
    """The file an onnxruntime CPU session saves at ORT_ENABLE_EXTENDED (fused contrib ops)."""
    scratch.write_bytes(data)
    out = scratch.with_suffix(".ort.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(scratch), options, providers=["CPUExecutionProvider"])
    return out.read_bytes()


def _calibrate_batchnorm(module: nn.Module, shape: tuple[int, ...]) -> None:
    """Running statistics that differ from (0, 1), then train mode, as a forgotten .eval() has."""
    module.train()
    with torch.no_grad():
        for _ in range(3):
            module(torch.rand(8, *shape))


def contrib_ops(data: bytes) -> list[str]:
    """The com.microsoft op types of a file, for the corpus table."""
    return sorted({n.op_type for n in onnx.load_from_string(data).graph.node if n.domain})


T: Exporter = "torchscript"
D: Exporter = "dynamo"
ARCHITECTURES: tuple[ArchCase, ...] = (
    ArchCase("resnet10t", "ResNet", "timm", "resnet10t", 32, T, 13),
    ArchCase("mobilenetv3_small_050", "MobileNet v3", "timm", "mobilenetv3_small_050", 32, T, 14),
    ArchCase("lcnet_050", "LCNet", "timm", "lcnet_050", 32, T, 15),
    ArchCase("ghostnet_050", "GhostNet", "timm", "ghostnet_050", 32, T, 16),
    ArchCase("regnetx_002", "RegNet", "timm", "regnetx_002", 32, T, 17),
    ArchCase("efficientnet_b0", "EfficientNet", "timm", "efficientnet_b0", 32, T, 18),
    ArchCase("convnext_atto", "ConvNeXt", "timm", "convnext_atto", 32, T, 19),
    ArchCase("vit_tiny", "ViT", "timm", "vit_tiny_patch16_224", 32, T, 17, patch=8),
    ArchCase("deit_tiny", "DeiT", "timm", "deit_tiny_patch16_224", 32, T, 14, patch=8),
    ArchCase("mobilevit_xxs", "MobileViT", "timm", "mobilevit_xxs", 64, T, 17),
    ArchCase("squeezenet1_1", "SqueezeNet", "torchvision", "squeezenet1_1", 64, T, 13),
    ArchCase("shufflenet_v2_x0_5", "ShuffleNet v2", "torchvision", "shufflenet_v2_x0_5", 32, T, 16),
    ArchCase("mobilenet_v2", "MobileNet v2", "torchvision", "mobilenet_v2", 32, T, 20),
    ArchCase("densenet121", "DenseNet", "torchvision", "densenet121", 32, T, 14),
    ArchCase("resnet10t-dynamo", "ResNet", "timm", "resnet10t", 32, D, 18),
    ArchCase("squeezenet1_1-dynamo", "SqueezeNet", "torchvision", "squeezenet1_1", 64, D, 20),
    ArchCase("lcnet_050-float16", "LCNet", "timm", "lcnet_050", 32, T, 17, "float16"),
    ArchCase("resnet10t-ort", "ResNet", "timm", "resnet10t", 32, T, 17, "ort-extended"),
    ArchCase("vit_tiny-ort", "ViT", "timm", "vit_tiny_patch16_224", 32, T, 17, "ort-extended", 8),
    ArchCase("resnet10t-train-bn", "ResNet", "timm", "resnet10t", 32, T, 15, "train-bn"),
)
# The cheapest case of each path through the intake; the rest run with ROBAUDIT_CORPUS=full.
CORE = frozenset(
    {
        "squeezenet1_1",
        "lcnet_050",
        "squeezenet1_1-dynamo",
        "lcnet_050-float16",
        "resnet10t-ort",
        "resnet10t-train-bn",
    }
)
