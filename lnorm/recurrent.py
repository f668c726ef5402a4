r"""Layer-normalized recurrent cells for Flax linen: LN-LSTM, LN-GRU and BN-LSTM.

The cells subclass :class:`flax.linen.RNNCellBase`, so they run inside
``nn.RNN`` (also with ``seq_lengths``), ``nn.Bidirectional`` and ``nn.scan``
exactly like Flax's own ``LSTMCell`` and ``GRUCell``::

    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from lnorm.recurrent import LSTMCell
    >>> x = jnp.ones((2, 5, 3))                       # <float32>[batch, time, in]
    >>> rnn = nn.RNN(LSTMCell(4, norm='layer'))
    >>> variables = rnn.init(jax.random.key(0), x)
    >>> rnn.apply(variables, x).shape                 # <float32>[batch, time, 4]
    (2, 5, 4)

The equations live once, as pure functions, in :mod:`lnorm.cells`
(:func:`~lnorm.cells.lstm_step`, :func:`~lnorm.cells.gru_step`); the classes
here only create the parameters and normalization submodules and call them,
as do their NNX twins in :mod:`lnorm.nnx`.

Conventions shared by the cells (and by their NNX twins):

* **One matrix per source.** ``W_x`` (``input_kernel``, ``[in, k*H]``) and
  ``W_h`` (``recurrent_kernel``, ``[H, k*H]``) hold all gates side by side, so
  that layer norm can normalize the whole concatenated pre-activation as the
  paper does. The gate order is the paper's: ``[f; i; o; g]`` for the LSTM,
  ``[z; r]`` for the GRU. (Flax keeps one ``Dense`` per gate, Keras/PyTorch
  order the LSTM gates ``[i; f; g; o]``.)
* **Initialization** is Flax's: ``W_x`` LeCun normal, each ``H x H`` block of
  ``W_h`` (one per gate) orthogonal, biases 0, layer-norm gains 1 and biases
  0. The plain cells (``norm='none'``) start from the same distribution, so
  the comparison is the paper's.
* **Forget-gate bias** is 0 by default, as in the authors' code and in Flax;
  ``forget_bias=1.0`` initializes the forget slice of ``b`` to 1 (Jozefowicz
  et al. 2015; Haiku and Keras add 1 too).
* **eps** 1e-5 inside the square root (the authors' code, PyTorch); Flax's
  ``LayerNorm`` uses 1e-6.
* **dtypes.** ``dtype`` is the computation dtype (``None``: the promoted
  dtype of inputs, carry and ``param_dtype``, as Flax does); normalization
  statistics are always at least float32. The new carry keeps the dtype of
  the carry that came in, so a scan is type-stable, and the output is the
  new ``h``. :meth:`initialize_carry` gives a zero carry in ``dtype`` (or
  ``param_dtype`` when ``dtype`` is ``None``): a cell with
  ``dtype=jnp.bfloat16`` maps bfloat16 inputs to bfloat16 outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lnorm import cells
from lnorm import functional as F
from lnorm.cells import (
  GRU_NORMS,
  LSTM_NORMS,
  block_orthogonal,
  default_kernel_init,
  forget_bias_init,
  gru_recurrent_init,
  gru_state_update,
  lstm_recurrent_init,
  lstm_state_update,
  orthogonal_init,
  step_batch_norm,
)
from lnorm.layers import LayerNorm, check_norm_name

Array = jax.Array
Initializer = Callable[..., Array]

# Re-exported from lnorm.cells, where the equations and initializers live.
__all__ = [
  'BNLSTMCell',
  'GRUCell',
  'GRU_NORMS',
  'LSTMCell',
  'LSTM_NORMS',
  'StepBatchNorm',
  'batch_stats_scan_kwargs',
  'block_orthogonal',
  'default_kernel_init',
  'forget_bias_init',
  'gru_recurrent_init',
  'gru_state_update',
  'lstm_recurrent_init',
  'lstm_state_update',
  'orthogonal_init',
  'step_batch_norm',
]


def _check_inputs(module: nn.Module, inputs: Array, kernel_name: str = 'input_kernel'):
  """Raises a clear error if ``inputs`` do not match an existing input kernel."""
  if inputs.ndim < 1:
    raise ValueError(f'{type(module).__name__} needs inputs with a feature axis; got a scalar.')
  if module.has_variable('params', kernel_name):
    kernel = module.get_variable('params', kernel_name)
    cells.check_size(type(module).__name__, 'inputs', kernel.shape[0], inputs.shape[-1])


class _LayerNormParams(nn.Module):
  """A :class:`~lnorm.layers.LayerNorm`'s parameters alone (the same names, shapes, inits).

  The LN cells take their layer norms' ``(scale, bias)`` to hand them to the fused
  kernel (:func:`lnorm.cells.ln_lstm_step`); the variables are those of a
  ``LayerNorm`` over ``features``, so checkpoints do not change.
  """

  features: int
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self) -> tuple[Array, Array]:
    shape = (self.features,)
    scale = self.param('scale', nn.initializers.ones, shape, self.param_dtype)
    return scale, self.param('bias', nn.initializers.zeros, shape, self.param_dtype)


class LSTMCell(nn.RNNCellBase):
  r"""LSTM cell with the paper's layer normalization (``norm='layer'``, eqs. 20-22).

  ``norm='layer'`` (LN-LSTM, Ba et al. 2016 eqs. 20-22, the authors' code):

  .. math::

      \begin{array}{ll}
      [f; i; o; g] = LN(W_h h_{t-1}; \alpha_1, \beta_1)
                     + LN(W_x x_t; \alpha_2, \beta_2) + b & (20) \\
      c_t = \sigma(f) \odot c_{t-1} + \sigma(i) \odot \tanh(g) & (21) \\
      h_t = \sigma(o) \odot \tanh(LN(c_t; \alpha_3, \beta_3)) & (22)
      \end{array}

  where each ``LN`` over a projection normalizes the whole concatenated
  ``4H`` vector (one mean and one variance per case, not one per gate), and
  the carried cell state is the *un-normalized* ``c_t``.

  ``norm='none'``: the plain LSTM (eqs. 17-19), ``[f; i; o; g] = W_h h + W_x x + b``,
  ``h_t = sigmoid(o) * tanh(c_t)``, with the same initialization.

  ``norm='draw'``: LN on the cell only, as in the paper's DRAW experiment
  (eqs. 29-31): plain gates, ``h_t = sigmoid(o) * tanh(LN(c_t; alpha, beta))``.

  How this differs from other libraries: TF-addons' ``LayerNormLSTMCell`` and
  PyTorch's benchmark LN-LSTM normalize each gate separately and carry
  ``LN(c_t)`` as the next cell state; here, as in the paper, statistics run
  over all four gates together and the carried ``c_t`` is un-normalized.
  Gate order ``[f; i; o; g]`` (PyTorch/Keras: ``[i; f; g; o]``); forget bias
  initialized to ``forget_bias`` (default 0, the authors' code and Flax); eps
  1e-5 inside the square root.

  Parameters (``params`` collection): ``input_kernel`` ``[in, 4H]`` (``W_x``),
  ``recurrent_kernel`` ``[H, 4H]`` (``W_h``), ``bias`` ``[4H]`` (``b``), and
  for ``'layer'`` the :class:`~lnorm.layers.LayerNorm` submodules ``ln_h``
  (alpha1, beta1; ``[4H]``), ``ln_x`` (alpha2, beta2; ``[4H]``) and ``ln_c``
  (alpha3, beta3; ``[H]``), each with ``scale`` and ``bias``; for ``'draw'``
  only ``ln_c``.

  Example usage::

    >>> import jax, jax.numpy as jnp
    >>> from lnorm.recurrent import LSTMCell
    >>> x = jnp.ones((2, 3))                          # <float32>[batch, in]
    >>> cell = LSTMCell(features=4, norm='layer')
    >>> carry = cell.initialize_carry(jax.random.key(1), x.shape)
    >>> variables = cell.init(jax.random.key(2), carry, x)
    >>> (c, h), y = cell.apply(variables, carry, x)   # each <float32>[batch, 4]
    >>> y.shape
    (2, 4)

  Attributes:
    features: the number of hidden units ``H``.
    norm: ``'none'``, ``'layer'`` (the paper's LN-LSTM) or ``'draw'``.
    epsilon: added to the variance inside the square root of every LN.
    forget_bias: initial value of the forget-gate slice of ``b``.
    kernel_init: initializer of ``W_x`` (default LeCun normal, as Flax).
    recurrent_kernel_init: initializer of ``W_h`` ``[H, 4H]`` (default: each
      gate's ``H x H`` block orthogonal, as Flax).
    bias_init: initializer of ``b`` before ``forget_bias`` is written in.
    dtype: the computation dtype (``None``: promoted from inputs, carry and
      parameters).
    param_dtype: the dtype of the parameters.
  """

  features: int
  norm: str = 'layer'
  epsilon: float = F.DEFAULT_EPS
  forget_bias: float = 0.0
  kernel_init: Initializer = default_kernel_init
  recurrent_kernel_init: Initializer = lstm_recurrent_init
  bias_init: Initializer = nn.initializers.zeros
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self, carry: tuple[Array, Array], inputs: Array
  ) -> tuple[tuple[Array, Array], Array]:
    """One step.

    Args:
      carry: ``(c, h)``, each ``<float>[*batch, features]`` (Flax's order).
      inputs: ``<float>[*batch, in_features]``.

    Returns:
      ``((c_t, h_t), h_t)``; ``c_t`` is the un-normalized cell state.
    """
    check_norm_name(self.norm, LSTM_NORMS)
    name = type(self).__name__
    c, h = carry
    cells.check_size(name, 'a carry', self.features, h.shape[-1])
    cells.check_size(name, 'a cell state', self.features, c.shape[-1])
    _check_inputs(self, inputs)
    hidden = self.features
    w_x = self.param(
      'input_kernel', self.kernel_init, (inputs.shape[-1], 4 * hidden), self.param_dtype
    )
    w_h = self.param(
      'recurrent_kernel', self.recurrent_kernel_init, (hidden, 4 * hidden), self.param_dtype
    )
    b = self.param(
      'bias',
      forget_bias_init(hidden, self.forget_bias, self.bias_init),
      (4 * hidden,),
      self.param_dtype,
    )
    kernels = dict(input_kernel=w_x, recurrent_kernel=w_h, bias=b)
    if self.norm == 'layer':
      ln = lambda name, n: _LayerNormParams(n, self.param_dtype, name=name)()  # noqa: E731
      lns = dict(ln_h=ln('ln_h', 4 * hidden), ln_x=ln('ln_x', 4 * hidden), ln_c=ln('ln_c', hidden))
      return cells.ln_lstm_step(carry, inputs, **kernels, **lns, eps=self.epsilon, dtype=self.dtype)
    ln_c = None
    if self.norm == 'draw':
      ln_c = LayerNorm(epsilon=self.epsilon, param_dtype=self.param_dtype, name='ln_c')
    return cells.lstm_step(carry, inputs, **kernels, norm_c=ln_c, dtype=self.dtype)

  @nn.nowrap
  def initialize_carry(self, rng: Array, input_shape: tuple[int, ...]) -> tuple[Array, Array]:
    """A zero carry ``(c, h)``, each ``[*batch, features]`` in ``dtype or param_dtype``."""
    del rng
    shape = tuple(input_shape[:-1]) + (self.features,)
    dtype = self.dtype or self.param_dtype
    return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)

  @property
  def num_feature_axes(self) -> int:
    return 1


class GRUCell(nn.RNNCellBase):
  r"""GRU cell with the paper's layer normalization (``norm='layer'``, eqs. 26-28).

  ``norm='layer'`` (LN-GRU, Ba et al. 2016 eqs. 26-28, the authors' code):

  .. math::

      \begin{array}{ll}
      [z; r] = LN(W_h h_{t-1}; \alpha_1, \beta_1) + LN(W_x x_t; \alpha_2, \beta_2) & (26) \\
      \tilde h_t = \tanh(LN(W x_t; \alpha_3, \beta_3)
                   + \sigma(r) \odot LN(U h_{t-1}; \alpha_4, \beta_4)) & (27) \\
      h_t = (1 - \sigma(z)) \odot h_{t-1} + \sigma(z) \odot \tilde h_t & (28)
      \end{array}

  with ``LN`` over the whole concatenated ``2H`` vector in (26). The LN
  biases play the role of the GRU biases.

  ``norm='none'``: the plain GRU (eqs. 23-25) with biases,
  ``[z; r] = W_h h + W_x x + b``, ``h~ = tanh(W x + b_c + sigmoid(r) * (U h))``,
  the same update (25) and the same initialization.

  Sign convention: this is the paper's, where ``sigmoid(z)`` is the weight of
  the *new* candidate. ``flax.linen.GRUCell`` (like PyTorch and cuDNN) uses
  ``h' = (1 - z) * n + z * h``, where ``z`` weighs the *old* state; the two
  are the same model with ``z`` negated. Gate order ``[z; r]`` (the paper's;
  Flax's fused ``nnx.GRUCell`` uses ``[r, z, n]``). eps 1e-5.

  Parameters: ``input_kernel`` ``[in, 2H]`` (``W_x``), ``recurrent_kernel``
  ``[H, 2H]`` (``W_h``), ``candidate_input_kernel`` ``[in, H]`` (``W``),
  ``candidate_recurrent_kernel`` ``[H, H]`` (``U``); for ``'none'`` also
  ``bias`` ``[2H]`` and ``candidate_bias`` ``[H]``; for ``'layer'`` the
  :class:`~lnorm.layers.LayerNorm` submodules ``ln_h``, ``ln_x`` (``[2H]``),
  ``ln_cx`` (alpha3, beta3) and ``ln_ch`` (alpha4, beta4) (``[H]``).

  Attributes:
    features: the number of hidden units ``H``.
    norm: ``'none'`` or ``'layer'`` (the paper's LN-GRU).
    epsilon: added to the variance inside the square root of every LN.
    kernel_init: initializer of ``W_x`` and ``W`` (LeCun normal).
    recurrent_kernel_init: initializer of ``W_h`` ``[H, 2H]`` (each block
      orthogonal).
    candidate_recurrent_kernel_init: initializer of ``U`` (orthogonal).
    bias_init: initializer of the plain GRU's biases.
    dtype: the computation dtype (``None``: promoted).
    param_dtype: the dtype of the parameters.
  """

  features: int
  norm: str = 'layer'
  epsilon: float = F.DEFAULT_EPS
  kernel_init: Initializer = default_kernel_init
  recurrent_kernel_init: Initializer = gru_recurrent_init
  candidate_recurrent_kernel_init: Initializer = orthogonal_init
  bias_init: Initializer = nn.initializers.zeros
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry: Array, inputs: Array) -> tuple[Array, Array]:
    """One step.

    Args:
      carry: ``h``, ``<float>[*batch, features]``.
      inputs: ``<float>[*batch, in_features]``.

    Returns:
      ``(h_t, h_t)``.
    """
    check_norm_name(self.norm, GRU_NORMS)
    h = carry
    cells.check_size(type(self).__name__, 'a carry', self.features, h.shape[-1])
    _check_inputs(self, inputs)
    hidden, n_in, pd = self.features, inputs.shape[-1], self.param_dtype
    w_x = self.param('input_kernel', self.kernel_init, (n_in, 2 * hidden), pd)
    w_h = self.param('recurrent_kernel', self.recurrent_kernel_init, (hidden, 2 * hidden), pd)
    w = self.param('candidate_input_kernel', self.kernel_init, (n_in, hidden), pd)
    u = self.param(
      'candidate_recurrent_kernel', self.candidate_recurrent_kernel_init, (hidden, hidden), pd
    )
    kernels = dict(
      input_kernel=w_x,
      recurrent_kernel=w_h,
      candidate_input_kernel=w,
      candidate_recurrent_kernel=u,
    )
    if self.norm == 'layer':
      ln = lambda name, n: _LayerNormParams(n, pd, name=name)()  # noqa: E731
      lns = dict(
        ln_h=ln('ln_h', 2 * hidden),
        ln_x=ln('ln_x', 2 * hidden),
        ln_cx=ln('ln_cx', hidden),
        ln_ch=ln('ln_ch', hidden),
      )
      return cells.ln_gru_step(carry, inputs, **kernels, **lns, eps=self.epsilon, dtype=self.dtype)
    b = self.param('bias', self.bias_init, (2 * hidden,), pd)
    b_c = self.param('candidate_bias', self.bias_init, (hidden,), pd)
    return cells.gru_step(carry, inputs, **kernels, bias=b, candidate_bias=b_c, dtype=self.dtype)

  @nn.nowrap
  def initialize_carry(self, rng: Array, input_shape: tuple[int, ...]) -> Array:
    """A zero carry ``h`` of shape ``[*input_shape[:-1], features]`` in ``dtype or param_dtype``."""
    del rng
    shape = tuple(input_shape[:-1]) + (self.features,)
    return jnp.zeros(shape, self.dtype or self.param_dtype)

  @property
  def num_feature_axes(self) -> int:
    return 1


class StepBatchNorm(nn.Module):
  """Per-time-step batch norm in a recurrent cell (Cooijmans et al. 2016).

  Parameters ``scale`` (initialized to 0.1) and, optionally, ``bias``.

  The running statistics live in the ``batch_stats`` collection as ``mean``
  and ``var`` of shape ``(max_steps, features)``; see :func:`step_batch_norm`.
  """

  max_steps: int
  use_running_average: bool
  use_bias: bool = True
  scale_init: Initializer = nn.initializers.constant(0.1)
  bias_init: Initializer = nn.initializers.zeros
  momentum: float = 0.99
  epsilon: float = F.DEFAULT_EPS
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, step: Array) -> Array:
    shape = (x.shape[-1],)
    scale = self.param('scale', self.scale_init, shape, self.param_dtype)
    bias = self.param('bias', self.bias_init, shape, self.param_dtype) if self.use_bias else None
    stats_shape = (self.max_steps, x.shape[-1])
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, stats_shape, jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, stats_shape, jnp.float32)
    y, mean, var = step_batch_norm(
      x,
      step,
      scale,
      bias,
      ra_mean.value,
      ra_var.value,
      use_running_average=self.use_running_average,
      momentum=self.momentum,
      eps=self.epsilon,
    )
    if not self.use_running_average and not self.is_initializing():
      ra_mean.value, ra_var.value = mean, var
    return y


def batch_stats_scan_kwargs(update_stats: bool) -> dict[str, Any]:
  """The ``nn.RNN``/``nn.scan`` variable settings for a cell with per-step ``batch_stats``.

  A :class:`BNLSTMCell` updates its ``batch_stats`` at every step while
  training, so the collection must be *carried* through the scan; to
  initialize (the statistics are created inside the loop) and to evaluate
  (the collection is read-only) it must be *broadcast*::

      updating = train and not self.is_initializing()
      nn.RNN(BNLSTMCell(H, use_running_average=not train), **batch_stats_scan_kwargs(updating))

  Args:
    update_stats: ``True`` when the call updates the statistics (training
      apply with ``mutable=['batch_stats']``).

  Returns:
    ``variable_broadcast`` and ``variable_carry`` keyword arguments.
  """
  if update_stats:
    return {'variable_broadcast': 'params', 'variable_carry': 'batch_stats'}
  return {'variable_broadcast': ('params', 'batch_stats'), 'variable_carry': False}


class BNLSTMCell(nn.RNNCellBase):
  r"""LSTM with recurrent batch normalization (Cooijmans et al. 2016), the paper's BN baseline.

  .. math::

      \begin{array}{ll}
      [f; i; o; g] = BN_t(W_h h_{t-1}; \gamma_h, 0) + BN_t(W_x x_t; \gamma_x, 0) + b \\
      c_t = \sigma(f) \odot c_{t-1} + \sigma(i) \odot \tanh(g) \\
      h_t = \sigma(o) \odot \tanh(BN_t(c_t; \gamma_c, \beta_c))
      \end{array}

  ``BN_t`` normalizes every feature over the batch with the statistics of
  time step ``t``: in training those of the current batch (and the running
  averages of step ``t`` are updated); in evaluation the population
  statistics of step ``min(t, max_steps - 1)``, so that steps beyond
  ``max_steps`` reuse the last ones (Cooijmans et al. sec. 3). In training,
  steps ``>= max_steps - 1`` all update the last slot. ``gamma_h``,
  ``gamma_x``, ``gamma_c`` start at 0.1; the two projections have no BN bias
  of their own (a single ``b``, like the paper), ``beta_c`` starts at 0.

  The carry is ``(c, h, t)``: Flax's ``(c, h)`` plus the step counter
  ``t`` ``<int32>[*batch]`` (one entry per case so that ``nn.RNN``'s
  ``seq_lengths`` can slice it; all equal in a scan). The carried ``c`` is
  un-normalized. Padding positions of a ``seq_lengths`` batch still enter the
  batch statistics of their step in training.

  Variables: params ``input_kernel`` ``[in, 4H]``, ``recurrent_kernel``
  ``[H, 4H]``, ``bias`` ``[4H]``, ``bn_h/scale``, ``bn_x/scale`` ``[4H]``,
  ``bn_c/scale``, ``bn_c/bias`` ``[H]``; batch_stats ``bn_h``, ``bn_x``,
  ``bn_c`` each with ``mean`` and ``var`` of shape ``(max_steps, features)``
  (``4H``, ``4H``, ``H``), initialized to 0 and 1.

  Inside ``nn.RNN`` (or ``nn.scan``) the ``batch_stats`` collection must be
  carried through the loop while training and broadcast otherwise; see
  :func:`batch_stats_scan_kwargs`.

  Attributes:
    features: the number of hidden units ``H``.
    use_running_average: ``False`` in training, ``True`` in evaluation
      (required).
    max_steps: ``T_max``, the number of steps with their own statistics.
    momentum: decay of the running averages.
    epsilon: added to the variance inside the square root.
    gamma_init: initial BN gain (0.1, Cooijmans et al.).
    forget_bias: initial value of the forget slice of ``b``.
    kernel_init, recurrent_kernel_init, bias_init: as in :class:`LSTMCell`.
    dtype, param_dtype: as in :class:`LSTMCell`.
  """

  features: int
  use_running_average: bool | None = None
  max_steps: int = 100
  momentum: float = 0.99
  epsilon: float = F.DEFAULT_EPS
  gamma_init: float = 0.1
  forget_bias: float = 0.0
  kernel_init: Initializer = default_kernel_init
  recurrent_kernel_init: Initializer = lstm_recurrent_init
  bias_init: Initializer = nn.initializers.zeros
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self, carry: tuple[Array, Array, Array], inputs: Array
  ) -> tuple[tuple[Array, Array, Array], Array]:
    """One step.

    Args:
      carry: ``(c, h, t)``: ``<float>[*batch, features]`` twice and the
        step counter ``<int32>[*batch]``.
      inputs: ``<float>[*batch, in_features]``.

    Returns:
      ``((c_t, h_t, t + 1), h_t)``.
    """
    name = type(self).__name__
    if self.use_running_average is None:
      raise ValueError(
        f'{name} needs use_running_average=False (training: batch statistics) '
        'or True (evaluation: per-step population statistics).'
      )
    if len(carry) != 3:
      raise ValueError(f'{name} carries (c, h, step); got a carry of {len(carry)} parts.')
    c, h, t = carry
    cells.check_size(name, 'a carry', self.features, h.shape[-1])
    cells.check_size(name, 'a cell state', self.features, c.shape[-1])
    _check_inputs(self, inputs)
    hidden, pd = self.features, self.param_dtype
    w_x = self.param('input_kernel', self.kernel_init, (inputs.shape[-1], 4 * hidden), pd)
    w_h = self.param('recurrent_kernel', self.recurrent_kernel_init, (hidden, 4 * hidden), pd)
    b = self.param(
      'bias', forget_bias_init(hidden, self.forget_bias, self.bias_init), (4 * hidden,), pd
    )

    def bn(name, use_bias):
      return StepBatchNorm(
        max_steps=self.max_steps,
        use_running_average=self.use_running_average,
        use_bias=use_bias,
        scale_init=nn.initializers.constant(self.gamma_init),
        momentum=self.momentum,
        epsilon=self.epsilon,
        param_dtype=pd,
        name=name,
      )

    bn_h, bn_x, bn_c = bn('bn_h', False), bn('bn_x', False), bn('bn_c', True)
    (new_c, new_h), _ = cells.lstm_step(
      (c, h),
      inputs,
      input_kernel=w_x,
      recurrent_kernel=w_h,
      bias=b,
      norm_h=lambda v: bn_h(v, t),
      norm_x=lambda v: bn_x(v, t),
      norm_c=lambda v: bn_c(v, t),
      dtype=self.dtype,
    )
    return (new_c, new_h, t + 1), new_h

  @nn.nowrap
  def initialize_carry(
    self, rng: Array, input_shape: tuple[int, ...]
  ) -> tuple[Array, Array, Array]:
    """``(c, h, t)``: zeros ``[*batch, features]`` in ``dtype or param_dtype``, ``t = 0`` int32."""
    del rng
    batch = tuple(input_shape[:-1])
    dtype = self.dtype or self.param_dtype
    shape = batch + (self.features,)
    return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros(batch, jnp.int32)

  @property
  def num_feature_axes(self) -> int:
    return 1
