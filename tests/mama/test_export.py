"""Export: the image tower and text tower load back with AutoModel.from_pretrained and give the same features."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from medlearn.cli import main as cli_main
from medlearn.errors import DataError
from medlearn.mama.modeling.export import export, load_checkpoint
from medlearn.mama.train import train

try:
    from tests.mama.pt_fakes import REPORTS, deterministic_datasets, tiny_config, write_prepared
except ImportError:  # tests/mama collected as a plain folder
    from pt_fakes import REPORTS, deterministic_datasets, tiny_config, write_prepared


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("mama_export")
    prepared = write_prepared(root, patients=6)
    cfg = tiny_config(root, "train.max_steps=2", "loss.late_loss=1", "train.val_every=0", f"data.prepared_dir={prepared}")
    summary = train(cfg, deterministic_datasets(prepared, cfg.model.image.image_size))
    return summary["final"]


@pytest.mark.parametrize("merge", [True, False])
def test_export_loads_back_with_same_features(checkpoint, tmp_path, merge):
    out = tmp_path / "export"
    if merge:  # through the command line
        assert cli_main(["mama", "export", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    else:
        export(checkpoint, out, merge=False)
    model, cfg = load_checkpoint(checkpoint)
    assert any(
        p.abs().sum() > 0 for n, p in model.text.named_parameters() if "lora_B" in n
    )  # trained adapters

    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    hf_image = AutoModel.from_pretrained(out / "image_tower").eval()
    with torch.no_grad():
        tokens = hf_image(pixel_values=images, output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(tokens.mean(dim=1), model.image(images).pooled, rtol=1e-5, atol=1e-6)

    hf_text = AutoModel.from_pretrained(out / "text_tower").eval()
    if not merge:
        from peft import PeftModel

        hf_text = PeftModel.from_pretrained(hf_text, out / "text_adapter").eval()
    tok = AutoTokenizer.from_pretrained(out / "text_tower")
    enc = model.tokenizer(REPORTS[:2])
    assert tok.convert_tokens_to_ids(model.tokenizer.separator) == model.tokenizer.sep_id
    with torch.no_grad():
        hidden = hf_text(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        torch.testing.assert_close(
            (hidden * m).sum(1) / m.sum(1), model.text(**enc).pooled, rtol=1e-5, atol=1e-5
        )
    meta = json.loads((out / "mama_export.json").read_text())
    assert meta["lora_merged"] is merge and meta["text_separator"] == model.tokenizer.separator
    assert (out / "heads.safetensors").is_file()


def test_export_rejects_missing_checkpoint(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        export(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(DataError, match="config"):
        export(tmp_path / "ckpt", tmp_path / "out")
