"""Studies: many runs towards one question, each owning its config section and calling
:mod:`polytask.run` (never the reverse): ``compare`` (multi-task vs single-task, with intervals),
``pareto`` (the trade-off between the tasks), ``affinity`` (which tasks to group), ``distill``
(a student from teachers) and ``finetune`` (a trained model continued on new data or tasks)."""
