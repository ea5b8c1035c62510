"""Task heads: encoder classifier and causal-LM label-token readout, saving and loading."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ctsft.data import NUSAX, load_split
from ctsft.errors import CtsftError
from ctsft.models import load_task_model


def _examples(n: int = 4) -> list[dict]:
    ds = load_split("nusax", "ind", "train")
    return [ds[i] for i in range(n)]


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen2", "tiny_gemma3", "tiny_gpt2"])
def test_causal_logits_are_the_lm_logits_of_the_label_tokens_at_the_last_real_token(
    tiny_model_dirs: dict[str, Path], name: str
) -> None:
    model = load_task_model(tiny_model_dirs[name], "nusax").eval()
    batch = model.encode(_examples())
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1, "the batch should contain padding"
    with torch.no_grad():
        logits = model(**batch)
        for row in range(len(lengths)):
            ids = batch["input_ids"][row, : lengths[row]].unsqueeze(0)
            full = model.hf(input_ids=ids).logits[0, -1, model.label_ids]
            assert torch.allclose(logits[row], full, atol=1e-5)
    assert logits.shape == (4, 3)


def test_encoder_logits_are_the_classifier_output(tiny_model_dirs: dict[str, Path]) -> None:
    model = load_task_model(tiny_model_dirs["tiny_bert"], "nusax").eval()
    batch = model.encode(_examples())
    with torch.no_grad():
        ref = model.hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert torch.equal(model(**batch), ref)
    assert batch["labels"].tolist() == [ex["label"] for ex in _examples()]


def test_multi_token_label_word_is_a_clear_error(tiny_model_dirs: dict[str, Path]) -> None:
    task = dataclasses.replace(NUSAX, label_words=(" negative sentiment", " neutral", " positive"))
    with pytest.raises(CtsftError, match="label word ' negative sentiment' is 2 tokens"):
        load_task_model(tiny_model_dirs["tiny_llama"], task)


def test_checkpoint_round_trip_keeps_weights_and_head(tiny_model_dirs, tmp_path: Path) -> None:
    model = load_task_model(tiny_model_dirs["tiny_bert"], "nusax", seed=5).eval()
    model.save(tmp_path / "ckpt", extra={"method": "test"})
    again = load_task_model(tmp_path / "ckpt", "nusax", seed=99).eval()
    batch = model.encode(_examples())
    with torch.no_grad():
        assert torch.equal(model(**batch), again(**batch))
    assert json.loads((tmp_path / "ckpt" / "task_model.json").read_text())["method"] == "test"
    with pytest.raises(CtsftError, match="trained on nusax, not xnli"):
        load_task_model(tmp_path / "ckpt", "xnli")


def test_corrupt_checkpoint_is_a_clear_error(tiny_model_dirs, tmp_path: Path) -> None:
    model = load_task_model(tiny_model_dirs["tiny_bert"], "nusax")
    model.save(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CtsftError, match="cannot load model from .*re-create it"):
        load_task_model(tmp_path / "ckpt", "nusax")
    with pytest.raises(CtsftError, match="not a model folder"):
        load_task_model(tmp_path / "missing", "nusax")


def test_models_info_cli_prints_geometry_counts_and_provenance(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ctsft.models", "info", "model=tiny_qwen2", f"io.model_dir={tmp_path / 'm'}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    summary = json.loads(out.stdout)
    assert (summary["layers"], summary["heads"], summary["kv_heads"]) == (2, 4, 2)
    assert summary["parameters"]["total"] == sum(
        v for k, v in summary["parameters"].items() if k != "total"
    )
    assert len(summary["provenance"]["converted_sha256"]) == 64
    bad = subprocess.run(
        [sys.executable, "-m", "ctsft.models", "info", "model=nope"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:")
