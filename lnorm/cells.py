r"""The recurrent cells' equations, once, as pure functions (no Flax).

:mod:`lnorm.recurrent` (linen) and :mod:`lnorm.nnx` (NNX) only create the
parameters and the normalization modules, then call :func:`lstm_step` or
:func:`gru_step` here, so both APIs compute the same numbers from the same
parameters. The normalizations enter as callables (``None``: identity), which
covers every variant:

==============  =========================================================
LSTM ``norm``   normalizers passed to :func:`lstm_step`
==============  =========================================================
``'none'``      none (eqs. 17-19)
``'layer'``     ``norm_h``, ``norm_x`` (over ``4H``), ``norm_c`` (eqs. 20-22)
``'draw'``      ``norm_c`` only (eqs. 29-31)
BN-LSTM         per-step batch norms ``norm_h``, ``norm_x``, ``norm_c``
                (Cooijmans et al. 2016; :func:`step_batch_norm`)
==============  =========================================================

The paper's LN-LSTM and LN-GRU go through :func:`ln_lstm_step` and
:func:`ln_gru_step`, which take the layer norms' ``(scale, bias)`` pairs: on one
CPU device in float32 their state update after the matrix products is one fused
kernel forward and one backward (:mod:`lnorm.fused_cells`), elsewhere the same
equations as :func:`lstm_step` / :func:`gru_step` with layer-norm normalizers.

Gate orders are the paper's: ``[f; i; o; g]`` for the LSTM and ``[z; r]``
for the GRU. The initializers both APIs use (:func:`block_orthogonal`,
:func:`forget_bias_init`) live here too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from lnorm import functional as F
from lnorm import fused_cells

Array = jax.Array
Initializer = Callable[..., Array]
Normalizer = Callable[[Array], Array] | None
#: A layer norm's ``(scale, bias)``.
LNParams = tuple[Array, Array]

#: Normalizations an LSTM cell accepts (``'draw'``: LN on the cell state only).
LSTM_NORMS = ('none', 'layer', 'draw')
#: Normalizations a GRU cell accepts.
GRU_NORMS = ('none', 'layer')

#: ``W_x`` initializer of every cell: LeCun normal, as Flax's cells.
default_kernel_init = jax.nn.initializers.lecun_normal()


def block_orthogonal(num_blocks: int, scale: float = 1.0) -> Initializer:
  """An initializer for ``W_h`` of shape ``[H, num_blocks * H]``: every ``H x H`` block orthogonal.

  The same distribution as Flax's ``LSTMCell``/``GRUCell``, which keep one
  orthogonally-initialized ``Dense`` per gate. The blocks are drawn in
  float32 and cast to the requested dtype.

  Raises:
    ValueError: the number of columns does not split into ``num_blocks`` blocks.
  """
  ortho = jax.nn.initializers.orthogonal(scale)

  def init(key, shape, dtype=jnp.float32):
    rows, cols = shape
    if cols % num_blocks:
      raise ValueError(f'block_orthogonal: {cols} columns do not split into {num_blocks} blocks.')
    keys = jax.random.split(key, num_blocks)
    blocks = [ortho(k, (rows, cols // num_blocks), jnp.float32) for k in keys]
    return jnp.concatenate(blocks, axis=-1).astype(dtype)

  return init


#: Default ``W_h`` initializers: one orthogonal ``H x H`` block per gate, as Flax's cells.
lstm_recurrent_init = block_orthogonal(4)
gru_recurrent_init = block_orthogonal(2)
orthogonal_init = block_orthogonal(1)


def forget_bias_init(features: int, forget_bias: float, base: Initializer) -> Initializer:
  """An initializer of the LSTM bias ``b`` ``[4H]`` (gates ``[f; i; o; g]``).

  ``base`` draws ``b``; then its forget slice ``b[:H]`` is set to
  ``forget_bias`` (left as drawn when ``forget_bias`` is 0).
  """

  def init(key, shape, dtype=jnp.float32):
    b = base(key, shape, dtype)
    if forget_bias:
      b = b.at[:features].set(jnp.asarray(forget_bias, dtype))
    return b

  return init


def check_size(cell: str, what: str, expected: int, got: int) -> None:
  """Raises ``ValueError`` naming ``cell`` and ``what`` when ``got != expected`` features."""
  if expected != got:
    raise ValueError(f'{cell} was built for {what} with {expected} features but got {got}.')


def compute_dtype(dtype: Any, *arrays_and_dtypes: Any) -> Any:
  """``dtype``, or when it is ``None`` the promoted dtype of the arguments (Flax's rule)."""
  return dtype if dtype is not None else jnp.result_type(*arrays_and_dtypes)


def _apply(norm: Normalizer, v: Array) -> Array:
  return v if norm is None else norm(v)


def lstm_state_update(gates: Array, c: Array, cell_norm: Normalizer) -> tuple[Array, Array]:
  """The LSTM state update from the gate pre-activations ``[f; i; o; g]`` (eqs. 18-19, 21-22).

  ``c_t = sigmoid(f) * c + sigmoid(i) * tanh(g)`` and
  ``h_t = sigmoid(o) * tanh(cell_norm(c_t))`` (``cell_norm`` ``None``: identity).

  Args:
    gates: ``<float>[*batch, 4H]``.
    c: ``<float>[*batch, H]``, the previous (un-normalized) cell state.
    cell_norm: the normalization of ``c_t`` in the output, or ``None``.

  Returns:
    ``(c_t, h_t)``: the un-normalized ``c_t`` (the carried cell state) and ``h_t``.
  """
  f, i, o, g = jnp.split(gates, 4, axis=-1)
  new_c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  new_h = jax.nn.sigmoid(o) * jnp.tanh(_apply(cell_norm, new_c))
  return new_c, new_h


def gru_state_update(h: Array, z: Array, candidate: Array) -> Array:
  """The paper's GRU update (eqs. 25, 28): ``(1 - sigmoid(z)) * h + sigmoid(z) * candidate``."""
  z = jax.nn.sigmoid(z)
  return (1.0 - z) * h + z * candidate


def lstm_step(
  carry: tuple[Array, Array],
  inputs: Array,
  *,
  input_kernel: Array,
  recurrent_kernel: Array,
  bias: Array,
  norm_h: Normalizer = None,
  norm_x: Normalizer = None,
  norm_c: Normalizer = None,
  dtype: Any = None,
) -> tuple[tuple[Array, Array], Array]:
  r"""One LSTM step, every variant (plain, LN-LSTM, DRAW's LN, BN-LSTM).

  .. math::

      \begin{array}{ll}
      [f; i; o; g] = N_h(W_h h_{t-1}) + N_x(W_x x_t) + b & (20) \\
      c_t = \sigma(f) \odot c_{t-1} + \sigma(i) \odot \tanh(g) & (21) \\
      h_t = \sigma(o) \odot \tanh(N_c(c_t)) & (22)
      \end{array}

  With ``N = LN`` (over the whole ``4H`` vector for ``N_h``, ``N_x``) these
  are the paper's eqs. (20)-(22); with every ``N`` the identity the plain
  LSTM (17)-(19). The carried ``c_t`` is un-normalized.

  Args:
    carry: ``(c, h)``, each ``<float>[*batch, H]``.
    inputs: ``<float>[*batch, in]``.
    input_kernel: ``W_x``, ``[in, 4H]``.
    recurrent_kernel: ``W_h``, ``[H, 4H]``.
    bias: ``b``, ``[4H]``.
    norm_h, norm_x: normalizations of ``W_h h`` and ``W_x x`` (``None``: identity).
    norm_c: normalization of ``c_t`` inside the output's ``tanh`` (``None``: identity).
    dtype: the computation dtype; ``None``: promoted from inputs, carry and kernels.

  Returns:
    ``((c_t, h_t), h_t)``, ``c_t`` and ``h_t`` in the dtypes of ``c`` and ``h``.
  """
  c, h = carry
  dtype = compute_dtype(dtype, inputs, c, h, input_kernel, recurrent_kernel)
  wx = jnp.dot(inputs.astype(dtype), input_kernel.astype(dtype))
  wh = jnp.dot(h.astype(dtype), recurrent_kernel.astype(dtype))
  gates = _apply(norm_h, wh) + _apply(norm_x, wx) + bias.astype(dtype)
  new_c, new_h = lstm_state_update(gates, c.astype(dtype), norm_c)
  new_c, new_h = new_c.astype(c.dtype), new_h.astype(h.dtype)
  return (new_c, new_h), new_h


def gru_step(
  carry: Array,
  inputs: Array,
  *,
  input_kernel: Array,
  recurrent_kernel: Array,
  candidate_input_kernel: Array,
  candidate_recurrent_kernel: Array,
  bias: Array | None = None,
  candidate_bias: Array | None = None,
  norm_h: Normalizer = None,
  norm_x: Normalizer = None,
  norm_cx: Normalizer = None,
  norm_ch: Normalizer = None,
  dtype: Any = None,
) -> tuple[Array, Array]:
  r"""One GRU step, plain (eqs. 23-25) or layer-normalized (eqs. 26-28).

  .. math::

      \begin{array}{ll}
      [z; r] = N_h(W_h h_{t-1}) + N_x(W_x x_t) + b & (26) \\
      \tilde h_t = \tanh(N_{cx}(W x_t) + b_c + \sigma(r) \odot N_{ch}(U h_{t-1})) & (27) \\
      h_t = (1 - \sigma(z)) \odot h_{t-1} + \sigma(z) \odot \tilde h_t & (28)
      \end{array}

  The LN-GRU passes ``LN`` normalizers (``N_h``, ``N_x`` over ``2H``) and no
  biases (the LN biases take their place); the plain GRU passes the biases
  and no normalizers. ``sigmoid(z)`` weighs the *new* candidate (the paper's
  convention; Flax/PyTorch weigh the old state by ``z``).

  Args:
    carry: ``h``, ``<float>[*batch, H]``.
    inputs: ``<float>[*batch, in]``.
    input_kernel, recurrent_kernel: ``W_x`` ``[in, 2H]``, ``W_h`` ``[H, 2H]``.
    candidate_input_kernel, candidate_recurrent_kernel: ``W`` ``[in, H]``, ``U`` ``[H, H]``.
    bias, candidate_bias: ``b`` ``[2H]`` and ``b_c`` ``[H]``, or ``None`` for none.
    norm_h, norm_x, norm_cx, norm_ch: the normalizations (``None``: identity).
    dtype: the computation dtype; ``None``: promoted from inputs, carry and kernels.

  Returns:
    ``(h_t, h_t)`` in the dtype of ``h``.
  """
  h = carry
  dtype = compute_dtype(
    dtype,
    inputs,
    h,
    input_kernel,
    recurrent_kernel,
    candidate_input_kernel,
    candidate_recurrent_kernel,
  )
  x, hc = inputs.astype(dtype), h.astype(dtype)
  wx, wh = jnp.dot(x, input_kernel.astype(dtype)), jnp.dot(hc, recurrent_kernel.astype(dtype))
  cx = jnp.dot(x, candidate_input_kernel.astype(dtype))
  ch = jnp.dot(hc, candidate_recurrent_kernel.astype(dtype))
  gates = _apply(norm_h, wh) + _apply(norm_x, wx)
  if bias is not None:
    gates = gates + bias.astype(dtype)
  cx = _apply(norm_cx, cx)
  if candidate_bias is not None:
    cx = cx + candidate_bias.astype(dtype)
  z, r = jnp.split(gates, 2, axis=-1)
  candidate = jnp.tanh(cx + jax.nn.sigmoid(r) * _apply(norm_ch, ch))
  new_h = gru_state_update(hc, z, candidate).astype(h.dtype)
  return new_h, new_h


def _layer_norm_with(params: LNParams, eps: float) -> Normalizer:
  scale, bias = params
  return lambda v: F.layer_norm(v, scale, bias, eps=eps)


def _same_rows(*arrays: Array) -> list[Array]:
  """The arrays broadcast to one shape of leading (batch) axes: the kernels' rows."""
  lead = jnp.broadcast_shapes(*(a.shape[:-1] for a in arrays))
  return [jnp.broadcast_to(a, lead + a.shape[-1:]) for a in arrays]


def ln_lstm_step(
  carry: tuple[Array, Array],
  inputs: Array,
  *,
  input_kernel: Array,
  recurrent_kernel: Array,
  bias: Array,
  ln_h: LNParams,
  ln_x: LNParams,
  ln_c: LNParams,
  eps: float = F.DEFAULT_EPS,
  dtype: Any = None,
) -> tuple[tuple[Array, Array], Array]:
  """One LN-LSTM step (eqs. 20-22) from the layer norms' ``(scale, bias)`` pairs.

  The same step as :func:`lstm_step` with ``LN`` normalizers. Where
  :func:`lnorm.fused_cells.kernel_usable` (float32 on one CPU device), the
  state update after the two matrix products runs as one fused kernel
  (:func:`lnorm.fused_cells.ln_lstm_update`); elsewhere as :func:`lstm_step`.

  Args: as :func:`lstm_step`; ``ln_h``, ``ln_x`` ``[4H]`` and ``ln_c`` ``[H]``
  pairs instead of normalizers; ``eps`` inside every square root.
  """
  c, h = carry
  dtype = compute_dtype(dtype, inputs, c, h, input_kernel, recurrent_kernel)
  arrays = (inputs, c, h, input_kernel, recurrent_kernel, bias, *ln_h, *ln_x, *ln_c)
  if jnp.dtype(dtype) != jnp.float32 or not fused_cells.kernel_usable(*arrays):
    return lstm_step(
      carry,
      inputs,
      input_kernel=input_kernel,
      recurrent_kernel=recurrent_kernel,
      bias=bias,
      norm_h=_layer_norm_with(ln_h, eps),
      norm_x=_layer_norm_with(ln_x, eps),
      norm_c=_layer_norm_with(ln_c, eps),
      dtype=dtype,
    )
  wx = jnp.dot(inputs, input_kernel)
  wh = jnp.dot(h, recurrent_kernel)
  wh, wx, c = _same_rows(wh, wx, c)
  new_c, new_h = fused_cells.ln_lstm_update(wh, wx, c, ln_h, ln_x, bias, ln_c, eps=eps)
  return (new_c, new_h), new_h


def ln_gru_step(
  carry: Array,
  inputs: Array,
  *,
  input_kernel: Array,
  recurrent_kernel: Array,
  candidate_input_kernel: Array,
  candidate_recurrent_kernel: Array,
  ln_h: LNParams,
  ln_x: LNParams,
  ln_cx: LNParams,
  ln_ch: LNParams,
  eps: float = F.DEFAULT_EPS,
  dtype: Any = None,
) -> tuple[Array, Array]:
  """One LN-GRU step (eqs. 26-28) from the layer norms' ``(scale, bias)`` pairs.

  The same step as :func:`gru_step` with ``LN`` normalizers and no biases; as
  :func:`ln_lstm_step`, the update after the four matrix products is one fused
  kernel where :func:`lnorm.fused_cells.kernel_usable`.
  """
  h = carry
  kernels = (input_kernel, recurrent_kernel, candidate_input_kernel, candidate_recurrent_kernel)
  dtype = compute_dtype(dtype, inputs, h, *kernels)
  arrays = (inputs, h, *kernels, *ln_h, *ln_x, *ln_cx, *ln_ch)
  if jnp.dtype(dtype) != jnp.float32 or not fused_cells.kernel_usable(*arrays):
    return gru_step(
      carry,
      inputs,
      input_kernel=input_kernel,
      recurrent_kernel=recurrent_kernel,
      candidate_input_kernel=candidate_input_kernel,
      candidate_recurrent_kernel=candidate_recurrent_kernel,
      norm_h=_layer_norm_with(ln_h, eps),
      norm_x=_layer_norm_with(ln_x, eps),
      norm_cx=_layer_norm_with(ln_cx, eps),
      norm_ch=_layer_norm_with(ln_ch, eps),
      dtype=dtype,
    )
  wx, wh = jnp.dot(inputs, input_kernel), jnp.dot(h, recurrent_kernel)
  cx, ch = jnp.dot(inputs, candidate_input_kernel), jnp.dot(h, candidate_recurrent_kernel)
  wh, wx, cx, ch, h = _same_rows(wh, wx, cx, ch, h)
  new_h = fused_cells.ln_gru_update(wh, wx, cx, ch, h, ln_h, ln_x, ln_cx, ln_ch, eps=eps)
  return new_h, new_h


def step_batch_norm(
  x: Array,
  step: Array,
  scale: Array | None,
  bias: Array | None,
  running_mean: Array,
  running_var: Array,
  *,
  use_running_average: bool,
  momentum: float,
  eps: float,
) -> tuple[Array, Array, Array]:
  """Batch norm with per-time-step statistics (Cooijmans et al. 2016), as a pure function.

  ``y = scale * (x - mean_t) / sqrt(var_t + eps) + bias`` with the biased
  batch variance (training) or the population statistics of step ``t``.

  Args:
    x: ``<float>[*batch, F]``, the values at one time step.
    step: ``<int32>[*batch]``, the time step of every case (all equal in a scan).
    scale, bias: ``[F]`` or ``None``.
    running_mean, running_var: ``<float32>[max_steps, F]``, population
      statistics per step.
    use_running_average: normalize with the population statistics of step
      ``min(t, max_steps - 1)`` (evaluation), or with the statistics of this
      batch (training; the running averages of that step are updated).
    momentum: decay of the running averages.
    eps: added to the variance inside the square root.

  Returns:
    ``(y, new_running_mean, new_running_var)``; in evaluation the running
    statistics are returned unchanged.
  """
  max_steps = running_mean.shape[0]
  idx = jnp.minimum(step, max_steps - 1)
  if use_running_average:
    dtype = F.stats_dtype(x.dtype)
    mean, var = running_mean[idx].astype(dtype), running_var[idx].astype(dtype)
    return F.normalize(x, mean, var, scale, bias, eps), running_mean, running_var
  batch_axes = tuple(range(x.ndim - 1))
  if not batch_axes:
    raise ValueError(
      'BNLSTMCell in training needs a batch axis: its inputs have shape (features,).'
    )
  y, mean, var = F.batch_norm_train(x, scale, bias, batch_axes=batch_axes, eps=eps)
  slot = jnp.reshape(idx, (-1,))[0]
  new_mean, new_var = F.update_running_stats(
    running_mean[slot], running_var[slot], mean, var, momentum
  )
  return y, running_mean.at[slot].set(new_mean), running_var.at[slot].set(new_var)
