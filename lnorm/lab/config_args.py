"""Parsing of the ``configs/<task>.py:<arg>`` string, and value checks for configs.

A config file's ``get_config(arg)`` receives the text after the colon of
``--config=configs/pmnist.py:norm=layer,batch_size=4,smoke``: a comma-separated
list of ``key=value`` pairs and bare flags (a bare ``key`` means
``key=True``), as in big_vision. :func:`parse_arg` turns it into a ConfigDict,
converting every value to the type of its default::

    >>> from lnorm.lab.config_args import parse_arg
    >>> a = parse_arg('norm=batch,batch_size=4,smoke', norm='layer', batch_size=128, smoke=False)
    >>> (a.norm, a.batch_size, a.smoke)
    ('batch', 4, True)

Unknown keys and values that do not convert raise a ``ValueError`` that says
what is allowed. The ``check_*`` helpers give configs the same kind of message
for values that convert but are out of range, so a bad config fails before any
work starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import ml_collections

_TRUE = ('1', 'true', 'yes', 'on')
_FALSE = ('0', 'false', 'no', 'off')
_NONE = ('none', 'null')


def _convert(key: str, text: str, default: Any) -> Any:
  """Converts ``text`` to the type of ``default`` (``None`` default: a string or None)."""
  if isinstance(default, bool):
    low = text.lower()
    if low in _TRUE:
      return True
    if low in _FALSE:
      return False
    raise ValueError(f'{key}={text!r}: expected a boolean ({"/".join(_TRUE + _FALSE)}).')
  if isinstance(default, int):
    try:
      return int(text)
    except ValueError:
      raise ValueError(f'{key}={text!r}: expected an integer.') from None
  if isinstance(default, float):
    try:
      return float(text)
    except ValueError:
      raise ValueError(f'{key}={text!r}: expected a number.') from None
  if default is None:
    return None if text.lower() in _NONE else text
  if isinstance(default, str):
    return text
  raise ValueError(
    f'{key}: a {type(default).__name__} cannot be set in the config string; '
    f'use --config.{key}=... instead.'
  )


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses ``'k1=v1,k2,k3=v3'`` into a ConfigDict of ``defaults`` updated by the arg.

  Args:
    arg: the config string (``None`` or ``''``: all defaults). A bare ``key``
      sets a boolean to ``True``. Values convert to the type of the key's
      default (bool, int, float, str; a ``None`` default takes any string,
      with ``none`` meaning ``None``).
    **defaults: every allowed key with its default value.

  Returns:
    An unlocked ConfigDict with one field per key of ``defaults``.

  Raises:
    ValueError: an unknown key (the message lists the allowed ones), a value
      that does not convert, a bare key that is not a boolean, or a key given
      twice.
  """
  result = dict(defaults)
  seen = set()
  for item in (arg or '').split(','):
    item = item.strip()
    if not item:
      continue
    key, has_value, text = item.partition('=')
    key = key.strip()
    if key not in defaults:
      allowed = ', '.join(sorted(defaults))
      raise ValueError(f'unknown config arg {key!r}; allowed args are: {allowed}.')
    if key in seen:
      raise ValueError(f'config arg {key!r} is given twice.')
    seen.add(key)
    if not has_value:
      if not isinstance(defaults[key], bool):
        raise ValueError(f'config arg {key!r} needs a value: {key}=...')
      result[key] = True
    else:
      result[key] = _convert(key, text.strip(), defaults[key])
  return ml_collections.ConfigDict(result)


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
  """Returns ``value`` if it is one of ``allowed``, else raises a ValueError listing them."""
  allowed = tuple(allowed)
  if value not in allowed:
    listed = ', '.join(repr(a) for a in allowed)
    raise ValueError(f'{name} must be one of {listed}; got {value!r}.')
  return value


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
  """Returns ``value`` if it is an int (not a bool) ``>= minimum``, else raises a ValueError."""
  if isinstance(value, bool) or not isinstance(value, int):
    raise ValueError(f'{name} must be an integer; got {value!r}.')
  if minimum is not None and value < minimum:
    raise ValueError(f'{name} must be an integer >= {minimum}; got {value!r}.')
  return value


def check_positive(name: str, value: Any, allow_zero: bool = False) -> float:
  """Returns ``value`` if it is a finite number > 0 (``>= 0`` with ``allow_zero``)."""
  ok = isinstance(value, int | float) and not isinstance(value, bool)
  ok = ok and value == value and abs(value) != float('inf')
  ok = ok and (value >= 0 if allow_zero else value > 0)
  if not ok:
    what = 'a number >= 0' if allow_zero else 'a positive number'
    raise ValueError(f'{name} must be {what}; got {value!r}.')
  return value


def optimizer_fields(learning_rate: float, grad_clip_norm: float = 0.0) -> dict[str, Any]:
  """The optimizer fields every experiment config has (read by :mod:`lnorm.lab.optimizers`).

  Adam (the paper's optimizer everywhere) with its usual constants, a constant
  learning rate, no warm-up, no weight decay; ``grad_clip_norm`` clips the
  gradient by its global norm (0: off), ``grad_clip_per_tensor`` each
  parameter's gradient (0: off). A config sets them with
  ``config.update(optimizer_fields(...))`` and may override any of them.
  """
  return dict(
    optimizer='adam',
    learning_rate=learning_rate,
    lr_schedule='constant',
    warmup_steps=0,
    grad_clip_norm=grad_clip_norm,
    grad_clip_per_tensor=0.0,
    weight_decay=0.0,
    adam_b1=0.9,
    adam_b2=0.999,
    adam_eps=1e-8,
    momentum=0.9,
  )
