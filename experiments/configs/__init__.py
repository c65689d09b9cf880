"""Experiment configs, one module per experiment, each with ``get_config(preset="quick")``.

Load one with :func:`experiments.common.config.load` (``--config NAME --preset PRESET`` on the command lines).
"""
