"""Where the model runs and in which precision.

Kept apart from the encoders so the choice is unit-tested without a GPU: the
rules take the facts (is CUDA there, does it do bf16) as arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from training.errors import DeviceError


@dataclass(frozen=True)
class Placement:
    device: str  # "cuda" or "cpu"
    autocast_dtype: torch.dtype | None  # None: plain fp32
    channels_last: bool


def choose_placement(
    prefer: str = "auto",
    *,
    cuda_available: bool | None = None,
    bf16_supported: bool | None = None,
) -> Placement:
    """Pick device and precision.

    Args:
        prefer: "auto" (CUDA when present), "cuda", "cpu".
        cuda_available / bf16_supported: facts about this process's GPU; read
            from torch when None.

    On CUDA, inference autocasts to bf16 where the GPU supports it (Ampere and
    later: same range as fp32, no overflow in the logits) and fp16 otherwise,
    with channels_last memory format for the conv stem. On CPU it stays fp32:
    CPU autocast gains little for ViTs and changes scores.

    Raises:
        DeviceError: `prefer` is not a known device, or is "cuda" without CUDA.
    """
    if prefer not in ("auto", "cuda", "cpu"):
        raise DeviceError(f"device must be auto, cuda or cpu, not {prefer!r}")
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if prefer == "cuda" and not cuda_available:
        raise DeviceError(
            "device 'cuda' requested but torch sees no CUDA device: use --device cpu or auto"
        )
    if prefer == "cpu" or not cuda_available:
        return Placement("cpu", None, False)
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    return Placement("cuda", torch.bfloat16 if bf16_supported else torch.float16, True)
