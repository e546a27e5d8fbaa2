"""The text plugin: the ``transformer`` backbone (a sentence encoder fine-tuned on token ids).

The intent datasets (``banking77``, ``hwu64``, ``clinc150``, ``csv``, ``jsonl``) are listed with
the others in :mod:`metakit.datasets`, by ``"module:function"`` strings, so they import nothing
either. Loading this plugin imports nothing; transformers and the weights load only when the
backbone is built.
"""

from __future__ import annotations

from metakit.registry import Plugin

plugin = Plugin(
    name="text",
    summary="few-shot text classification on sentence embeddings or a fine-tuned sentence encoder",
    backbones={"transformer": "metakit.text.encoder:transformer"},
)
