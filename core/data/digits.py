"""scikit-learn's handwritten digits (1,797 8x8 images, 0..16) as 16x16 images in [-1, 1].

- upsampling: bilinear (align_corners=False) from 8x8 to `size` x `size`;
- scaling: x = 2 * (v / 16) - 1, so background is -1 and full ink is +1;
- split: per class, a fixed permutation (numpy seed 0) puts 25 % of each class in the held-out
  set (stratified, deterministic: 1,347 train / 450 held-out for the 10 classes).
Nothing is downloaded: `sklearn.datasets.load_digits` reads a file inside scikit-learn.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as Fn

from core.errors import ScheduleLabError

SIZE = 16
HELD_OUT_FRACTION = 0.25
SPLIT_SEED = 0


@dataclass(frozen=True)
class DigitsSplit:
    """Images [n, 1, size, size] float32 in [-1, 1] and labels [n] int64 for both splits."""
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.train_x.shape[-1])


def upsample(images8: np.ndarray, size: int = SIZE) -> torch.Tensor:
    """[n, 8, 8] values 0..16 -> [n, 1, size, size] float32 in [-1, 1] (bilinear)."""
    x = torch.as_tensor(np.asarray(images8, dtype=np.float32) / 16.0)[:, None]
    if size != 8:
        x = Fn.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (2 * x - 1).clamp(-1, 1).contiguous()


def split_indices(labels: np.ndarray, fraction: float = HELD_OUT_FRACTION, seed: int = SPLIT_SEED):
    """Stratified deterministic split -> (train_idx, test_idx), both sorted."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(fraction * len(idx)))
        test.extend(idx[:k])
        train.extend(idx[k:])
    return np.sort(np.array(train)), np.sort(np.array(test))


@lru_cache(maxsize=4)
def load_digits_split(size: int = SIZE) -> DigitsSplit:
    """The train / held-out split of the digits at `size` x `size` (size a multiple of 4, >= 8)."""
    if size < 8 or size % 4:
        raise ScheduleLabError(f"digits size must be a multiple of 4 and >= 8; got {size}")
    from sklearn.datasets import load_digits
    d = load_digits()
    y = np.asarray(d.target, dtype=np.int64)
    tr, te = split_indices(y)
    x = upsample(d.images, size)
    return DigitsSplit(x[tr], torch.as_tensor(y[tr]), x[te], torch.as_tensor(y[te]))
