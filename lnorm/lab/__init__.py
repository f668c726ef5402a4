"""What the paper's experiments share, apart from the library a Flax user imports.

The runner (config arguments, the training loop and the experiment contract,
optimizers, checkpoints, metrics, sharding, progress), the data helpers, the
evaluation harnesses (SentEval), comparison plots and the command line. It
needs the ``experiments`` extra (``pip install lnorm[experiments]``); the
library (:mod:`lnorm.functional`, :mod:`lnorm.layers`,
:mod:`lnorm.recurrent`, :mod:`lnorm.nnx`) never imports it.
"""
