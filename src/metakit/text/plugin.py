"""The text plugin: the ``transformer`` backbone (a sentence encoder fine-tuned on token ids), the
intent datasets (``banking77``, ``hwu64``, ``clinc150``) and your own texts (``csv``, ``jsonl``),
and how a text run's sentences are prepared for ``metakit predict``.

Loading this plugin imports nothing; transformers and the weights load only when the backbone is
built, and the dataset entries (in :mod:`metakit.text.datasets`) when a dataset is first asked for.
"""

from __future__ import annotations

from metakit.registry import Plugin

_DATASETS = "metakit.text.datasets"

plugin = Plugin(
    name="text",
    summary="few-shot text classification on sentence embeddings or a fine-tuned sentence encoder",
    backbones={"transformer": "metakit.text.encoder:SentenceEncoder"},
    datasets={name: f"{_DATASETS}:{name.upper()}_SPEC" for name in ("banking77", "hwu64", "clinc150", "csv", "jsonl")},
    inputs={"text": "metakit.text.inputs:prepare_texts"},
)
