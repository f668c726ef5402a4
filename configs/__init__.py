"""Experiment configs: ``configs/<task>.py`` with ``get_config(arg)`` and ``get_sweep(arg)``."""
