"""A word-level tokenizer for the tiny random models, built from the local task data.

Deterministic (words sorted by frequency, then alphabetically), so a tiny model folder is
reproducible byte for byte; label words are always in the vocabulary as single tokens.
"""

from __future__ import annotations

import collections
import re

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from ctsft.data import TASKS, load_split

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


def corpus_words(per_language: int = 200) -> list[str]:
    """Lower-cased words of the first rows of every task's proxy languages, plus prompt words."""
    counts: collections.Counter[str] = collections.Counter()
    for spec in TASKS.values():
        for lang in (
            ("ind", "eng", "jav", "sun", "en") if spec.name == "nusax" else ("en", "de", "sw")
        ):
            if lang not in spec.languages:
                continue
            rows = load_split(spec, lang, "train")
            for row in rows.select(range(min(per_language, len(rows)))):
                text = " ".join(row[f] for f in spec.text_fields)
                counts.update(re.findall(r"\w+|[^\w\s]", text.lower()))
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def build_tiny_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    forced = {w.strip().lower() for spec in TASKS.values() for w in spec.label_words}
    forced |= {
        w for spec in TASKS.values() for w in re.findall(r"\w+|[^\w\s]", spec.prompt.lower())
    }
    vocab_words = SPECIALS + sorted(forced)
    for word in corpus_words():
        if len(vocab_words) >= vocab_size:
            break
        if word not in vocab_words:
            vocab_words.append(word)
    vocab = {w: i for i, w in enumerate(vocab_words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B:1 </s>:1",
        special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])],
    )  # fmt: skip
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        model_max_length=128,
    )
