"""Layer groups of the shared parameters, freeze policies and per-group learning rates.

Freezing the first layers of a trained network and training the rest on a new task follows
Yosinski, Clune, Bengio & Lipson, "How transferable are features in deep neural networks?",
NeurIPS 2014: the first layers compute general features that transfer between tasks, the last
ones features specific to the tasks they were trained on, so the lower the layer, the safer it
is to keep it fixed. Separate learning rates for the shared layers and the task heads are the
two-group form of ULMFiT's discriminative fine-tuning (Howard & Ruder, "Universal Language Model
Fine-tuning for Text Classification", ACL 2018).

**Layer groups.** The shared parameters are cut into layers in the order the modules are
registered, which is the forward order of a single stack of layers (an MLP, a CNN, a
Transformer): the modules owning shared parameters are walked, and a new layer starts at each
one holding a weight of two or more dimensions (a Linear, Conv or Embedding), except that

* a module whose parameters are all one-dimensional (a normalisation) joins the layer before it;
* the modules inside one element of an ``nn.ModuleList`` of blocks (a Transformer layer, a CNN
  stage) form one layer, and so do those inside each block an encoder declares
  (:meth:`polytask.models.encoders.Encoder.layer_blocks`: a timm backbone's stages, kept in
  ``nn.Sequential`` containers that are not lists of blocks);
* consecutive embedding tables (one per categorical column, or a text model's word, position
  and segment embeddings) are looked up side by side: they form one layer, the input layer.

Modules without parameters (activations, dropout) belong to the layer before them, so that a
frozen layer's dropout is off too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from polytask.errors import ConfigError
from polytask.models.encoders import Encoder
from polytask.models.model import MultiTaskModel
from polytask.train.config import FinetuneConfig

_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


@dataclass
class LayerGroup:
    """One layer of the shared encoder: its modules and their parameters and buffers, named as
    in the model's ``state_dict``."""

    index: int
    #: Qualified name of its block (``...layer.3``), else of its first module.
    name: str
    modules: list[nn.Module] = field(default_factory=list)
    parameters: dict[str, nn.Parameter] = field(default_factory=dict)
    buffers: list[str] = field(default_factory=list)
    #: The ``nn.ModuleList`` element holding the group, if any.
    block: str | None = None
    #: True while every module of the group is an embedding table.
    embeddings: bool = False


def _qualified(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _inside(name: str, roots: Iterable[str]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


def _blocks(model: nn.Module) -> list[str]:
    """Names of the non-leaf elements of every ``nn.ModuleList`` (repeated blocks) and of the
    blocks the encoders declare."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, Encoder):
            found += [_qualified(name, block) for block in module.layer_blocks()]
        if isinstance(module, nn.ModuleList):
            found += [
                _qualified(name, str(i))
                for i, child in enumerate(module)
                if next(child.children(), None) is not None
            ]
    return found


def layer_groups(model: MultiTaskModel) -> list[LayerGroup]:
    """The shared parameters as layers in forward order (see the module docstring)."""
    shared = {id(p) for p in model.shared_parameters()}
    module_names = {id(m): n for n, m in model.named_modules()}
    roots = [module_names[id(m)] for m in model.shared_modules() if id(m) in module_names]
    # The outermost block holding a module decides its layer (a stage, not its inner blocks).
    blocks = sorted(_blocks(model), key=len)
    groups: list[LayerGroup] = []
    seen: set[int] = set()
    for name, module in model.named_modules():
        own = [
            (_qualified(name, n), p)
            for n, p in module.named_parameters(recurse=False)
            if id(p) in shared and id(p) not in seen
        ]
        if not own:
            if groups and _inside(name, roots) and next(module.children(), None) is None:
                groups[-1].modules.append(module)  # an activation or dropout of this layer
            continue
        seen.update(id(p) for _, p in own)
        block = next((b for b in blocks if _inside(name, [b])), None)
        is_embedding = isinstance(module, _EMBEDDINGS)
        last = groups[-1] if groups else None
        joins = last is not None and (
            all(p.dim() < 2 for _, p in own)
            or (block is not None and block == last.block)
            or (is_embedding and last.embeddings)
        )
        if not joins:
            label = block if block is not None else name
            last = LayerGroup(len(groups), label, block=block, embeddings=is_embedding)
            groups.append(last)
        assert last is not None
        last.embeddings = last.embeddings and is_embedding
        last.modules.append(module)
        last.parameters.update(own)
        last.buffers += [_qualified(name, n) for n, _ in module.named_buffers(recurse=False)]
    return groups


@dataclass
class FreezePlan:
    """What is frozen: the first ``frozen`` layer groups (of which gradual unfreezing has
    released the top ``released``), and ``fixed`` parameters frozen for the whole run (the heads
    of a base model's tasks that the run keeps but does not train)."""

    groups: list[LayerGroup]
    frozen: int
    fixed: dict[str, nn.Parameter] = field(default_factory=dict)
    fixed_modules: list[nn.Module] = field(default_factory=list)
    #: State-dict names of the buffers (batch-norm statistics) of the fixed modules.
    fixed_buffers: list[str] = field(default_factory=list)
    #: The modules holding the shared parameters (kept in eval mode while all are frozen).
    shared_modules: list[nn.Module] = field(default_factory=list)
    released: int = 0

    @property
    def still_frozen(self) -> int:
        """Layer groups frozen now (the bottom ones)."""
        return self.frozen - self.released

    def apply(self, model: MultiTaskModel, released: int) -> None:
        """Freeze the bottom ``frozen - released`` groups and the fixed parameters, unfreeze the
        other groups, and keep every frozen module in eval mode."""
        self.released = released
        for group in self.groups:
            trainable = group.index >= self.still_frozen
            for param in group.parameters.values():
                param.requires_grad_(trainable)
        for param in self.fixed.values():
            param.requires_grad_(False)
        keep = [m for g in self.groups[: self.still_frozen] for m in g.modules]
        if self.groups and self.still_frozen == len(self.groups):
            # The whole encoder is a fixed feature extractor: no module-level randomness
            # either (an encoder's own word dropout reads its training flag).
            keep += self.shared_modules
        model.keep_in_eval(keep + self.fixed_modules)

    def frozen_names(self) -> list[str]:
        """Parameters frozen now, by state-dict name (layers bottom-up, then fixed ones)."""
        names = [n for g in self.groups[: self.still_frozen] for n in g.parameters]
        return names + list(self.fixed)

    def frozen_state_names(self) -> list[str]:
        """Parameters and buffers (batch-norm statistics) that cannot have changed so far."""
        names = [n for g in self.groups[: self.still_frozen] for n in [*g.parameters, *g.buffers]]
        return names + list(self.fixed) + self.fixed_buffers

    def trainable_shared(self, gradual: bool) -> list[nn.Parameter]:
        """Shared parameters that train at some point: the unfrozen groups, and with gradual
        unfreezing the frozen ones too (they wait in the optimiser, without gradients)."""
        return [
            p
            for g in self.groups
            if gradual or g.index >= self.frozen
            for p in g.parameters.values()
        ]


def frozen_count(
    groups: list[LayerGroup], policy: FinetuneConfig, model: MultiTaskModel, architecture: str
) -> int:
    """How many layer groups (from the bottom) ``policy`` freezes; checks the policy against the
    model and names the key at fault."""
    if policy.layers and policy.freeze != "layers":
        raise ConfigError(
            f"config error: finetune.layers: it counts the layers frozen with freeze = 'layers' "
            f"(freeze is {policy.freeze!r}); remove it or set finetune.freeze = 'layers'"
        )
    ordered = policy.freeze == "layers" or policy.unfreeze == "gradual"
    if ordered and not model.single_representation:
        key = "finetune.freeze" if policy.freeze == "layers" else "finetune.unfreeze"
        raise ConfigError(
            f"config error: {key}: freezing or unfreezing layer by layer needs one stack of shared "
            f"layers (a single shared representation, e.g. architecture 'hard'); architecture "
            f"{architecture!r} has parallel ones: use freeze = 'encoder' or 'none' without "
            "gradual unfreezing"
        )
    if policy.freeze == "none":
        count = 0
    elif policy.freeze == "encoder":
        count = len(groups)
    else:
        if policy.layers > len(groups):
            names = ", ".join(g.name for g in groups)
            raise ConfigError(
                f"config error: finetune.layers: {policy.layers} layers to freeze, but the shared "
                f"encoder has {len(groups)} ({names})"
            )
        count = policy.layers
    if policy.unfreeze == "gradual" and count == 0:
        raise ConfigError(
            "config error: finetune.unfreeze: gradual unfreezing releases frozen layers, and "
            f"freeze = {policy.freeze!r} freezes none; freeze the encoder or some layers"
        )
    return count


def plan_freeze(
    model: MultiTaskModel,
    policy: FinetuneConfig,
    architecture: str,
    fixed_tasks: Iterable[str] = (),
) -> FreezePlan:
    """The freeze plan of ``policy`` for ``model``, with the parameters of ``fixed_tasks``
    frozen throughout; not applied yet (:meth:`FreezePlan.apply`)."""
    groups = layer_groups(model)
    count = frozen_count(groups, policy, model, architecture)
    names = {id(p): n for n, p in model.named_parameters()}
    fixed: dict[str, nn.Parameter] = {}
    fixed_modules: list[nn.Module] = []
    fixed_buffers: list[str] = []
    heads = dict(model.named_modules())
    for task in fixed_tasks:
        params = model.task_parameters(task)
        fixed.update({names[id(p)]: p for p in params})
        owned = {id(p) for p in params}
        for name, module in heads.items():
            mine = list(module.parameters())
            # A module all of whose parameters are the task's (its tower, gate, ...).
            if mine and all(id(p) in owned for p in mine):
                fixed_modules.append(module)
                fixed_buffers += [_qualified(name, n) for n, _ in module.named_buffers()]
    buffers = list(dict.fromkeys(fixed_buffers))
    return FreezePlan(groups, count, fixed, fixed_modules, buffers, list(model.shared_modules()))


def parameter_groups(
    model: MultiTaskModel, plan: FreezePlan, policy: FinetuneConfig, trained: list[str]
) -> list[dict[str, Any]]:
    """The optimiser's groups: shared parameters at ``shared_lr_scale`` x the learning rate,
    the trained tasks' own parameters at ``head_lr_scale``; with ``layer_lr_decay < 1`` one
    group per shared layer, the top one at ``shared_lr_scale`` and each below at
    ``layer_lr_decay`` x the one above (ULMFiT's discriminative fine-tuning, Howard & Ruder
    2018: lower layers hold more general features, which should move less). Parameters that
    never train (frozen without gradual unfreezing, fixed heads) are left out."""
    shared = plan.trainable_shared(policy.unfreeze == "gradual")
    seen = {id(p) for p in shared}
    own: list[nn.Parameter] = []
    for task in trained:
        for param in model.task_parameters(task):
            if id(param) not in seen:
                seen.add(id(param))
                own.append(param)
    if policy.layer_lr_decay == 1.0:
        groups = [{"params": shared, "lr_scale": policy.shared_lr_scale}]
    else:
        top = len(plan.groups) - 1
        groups = [
            {
                "params": [p for p in g.parameters.values() if id(p) in seen],
                "lr_scale": policy.shared_lr_scale * policy.layer_lr_decay ** (top - g.index),
            }
            for g in plan.groups
        ]
    groups.append({"params": own, "lr_scale": policy.head_lr_scale})
    return [g for g in groups if g["params"]]
