"""Synthetic activations with planted emotion structure, shared by the geometry tests."""
from __future__ import annotations

import numpy as np
import pandas as pd

from lib.emotions import BASELINE, TARGET_EMOTIONS

D = 24


def orthonormal(rng, d, k):
    """A random [d, k] matrix with orthonormal columns."""
    return np.linalg.qr(rng.standard_normal((d, k)))[0]


def planted(seed=0, n=120, shift=3.0, shifted=TARGET_EMOTIONS, offsets=None, d=D):
    """neutral = mu + noise; emotion e = mu + shift * u_e + noise (u_e orthonormal); anisotropic, rotated noise
    (std 0.05..0.6, below the between-class spread along u). Returns x, labels DataFrame, {emotion: u}."""
    rng = np.random.default_rng(seed)
    u = offsets if offsets is not None else dict(zip(TARGET_EMOTIONS, orthonormal(rng, d, 3).T))
    rot = orthonormal(rng, d, d)
    noise_sd = np.geomspace(0.05, 0.6, d)
    mu = rng.normal(0, 2, d)
    blocks, names = [], []
    for cls in (*TARGET_EMOTIONS, BASELINE):
        offset = shift * u[cls] if cls in shifted else 0.0
        blocks.append(mu + offset + (rng.standard_normal((n, d)) * noise_sd) @ rot.T)
        names += [cls] * n
    return np.vstack(blocks).astype(np.float32), pd.DataFrame({"emotion": names}), u
