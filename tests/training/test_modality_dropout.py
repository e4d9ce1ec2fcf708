import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import TINY
from tests.images import encode, generated_like, real_like
from training.evaluation.evaluate import roc_auc
from training.learning.config import TrainConfig
from training.learning.train import fit_epochs
from training.model.detector import Detector
from training.model.head import score
from training.model.registry import Registry


def image_and_caption(n: int, seed: int):
    """Both modalities carry the label; the caption much more strongly."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(np.int64)
    img = rng.normal(0, 1, (n, 16))
    img[:, 0] += y * 1.5
    txt = rng.normal(0, 1, (n, 16))
    txt[:, 0] += y * 4.0
    return img.astype(np.float32), txt.astype(np.float32), y


def test_modality_dropout_keeps_the_head_useful_without_captions():
    without_caption = {0.0: [], 0.5: []}
    for seed in range(3):
        img, txt, y = image_and_caption(2000, seed)
        img_v, txt_v, y_v = image_and_caption(1000, seed + 100)
        for p in without_caption:
            cfg = TrainConfig(epochs=15, seed=seed, text_dim=16, modality_dropout=p, patience=100)
            head, _ = fit_epochs(np.c_[img, txt], y, np.c_[img_v, txt_v], y_v, cfg)
            assert roc_auc(y_v, score(head, np.c_[img_v, txt_v])) > 0.95  # captions still used
            without_caption[p].append(roc_auc(y_v, score(head, np.c_[img_v, np.zeros_like(txt_v)])))
    print(
        f"\nheld-out AUC without captions: p=0 {np.round(without_caption[0.0], 3)}, p=0.5 {np.round(without_caption[0.5], 3)}"
    )
    assert np.mean(without_caption[0.5]) > np.mean(without_caption[0.0]) + 0.01


@pytest.mark.slow
@pytest.mark.ray
def test_train_with_captions_registers_a_text_head(tmp_path):
    rows = []
    for i in range(24):
        for label, make, words in (
            ("real", real_like, "a photo of a lake"),
            ("generated", generated_like, "a render"),
        ):
            path = tmp_path / "img" / f"{label}-{i}.png"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(encode(make(i), "PNG"))
            rows.append(
                {
                    "path": str(path),
                    "label": label,
                    "text": words if i % 2 else "",
                    "source": f"{label}-{i % 2}",
                }
            )
    manifest = tmp_path / "set.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    reg = tmp_path / "registry"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dmguard",
            "train",
            "--data",
            str(manifest),
            "--encoder",
            TINY,
            "--epochs",
            "3",
            "--workers",
            "2",
            "--batch-size",
            "16",
            "--registry",
            str(reg),
            "--cache",
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    meta = Registry(reg).meta("v1")
    assert meta.uses_text and meta.input_dim == 128 and meta.extra["train_config"]["text_dim"] == 64
    detector = Detector.from_registry(Registry(reg), device="cpu", threads=1)
    pixels = np.stack(
        [detector.encoder.preprocess(real_like(0)), detector.encoder.preprocess(generated_like(0))]
    )
    _, with_text = detector(pixels, ["a photo of a lake", "a render"])
    _, without = detector(pixels, [None, None])  # records without `text` are served too
    assert with_text.shape == without.shape == (2,) and not np.allclose(with_text, without)
