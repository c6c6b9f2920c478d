"""Transfer learning: fine-tune a trained model on new data and new tasks
(``polytask finetune BASE_MODEL_DIR CONFIG``), freezing its shared encoder whole, in its first
layers or not at all, with per-group learning rates and optional gradual unfreezing; the model
directory records its lineage."""

from polytask.finetune.base import BaseModelDir, TaskPlan, load_base
from polytask.finetune.checks import summary_lines
from polytask.finetune.freeze import FreezePlan, LayerGroup, layer_groups, plan_freeze
from polytask.finetune.runner import finetune
from polytask.finetune.unfreeze import GradualUnfreezing

__all__ = [
    "BaseModelDir",
    "FreezePlan",
    "GradualUnfreezing",
    "LayerGroup",
    "TaskPlan",
    "finetune",
    "layer_groups",
    "load_base",
    "plan_freeze",
    "summary_lines",
]
