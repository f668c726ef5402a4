"""Data sets of the experiments: tfds builders and plain-Python readers of local files."""
