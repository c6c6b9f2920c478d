"""One run, built once: build (model, balancer, trainer and their checks), the single-task
baselines, the run directory's format, what a variant (distillation, fine-tuning) changes, the
pipeline (:func:`polytask.run`, :func:`polytask.fit`) and the predictor of a saved model.

Import its modules as ``from polytask.run.pipeline import ...``: the package's public name
``polytask.run`` is the function."""
