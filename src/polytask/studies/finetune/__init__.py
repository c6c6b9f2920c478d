"""Transfer learning: fine-tune a trained model on new data and new tasks
(``polytask finetune BASE_MODEL_DIR CONFIG``), freezing its shared encoder whole, in its first
layers or not at all, with per-group learning rates and optional gradual unfreezing; the model
directory records its lineage."""

from polytask.studies.finetune.base import BaseModelDir, TaskPlan, load_base
from polytask.studies.finetune.checks import summary_lines
from polytask.studies.finetune.runner import finetune
from polytask.train.freeze import FreezePlan, LayerGroup, layer_groups, plan_freeze
from polytask.train.unfreeze import GradualUnfreezing

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
