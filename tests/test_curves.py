"""pretrain/curves.py: curves.png shows validation beside training, titled in words, and the
final line names the held-out figures."""
from __future__ import annotations

import json


def test_curves_show_validation_in_words(tmp_path):
    """curves.png had the training metrics alone, titled by their keys (data_wait, no unit)."""
    from pretrain.curves import plot_curves, validation_summary
    rows = [{"images_seen": n, "loss": 2 / n, "lr": 0.1, "img_per_s": 80.0, "data_wait": 0.2} for n in (8, 16, 24)]
    rows += [{"images_seen": 24, "val/mAP": 0.4, "val/precision@1": 0.5, "val/precision@5": 0.3, "val/images": 9}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    titles = plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    assert titles == ["training loss", "learning rate", "throughput, images/s", "waiting for data, % of the time",
                      "held-out mAP, %", "held-out precision@1, %"]
    assert validation_summary(tmp_path / "metrics.jsonl") == "held-out mAP 40.0 %, held-out precision@1 50.0 %"
