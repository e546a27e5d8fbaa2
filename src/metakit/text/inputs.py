"""How a text run's sentences become the tensors its learner takes, for :mod:`metakit.predict`.

Registered as the text plugin's ``inputs["text"]`` (:mod:`metakit.text.plugin`), so predicting
with a text run asks the text domain instead of the core importing it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from metakit.text.embeddings import embed_texts
from metakit.text.encoder import get_text_model, tokenize_texts

if TYPE_CHECKING:
    from metakit.predict import InputSpec

__all__ = ["prepare_texts"]


def prepare_texts(texts: list[str], spec: InputSpec, progress: bool = False) -> torch.Tensor:
    """``texts`` as the run's items: sentence embeddings, or token ids padded to the run's width (``spec.tokens``)."""
    encoder = spec.encoder or ""
    if not spec.tokens:
        return embed_texts(texts, encoder, what="predict", progress=progress)
    # The run's items are ids padded to its dataset's longest sentence: truncate and pad to that width.
    width = spec.shape[0]
    ids = tokenize_texts(texts, encoder, max_length=width)
    return nn.functional.pad(ids, (0, width - ids.shape[1]), value=float(get_text_model(encoder).pad_id))
