"""CLIP image (and text) encoders behind one small interface.

Spec strings (docs/architecture.md, "Encoders"):

    open_clip:ARCH/PRETRAINED   e.g. open_clip:ViT-L-14/openai, downloaded by open_clip
    open_clip:ARCH@/path.pt     local weights
    open_clip:ARCH              random init, seeded (tests only)
    onnx:/path/image_tower.onnx a CLIP image tower run by onnxruntime

`load_encoder(spec)` returns an encoder that carries its own preprocessing
(`encoder.preprocess`), so serving and training cannot drift apart. The
preprocessing runs in the fetch threads on PIL images and yields float32 CHW
arrays; `encode_images` takes a stacked batch of them and returns
L2-normalised embeddings. `encode_features` returns, with them, the class
(CLS) token of every transformer block of the image tower, (B, blocks, width):
intermediate blocks keep low-level traces of how an image was made that the
final, semantic embedding loses (RINE, Koutlis & Papadopoulos, ECCV 2024);
training/model/features.py turns them into what a head reads.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np
from PIL import Image

from training.errors import EncoderError
from training.model.device import Placement, choose_placement

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_CONFIG_DIR = Path(__file__).parent / "model_configs"
_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


@dataclass(frozen=True)
class Preprocess:
    """CLIP's eval transform: shortest side to `image_size`, centre crop, scale, normalise.

    Written with PIL and numpy (not torchvision) so it runs in fetch threads
    for any backend; it matches open_clip's `image_transform(is_train=False)`
    for resize_mode "shortest" (see tests/training/test_encoders.py).

    Elongated images. Resizing the shortest side first makes the resized image
    as elongated as the input: a 1 x 16384 strip would become 224 x 3,670,016
    pixels (over 2 GB) for the centre crop to keep 224 x 224 of them. So an
    image more elongated than `MAX_ASPECT`:1 is first centre-cropped to
    `MAX_ASPECT`:1 (its long side cut to `MAX_ASPECT` times its short side),
    then transformed as usual: the resized image never exceeds
    `MAX_ASPECT * image_size**2` pixels. A panorama is cropped, not refused, and
    the model sees the same content as without the crop (the final centre crop
    keeps only the central square); the pixels themselves may differ from the
    uncropped transform's by a sub-pixel shift (the crop re-centres by at most
    half a source pixel; the resize scale loses the rounding of `int(s * w / h)`).
    Within `MAX_ASPECT`:1 nothing changes, bit for bit.

    The crop lives here rather than in `services.images.decode` because this is
    where the memory goes and where the geometry is defined: training
    (training/data/embeddings.py) and serving (actors/stream.py, `dmguard score`) both
    run the encoder's own `Preprocess`, and so does any caller that hands it a
    PIL image that did not come through `decode`.
    """

    image_size: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    interpolation: str = "bicubic"

    # 4:1 keeps every camera and screen format (32:9 = 3.6:1 included) on the
    # plain transform, and bounds its resized image to 4 * 224 * 224 pixels (under 1 MB).
    MAX_ASPECT: ClassVar[int] = 4

    def __call__(self, img: Image.Image) -> np.ndarray:  # -> (3, S, S) float32
        s = self.image_size
        w, h = img.size
        if w > self.MAX_ASPECT * h:
            keep = self.MAX_ASPECT * h
            img = img.crop(((w - keep) // 2, 0, (w - keep) // 2 + keep, h))
        elif h > self.MAX_ASPECT * w:
            keep = self.MAX_ASPECT * w
            img = img.crop((0, (h - keep) // 2, w, (h - keep) // 2 + keep))
        w, h = img.size
        if w <= h:
            new_w, new_h = s, int(s * h / w)
        else:
            new_w, new_h = int(s * w / h), s
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), _RESAMPLE[self.interpolation])
        left = int(round((new_w - s) / 2.0))
        top = int(round((new_h - s) / 2.0))
        img = img.crop((left, top, left + s, top + s))
        arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0  # (S, S, 3)
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))


@dataclass(frozen=True)
class ImageFeatures:
    embeddings: np.ndarray  # (B, D) L2-normalised final embeddings
    blocks: np.ndarray  # (B, L, W) float32: each transformer block's CLS token, in order


class Encoder(Protocol):
    spec: str
    dim: int  # image embedding width
    text_dim: int  # 0 when there is no text tower
    block_shape: tuple[int, int]  # (blocks, width) of `encode_features(...).blocks`
    preprocess: Preprocess
    placement: Placement

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:  # (B,3,S,S) -> (B,D)
        ...

    def encode_features(self, pixels: np.ndarray) -> ImageFeatures: ...

    def encode_texts(self, texts: list[str]) -> np.ndarray:  # -> (B,Dt)
        ...


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class EncoderSpec:
    backend: str  # "open_clip" | "onnx"
    arch: str = ""
    pretrained: str | None = None  # a tag ("openai") or a local path
    path: str | None = None  # onnx file

    @classmethod
    def parse(cls, spec: str) -> EncoderSpec:
        backend, sep, rest = spec.partition(":")
        if not sep or not rest:
            raise EncoderError(
                f"encoder spec {spec!r} must look like 'open_clip:ARCH[/TAG|@PATH]' or 'onnx:PATH'"
            )
        if backend == "onnx":
            return cls("onnx", path=rest)
        if backend != "open_clip":
            raise EncoderError(
                f"unknown encoder backend {backend!r} in {spec!r} (open_clip or onnx)"
            )
        if "@" in rest:
            arch, _, path = rest.partition("@")
            return cls("open_clip", arch, path)
        arch, _, tag = rest.partition("/")
        return cls("open_clip", arch, tag or None)


def load_encoder(spec: str, *, device: str = "auto", threads: int | None = None) -> Encoder:
    """Build the encoder named by `spec`.

    Args:
        device: "auto", "cuda" or "cpu" (see training.model.device.choose_placement).
        threads: CPU threads for the backend; defaults to the CPUs this process may use.

    Raises:
        EncoderError: the spec is malformed or the weights cannot be loaded.
    """
    parsed = EncoderSpec.parse(spec)
    threads = threads or len(os.sched_getaffinity(0))
    placement = choose_placement(device)
    if parsed.backend == "onnx":
        return OnnxEncoder(spec, parsed.path or "", placement=placement, threads=threads)
    return OpenClipEncoder(spec, parsed, placement=placement, threads=threads)


class OpenClipEncoder:
    """Any open_clip architecture; fp16/bf16 autocast and channels_last on CUDA."""

    def __init__(
        self, spec: str, parsed: EncoderSpec, *, placement: Placement, threads: int
    ) -> None:
        import open_clip
        import torch

        open_clip.add_model_config(_CONFIG_DIR)  # dmguard-tiny and friends
        if placement.device == "cpu":
            torch.set_num_threads(threads)
        self.spec, self.placement = spec, placement
        try:
            if parsed.pretrained is None:
                # Random init is seeded so every worker and every test gets the same encoder.
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    model, _, transform = open_clip.create_model_and_transforms(parsed.arch)
            else:
                model, _, transform = open_clip.create_model_and_transforms(
                    parsed.arch, pretrained=parsed.pretrained
                )
        except Exception as exc:  # open_clip raises RuntimeError/ValueError/OSError/HF errors
            raise EncoderError(f"cannot build encoder {spec!r}: {exc}") from exc
        model.eval().to(placement.device)
        if placement.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self._model = model
        self._tokenizer = open_clip.get_tokenizer(parsed.arch)
        cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = cfg.get("size", model.visual.image_size)
        size = size[0] if isinstance(size, (tuple, list)) else int(size)
        self.preprocess = Preprocess(
            image_size=size,
            mean=tuple(cfg.get("mean", CLIP_MEAN)),
            std=tuple(cfg.get("std", CLIP_STD)),
            interpolation=cfg.get("interpolation", "bicubic"),
        )
        self.torch_transform = transform  # open_clip's own, for cross-checks in tests
        self._captured: list = []  # filled by the block hooks during one encode_features call
        self._capturing = False
        visual = self._model.visual
        resblocks = getattr(getattr(visual, "transformer", None), "resblocks", None) or []
        batch_first = getattr(visual.transformer, "batch_first", True) if resblocks else True
        # The class token is token 0 where the tower has one; otherwise the mean of the tokens.
        has_cls = getattr(visual, "class_embedding", None) is not None
        for block in resblocks:
            block.register_forward_hook(self._block_hook(batch_first, has_cls))
        with torch.inference_mode():
            probe = torch.zeros(1, 3, size, size, device=placement.device)
            features = self.encode_features(probe.cpu().numpy())
        self.dim = int(features.embeddings.shape[-1])
        self.block_shape = tuple(features.blocks.shape[1:])
        self.text_dim = self.dim

    def _block_hook(self, batch_first: bool, has_cls: bool):
        def hook(_module, _inputs, output) -> None:
            if not self._capturing:
                return
            x = output[0] if isinstance(output, tuple) else output
            if not batch_first:
                x = x.transpose(0, 1)  # (L, N, W) -> (N, L, W)
            self._captured.append((x[:, 0] if has_cls else x.mean(dim=1)).float())

        return hook

    def _autocast(self):
        import torch

        if self.placement.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.placement.autocast_dtype)

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        return _normalise(self._encode(pixels).cpu().numpy())

    def encode_features(self, pixels: np.ndarray) -> ImageFeatures:
        import torch

        self._captured, self._capturing = [], True
        try:
            emb = self._encode(pixels)
            blocks = torch.stack(self._captured, dim=1) if self._captured else emb[:, None, :0]
        finally:
            self._captured, self._capturing = [], False
        return ImageFeatures(_normalise(emb.cpu().numpy()), blocks.cpu().numpy())

    def _encode(self, pixels: np.ndarray):
        import torch

        with torch.inference_mode(), self._autocast():
            x = torch.from_numpy(pixels).to(self.placement.device, non_blocking=True)
            if self.placement.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return self._model.encode_image(x).float()  # (B, D)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode(), self._autocast():
            tokens = self._tokenizer(texts).to(self.placement.device)
            emb = self._model.encode_text(tokens).float()  # (B, D)
        return _normalise(emb.cpu().numpy())


class OnnxEncoder:
    """A CLIP image tower exported to ONNX (input pixel_values (N,3,S,S), output
    image_embeds (N,D)), run by onnxruntime. No text tower.

    A dynamically quantised model (INT8, `DynamicQuantizeLinear`) picks one
    activation scale per input tensor, so in a batch an image's embedding moves
    with its batch-mates (cosine down to 0.95 between batch 16 and batch 1 on the
    offline CLIP tower): a verdict would depend on what else arrived with it, and
    training (batch 32) would see other embeddings than serving. Such a model runs
    one image per call; measured here that costs nothing (15.9 images/s per image
    vs 15.4 batched on 2 threads; docs/operations.md, "INT8 or float32").
    """

    def __init__(self, spec: str, path: str, *, placement: Placement, threads: int) -> None:
        import onnxruntime as ort

        if not Path(path).is_file():
            raise EncoderError(f"ONNX encoder file not found: {path} (run `make models`)")
        self.per_image = is_dynamically_quantised(Path(path))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if placement.device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        model, self._block_outputs = with_block_outputs(Path(path))
        try:
            self._session = ort.InferenceSession(model, sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise EncoderError(f"cannot load ONNX encoder {path}: {exc}") from exc
        self.spec, self.placement = spec, placement
        inp = self._session.get_inputs()[0]
        self._input = inp.name
        outputs = [o.name for o in self._session.get_outputs()]
        self._output = "image_embeds" if "image_embeds" in outputs else outputs[0]
        size = inp.shape[-1] if isinstance(inp.shape[-1], int) else 224
        self.preprocess = Preprocess(image_size=size)
        probe = self.encode_features(np.zeros((1, 3, size, size), np.float32))
        self.dim = int(probe.embeddings.shape[-1])
        self.block_shape = tuple(probe.blocks.shape[1:])
        self.text_dim = 0

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        return self._run_all(pixels, [self._output])[0]

    def encode_features(self, pixels: np.ndarray) -> ImageFeatures:
        emb, *blocks = self._run_all(pixels, [self._output, *self._block_outputs])
        stacked = np.stack(blocks, axis=1) if blocks else np.zeros((len(emb), 0, 0), np.float32)
        return ImageFeatures(emb, stacked)

    def _run_all(self, pixels: np.ndarray, names: list[str]) -> list[np.ndarray]:
        """`names` outputs for the batch (the first, the embedding, L2-normalised); one image
        per session run for a dynamically quantised model (see the class docstring)."""
        pixels = pixels.astype(np.float32)
        step = 1 if self.per_image else max(1, len(pixels))
        runs = [
            self._session.run(names, {self._input: pixels[i : i + step]})
            for i in range(0, len(pixels), step)
        ]
        out = [
            np.concatenate([np.asarray(r[k], np.float32) for r in runs]) for k in range(len(names))
        ]
        out[0] = _normalise(out[0])
        return out

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        raise EncoderError(f"{self.spec} has no text tower")


# The residual stream after block N in a Hugging Face CLIPVisionModel export (the graph
# of the offline tower): the output of the node "/vision_model/encoder/layers.N/Add_1".
_HF_BLOCK_OUTPUT = re.compile(r"/vision_model/encoder/layers\.(\d+)/Add_1")


def with_block_outputs(path: Path) -> tuple[bytes | str, list[str]]:
    """The model at `path` with each transformer block's CLS token (token 0 of the
    residual stream after the block) added as a graph output `block_N_cls` (N, W),
    and the names of those outputs in block order.

    The graph is changed in memory (a Gather per block); the file is not touched. A
    graph whose blocks cannot be found (not a Hugging Face CLIP export), or a machine
    without the `onnx` package, gets the path back unchanged and no block outputs.
    """
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError:
        return str(path), []
    model = onnx.load(str(path))
    graph = model.graph
    found = sorted(
        (int(m.group(1)), node.output[0])
        for node in graph.node
        if (m := _HF_BLOCK_OUTPUT.fullmatch(node.name))
    )
    if not found:
        return str(path), []
    graph.initializer.append(helper.make_tensor("dmguard_cls_index", TensorProto.INT64, [], [0]))
    names = []
    for n, residual in found:
        name = f"block_{n}_cls"
        graph.node.append(
            helper.make_node("Gather", [residual, "dmguard_cls_index"], [name], axis=1)
        )
        graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
        names.append(name)
    return model.SerializeToString(), names


def is_dynamically_quantised(path: Path) -> bool:
    """True when the ONNX file uses DynamicQuantizeLinear (op types are plain strings in
    the protobuf, so a byte search answers without the `onnx` package)."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return m.find(b"DynamicQuantizeLinear") != -1
