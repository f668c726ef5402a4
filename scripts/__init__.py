"""Scripts, run from the repository root (``python -m scripts.<name>`` for those that import
experiments/: the root is then on the path without any path patching)."""
