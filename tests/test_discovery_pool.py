"""`cdt.pool_size`: the discovery set is drawn from a seeded subset of the pool, and only that
subset is classified for `correct_only`; the indices still point into the whole pool."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from ctsft.cdt import baseline
from ctsft.config import compose
from ctsft.errors import CtsftError


def _pool(n: int) -> Dataset:
    return Dataset.from_dict(
        {"id": [f"r{i}" for i in range(n)], "label": [i % 3 for i in range(n)]}
    )


def test_pool_size_limits_what_is_classified(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    def fake_predict(model, rows, batch_size, by_length=True):  # rows r0, r5, r10, ... wrong
        seen.append(len(rows))
        wrong = [int(r["id"][1:]) % 5 == 0 for r in rows]
        preds = [(r["label"] + w) % 3 for r, w in zip(rows, wrong, strict=True)]
        return torch.tensor(preds), None

    monkeypatch.setattr(baseline, "predict", fake_predict)
    pool = _pool(300)
    idx, info = baseline.discovery_indices(None, pool, 4, 7, True, pool_size=60)
    assert seen == [60]  # 60 rows classified, not 300
    assert info["pool_size"] == 300 and info["candidates"] == 60
    assert 0.6 < info["pool_accuracy"] < 1.0  # about 1 in 5 of the 60 was wrong
    assert all(i % 5 != 0 for i in idx)  # ... and none of those was kept
    again, _ = baseline.discovery_indices(None, pool, 4, 7, True, pool_size=60)
    other, _ = baseline.discovery_indices(None, pool, 4, 8, True, pool_size=60)
    assert idx == again and idx != other  # seeded
    assert len(idx) == 12 and sorted(pool[i]["label"] for i in idx) == [0] * 4 + [1] * 4 + [2] * 4
    # without pool_size every row is a candidate
    _, full = baseline.discovery_indices(None, pool, 4, 7, True)
    assert full["candidates"] == 300


def test_pool_size_is_checked() -> None:
    assert compose(["cdt.pool_size=480"]).cdt.pool_size == 480
    with pytest.raises(CtsftError, match="cdt.pool_size"):
        compose(["cdt.pool_size=0"])
