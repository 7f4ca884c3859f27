"""The linear probe (finetune.linprobe, finetune.logreg): val features at the eval
resolution, the blocked fit on memory-mapped features, the warm-started sweep."""
from __future__ import annotations

import json

import numpy as np
import torch

from data_tools.loaders import make_loader
from finetune.evaluate import load_model
from finetune.train import run
from launch.config import to_dict
from pretrain.evaluate import collect, loader_config
from test_finetune import backbone_file, config, data  # noqa: F401  (fixtures)


def test_probe_val_features_at_the_eval_resolution(data, backbone_file, tmp_path):  # noqa: F811
    """The probe scores val as `wsl finetune eval` does: at eval.image_size / resize_size,
    not at data.loader's training sizes (it once gave 0.944 where eval gave 1.0)."""
    run_dir = tmp_path / "probe"
    cfg = config(data, backbone_file, run_dir, "mode=linear", "probe.c_steps=3", f"data.val={data['val']}",
                 "eval.image_size=48", "eval.resize_size=56")
    results = run(cfg, to_dict(cfg))
    record = json.loads((run_dir / "features" / "val.json").read_text())
    assert (record["image_size"], record["resize_size"]) == (48, 56)
    model, _, _ = load_model(run_dir / "probe.pt")
    device = torch.device("cpu")
    table = collect(model.eval(), make_loader(loader_config(cfg), str(data["val"]), 0, 1, device, "eval"), device, False)
    cached = torch.as_tensor(np.load(run_dir / "features" / "val.features.npy"))
    with torch.no_grad():
        scores = model.model.fc(cached)
    torch.testing.assert_close(scores, table["scores"], rtol=1e-3, atol=1e-3 * table["scores"].abs().max().item())
    assert results["top1"] == (table["scores"].argmax(1) == table["labels"]).float().mean().item()
