"""The two tasks of the paper, described as data: languages, splits, labels, fields, prompts."""

from __future__ import annotations

from dataclasses import dataclass

from ctsft.config_files import group_config
from ctsft.errors import CtsftError


@dataclass(frozen=True)
class TaskSpec:
    """Everything the loaders, models and tables need to know about a task.

    `roles` maps what a step asks for (train / valid / test) onto the files that exist: XNLI
    ships no training split locally (MultiNLI is not on disk), so its dev split is the
    low-resource training pool, cut into train and valid by parallel example index (the role
    `dev` reads the whole file).
    """

    name: str
    languages: tuple[str, ...]
    label_names: tuple[str, ...]
    text_fields: tuple[str, ...]
    prompt: str
    label_words: tuple[str, ...]
    roles: dict[str, str]

    def check_language(self, lang: str) -> None:
        if lang not in self.languages:
            raise CtsftError(
                f"unknown language {lang!r} for task {self.name}: choose one of "
                f"{', '.join(self.languages)}"
            )

    def check_role(self, role: str) -> None:
        if role not in self.roles:
            raise CtsftError(
                f"unknown split {role!r} for task {self.name}: choose one of {', '.join(self.roles)}"
            )


# The prompt and label words of each task come from its YAML (config/hydra/task/), the one place
# they are set; a config's own `task.prompt` replaces them (ctsft.config.task_spec).
_NUSAX = group_config("task", "nusax")
_XNLI = group_config("task", "xnli")

NUSAX = TaskSpec(
    name="nusax",
    languages=("ace", "ban", "bbc", "bjn", "bug", "eng", "ind", "jav", "mad", "min", "nij", "sun"),
    label_names=("negative", "neutral", "positive"),
    text_fields=("text",),
    prompt=_NUSAX["prompt"],
    label_words=tuple(_NUSAX["label_words"]),
    roles={"train": "train", "valid": "valid", "test": "test"},
)

XNLI = TaskSpec(
    name="xnli",
    languages=(
        "ar",
        "bg",
        "de",
        "el",
        "en",
        "es",
        "fr",
        "hi",
        "ru",
        "sw",
        "th",
        "tr",
        "ur",
        "vi",
        "zh",
    ),  # fmt: skip
    label_names=("entailment", "neutral", "contradiction"),
    text_fields=("premise", "hypothesis"),
    prompt=_XNLI["prompt"],
    label_words=tuple(_XNLI["label_words"]),
    roles={"train": "dev", "valid": "dev", "test": "test", "dev": "dev"},
)

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (NUSAX, XNLI)}

#: XNLI dev rows whose parallel index satisfies this go to the validation role, the rest to train.
XNLI_VALID_EVERY = 10
#: The environment variable naming the data folder (when the config has no data.root).
DATA_ROOT_ENV = "CTSFT_DATA_ROOT"


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise CtsftError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}") from None
