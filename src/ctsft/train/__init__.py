"""Training: methods as trainable-parameter plans, head-level masking, LoRA, the single loop."""

from ctsft.train.loop import (
    RunLog,
    TrainConfig,
    Trainer,
    optimizer_state_bytes,
    train_to_checkpoint,
)
from ctsft.train.masking import MaskedModel, SpanDeltas
from ctsft.train.methods import (
    HEAD_METHODS,
    METHODS,
    TrainablePlan,
    TrainEntry,
    build_plan,
    circuit_heads,
    load_circuit,
)

__all__ = [
    "HEAD_METHODS",
    "METHODS",
    "MaskedModel",
    "RunLog",
    "SpanDeltas",
    "TrainConfig",
    "TrainEntry",
    "TrainablePlan",
    "Trainer",
    "build_plan",
    "circuit_heads",
    "load_circuit",
    "optimizer_state_bytes",
    "train_to_checkpoint",
]
