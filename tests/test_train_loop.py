"""The training loop and the finetune/transfer/evaluate steps on tiny models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from ctsft.config import compose
from ctsft.data import load_split
from ctsft.errors import CtsftError
from ctsft.models import load_task_model
from ctsft.models.checkpoint import own_weights
from ctsft.steps import evaluate as evaluate_step
from ctsft.steps import finetune as finetune_step
from ctsft.steps import transfer as transfer_step
from ctsft.train import TrainConfig, Trainer, build_plan
from ctsft.train.loop import RunLog, resume_dir_for, train_to_checkpoint

CIRCUIT = {
    "model": "tiny_bert", "task": "nusax", "proxy": "ind", "k": 2, "n_heads_total": 8,
    "score_kind": "directional", "circuit": [[0, 1], [1, 2]], "near_zero": [[0, 0], [1, 3]],
    "random": [[0, 2], [1, 0]], "scores_sha256": "0" * 64, "provenance": {},
}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return load_split("nusax", "ind", "train").to_list()[:16]


def _overrides(model: str, **io: object) -> list[str]:
    base = [f"model={model}", "train=tiny", "task.train_size=12", "task.eval_size=12", "threads=1"]
    return base + [f"io.{k}={v}" for k, v in io.items()]


def _circuit(tmp_path: Path) -> Path:
    path = tmp_path / "circuit.json"
    path.write_text(json.dumps(CIRCUIT))
    return path


def _without_timings(path: Path) -> dict:
    data = json.loads(path.read_text())
    data.pop("timings")
    return data


def test_transfer_and_evaluate_are_deterministic(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    circuit = _circuit(tmp_path)
    ckpt, metrics = tmp_path / "ctsft", tmp_path / "metrics.json"
    overrides = _overrides(
        "tiny_bert",
        proxy_checkpoint=tiny_model_dirs["tiny_bert"],
        circuit=circuit,
        checkpoint=ckpt,
        metrics=metrics,
    ) + ["method=ctsft"]
    runs = []
    for _ in range(2):
        shutil.rmtree(ckpt, ignore_errors=True)
        cfg = compose(overrides)
        record = transfer_step.run(cfg)
        evaluate_step.run(cfg)
        runs.append((_without_timings(metrics), load_file(own_weights(ckpt))))
    assert runs[0][0] == runs[1][0]
    assert runs[0][1].keys() == runs[1][1].keys()
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    result = runs[0][0]
    assert result["method"] == "ctsft" and 0.0 <= result["accuracy"] <= 1.0
    assert result["params_updated"] == record["trainable"] > 0
    assert result["params_updated_pct"] == pytest.approx(
        100.0 * record["trainable"] / result["params_total"]
    )
    assert sum(map(sum, result["confusion"])) == result["n_test"] == 12
    assert not resume_dir_for(ckpt).exists()
    meta = json.loads((ckpt / "task_model.json").read_text())["training"]
    assert meta["method"] == "ctsft" and meta["steps"] == 2 and meta["seed"] == 0
    assert (
        meta["base_model_sha256"]
        and meta["data_checksum"]
        and meta["config"]["method"]["name"] == "ctsft"
    )
    assert (tmp_path / "ctsft.log.jsonl").is_file()


def test_finetune_then_forgetting_against_the_proxy_baseline(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    proxy = tmp_path / "proxy"
    cfg = compose(
        _overrides("tiny_llama", model_dir=tiny_model_dirs["tiny_llama"], checkpoint=proxy)
        + ["method=ctsft"]
    )
    record = finetune_step.run(cfg)
    assert record["method"] == "full_ft" and record["percent"] == pytest.approx(100.0)
    baseline = tmp_path / "baseline.json"
    cfg = compose(
        _overrides("tiny_llama", checkpoint=proxy, metrics=baseline)
        + ["method=zero_shot", "target=ind"]
    )
    base = evaluate_step.run(cfg)
    assert base["params_updated"] == 0 and base["accuracy"] == base["proxy_accuracy"]
    OmegaConf.set_struct(cfg, False)
    cfg.io.baseline_metrics = str(baseline)
    cfg.target = "jav"
    zero = evaluate_step.run(cfg)
    assert zero["forgetting"] == 0.0
    with pytest.raises(CtsftError, match="zero_shot trains nothing"):
        transfer_step.run(cfg)
    ckpt = tmp_path / "full"
    cfg = compose(
        _overrides(
            "tiny_llama", proxy_checkpoint=proxy, checkpoint=ckpt, metrics=tmp_path / "m.json"
        )
        + ["method=full_ft"]
    )
    transfer_step.run(cfg)
    OmegaConf.set_struct(cfg, False)
    cfg.io.baseline_metrics = str(baseline)
    moved = evaluate_step.run(cfg)
    assert moved["forgetting"] == pytest.approx(moved["proxy_accuracy"] - base["proxy_accuracy"])


def test_missing_circuit_is_a_one_line_error(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    cfg = compose(
        _overrides(
            "tiny_bert", proxy_checkpoint=tiny_model_dirs["tiny_bert"], checkpoint=tmp_path / "c"
        )
        + ["method=near_zero"]
    )
    with pytest.raises(CtsftError, match="missing io.circuit"):
        transfer_step.run(cfg)
    cfg = compose(
        _overrides(
            "tiny_bert",
            proxy_checkpoint=tiny_model_dirs["tiny_bert"],
            checkpoint=tmp_path / "c",
            circuit=tmp_path / "none.json",
        )
        + ["method=near_zero"]
    )
    with pytest.raises(CtsftError, match="does not exist"):
        transfer_step.run(cfg)


def test_nan_loss_is_a_one_line_error(tiny_model_dirs: dict[str, Path], rows: list[dict]) -> None:
    model = load_task_model(tiny_model_dirs["tiny_bert"], "nusax", max_length=16)
    with torch.no_grad():
        model.hf.classifier.weight.fill_(float("nan"))
    plan = build_plan(model.hf, model.adapter, OmegaConf.create({"name": "full_ft"}))
    trainer = Trainer(model, plan, TrainConfig(epochs=1, batch_size=4), seed=0)
    with pytest.raises(CtsftError, match=r"loss became NaN at step 1: lower train.lr"):
        trainer.fit(rows, progress=False)


def test_grad_accumulation_schedule_and_log(
    tiny_model_dirs: dict[str, Path], rows: list[dict], tmp_path: Path
) -> None:
    model = load_task_model(tiny_model_dirs["tiny_qwen2"], "nusax", max_length=16)
    plan = build_plan(
        model.hf, model.adapter, OmegaConf.create({"name": "ctsft", "heads": "circuit"}), CIRCUIT
    )
    config = TrainConfig(
        epochs=2, batch_size=3, grad_accum=2, schedule="cosine", warmup_ratio=0.5, lr=1e-3
    )
    run_log = RunLog(tmp_path / "log.jsonl", None, {})
    summary = Trainer(model, plan, config, seed=0).fit(rows, run_log=run_log, progress=False)
    run_log.close()
    assert (
        summary["steps"] == summary["total_steps"] == 2 * 3
    )  # 6 batches of 3 -> 3 steps per epoch
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert lines[0]["event"] == "start" and [ln.get("event") for ln in lines].count("start") == 1
    lrs = [line["lr"] for line in lines if "lr" in line]
    assert lrs[0] == 0.0 and max(lrs) == pytest.approx(1e-3) and lrs[-1] < 1e-3


def test_early_stopping_restores_the_best_epoch(
    tiny_model_dirs: dict[str, Path], rows: list[dict]
) -> None:
    """Scripted validation accuracies 0.5, 0.9, 0.3, 0.2 with patience 2: training stops after
    the fourth epoch and the weights are those of the second (the best), not the last."""
    model = load_task_model(tiny_model_dirs["tiny_bert"], "nusax", max_length=16)
    plan = build_plan(model.hf, model.adapter, OmegaConf.create({"name": "full_ft"}))
    config = TrainConfig(
        epochs=6, batch_size=8, lr=1e-3, warmup_ratio=0.0, early_stopping=True, patience=2
    )
    trainer = Trainer(model, plan, config, seed=0)
    scripted, states = [0.5, 0.9, 0.3, 0.2, 0.1, 0.1], []

    def accuracy(_rows: list[dict]) -> float:
        states.append({n: p.detach().clone() for n, p in trainer.named})
        return scripted[len(states) - 1]

    trainer._accuracy = accuracy  # type: ignore[method-assign]
    summary = trainer.fit(rows[:8], valid_rows=rows[:8], progress=False)
    assert summary["stopped_early"] and summary["epochs_run"] == 4 and len(states) == 4
    assert summary["best_valid_accuracy"] == 0.9
    final = {n: p.detach() for n, p in trainer.named}
    assert all(torch.equal(final[n], states[1][n]) for n in final)
    assert not all(torch.equal(final[n], states[3][n]) for n in final)  # the epochs did differ


RESUMABLE = TrainConfig(epochs=3, batch_size=4, lr=1e-3, resume_every=2)  # 12 steps, state every 2


def _train_ctsft(model_dir: Path, rows: list[dict], out: Path, record: dict) -> dict:
    """A 12-step CT-SFT run of `RESUMABLE` to checkpoint `out` (resuming from its state)."""
    model = load_task_model(model_dir, "nusax", max_length=16)
    plan = build_plan(
        model.hf, model.adapter, OmegaConf.create({"name": "ctsft", "heads": "circuit"}), CIRCUIT
    )
    return train_to_checkpoint(
        model, plan, RESUMABLE, rows, out, seed=3, record=record, progress=False
    )


def _crash_at_step(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Make the run log raise KeyboardInterrupt right after logging optimizer step `step`."""
    original_write = RunLog.write

    def crash(self: RunLog, record: dict) -> None:
        original_write(self, record)
        if record.get("step") == step and "loss" in record:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunLog, "write", crash)


def test_interrupted_run_resumes_to_the_same_checkpoint(
    tiny_model_dirs: dict[str, Path],
    rows: list[dict],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def train(out: Path) -> dict:
        return _train_ctsft(tiny_model_dirs["tiny_gemma3"], rows, out, {"config": {"x": 1}})

    train(tmp_path / "clean")
    _crash_at_step(monkeypatch, 7)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "resumed")
    assert not (tmp_path / "resumed").exists()
    assert (resume_dir_for(tmp_path / "resumed") / "state.pt").is_file()
    monkeypatch.undo()
    record = train(tmp_path / "resumed")
    assert record["steps"] == 12
    assert not resume_dir_for(tmp_path / "resumed").exists()
    clean, resumed = (
        load_file(tmp_path / "clean" / "model.safetensors"),
        load_file(tmp_path / "resumed" / "model.safetensors"),
    )
    assert all(torch.equal(clean[k], resumed[k]) for k in clean)


@pytest.mark.parametrize("same_inputs", [True, False])
def test_resume_state_of_other_inputs_is_discarded_and_the_log_has_each_step_once(
    tiny_model_dirs: dict[str, Path],
    rows: list[dict],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    same_inputs: bool,
) -> None:
    """Silent failure 1 of issue 11: a resume must never continue a run of another initial
    checkpoint (or circuit, or data), and a resumed run's log must not repeat steps."""
    out = tmp_path / "ckpt"

    def train(init_sha: str) -> dict:
        record = {"config": {"x": 1}, "init_sha256": init_sha, "data_checksum": "d"}
        return _train_ctsft(tiny_model_dirs["tiny_bert"], rows, out, record)

    _crash_at_step(monkeypatch, 7)
    with pytest.raises(KeyboardInterrupt):
        train("theta-a")
    assert (resume_dir_for(out) / "state.pt").is_file()
    monkeypatch.undo()
    with caplog.at_level("INFO", logger="ctsft.train.loop"):
        train("theta-a" if same_inputs else "theta-b")
    log = [json.loads(line) for line in out.with_name("ckpt.log.jsonl").read_text().splitlines()]
    steps = [line["step"] for line in log if "loss" in line]
    assert steps == list(range(1, 13))  # every step once, whether resumed or restarted
    events = [line["event"] for line in log if "event" in line]
    if same_inputs:
        assert events == ["start", "resume", "done"] and "resuming from" in caplog.text
    else:
        assert events == ["start", "done"]
        assert "discarding resume state" in caplog.text and "initial checkpoint" in caplog.text
