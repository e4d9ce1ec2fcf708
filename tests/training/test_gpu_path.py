"""The GPU path the README claims ("on a GPU the encoder runs under bf16 (fp16 where
bf16 is missing) autocast with channels_last"), checked without a GPU.

CUDA is faked at the device boundary: torch.cuda answers the facts, every request to
put a module or tensor on "cuda" is recorded and served on the CPU, and torch.autocast
is replaced by a recorder that still runs a real autocast, on the CPU, with the
dtype asked for. The encoder code between those boundaries is the product's own."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from tests.conftest import TINY
from tests.images import photo
from training.model.device import choose_placement
from training.model.encoders import load_encoder


@pytest.fixture(autouse=True)
def _torch_threads():
    """load_encoder sets torch's (process-wide) thread count on the CPU: put it back."""
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def _is_cuda(device) -> bool:
    return device is not None and torch.device(device).type == "cuda"


class FakeCuda:
    """Patches torch so that code written for CUDA runs on the CPU, and records what
    it asked for: `moves` (what, device, memory_format) and `autocasts` (device, dtype);
    `active` is how many recorded autocast contexts are open right now."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, available: bool, bf16: bool) -> None:
        import open_clip  # noqa: F401  (imported before torch is patched)

        self.moves: list[tuple[str, str | None, torch.memory_format | None]] = []
        self.autocasts: list[tuple[str, torch.dtype | None]] = []
        self.active = 0
        fake = self
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)

        def on_cpu(what, original):
            def to(obj, *args, **kwargs):
                device = kwargs.get("device")
                if args and isinstance(args[0], (str, torch.device)):
                    device = args[0]
                    if _is_cuda(device):
                        args = ("cpu", *args[1:])
                elif _is_cuda(device):
                    kwargs["device"] = "cpu"
                if device is not None or "memory_format" in kwargs:
                    fake.moves.append((what, device and str(device), kwargs.get("memory_format")))
                return original(obj, *args, **kwargs)

            return to

        monkeypatch.setattr(torch.nn.Module, "to", on_cpu("module", torch.nn.Module.to))
        monkeypatch.setattr(torch.Tensor, "to", on_cpu("tensor", torch.Tensor.to))
        real_zeros = torch.zeros

        def zeros(*args, device=None, **kwargs):
            if _is_cuda(device):
                fake.moves.append(("zeros", str(device), None))
                device = "cpu"
            return real_zeros(*args, device=device, **kwargs)

        monkeypatch.setattr(torch, "zeros", zeros)
        real_autocast = torch.autocast

        class RecordingAutocast(contextlib.AbstractContextManager):
            def __init__(self, device_type, dtype=None, enabled=True, cache_enabled=None):
                fake.autocasts.append((device_type, dtype))
                self._cpu = real_autocast("cpu", dtype=dtype, enabled=enabled)

            def __enter__(self):
                fake.active += 1
                self._cpu.__enter__()
                return self

            def __exit__(self, *exc):
                self._cpu.__exit__(*exc)
                fake.active -= 1
                return False

        monkeypatch.setattr(torch, "autocast", RecordingAutocast)


def _spy_on_forward(monkeypatch, encoder, fake: FakeCuda) -> list[dict]:
    """What the model's encode_image was called with, and in which context."""
    calls: list[dict] = []
    model = encoder._model
    real = model.encode_image

    def encode_image(x, *args, **kwargs):
        out = real(x, *args, **kwargs)
        calls.append(
            {
                "autocast_open": fake.active,
                "channels_last": x.is_contiguous(memory_format=torch.channels_last),
                "plain_contiguous": x.is_contiguous(),
                "out_dtype": out.dtype,
            }
        )
        return out

    monkeypatch.setattr(model, "encode_image", encode_image)
    return calls


@pytest.mark.parametrize(
    "available, bf16, device, dtype, channels_last",
    [
        (True, True, "cuda", torch.bfloat16, True),
        (True, False, "cuda", torch.float16, True),
        (False, True, "cpu", None, False),
        (False, False, "cpu", None, False),
    ],
)
def test_auto_placement_reads_the_facts_from_torch(
    monkeypatch, available, bf16, device, dtype, channels_last
):
    FakeCuda(monkeypatch, available=available, bf16=bf16)
    placement = choose_placement("auto")
    assert placement.device == device
    assert placement.autocast_dtype == dtype
    assert placement.channels_last is channels_last
    assert choose_placement("cpu").device == "cpu"


@pytest.mark.parametrize("bf16, dtype", [(True, torch.bfloat16), (False, torch.float16)])
def test_on_cuda_the_encoder_autocasts_and_feeds_channels_last(monkeypatch, bf16, dtype):
    fake = FakeCuda(monkeypatch, available=True, bf16=bf16)
    encoder = load_encoder(TINY, device="auto", threads=1)
    assert encoder.placement.device == "cuda" and encoder.placement.autocast_dtype == dtype

    # the model went to the GPU and was asked for channels_last weights
    assert ("module", "cuda", None) in fake.moves
    assert ("module", None, torch.channels_last) in fake.moves
    conv = encoder._model.visual.conv1.weight
    assert conv.dim() == 4 and conv.is_contiguous(memory_format=torch.channels_last)

    calls = _spy_on_forward(monkeypatch, encoder, fake)
    fake.autocasts.clear()
    fake.moves.clear()
    pixels = np.stack([encoder.preprocess(photo(seed=i)) for i in range(2)])
    assert pixels.flags.c_contiguous  # NCHW as the fetch threads make it
    emb = encoder.encode_images(pixels)

    assert fake.autocasts == [("cuda", dtype)]
    (call,) = calls
    assert call["autocast_open"] == 1, "the forward ran outside the autocast context"
    assert call["out_dtype"] == dtype  # and the autocast was real: it ran in that precision
    assert call["channels_last"] and not call["plain_contiguous"], "input not channels_last"
    assert ("tensor", "cuda", None) in fake.moves  # the batch was sent to the GPU
    # what comes back is float32 numpy, L2-normalised, whatever the precision inside
    assert emb.dtype == np.float32 and emb.shape == (2, encoder.dim)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)

    fake.autocasts.clear()
    texts = encoder.encode_texts(["a photo"])
    assert fake.autocasts == [("cuda", dtype)] and texts.dtype == np.float32


def test_on_cpu_the_encoder_stays_fp32_without_channels_last(monkeypatch):
    fake = FakeCuda(monkeypatch, available=False, bf16=True)
    encoder = load_encoder(TINY, device="auto", threads=1)
    assert encoder.placement.device == "cpu" and encoder.placement.autocast_dtype is None
    calls = _spy_on_forward(monkeypatch, encoder, fake)
    pixels = np.stack([encoder.preprocess(photo(seed=i)) for i in range(2)])
    encoder.encode_images(pixels)
    assert fake.autocasts == []
    assert not any(fmt == torch.channels_last for _, _, fmt in fake.moves)
    assert not any(device and device.startswith("cuda") for _, device, _ in fake.moves)
    (call,) = calls
    assert call["out_dtype"] == torch.float32 and call["plain_contiguous"]
