"""Defaults live in one place, the YAML of config/hydra: every field of the typed configs comes
from the composed config, and the dataclasses' own defaults are read from the same YAML."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ctsft.cdt.rules import CDTOptions
from ctsft.config import compose
from ctsft.config_files import config_dir, group_config
from ctsft.steps.shared.discovery import cdt_options
from ctsft.train import TrainConfig

LORA_FIELDS = {"lora_alpha_over_rank": "alpha_over_rank", "lora_dropout": "dropout"}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml") if p.stem != "hub")


@pytest.mark.parametrize("train", options("train"))
@pytest.mark.parametrize("method", options("method"))
def test_every_train_field_comes_from_the_composed_config(train: str, method: str) -> None:
    cfg = compose([f"train={train}", f"method={method}"])
    config = TrainConfig.from_cfg(cfg.train, cfg.method)
    for field in dataclasses.fields(TrainConfig):
        value = getattr(config, field.name)
        if field.name in LORA_FIELDS:
            key = LORA_FIELDS[field.name]
            source = cfg.method[key] if key in cfg.method else group_config("method", "lora")[key]
        else:
            assert field.name in cfg.train, f"train.{field.name} is missing from train/{train}.yaml"
            source = cfg.train[field.name]
        assert value == source, field.name


def test_the_dataclass_defaults_are_the_yaml_defaults() -> None:
    cfg = compose(["method=lora"])
    assert TrainConfig() == TrainConfig.from_cfg(cfg.train, cfg.method)
    assert CDTOptions() == cdt_options(cfg)
    for field in dataclasses.fields(CDTOptions):
        assert field.name in cfg.cdt, f"cdt.{field.name} is missing from cdt/default.yaml"


def test_the_defaults_follow_an_edited_yaml(tmp_path: Path, monkeypatch) -> None:
    """The library reads the YAML when it is imported: a copy with another lr gives another default."""
    import shutil
    import subprocess
    import sys

    folder = tmp_path / "hydra"
    shutil.copytree(config_dir(), folder)
    default = folder / "train" / "default.yaml"
    default.write_text(default.read_text().replace("lr: 5.0e-5", "lr: 3.0e-4"))
    out = subprocess.run(
        [sys.executable, "-c", "from ctsft.train import TrainConfig; print(TrainConfig().lr)"],
        env={**__import__("os").environ, "CTSFT_CONFIG_DIR": str(folder)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert float(out.stdout) == 3.0e-4


def test_one_knob_per_size() -> None:
    """The training pool and the evaluation subsample are task.train_size / task.eval_size only."""
    cfg = compose([])
    assert "train_size" not in cfg.train and "eval_size" not in cfg.cdt
    assert "train_size" in cfg.task and "eval_size" in cfg.task


def test_models_and_tasks_take_kind_and_prompt_from_their_yaml() -> None:
    from ctsft.data.tasks import TASKS
    from ctsft.models.registry import MODELS, get_model_spec

    for name, spec in MODELS.items():
        assert spec.kind == group_config("model", name)["kind"], name
    assert get_model_spec("hub:org/enc", kind="encoder").kind == "encoder"
    assert get_model_spec("hub:org/dec").kind == group_config("model", "hub")["kind"]
    for name, task in TASKS.items():
        yaml_task = group_config("task", name)
        assert task.prompt == yaml_task["prompt"]
        assert list(task.label_words) == yaml_task["label_words"]


def test_the_schema_languages_are_the_tasks_languages() -> None:
    """Snakemake's `validate` reads the schema file itself, so it lists the languages too; they
    must be the task descriptions' (and the task names the registered tasks)."""
    from ctsft.data.tasks import TASKS
    from ctsft.workflow_config import load_schema

    schema = load_schema(config_dir().parents[1] / "workflow/schemas/config.schema.yaml")
    experiment = schema["definitions"]["experiment"]
    assert experiment["properties"]["task"]["enum"] == list(TASKS)
    branches = experiment["allOf"]
    assert {b["if"]["properties"]["task"]["const"]: b["then"]["properties"]["proxy"]["enum"] for b in branches} == {
        name: list(task.languages) for name, task in TASKS.items()
    }  # fmt: skip
    for b in branches:
        targets = b["then"]["properties"]["targets"]["oneOf"][1]["items"]["enum"]
        assert targets == b["then"]["properties"]["proxy"]["enum"]
