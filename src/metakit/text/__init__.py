"""Few-shot text classification: intent datasets as episodes of frozen sentence embeddings.

:mod:`metakit.text.embeddings` holds the encoders (all-MiniLM-L6-v2 via ``metakit[text]``) and the
embedding cache; :mod:`metakit.text.datasets` the Banking77, HWU64 and CLINC150 loaders and the
domain split. The datasets are registered as ``banking77``, ``hwu64`` and ``clinc150``, so configs
use them like any other dataset (``configs/text-*.yaml``). Importing this package does not import
sentence-transformers; only encoding a dataset that is not cached does.
"""

from metakit.registry import lazy_exports

# Imported on first use, so that loading the text plugin (metakit.text.plugin) for the CLI imports no torch.
__getattr__ = lazy_exports(__name__, {
    **dict.fromkeys(("IntentData", "domain_splits", "load_banking77", "load_clinc150", "load_hwu64"), "datasets"),
    **dict.fromkeys(("DEFAULT_ENCODER", "Encoder", "embed_texts", "register_encoder"), "embeddings"),
})

__all__ = [
    "DEFAULT_ENCODER",
    "Encoder",
    "IntentData",
    "domain_splits",
    "embed_texts",
    "load_banking77",
    "load_clinc150",
    "load_hwu64",
    "register_encoder",
]
