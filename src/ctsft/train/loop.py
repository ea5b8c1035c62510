"""The single training loop of every method and both model kinds (class logits -> cross-entropy).

Deterministic on CPU for a seed: the global torch RNG is seeded (dropout, LoRA init) and every
epoch's data order comes from its own `torch.Generator(seed, epoch)`, so a resumed run replays the
same batches. Resume state (trainable tensors, optimizer, scheduler, RNG, position) is written
atomically every `resume_every` optimizer steps to `<checkpoint>.resume/` and deleted once the
checkpoint folder has been written (atomically, so it only exists when complete). The state is
keyed by a fingerprint of everything the run depends on (step config, plan, seed, and the sha256
of the initial checkpoint, the circuit and the data), so a resume never continues another run.

The device and precision come from the model's `Runtime`: forward passes run under its autocast
(bf16 on CUDA by default), while weights, span deltas and AdamW state stay fp32. We keep our own
loop rather than HF `Trainer` because the resume state must be bit-exact. (CT-SFT's span deltas
decay through an optimizer step pre-hook that `MaskedModel.decay_before_steps` registers.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from tqdm.auto import tqdm
from transformers import get_scheduler

from ctsft.config_files import group_config
from ctsft.errors import CtsftError
from ctsft.evaluate import predict
from ctsft.io import atomic_path
from ctsft.models.checkpoint import StoredWeights, merge_lora
from ctsft.models.task_model import TaskModel
from ctsft.tracking import start_run
from ctsft.train.lora import inject_lora
from ctsft.train.masking import MaskedModel
from ctsft.train.methods import TrainablePlan

log = logging.getLogger(__name__)

# Provenance keys of the inputs a run depends on: part of the resume fingerprint, so changing the
# initial checkpoint, the circuit or the data discards a stale `<checkpoint>.resume/`.
RESUME_INPUTS = ("init_sha256", "base_model_sha256", "circuit_sha256", "data_checksum")

_SCHEDULES = {"linear": "linear", "constant": "constant_with_warmup", "cosine": "cosine"}


_TRAIN = group_config("train", "default")
_LORA = group_config("method", "lora")


@dataclass(frozen=True)
class TrainConfig:
    """The `train` config group as typed values. The defaults are read from
    config/hydra/train/default.yaml (LoRA's from method/lora.yaml), the one place they live."""

    epochs: int = _TRAIN["epochs"]
    max_steps: int | None = _TRAIN["max_steps"]
    lr: float = float(_TRAIN["lr"])
    batch_size: int = _TRAIN["batch_size"]
    grad_accum: int = _TRAIN["grad_accum"]
    weight_decay: float = float(_TRAIN["weight_decay"])
    warmup_ratio: float = float(_TRAIN["warmup_ratio"])
    schedule: str = _TRAIN["schedule"]
    max_grad_norm: float | None = _TRAIN["max_grad_norm"]
    early_stopping: bool = _TRAIN["early_stopping"]
    patience: int = _TRAIN["patience"]
    eval_batch_size: int = _TRAIN["eval_batch_size"]
    resume_every: int = _TRAIN["resume_every"]
    log_every: int = _TRAIN["log_every"]
    deterministic: bool = _TRAIN["deterministic"]
    lora_alpha_over_rank: float = float(_LORA["alpha_over_rank"])
    lora_dropout: float = float(_LORA["dropout"])

    @classmethod
    def from_cfg(cls, train: Any, method: Any | None = None) -> TrainConfig:
        fields = set(cls.__dataclass_fields__)
        values = {k: train[k] for k in train if k in fields}
        if method is not None:
            values["lora_alpha_over_rank"] = float(
                method.get("alpha_over_rank", cls.lora_alpha_over_rank)
            )
            values["lora_dropout"] = float(method.get("dropout", cls.lora_dropout))
        config = cls(**values)
        if config.schedule not in _SCHEDULES:
            raise CtsftError(
                f"train.schedule must be one of {', '.join(_SCHEDULES)}, got {config.schedule!r}"
            )
        if config.batch_size < 1 or config.grad_accum < 1:
            raise CtsftError("train.batch_size and train.grad_accum must be >= 1")
        return config


class RunLog:
    """JSON-lines log, mirrored to wandb when a wandb run is active."""

    def __init__(
        self, path: Path, wandb_cfg: dict[str, Any] | None, run_config: dict[str, Any]
    ) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.wandb = start_run(wandb_cfg, run_config, path.parent)

    def begin(self, resumed_at: int | None, record: dict[str, Any]) -> None:
        """Start the log afresh, or (resuming at step n) keep only what happened up to step n, so
        a rerun or a resume never leaves duplicate steps or a second `start` event."""
        kept: list[str] = []
        if resumed_at is not None and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    old = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by the kill
                if old.get("event") == "start" or int(old.get("step", 0)) <= resumed_at:
                    kept.append(line)
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.writelines(line + "\n" for line in kept)
        event = "start" if resumed_at is None else "resume"
        self.write(
            {"event": event, **({} if resumed_at is None else {"step": resumed_at}), **record}
        )

    def write(self, record: dict[str, Any]) -> None:
        self.handle.write(json.dumps(record, default=str) + "\n")
        self.handle.flush()
        if self.wandb is not None:
            self.wandb.log(
                {k: v for k, v in record.items() if isinstance(v, int | float)},
                step=record.get("step"),
            )

    def close(self) -> None:
        self.handle.close()
        if self.wandb is not None:
            self.wandb.finish()


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _param_groups(
    named: list[tuple[str, nn.Parameter]], weight_decay: float, deltas: set[int]
) -> list[dict[str, Any]]:
    """Decay matrices (as HF Trainer), not biases/norms; span deltas (`deltas`, by id) decay via
    the step pre-hook of `MaskedModel.decay_before_steps` instead."""
    decay = [p for _, p in named if p.dim() >= 2 and id(p) not in deltas]
    rest = [p for _, p in named if not (p.dim() >= 2 and id(p) not in deltas)]
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    return groups


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in the optimizer state (AdamW: exp_avg + exp_avg_sq + step per parameter)."""
    return sum(
        v.numel() * v.element_size()
        for state in optimizer.state.values()
        for v in state.values()
        if torch.is_tensor(v)
    )


@dataclass
class TrainState:
    """Everything `fit` carries from one optimizer step to the next: the position in the run and
    the early-stopping record. One object, so a resume file can store it whole (RNG, optimizer and
    schedule state come from their owners at save time instead)."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batch_pos: int = 0  # batches of `epoch` already consumed (a resume may land mid-epoch)
    best: float = -1.0  # best validation accuracy so far; -1: none yet
    bad: int = 0  # epochs since `best` last improved
    best_state: dict[str, torch.Tensor] | None = None  # CPU copy of the best epoch's trainables
    last_loss: float = float("nan")
    stopped_early: bool = False  # never saved: a stopped run writes no further resume state


# The `TrainState` fields a resume file holds, under these keys (the file format: older files
# must stay readable, so no field is renamed or required anew).
_RESUMED = ("step", "epoch", "batch_pos", "best", "bad", "best_state", "last_loss")


@dataclass(frozen=True)
class ResumeFile:
    """`<checkpoint>.resume/state.pt` (no file when `directory` is None): the trainable tensors,
    optimizer, schedule, RNG, grad scaler and `TrainState`, written every `every` steps so that a
    killed run continues bit-exactly. A file whose `fingerprint` differs belongs to another run
    (config, initial checkpoint, circuit or data) and is deleted rather than continued."""

    directory: Path | None
    fingerprint: str
    every: int

    @property
    def file(self) -> Path | None:
        return self.directory / "state.pt" if self.directory else None

    def due(self, step: int, total: int) -> bool:
        """Whether to write after optimizer step `step`; never after the last (the checkpoint
        follows at once)."""
        return bool(self.file and self.every and step % self.every == 0 and step < total)

    def save(self, trainer: Trainer, scheduler: LRScheduler) -> None:
        assert self.file is not None and trainer.optimizer is not None
        state = {
            "fingerprint": self.fingerprint,
            "trainable": trainer._trainable_state(),
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
            **{key: getattr(trainer.state, key) for key in _RESUMED},
        }
        self.file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.file) as tmp:
            torch.save(state, tmp)

    def load(self, trainer: Trainer, scheduler: LRScheduler) -> TrainState | None:
        """Restore this run's saved state into `trainer` and `scheduler` and return its
        `TrainState`; None (and the file of another run deleted) when there is none to continue."""
        if self.file is None or not self.file.is_file():
            return None
        saved = torch.load(self.file, weights_only=False, map_location="cpu")
        if saved.get("fingerprint") != self.fingerprint:
            log.warning(
                "discarding resume state in %s: it belongs to another run (its config, "
                "initial checkpoint, circuit or data differ); training from the start",
                self.directory,
            )
            self.file.unlink()
            return None
        assert trainer.optimizer is not None
        trainer._load_trainable(saved["trainable"])
        trainer.optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"])
        if saved.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        if trainer.scaler is not None and saved.get("scaler"):
            trainer.scaler.load_state_dict(saved["scaler"])
        state = TrainState(**{key: saved[key] for key in _RESUMED})
        log.info("resuming from %s at step %d", self.directory, state.step)
        return state


@dataclass
class _Run:
    """What the pieces of one `fit` call share besides the `TrainState`."""

    train_rows: list[dict[str, Any]]
    valid_rows: list[dict[str, Any]] | None
    total: int  # optimizer steps of the whole run
    epochs: int
    scheduler: LRScheduler
    resume: ResumeFile
    run_log: RunLog | None
    bar: tqdm


class Trainer:
    """Sets a model up for one plan, trains it (`fit`), then folds the result into plain weights
    (`finish`)."""

    def __init__(
        self, model: TaskModel, plan: TrainablePlan, config: TrainConfig, seed: int
    ) -> None:
        self.model = model
        self.plan = plan
        self.config = config
        self.seed = seed
        torch.manual_seed(seed)
        self.scaler = model.runtime.grad_scaler()
        self.trainable_count = plan.trainable
        self.masked: MaskedModel | None = None
        self.lora_config: Any = None  # the injected LoRA's config (its adapter_config.json)
        # What to set up follows from the plan's facts, never from its method's name.
        if plan.lora_rank is not None:
            self.lora_config = inject_lora(
                model.hf,
                plan.lora_modules,
                plan.lora_rank,
                config.lora_alpha_over_rank,
                config.lora_dropout,
            )
        else:
            self.masked = MaskedModel(model.hf, plan)
        self.named = [(n, p) for n, p in model.hf.named_parameters() if p.requires_grad]
        if plan.trainable != 0 and not self.named:  # a plan that trains nothing needs none
            raise CtsftError(
                f"method {plan.method} left no trainable parameter: check the method config"
            )
        self.optimizer = (
            torch.optim.AdamW(
                _param_groups(self.named, config.weight_decay, self._delta_ids()), lr=config.lr
            )
            if self.named
            else None
        )
        if self.masked is not None and self.optimizer is not None:
            self.masked.decay_before_steps(self.optimizer, config.weight_decay)
        self.state = TrainState()

    @property
    def step(self) -> int:
        """Optimizer steps taken (`state.step`)."""
        return self.state.step

    @property
    def last_loss(self) -> float:
        """Mean loss of the last optimizer step's micro-batches (`state.last_loss`)."""
        return self.state.last_loss

    # -- helpers ------------------------------------------------------------------------------
    def _delta_ids(self) -> set[int]:
        return set() if self.masked is None else {id(ref.delta) for ref in self.masked.deltas}

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        """CPU copies (resume files and the best epoch load on any device)."""
        return {n: p.detach().to("cpu", copy=True) for n, p in self.named}

    def _load_trainable(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, p in self.named:
                p.copy_(state[n])

    def _batches(self, rows: list[dict[str, Any]], epoch: int) -> list[list[dict[str, Any]]]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(rows), generator=gen, device="cpu").tolist()  # indices only
        bs = self.config.batch_size
        return [[rows[i] for i in order[j : j + bs]] for j in range(0, len(order), bs)]

    def _accuracy(self, rows: list[dict[str, Any]]) -> float:
        preds, labels = predict(self.model, rows, self.config.eval_batch_size)
        self.model.train()
        return float((preds == labels).mean())

    # -- training -----------------------------------------------------------------------------
    def backward(self, encoded: dict[str, torch.Tensor], n_micro: int = 1) -> float:
        """Forward + backward of one micro-batch (loss scaled by 1/n_micro); returns its loss."""
        encoded = dict(encoded)
        labels = encoded.pop("labels")
        with self.model.autocast():
            logits = self.model(**encoded)
        loss = nn.functional.cross_entropy(logits.float(), labels)
        if not torch.isfinite(loss):
            raise CtsftError(f"loss became NaN at step {self.step + 1}: lower train.lr")
        scaled = loss / n_micro
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return loss.item()

    def apply_update(self, scheduler: Any | None = None) -> float:
        """Clip, AdamW step (its pre-hooks decay slice deltas), schedule step, zero grads; returns
        the grad norm."""
        assert self.optimizer is not None
        cfg = self.config
        params = [p for _, p in self.named]
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = (
            float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
            if cfg.max_grad_norm
            else float("nan")
        )
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if scheduler is not None:
            scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def fit(
        self,
        train_rows: list[dict[str, Any]],
        valid_rows: list[dict[str, Any]] | None = None,
        resume_dir: Path | None = None,
        run_log: RunLog | None = None,
        fingerprint: dict[str, Any] | None = None,
        progress: bool = True,
        start_record: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Train for the configured epochs/steps, continuing from `resume_dir` when it holds this
        run's state (`fingerprint`: the caller's inputs); returns a summary of the run."""
        if not train_rows:
            raise CtsftError("the training split is empty: check task.train_size")
        total, epochs, scheduler = self._schedule(len(train_rows))
        resume = self._resume_file(resume_dir, fingerprint, len(train_rows))
        resumed = resume.load(self, scheduler)
        # a fresh fit restarts everything but the step count and the last loss
        fresh = TrainState(step=self.state.step, last_loss=self.state.last_loss)
        self.state = fresh if resumed is None else resumed
        if run_log:
            run_log.begin(None if resumed is None else resumed.step, start_record or {})
        self.model.train()
        started = time.perf_counter()
        bar = tqdm(
            total=total,
            initial=self.state.step,
            desc=f"train {self.plan.method}",
            disable=not progress,
            leave=False,
        )
        run = _Run(train_rows, valid_rows, total, epochs, scheduler, resume, run_log, bar)
        state = self.state
        while state.epoch < epochs and state.step < total and not state.stopped_early:
            self._train_epoch(run)
        bar.close()
        self._restore_best_epoch()
        return self._summary(run, time.perf_counter() - started)

    def _resume_file(
        self, resume_dir: Path | None, fingerprint: dict[str, Any] | None, n_rows: int
    ) -> ResumeFile:
        """This run's resume file, keyed by the caller's `fingerprint`, the train config, the
        seed and the number of training rows."""
        key = {"fp": fingerprint, "train": asdict(self.config), "seed": self.seed, "rows": n_rows}
        return ResumeFile(resume_dir, _fingerprint(key), self.config.resume_every)

    def _schedule(self, n_rows: int) -> tuple[int, int, LRScheduler]:
        """The run's optimizer steps and epochs (`max_steps` caps both, or sets them when
        `epochs` is 0) and its LR schedule over those steps."""
        cfg = self.config
        n_batches = math.ceil(n_rows / cfg.batch_size)
        steps_per_epoch = math.ceil(n_batches / cfg.grad_accum)
        total = cfg.epochs * steps_per_epoch
        if cfg.max_steps is not None:
            total = min(total, int(cfg.max_steps)) if cfg.epochs else int(cfg.max_steps)
            epochs = math.ceil(total / steps_per_epoch)
        else:
            epochs = cfg.epochs
        assert self.optimizer is not None
        scheduler = get_scheduler(
            _SCHEDULES[cfg.schedule],
            self.optimizer,
            num_warmup_steps=int(cfg.warmup_ratio * total),
            num_training_steps=max(total, 1),
        )
        return total, epochs, scheduler

    def _train_epoch(self, run: _Run) -> None:
        """The current epoch's remaining batches (all of them unless resumed mid-epoch), up to
        the run's step budget; a completed epoch then ends in `_end_epoch`."""
        state = self.state
        batches = self._batches(run.train_rows, state.epoch)
        while state.batch_pos < len(batches) and state.step < run.total:
            self._optimizer_step(
                batches[state.batch_pos : state.batch_pos + self.config.grad_accum], run
            )
        if state.batch_pos >= len(batches):
            self._end_epoch(run)

    def _optimizer_step(self, window: list[list[dict[str, Any]]], run: _Run) -> None:
        """One optimizer step over `window` (its `grad_accum` micro-batches): update, advance the
        state, log, and write the resume state when due."""
        state = self.state
        loss_sum = sum(self.backward(self.model.encode(batch), len(window)) for batch in window)
        lr = run.scheduler.get_last_lr()[0]
        grad_norm = self.apply_update(run.scheduler)
        state.step += 1
        state.batch_pos += len(window)
        state.last_loss = loss_sum / len(window)
        run.bar.update(1)
        run.bar.set_postfix(loss=f"{state.last_loss:.4f}")
        if run.run_log and (state.step % self.config.log_every == 0 or state.step == run.total):
            run.run_log.write(
                {
                    "step": state.step,
                    "epoch": state.epoch,
                    "loss": state.last_loss,
                    "lr": lr,
                    "grad_norm": grad_norm,
                }
            )
        if run.resume.due(state.step, run.total):
            run.resume.save(self, run.scheduler)

    def _end_epoch(self, run: _Run) -> None:
        """Early stopping, when on and there is a validation split: keep the weights of the best
        epoch so far, and stop after `patience` epochs without improvement. Then the next epoch."""
        cfg, state = self.config, self.state
        if cfg.early_stopping and run.valid_rows:
            acc = self._accuracy(run.valid_rows)
            if run.run_log:
                run.run_log.write({"step": state.step, "epoch": state.epoch, "valid_accuracy": acc})
            if acc > state.best:
                state.best, state.bad, state.best_state = acc, 0, self._trainable_state()
            else:
                state.bad += 1
                state.stopped_early = state.bad >= cfg.patience
        state.epoch, state.batch_pos = state.epoch + 1, 0

    def _restore_best_epoch(self) -> None:
        """After early stopping's epochs: end on the weights of the best one, not the last."""
        if self.state.best_state is not None:
            self._load_trainable(self.state.best_state)

    def _summary(self, run: _Run, seconds: float) -> dict[str, Any]:
        state = self.state
        return {
            "steps": state.step,
            "total_steps": run.total,
            "epochs_run": state.epoch,
            "final_loss": state.last_loss,
            "best_valid_accuracy": state.best if state.best >= 0 else None,
            "stopped_early": state.stopped_early,
            "train_rows": len(run.train_rows),
            "train_seconds": seconds,
        }

    def finish(self) -> None:
        """Fold deltas / LoRA back into plain weights (the model is then an ordinary HF model)."""
        if self.masked is not None:
            self.masked.merge()
            self.masked = None
        elif self.plan.lora_rank is not None:
            merge_lora(self.model.hf)  # the adapter was saved before (train_to_checkpoint)
        for param in self.model.hf.parameters():
            param.requires_grad_(True)


def stored_weights(
    plan: TrainablePlan,
    hf_model: nn.Module,
    base_dir: Path,
    lora_config: Any = None,
    fresh: tuple[str, ...] = (),
    base_sha256: str | None = None,
) -> StoredWeights | None:
    """What a checkpoint of `plan` stores relative to `base_dir`: the LoRA adapter, or the
    plan's whole tensors, spans and entries, plus the `fresh` parameters the base folder does not
    hold (a new classifier head); None (the whole model) when that is everything."""
    if lora_config is not None:
        return None if fresh else StoredWeights(base_dir, base_sha256, lora_config=lora_config)
    spans = [(e.name, e.dim, e.start, e.stop) for e in plan.entries]
    whole = {name for name, dim, _, _ in spans if dim is None}
    spans = [s for s in spans if s[0] not in fresh] + [(n, None, 0, 0) for n in fresh]
    scatter = [(s.name, s.indices) for s in plan.scatter.entries if s.name not in fresh] if plan.scatter else []  # fmt: skip
    if not scatter and whole | set(fresh) == {name for name, _ in hf_model.named_parameters()}:
        return None
    return StoredWeights(base_dir, base_sha256, spans=spans, scatter=scatter)


def resume_dir_for(checkpoint: str | Path) -> Path:
    path = Path(checkpoint)
    return path.with_name(path.name + ".resume")


def train_to_checkpoint(
    model: TaskModel,
    plan: TrainablePlan,
    config: TrainConfig,
    train_rows: list[dict[str, Any]],
    checkpoint: str | Path,
    *,
    seed: int,
    valid_rows: list[dict[str, Any]] | None = None,
    record: dict[str, Any] | None = None,
    log_path: str | Path | None = None,
    wandb_cfg: dict[str, Any] | None = None,
    progress: bool = True,
    base_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Train `model` with `plan` and write `checkpoint` atomically; returns the training record.

    Given `base_dir` (the folder `model` was loaded from), the checkpoint stores only what the
    plan trained and references `base_dir` by path and sha256 (`stored_weights`); without it,
    or when the plan trains every parameter, it is the whole model.

    The record (stored as `training` in the checkpoint's task_model.json) holds the method, the
    trainable/total counts and percentage, the declared entries, steps, final loss and `record`
    (the caller's provenance: config, seed, base model sha256, data checksum, git commit).
    """
    checkpoint = Path(checkpoint)
    record = record or {}
    resume = resume_dir_for(checkpoint)
    trainer = Trainer(model, plan, config, seed)
    summary_line = plan.describe()
    log.info("%s: %s", plan.method, summary_line)
    print(f"[{plan.method}] {summary_line}", flush=True)
    run_log = RunLog(
        Path(log_path) if log_path else checkpoint.with_name(checkpoint.name + ".log.jsonl"),
        wandb_cfg,
        record,
    )
    try:
        summary = trainer.fit(
            train_rows,
            valid_rows,
            resume_dir=resume,
            run_log=run_log,
            fingerprint={
                "config": record.get("config"),
                "plan": plan.to_dict(),
                "inputs": {key: record.get(key) for key in RESUME_INPUTS},
            },
            progress=progress,
            start_record={
                "method": plan.method,
                "trainable": trainer.trainable_count,
                "total": plan.total,
            },
        )
        training = {**plan.to_dict(), **summary, **record}
        stored = None
        if base_dir is not None:  # store only what was trained, relative to base_dir
            stored = stored_weights(
                plan,
                model.hf,
                Path(base_dir),
                trainer.lora_config,
                model.fresh_parameters,
                record.get("init_sha256"),  # the caller's provenance hashed base_dir already
            )
        if stored is not None and stored.lora_config is not None:
            model.save(checkpoint, extra={"training": training}, stored=stored)  # the adapter
            trainer.finish()
        else:
            trainer.finish()  # spans and entries merged first: their values are what is stored
            model.save(checkpoint, extra={"training": training}, stored=stored)
        run_log.write(
            {"event": "done", "step": summary["steps"], "final_loss": summary["final_loss"]}
        )
    finally:
        run_log.close()
    shutil.rmtree(resume, ignore_errors=True)
    return training
