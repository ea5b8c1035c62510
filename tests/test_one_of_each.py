"""The single copies of what used to be written several times: predict, the read-out position and
the readers of a model folder's training record and provenance."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ctsft.artifacts import read_model_provenance, read_training_record, recorded_base_model
from ctsft.data import load_split
from ctsft.errors import CtsftError
from ctsft.evaluate import predict
from ctsft.facts import TASK_MODEL_FILE
from ctsft.models import load_task_model
from ctsft.models.task_model import TaskModel
from ctsft.provenance import sha256_file
from ctsft.steps.shared.training import model_origin


def _rows(n: int) -> list[dict]:
    return load_split("nusax", "ind", "train").to_list()[:n]


# -- read-out position ---------------------------------------------------------------------------
def test_readout_is_the_last_real_token_of_a_right_padded_causal_batch() -> None:
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    positions = TaskModel.readout_positions(mask, "causal")
    assert positions.tolist() == [2, 4, 0]
    assert positions.dtype == torch.long


def test_readout_is_position_zero_for_an_encoder_batch() -> None:
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    positions = TaskModel.readout_positions(mask, "encoder")
    assert positions.tolist() == [0, 0]
    assert positions.dtype == torch.long


def test_causal_model_reads_its_logits_at_the_readout_position(tiny_model_dirs) -> None:
    model = load_task_model(tiny_model_dirs["tiny_llama"], "nusax").eval()
    batch = model.encode(_rows(5))
    positions = TaskModel.readout_positions(batch["attention_mask"], "causal")
    assert len(set(positions.tolist())) > 1, "the batch should contain padding"
    with torch.no_grad():
        hidden = model.hf.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        expected = model.hf.lm_head(hidden[torch.arange(5), positions])[:, model.label_ids]
        assert torch.equal(model(**batch), expected)


# -- predict -------------------------------------------------------------------------------------
def _batches_seen(model: TaskModel, rows: list[dict], by_length: bool) -> list[list[str]]:
    """The row ids of every batch `predict` encodes."""
    seen: list[list[str]] = []
    encode = model.encode

    def recording(examples: list[dict]) -> dict[str, torch.Tensor]:
        seen.append([ex["id"] for ex in examples])
        return encode(examples)

    model.encode = recording  # type: ignore[method-assign]
    try:
        predict(model, rows, 3, by_length=by_length)
    finally:
        del model.encode
    return seen


def test_predict_batches_by_length_or_in_input_order(tiny_model_dirs) -> None:
    model = load_task_model(tiny_model_dirs["tiny_bert"], "nusax")
    rows = _rows(7)
    ids = [row["id"] for row in rows]
    assert _batches_seen(model, rows, by_length=False) == [ids[0:3], ids[3:6], ids[6:7]]
    lengths = [len(model.tokenizer(*model.format(row))["input_ids"]) for row in rows]
    by_length = [ids[i] for i in np.argsort(lengths, kind="stable")]
    assert by_length != ids, "the rows should differ in length"
    assert _batches_seen(model, rows, by_length=True) == [
        by_length[0:3],
        by_length[3:6],
        by_length[6:7],
    ]


def test_predict_returns_input_order_whichever_batching(tiny_model_dirs) -> None:
    model = load_task_model(tiny_model_dirs["tiny_qwen2"], "nusax").eval()
    with torch.no_grad():  # random tiny weights predict one class; noise makes them disagree
        noise = torch.Generator().manual_seed(7)
        for param in model.hf.parameters():
            param.add_(torch.randn(param.shape, generator=noise) * 0.4)
    rows = _rows(9)
    lengths = [len(model.tokenizer(*model.format(row))["input_ids"]) for row in rows]
    expected = {}
    for by_length, order in ((False, list(range(9))), (True, np.argsort(lengths, kind="stable"))):
        want = np.zeros(9, dtype=int)
        with torch.inference_mode():
            for start in range(0, 9, 4):
                chunk = order[start : start + 4]
                want[chunk] = model(**model.encode([rows[i] for i in chunk])).argmax(-1).numpy()
        expected[by_length] = want.tolist()
        preds, gold = predict(model, rows, 4, by_length=by_length)
        assert preds.tolist() == expected[by_length]
        assert gold.tolist() == [int(row["label"]) for row in rows]
    assert len(set(expected[False])) > 1, "a model predicting one class would hide a reordering"
    assert predict(model, [], 4)[0].shape == (0,)


# -- training record and provenance --------------------------------------------------------------
def test_training_record_of_a_checkpoint_with_and_without_one(tiny_model_dirs, tmp_path) -> None:
    base = tiny_model_dirs["tiny_bert"]
    assert read_training_record(base) is None  # a prepared model: no task_model.json
    model = load_task_model(base, "nusax")
    model.save(tmp_path / "fresh")
    assert read_training_record(tmp_path / "fresh") is None  # saved, never trained
    record = {"method": "ctsft", "trainable": 12, "base_model_sha256": "f00d"}
    model.save(tmp_path / "trained", extra={"training": record})
    assert read_training_record(tmp_path / "trained") == record


def test_malformed_training_record_is_a_one_line_error(tiny_model_dirs, tmp_path) -> None:
    model = load_task_model(tiny_model_dirs["tiny_bert"], "nusax")
    model.save(tmp_path / "checkpoint", extra={"training": ["not", "a", "record"]})
    meta = tmp_path / "checkpoint" / TASK_MODEL_FILE
    with pytest.raises(CtsftError) as err:
        read_training_record(tmp_path / "checkpoint")
    assert str(err.value) == (
        f"checkpoint record {meta} has a 'training' entry that is a JSON list: "
        "rerun with `snakemake --forcerun transfer`"
    )
    meta.write_text('{"kind": "encoder", ')
    with pytest.raises(CtsftError, match=r"task_model.json is not valid JSON .*--forcerun") as err:
        read_training_record(tmp_path / "checkpoint")
    assert "\n" not in str(err.value)


def test_model_provenance_and_base_model_of_each_kind_of_folder(tiny_model_dirs, tmp_path) -> None:
    base = tiny_model_dirs["tiny_llama"]
    prov = read_model_provenance(base)
    assert prov is not None
    converted = sha256_file(base / "model.safetensors")
    assert prov["converted_sha256"] == converted == recorded_base_model(base)
    assert model_origin(base) == {"base_model_sha256": converted, "init_sha256": converted}

    model = load_task_model(base, "nusax")
    model.save(tmp_path / "trained", extra={"training": {"base_model_sha256": converted}})
    own = sha256_file(tmp_path / "trained" / "model.safetensors")
    assert read_model_provenance(tmp_path / "trained") is None
    assert model_origin(tmp_path / "trained") == {
        "base_model_sha256": converted,
        "init_sha256": own,
    }

    model.save(tmp_path / "fresh")  # no record: the folder is its own base
    assert recorded_base_model(tmp_path / "fresh") is None
    assert model_origin(tmp_path / "fresh")["base_model_sha256"] == own

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "provenance.json").write_text(json.dumps([1, 2]))
    with pytest.raises(CtsftError, match=r"model record .* holds a JSON list, not an object"):
        read_model_provenance(tmp_path / "broken")
