"""Example polytask plug-in: the ``inverse_loss`` balancer, the ``residual_mlp`` encoder and the
``poisson`` task kind. polytask loads each through its entry point (see ``pyproject.toml``)."""
