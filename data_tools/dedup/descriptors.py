"""Image descriptors for near-duplicate search, behind one small interface.

A descriptor turns a batch of images into L2-normalised float32 rows, so the cosine
similarity of two images is the inner product FAISS computes. Each one names itself
(the name goes into reports and manifests) and may carry a threshold measured on real
photographs (bench/dedup.py); one without is calibrated on the run's own images.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

# Measured by bench/dedup.py on 600 real photographs: just above the best unrelated
# score (0.918, with the corner views and both framings indexed); precision 1.0 and
# recall >= 0.977 on every edit there (docs/benchmarks.md, "Near-duplicate filter").
DCT_THRESHOLD = 0.92


class Descriptor(Protocol):
    name: str
    dim: int
    threshold: float | None        # calibrated default; None: calibrate on the run

    def describe(self, images: list[Image.Image]) -> np.ndarray:
        """(len(images), dim) float32, each row of unit length."""


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II basis: row u is the u-th cosine over n samples."""
    k = np.arange(n)
    basis = np.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2 / n)
    basis[0] /= math.sqrt(2)
    return basis.astype(np.float32)


class DCTDescriptor:
    """Per colour channel, the low-frequency DCT block of a small thumbnail without its DC
    term (PDQ-like, but kept as floats), each channel's block normalised, then the whole.

    The inner product of two rows is the mean over channels of the correlation of the
    low-passed images: blind to brightness, contrast and per-channel colour casts (a
    warm filter), barely moved by rescaling and JPEG, and — with three channels instead
    of grey — more distinctive between unrelated photos (bench/dedup.py measured both).
    Crops and flips are covered by the index's views, not by the descriptor."""

    name = "dct"

    def __init__(self, side: int = 32, block: int = 8, threshold: float | None = DCT_THRESHOLD):
        self.side, self.block, self.threshold = side, block, threshold
        self.dim = 3 * (block * block - 1)
        self.basis = dct_matrix(side)[:block]

    def describe(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        pixels = np.stack([np.asarray(im.convert("RGB").resize((self.side, self.side), Image.BOX), np.float32)
                           for im in images]).transpose(0, 3, 1, 2)
        coeffs = self.basis @ pixels @ self.basis.T                 # (n, 3, block, block)
        rows = coeffs.reshape(len(images), 3, -1)[:, :, 1:]          # DC dropped: brightness
        rows = rows / np.maximum(np.linalg.norm(rows, axis=2, keepdims=True), 1e-6)  # per-channel gain
        return normalise(rows.reshape(len(images), -1))


def normalise(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.maximum(norms, 1e-6)).astype(np.float32)


class LearnedDescriptor:
    """A network's GeM-pooled, L2-normalised features, in batches on the GPU when there
    is one. The network comes from a local file (load_network; nothing is downloaded).
    It has no measured threshold: the run calibrates one."""

    name = "learned"
    threshold = None
    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(self, network, size: int = 224, batch: int = 64, device: str | None = None):
        import torch
        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.size, self.batch = size, batch
        self.net = network.to(self.device).eval()
        with torch.no_grad():
            self.dim = int(self._embed(torch.zeros(1, 3, size, size, device=self.device)).shape[1])

    def _embed(self, x):
        out = self.net(x)
        if out.dim() == 4:  # a feature map: GeM pooling, p = 3 as SSCD and DINOv2's copy detection
            out = out.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)
        return self.torch.nn.functional.normalize(out.float(), dim=1)

    def describe(self, images: list[Image.Image]) -> np.ndarray:
        torch = self.torch
        mean = torch.tensor(self.MEAN).view(1, 3, 1, 1)
        std = torch.tensor(self.STD).view(1, 3, 1, 1)
        rows = [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(images), self.batch):
            chunk = [np.asarray(im.convert("RGB").resize((self.size, self.size), Image.BILINEAR))
                     for im in images[start:start + self.batch]]
            x = torch.from_numpy(np.stack(chunk)).permute(0, 3, 1, 2).float().div(255)
            x = ((x - mean) / std).to(self.device)
            with torch.no_grad():
                rows.append(self._embed(x).cpu().numpy())
        return np.concatenate(rows).astype(np.float32)


def load_network(path: str, arch: str | None = None, read_backbone=None):
    """A module mapping images to a feature map or an embedding, from a local file: a
    TorchScript copy-detection model such as SSCD's (its output is the descriptor) is
    loaded here; our `backbone.pt`, a pretrain checkpoint or a torchvision state dict
    (`arch` names the torchvision constructor) by `read_backbone(path, arch)`, which
    `wsl data dedup` passes (pretrain.backbone.feature_network: the architectures live
    a floor up)."""
    import torch
    if not Path(path).is_file():
        raise FileNotFoundError(f"descriptor checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is what SSCD ships
            return torch.jit.load(path, map_location="cpu")
    except (RuntimeError, ValueError):
        pass  # not TorchScript: a pickled state dict
    if read_backbone is None:
        raise ValueError(f"{path} is not TorchScript: a backbone file or state dict needs a reader "
                         "(pretrain.backbone.feature_network, as `wsl data dedup` passes)")
    return read_backbone(path, arch)


def make_descriptor(cfg, read_backbone=None) -> "Descriptor":
    """The descriptor a DescriptorConfig names; `read_backbone` as load_network's."""
    if cfg.name == "dct":
        return DCTDescriptor(cfg.side, cfg.block)
    return LearnedDescriptor(load_network(cfg.checkpoint, cfg.arch, read_backbone), cfg.size, cfg.batch)
