"""The data layer on the real local copies of NusaX-Senti and XNLI."""

from __future__ import annotations

import collections
import shutil
from pathlib import Path

import pytest

from ctsft.data import NUSAX, XNLI, balanced_sample, data_checksum, data_root, load_split
from ctsft.errors import CtsftError

NUSAX_ROWS = {"train": 500, "valid": 100, "test": 400}


@pytest.mark.parametrize("lang", NUSAX.languages)
def test_every_nusax_language_and_split_has_the_published_row_counts(lang: str) -> None:
    for split, rows in NUSAX_ROWS.items():
        ds = load_split("nusax", lang, split)
        assert len(ds) == rows
        assert ds.features["label"].names == ["negative", "neutral", "positive"]
        assert set(ds["label"]) == {0, 1, 2}
        assert set(ds["language"]) == {lang} and set(ds["split"]) == {split}
        assert all(text.strip() for text in ds["text"])


def test_nusax_rows_are_parallel_across_languages() -> None:
    ind, jav = load_split("nusax", "ind", "test"), load_split("nusax", "jav", "test")
    assert ind["id"] == jav["id"] and ind["label"] == jav["label"]
    assert ind["text"] != jav["text"]


@pytest.mark.parametrize("lang", XNLI.languages)
def test_every_xnli_language_has_2490_dev_and_5010_test_rows(lang: str) -> None:
    dev, test = load_split("xnli", lang, "dev"), load_split("xnli", lang, "test")
    assert (len(dev), len(test)) == (2490, 5010)
    assert collections.Counter(test["label"]) == {0: 1670, 1: 1670, 2: 1670}
    train, valid = load_split("xnli", lang, "train"), load_split("xnli", lang, "valid")
    assert len(train) + len(valid) == 2490 and len(valid) == 249
    assert not set(train["id"]) & set(valid["id"])


def test_balanced_sampling_is_equal_per_label_and_reproducible() -> None:
    ds = load_split("nusax", "ind", "train")
    first = balanced_sample(ds, 20, seed=3)
    assert collections.Counter(first["label"]) == {0: 20, 1: 20, 2: 20}
    assert first["id"] == balanced_sample(ds, 20, seed=3)["id"]
    assert first["id"] != balanced_sample(ds, 20, seed=4)["id"]
    with pytest.raises(CtsftError, match="fewer than n_per_label"):
        balanced_sample(ds, 400, seed=0)


def test_unknown_language_and_split_are_clear_errors() -> None:
    with pytest.raises(CtsftError, match="unknown language 'xx' for task nusax: choose one of ace"):
        load_split("nusax", "xx", "train")
    with pytest.raises(CtsftError, match="unknown split 'dev' for task nusax"):
        load_split("nusax", "ind", "dev")
    with pytest.raises(CtsftError, match="unknown task"):
        load_split("sst2", "en", "train")


def _copy_lang(tmp_path: Path, lang: str = "ind") -> Path:
    target = tmp_path / "nusax" / lang
    shutil.copytree(data_root() / "nusax" / lang, target)
    return target


def test_missing_file_unexpected_label_and_empty_split_are_clear_errors(tmp_path: Path) -> None:
    folder = _copy_lang(tmp_path)
    (folder / "valid.csv").unlink()
    with pytest.raises(CtsftError, match="missing data file .*valid.csv"):
        load_split("nusax", "ind", "valid", root=tmp_path)
    (folder / "test.csv").write_text("id,text,label\n1,hello,angry\n")
    with pytest.raises(CtsftError, match="unexpected label 'angry'"):
        load_split("nusax", "ind", "test", root=tmp_path)
    (folder / "train.csv").write_text("id,text,label\n")
    with pytest.raises(CtsftError, match="is empty"):
        load_split("nusax", "ind", "train", root=tmp_path)
    with pytest.raises(CtsftError, match="does not exist"):
        load_split("nusax", "ind", "train", root=tmp_path / "nowhere")


def test_data_root_follows_the_environment_variable(tmp_path: Path, monkeypatch) -> None:
    _copy_lang(tmp_path)
    monkeypatch.setenv("CTSFT_DATA_ROOT", str(tmp_path))
    assert data_root() == tmp_path.resolve()
    assert len(load_split("nusax", "ind", "train")) == 500


def test_data_checksum_covers_every_file_of_the_languages() -> None:
    sums = data_checksum("nusax", ["ind", "jav"])
    assert sorted(sums) == sorted(
        f"nusax/{lang}/{split}.csv" for lang in ("ind", "jav") for split in NUSAX_ROWS
    )
    assert all(len(v) == 64 for v in sums.values())
