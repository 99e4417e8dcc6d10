"""A model's declared preprocessing: the pixel space its audit runs in, defined once.

Most image classifiers take normalized input, `(x − mean) / std` per channel, and robaudit
used to measure ε in whatever space the graph takes. A model that declares its preprocessing
is audited in **pixel space** instead:

- the data (an .npz's `x`, or decoded images) holds pixels in [0, `scale`], laid out as the
  graph takes them (`layout`: NCHW, or NHWC with the channels last);
- `mean` and `std` are per channel, in the same pixel units (ImageNet at scale 1 is
  mean 0.485, 0.456, 0.406 and std 0.229, 0.224, 0.225; at scale 255 the same times 255),
  applied on the channel axis of `layout`;
- the audit prepends `(x − mean) / std` to the graph as ONNX Sub and Div nodes
  (robustness/onnx_normalization.py), so onnxruntime and the torch conversions run one graph,
  and ε, the clamp to [0, scale] and the attacks all act on pixels.

Two models of one product, one normalizing inside its graph and one outside, are then
measured in the same units and compare; a model at scale 1 and one at scale 255 do not.
This module is pydantic only: the web layer imports it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from robustness.errors import AuditInputError

MAX_CHANNELS = 64
Dim = int | str | None


class Layout(StrEnum):
    """Where the channel axis of the graph's input is: second (NCHW) or last (NHWC)."""

    NCHW = "NCHW"
    NHWC = "NHWC"


class Preprocessing(BaseModel):
    """What the graph expects of its input, declared with the model (POST /v1/models)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    scale: Literal[1, 255] = Field(
        1, description="Pixel space [0, scale]: 1 for [0, 1] pixels, 255 for [0, 255]"
    )
    mean: tuple[float, ...] | None = Field(
        None,
        min_length=1,
        max_length=MAX_CHANNELS,
        description="Per-channel mean subtracted before the graph, in pixel units",
    )
    std: tuple[float, ...] | None = Field(
        None,
        min_length=1,
        max_length=MAX_CHANNELS,
        description="Per-channel std divided by after the mean, in pixel units; each > 0",
    )
    layout: Layout = Field(
        Layout.NCHW, description="The graph's input layout: NCHW, or NHWC (channels last)"
    )

    @field_validator("std")
    @classmethod
    def _positive(cls, std: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if std is not None and not all(s > 0 for s in std):
            raise ValueError(f"std {list(std)} must be > 0 for every channel")
        return std

    @model_validator(mode="after")
    def _mean_and_std_together(self) -> Preprocessing:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give mean and std together (one value per channel each)")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError(
                f"mean has {len(self.mean)} values and std {len(self.std)}; "
                "give one of each per channel"
            )
        return self

    @property
    def pixel_range(self) -> tuple[float, float]:
        """The input range of the audit: [0, scale]."""
        return (0.0, float(self.scale))

    @property
    def normalizes(self) -> bool:
        return self.mean is not None

    def channel_axis(self, rank: int) -> int:
        """The channel axis of a batch of this rank (batch first)."""
        return 1 if self.layout is Layout.NCHW else rank - 1

    def check_input(self, shape: Sequence[Dim]) -> None:
        """AuditInputError naming the fix if this cannot apply to an input of this shape."""
        rank = len(shape)
        if self.layout is Layout.NHWC and rank < 3:
            raise AuditInputError(
                f"layout NHWC needs an input with channels last after spatial dims; the model's "
                f"input is {list(shape)}: declare layout NCHW or no layout"
            )
        if self.mean is None:
            return
        axis = self.channel_axis(rank)
        channels = shape[axis]
        if isinstance(channels, int) and channels != len(self.mean):
            raise AuditInputError(
                f"mean and std have {len(self.mean)} values but the model's input "
                f"{list(shape)} has {channels} channels on axis {axis} (layout "
                f"{self.layout.value}); give one value per channel"
            )

    def describe(self) -> str:
        """One line for notes and reports."""
        text = f"pixel space [0, {self.scale}], {self.layout.value}"
        if self.mean is not None and self.std is not None:
            text += f", (x − mean {_values(self.mean)}) / std {_values(self.std)} prepended"
        return text


def _values(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in values) + "]"


def resolve_range(
    preprocessing: Preprocessing | None, input_range: Sequence[float] | None
) -> list[float] | None:
    """The model's input range: [0, scale] with preprocessing, else the declared one.

    A declared range that contradicts the preprocessing is refused: ε would mean two things.
    None: neither was declared (the caller's default applies).
    """
    if preprocessing is None:
        return None if input_range is None else [float(v) for v in input_range]
    pixels = [0.0, float(preprocessing.scale)]
    if input_range is not None and [float(v) for v in input_range] != pixels:
        raise AuditInputError(
            f"input_range {list(input_range)} contradicts preprocessing scale "
            f"{preprocessing.scale}: with preprocessing the audit runs in pixel space "
            f"{pixels}; drop input_range or make it 0,{preprocessing.scale}"
        )
    return pixels


def epsilon_label(
    epsilon: float, input_range: Sequence[float] | None, preprocessing: Preprocessing | None
) -> str:
    """ε in the units it was measured in, e.g. "ε = 8/255 (0.0314) in pixel space [0, 1]"."""
    if preprocessing is not None and preprocessing.scale == 255:
        return f"ε = {_g(epsilon)} (of 255) in pixel space [0, 255]"
    if preprocessing is not None:
        where = "in pixel space [0, 1]"
    else:
        lo, hi = input_range or (0.0, 1.0)
        where = f"in input space [{_g(lo)}, {_g(hi)}] (no preprocessing declared)"
    steps = epsilon * 255
    if math.isclose(steps, round(steps), rel_tol=0, abs_tol=1e-6) and round(steps) >= 1:
        return f"ε = {round(steps)}/255 ({epsilon:.4g}) {where}"
    return f"ε = {_g(epsilon)} {where}"


def _g(value: float) -> str:
    return f"{value:g}"
