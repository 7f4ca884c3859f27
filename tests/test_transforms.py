"""data_tools/loaders/transforms.py: large crops decoded at reduced scale look like a full decode."""
from __future__ import annotations

import io

import numpy as np
import torch
from helpers import photo
from PIL import Image

from data_tools.loaders import transforms


def test_draft_decoding_matches_a_full_decode():
    """Large crops are decoded at reduced scale in the DCT; the result must look the same."""
    data = io.BytesIO()
    photo(np.random.default_rng(1), 640, 480).save(data, format="JPEG", quality=90)
    box = (40, 60, 400, 520)  # top, left, h, w: over twice the output size
    drafted = Image.open(io.BytesIO(data.getvalue()))
    drafted, scaled = transforms.draft(drafted, box, 128)
    assert drafted.size == (320, 240)
    full = torch.from_numpy(np.array(Image.open(io.BytesIO(data.getvalue())).convert("RGB"))).permute(2, 0, 1)
    small = torch.from_numpy(np.array(drafted.convert("RGB"))).permute(2, 0, 1)
    a = transforms.resize(full, box, 128, False).float()
    b = transforms.resize(small, scaled, 128, False).float()
    assert (a - b).abs().mean() < 3  # grey levels
