r"""The LN-LSTM and LN-GRU state updates as one CPU kernel each (forward and backward).

Everything of a layer-normalized recurrent step after its matrix products runs,
on XLA:CPU, as 25-70 small kernels per step (layer norms, gates, their
derivatives), and at the paper's sizes their launches cost more than their
arithmetic. :func:`ln_lstm_update` and :func:`ln_gru_update` compute the same
equations in one C++ kernel forward and one backward (``lnorm/csrc/recurrent_cells.cc``,
through ``jax.ffi``); :func:`lnorm.cells.ln_lstm_step` and
:func:`lnorm.cells.ln_gru_step` (which the linen and NNX cells call) take them
where :func:`kernel_usable` says so, and otherwise compute the equations as
before (:func:`lnorm.cells.lstm_step` / :func:`lnorm.cells.gru_step` with
:func:`lnorm.functional.layer_norm`).

Each update is a ``jax.custom_jvp`` over three primitives, as
:func:`lnorm.functional.layer_norm`'s kernel: the forward (kernel), its tangent
(linear in the tangents; XLA ops, so forward mode and higher derivatives work)
and, as the tangent's transpose that reverse mode uses, the backward (kernel).
The backward recomputes the forward from the operands: reverse mode saves only
the matrix products, the carry and the parameters. Under ``vmap`` the updates
run as XLA ops (:func:`ln_lstm_update_reference`, :func:`ln_gru_update_reference`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.interpreters import ad, batching

from lnorm import _ffi
from lnorm import functional as F

Array = jax.Array


def ln_lstm_update_reference(wh, wx, c, a1, a2, shift, a3, b3, *, eps):
  r"""LN-LSTM eqs. (20)-(22) after the matrix products, as XLA ops.

  ``[f; i; o; g] = LN(wh) a1 + LN(wx) a2 + shift`` (``shift = beta1 + beta2 + b``),
  ``c_t = sigmoid(f) c + sigmoid(i) tanh(g)``, ``h_t = sigmoid(o) tanh(LN(c_t) a3 + b3)``.

  Args:
    wh, wx: ``W_h h_{t-1}`` and ``W_x x_t``, float32 ``[*batch, 4H]``.
    c: the previous (un-normalized) cell state, ``[*batch, H]``.
    a1, a2, shift: ``[4H]``; a3, b3: ``[H]``.
    eps: inside every square root.

  Returns:
    ``[c_t, h_t]``, each ``[*batch, H]``.
  """
  gates = F.layer_norm(wh, a1, None, eps=eps) + F.layer_norm(wx, a2, None, eps=eps) + shift
  f, i, o, g = jnp.split(gates, 4, axis=-1)
  new_c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  new_h = jax.nn.sigmoid(o) * jnp.tanh(F.layer_norm(new_c, a3, b3, eps=eps))
  return [new_c, new_h]


def ln_gru_update_reference(wh, wx, cx, ch, h, a1, a2, shift, a3, shift_c, a4, b4, *, eps):
  r"""LN-GRU eqs. (26)-(28) after the matrix products, as XLA ops.

  ``[z; r] = LN(wh) a1 + LN(wx) a2 + shift``,
  ``cand = tanh(LN(cx) a3 + shift_c + sigmoid(r) (LN(ch) a4 + b4))``,
  ``h_t = (1 - sigmoid(z)) h + sigmoid(z) cand``.

  Args:
    wh, wx: ``W_h h``, ``W_x x``, float32 ``[*batch, 2H]``.
    cx, ch, h: ``W x``, ``U h`` and ``h``, ``[*batch, H]``.
    a1, a2, shift: ``[2H]`` (``shift = beta1 + beta2``, plus ``b`` if any);
    a3, shift_c, a4, b4: ``[H]`` (``shift_c = beta3``, plus ``b_c`` if any).
    eps: inside every square root.

  Returns:
    ``[h_t]``.
  """
  gates = F.layer_norm(wh, a1, None, eps=eps) + F.layer_norm(wx, a2, None, eps=eps) + shift
  z, r = jnp.split(gates, 2, axis=-1)
  pre = F.layer_norm(cx, a3, shift_c, eps=eps) + jax.nn.sigmoid(r) * F.layer_norm(
    ch, a4, b4, eps=eps
  )
  z = jax.nn.sigmoid(z)
  return [(1.0 - z) * h + z * jnp.tanh(pre)]


def _formulas(reference, num_operands):
  """The forward, tangent and backward formulas (XLA ops) of one update."""

  def fwd(*args, eps, mode='auto'):
    del mode
    return reference(*args, eps=eps)

  def tangent(*args, which, eps, mode='auto'):
    del mode
    primals, dots = args[:num_operands], iter(args[num_operands:])
    tangents = tuple(
      next(dots) if w else jnp.zeros_like(p) for p, w in zip(primals, which, strict=True)
    )
    return jax.jvp(functools.partial(reference, eps=eps), tuple(primals), tangents)[1]

  def bwd(*args, eps, mode='auto'):
    del mode
    primals, cts = args[:num_operands], args[num_operands:]
    _, vjp = jax.vjp(functools.partial(reference, eps=eps), *primals)
    return list(vjp(list(cts)))

  return fwd, tangent, bwd


def _avals(arrays):
  return [jax.core.ShapedArray(a.shape, jnp.float32) for a in arrays]


def _define_update(name, reference, num_operands, num_results, carry_index, fwd_target, bwd_target):
  """The three primitives of an update and its ``custom_jvp`` function.

  The results have the shape of operand ``carry_index`` (``c`` of the LSTM, ``h`` of the GRU).
  """
  fwd_formula, tangent_formula, bwd_formula = _formulas(reference, num_operands)

  def result_avals(*args, **_):
    return _avals([args[carry_index]] * num_results)

  fwd_p = F._define(
    f'{name}_fwd', True, fwd_formula, result_avals, fwd_target, static=(), param_slots=()
  )
  tangent_p = F._define(
    f'{name}_tangent', True, tangent_formula, result_avals, None, static=('which',), param_slots=()
  )
  bwd_p = F._define(
    f'{name}_bwd',
    True,
    bwd_formula,
    lambda *args, eps: _avals(args[:num_operands]),
    bwd_target,
    static=(),
    param_slots=(),
  )

  def tangent_transpose(cts, *args, which, eps):
    primals, dots = args[:num_operands], args[num_operands:]
    if any(ad.is_undefined_primal(p) for p in primals):
      raise NotImplementedError(f'{name}: linear only in its tangents')
    if all(type(ct) is ad.Zero for ct in cts):
      return [None] * len(args)
    cts = [ad.instantiate_zeros(ct) for ct in cts]
    grads = bwd_p.bind(*primals, *cts, eps=eps)
    dot_grads = [g for g, w in zip(grads, which, strict=True) if w]
    return [None] * num_operands + [
      g if ad.is_undefined_primal(d) else None for d, g in zip(dots, dot_grads, strict=True)
    ]

  ad.primitive_transposes[tangent_p] = tangent_transpose

  # vmap: the XLA formulas, vmapped (the kernels see one batch of rows at a time).
  def batch_rule(formula):
    def rule(args, dims, **params):
      out = jax.vmap(functools.partial(formula, **params), in_axes=tuple(dims))(*args)
      return out, [0] * len(out)

    return rule

  batching.primitive_batchers[fwd_p] = batch_rule(fwd_formula)
  batching.primitive_batchers[tangent_p] = batch_rule(tangent_formula)
  batching.primitive_batchers[bwd_p] = batch_rule(bwd_formula)

  @functools.partial(jax.custom_jvp, nondiff_argnums=(num_operands,))
  def update(*args):
    *operands, eps = args
    return fwd_p.bind(*operands, eps=eps)

  @functools.partial(update.defjvp, symbolic_zeros=True)
  def update_jvp(eps, primals, tangents):
    out = fwd_p.bind(*primals, eps=eps)
    dots = tuple(F._nonzero(t) for t in tangents)
    which = tuple(d is not None for d in dots)
    if not any(which):
      return out, [jnp.zeros_like(o) for o in out]
    present = [d.astype(jnp.float32) for d in dots if d is not None]
    return out, tangent_p.bind(*primals, *present, which=which, eps=eps)

  return update


_ln_lstm = _define_update(
  'lnorm_ln_lstm', ln_lstm_update_reference, 8, 2, 2, _ffi.LSTM_FWD_TARGET, _ffi.LSTM_BWD_TARGET
)
_ln_gru = _define_update(
  'lnorm_ln_gru', ln_gru_update_reference, 12, 1, 4, _ffi.GRU_FWD_TARGET, _ffi.GRU_BWD_TARGET
)


def kernel_usable(*arrays: Array) -> bool:
  """Whether the fused CPU kernel computes an update of these arrays (decided when traced).

  Needs: float32 everywhere; the default backend a CPU with one device (as
  :func:`lnorm.functional.layer_norm`'s kernel: with several devices XLA would
  replicate the custom call); ``$LNORM_LAYER_NORM_KERNEL`` not switched off; the
  kernel library built and loaded.
  """
  return all(jnp.result_type(a) == jnp.float32 for a in arrays) and _ffi.usable_here()


def ln_lstm_update(wh, wx, c, ln_h, ln_x, bias, ln_c, *, eps=F.DEFAULT_EPS):
  r"""LN-LSTM eqs. (20)-(22) from the matrix products, in one kernel (see the module doc).

  ``[f; i; o; g] = LN(wh; alpha1, beta1) + LN(wx; alpha2, beta2) + b``,
  ``c_t = sigmoid(f) c + sigmoid(i) tanh(g)``, ``h_t = sigmoid(o) tanh(LN(c_t; alpha3, beta3))``,
  every LN over the whole last axis with eps inside the square root. The same
  numbers as :func:`lnorm.cells.lstm_step` with layer norms to float32 rounding.

  Args:
    wh, wx: ``W_h h_{t-1}``, ``W_x x_t``: float32 ``[*batch, 4H]``.
    c: float32 ``[*batch, H]``, the previous un-normalized cell state.
    ln_h, ln_x: ``(alpha, beta)`` pairs, each ``[4H]``; ln_c: ``(alpha3, beta3)``, ``[H]``.
    bias: ``b``, ``[4H]``.
    eps: inside every square root.

  Returns:
    ``(c_t, h_t)``, each float32 ``[*batch, H]``.
  """
  (a1, b1), (a2, b2), (a3, b3) = ln_h, ln_x, ln_c
  c_new, h_new = _ln_lstm(wh, wx, c, a1, a2, b1 + b2 + bias, a3, b3, float(eps))
  return c_new, h_new


def ln_gru_update(wh, wx, cx, ch, h, ln_h, ln_x, ln_cx, ln_ch, *, eps=F.DEFAULT_EPS):
  r"""LN-GRU eqs. (26)-(28) from the matrix products, in one kernel (see the module doc).

  ``[z; r] = LN(wh; alpha1, beta1) + LN(wx; alpha2, beta2)``,
  ``cand = tanh(LN(cx; alpha3, beta3) + sigmoid(r) LN(ch; alpha4, beta4))``,
  ``h_t = (1 - sigmoid(z)) h + sigmoid(z) cand``.

  Args:
    wh, wx: ``W_h h``, ``W_x x``: float32 ``[*batch, 2H]``.
    cx, ch, h: ``W x``, ``U h`` and ``h``: float32 ``[*batch, H]``.
    ln_h, ln_x: ``(alpha, beta)``, each ``[2H]``; ln_cx, ln_ch: ``[H]``.
    eps: inside every square root.

  Returns:
    ``h_t``, float32 ``[*batch, H]``.
  """
  (a1, b1), (a2, b2), (a3, b3), (a4, b4) = ln_h, ln_x, ln_cx, ln_ch
  (h_new,) = _ln_gru(wh, wx, cx, ch, h, a1, a2, b1 + b2, a3, b3, a4, b4, float(eps))
  return h_new
