"""Task kinds as plug-ins: one module per kind, registered in :data:`KINDS`.

To add a kind, write a module with a :class:`Kind` subclass (see :mod:`.base`) and register
an instance below; ``tests/test_task_kinds.py`` then checks it with the shared property suite.
The registration order is the order configs and messages list the kinds in.
"""

from polytask.tasks.kinds.base import KINDS, Kind, KindRegistry, LoadArrays, LossState, TaskLike
from polytask.tasks.kinds.binary import Binary
from polytask.tasks.kinds.dense_regression import DenseRegression
from polytask.tasks.kinds.dependency import Dependency
from polytask.tasks.kinds.detection import Detection
from polytask.tasks.kinds.multiclass import Multiclass
from polytask.tasks.kinds.multilabel import Multilabel
from polytask.tasks.kinds.regression import Regression
from polytask.tasks.kinds.segmentation import Segmentation
from polytask.tasks.kinds.token_classification import TokenClassification

KINDS.register(Binary())
KINDS.register(Multiclass())
KINDS.register(Multilabel())
KINDS.register(Regression())
KINDS.register(Segmentation())
KINDS.register(DenseRegression())
KINDS.register(Detection())
KINDS.register(TokenClassification())
KINDS.register(Dependency())

__all__ = ["KINDS", "Kind", "KindRegistry", "LoadArrays", "LossState", "TaskLike"]
