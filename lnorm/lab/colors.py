"""One colour per normalization, the same in every figure of the project."""

from __future__ import annotations

#: Normalization name -> matplotlib colour (tab10 shades; grey for none).
NORM_COLORS = {
  'none': '#7f7f7f',
  'batch': '#1f77b4',
  'layer': '#d62728',
  'weight': '#2ca02c',
  'rms': '#9467bd',
  'group': '#ff7f0e',
  'draw': '#8c564b',
}
#: For names outside :data:`NORM_COLORS` (e.g. other fields used as the colour).
OTHER_COLORS = ('#17becf', '#bcbd22', '#e377c2', '#393b79', '#637939', '#8c6d31')


def norm_color(norm: str, fallback_index: int = 0) -> str:
  """The colour of normalization ``norm``; unknown names cycle through :data:`OTHER_COLORS`."""
  return NORM_COLORS.get(norm, OTHER_COLORS[fallback_index % len(OTHER_COLORS)])
