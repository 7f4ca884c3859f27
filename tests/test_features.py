"""finetune/features.py: features of images that did not decode are left out in every view."""
from __future__ import annotations

import numpy as np


def test_features_of_images_that_did_not_decode_are_left_out_in_every_view(capsys):
    """The loader skips and counts an undecodable image, so its rows keep label -1; the
    probe once stopped on them ('the loaders gave 297 of 300 samples')."""
    from finetune.features import decoded
    feats = np.arange(12, dtype=np.float32).reshape(6, 2)   # 2 views of 3 images
    labels = np.array([4, -1, 5, 4, -1, 5])
    x, y = decoded(feats, labels, 2, "set")
    assert y.tolist() == [4, 5, 4, 5] and x.tolist() == [[0, 1], [4, 5], [6, 7], [10, 11]]
    assert "1 image(s) did not decode and are left out" in capsys.readouterr().err
    whole = np.array([1, 2, 3])
    assert decoded(feats[:3], whole, 1, "set")[1] is whole
