"""PyTorch peers of the recurrent layers: ``torch.nn.LSTM``/``GRU`` and the paper's LN cells."""

from __future__ import annotations


def rnn(kind: str, norm: str, n_in: int, hidden: int):
  """A PyTorch peer of an RNN: a ``torch.nn.Module``, ``[batch, T, in]`` -> ``[batch, T, H]``.

  Plain cells: ``torch.nn.LSTM`` / ``torch.nn.GRU`` (batch_first). Layer norm:
  the paper's LN-LSTM (eqs. 20-22) or LN-GRU (eqs. 26-28) written by hand as
  a PyTorch user would: the input projections and their layer norms for all
  steps at once (one matmul), then a Python loop over the steps with
  ``torch.nn.functional.layer_norm`` (eps 1e-5).
  """
  import torch

  if norm == 'none':

    class Plain(torch.nn.Module):
      def __init__(self):
        super().__init__()
        cls = torch.nn.LSTM if kind == 'lstm' else torch.nn.GRU
        self.rnn = cls(n_in, hidden, batch_first=True)

      def forward(self, x):
        return self.rnn(x)[0]

    return Plain()
  gates = 4 if kind == 'lstm' else 3
  ln = torch.nn.functional.layer_norm

  class LNRNN(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.w_x = torch.nn.Parameter(torch.randn(n_in, gates * hidden) * n_in**-0.5)
      self.w_h = torch.nn.Parameter(torch.randn(hidden, gates * hidden) * hidden**-0.5)
      if kind == 'lstm':  # The LN-GRU's layer-norm biases are its only biases.
        self.bias = torch.nn.Parameter(torch.zeros(gates * hidden))
      sizes = {'lstm': (4, 4, 1), 'gru': (2, 2, 1, 1)}[kind]
      self.g = torch.nn.ParameterList([torch.nn.Parameter(torch.ones(k * hidden)) for k in sizes])
      self.b = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(k * hidden)) for k in sizes])

    def norm(self, v, i):
      return ln(v, (v.shape[-1],), self.g[i], self.b[i], 1e-5)

    def forward(self, x):
      batch, steps, _ = x.shape
      wx = x @ self.w_x
      h = x.new_zeros(batch, hidden)
      outs = []
      if kind == 'lstm':
        wx = self.norm(wx, 1) + self.bias
        c = x.new_zeros(batch, hidden)
        for t in range(steps):
          f, i, o, g = (self.norm(h @ self.w_h, 0) + wx[:, t]).chunk(4, -1)
          c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
          h = torch.sigmoid(o) * torch.tanh(self.norm(c, 2))
          outs.append(h)
      else:
        zr_x = self.norm(wx[..., : 2 * hidden], 1)
        cand_x = self.norm(wx[..., 2 * hidden :], 2)
        for t in range(steps):
          wh = h @ self.w_h
          z, r = (self.norm(wh[:, : 2 * hidden], 0) + zr_x[:, t]).chunk(2, -1)
          cand = torch.tanh(cand_x[:, t] + torch.sigmoid(r) * self.norm(wh[:, 2 * hidden :], 3))
          z = torch.sigmoid(z)
          h = (1 - z) * h + z * cand
          outs.append(h)
      return torch.stack(outs, 1)

  return LNRNN()
