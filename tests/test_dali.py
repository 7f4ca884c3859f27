"""data_tools/loaders/dali.py: the JPEG framing check that keeps damaged files away from DALI's decoder."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image


def test_jpeg_framing_check():
    dali = pytest.importorskip("data_tools.loaders.dali")
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buf, "JPEG")
    jpg = np.frombuffer(buf.getvalue(), np.uint8)
    assert dali.jpeg_intact(jpg) and dali.jpeg_intact(np.concatenate([jpg, np.frombuffer(b"\r\n", np.uint8)]))
    for damaged in (np.zeros_like(jpg), jpg[:-10], jpg[:2], np.concatenate([jpg[:4], 255 - jpg[4:]])):
        assert not dali.jpeg_intact(damaged)
