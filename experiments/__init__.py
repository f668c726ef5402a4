"""The paper's experiments: ``experiments/<task>.py``, one module per task.

Each declares what is particular to it through the contract of
:mod:`lnorm.lab.contract` (``make_experiment(config, workdir, mesh)`` and an
optional ``check_config(config)``), and ``configs/<task>.py`` names it in
``config.experiment``; :func:`lnorm.lab.runner.train_and_evaluate` does the
rest. Adding an experiment touches no other file.

``experiments`` (like ``configs``) lives at the repository root, next to the
``lnorm`` package, and is not installed: commands run from the repository root.
"""
