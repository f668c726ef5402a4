// The state updates of the paper's LN-LSTM (eqs. 20-22) and LN-GRU (eqs. 26-28), float32, for
// XLA:CPU: everything of one time step after the matrix products, in one kernel forward and
// one backward (XLA runs the same step as 25-70 small kernels, and on a CPU the launches, not
// the arithmetic, bound a recurrent step at the paper's sizes).
//
// Called from lnorm.fused_cells through jax.ffi (built with layer_norm.cc by lnorm/_ffi.py):
//
//   lnorm_ln_lstm_fwd(wh[N,4H], wx[N,4H], c[N,H], a1[4H], a2[4H], shift[4H], a3[H], b3[H]; eps)
//       -> c_new[N,H], h_new[N,H]
//   lnorm_ln_lstm_bwd(same operands, dc_new[N,H], dh_new[N,H]; eps)
//       -> dwh[N,4H], dwx[N,4H], dc[N,H], da1[4H], da2[4H], dshift[4H], da3[H], db3[H]
//   lnorm_ln_gru_fwd(wh[N,2H], wx[N,2H], cx[N,H], ch[N,H], h[N,H],
//                    a1[2H], a2[2H], shift[2H], a3[H], shift_c[H], a4[H], b4[H]; eps) -> h_new[N,H]
//   lnorm_ln_gru_bwd(same operands, dh_new[N,H]; eps)
//       -> dwh, dwx, dcx, dch, dh (the direct path only), da1, da2, dshift, da3, dshift_c, da4, db4
//
// with wh = W_h h, wx = W_x x (and for the GRU cx = W x, ch = U h) computed by XLA, and, per row:
//
//   LSTM  [f; i; o; g] = LN(wh) a1 + LN(wx) a2 + shift         (shift = beta1 + beta2 + b)
//         c_new = sigmoid(f) c + sigmoid(i) tanh(g),   h_new = sigmoid(o) tanh(LN(c_new) a3 + b3)
//   GRU   [z; r] = LN(wh) a1 + LN(wx) a2 + shift              (shift = beta1 + beta2 [+ b])
//         cand = tanh(LN(cx) a3 + shift_c + sigmoid(r) (LN(ch) a4 + b4)),
//         h_new = (1 - sigmoid(z)) h + sigmoid(z) cand
//
// LN(v) = ((v - p) - mean) * rstd with p = v[0] the pivot, exactly as layer_norm.cc (float32
// exact at any offset). The backward recomputes the forward from the operands (nothing but
// the operands is saved between the passes). Parameter gradients are column sums over the
// rows, kept per chunk in float64 and added in chunk order (deterministic).
//
// sigmoid and tanh are written here from exp (a range-reduced polynomial that the compiler
// vectorizes; libm's expf does not vectorize without -ffast-math): relative error of a few
// float32 ulps, as XLA's own approximations.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"

namespace ffi = xla::ffi;

// 512-bit vectors where the CPU has them (GCC's default for -march=native is 256): the
// element-wise loops here are bound by the arithmetic of sigmoid and tanh (1.6x faster here).
#if defined(__AVX512F__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("prefer-vector-width=512")
#endif

// The scratch rows, operands and results of a loop never overlap: without this GCC gives up
// on vectorizing the longer loops (too many pointers to check at run time).
#define LNORM_IVDEP _Pragma("GCC ivdep")

namespace {

using namespace lnorm;  // NOLINT: this file's helpers.

// The smallest chunk of a cell's rows (in elements of wh) handed to another thread: a step
// costs 5-10x the arithmetic of a layer norm per element. 32 rows of LN-LSTM H=256 make 2
// chunks; measured on 2 cores (AVX2), 2^14 beat 2^13 and 2^17 (one chunk) at both bench sizes.
constexpr int64_t kMinCellChunk = 1 << 14;

// exp(x) for float32: x = n ln2 + r with |r| <= ln2 / 2, e^r by its Taylor series to r^7
// (truncation below 1e-8 relative), times 2^n built in the exponent bits. Clamped to
// [-87, 88]: finite, never denormal (what sigmoid and tanh below need).
inline float Exp(float x) {
  x = std::min(88.0f, std::max(-87.0f, x));
  // Round to nearest by adding and subtracting 1.5 * 2^23 (std::floor does not vectorize).
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  // ln2 in two parts: n * kLn2Hi is exact for |n| < 2^9.
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;  // 2^n (memcpy, not std::bit_cast: C++17, and GCC vectorizes it the same)
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float Sigmoid(float x) { return 1.0f / (1.0f + Exp(-x)); }

// tanh: its odd Taylor series to x^17 below |x| = 0.5 (truncation below 1e-9 relative), else
// 1 - 2 / (e^{2|x|} + 1) with the sign restored (no cancellation worse than 2x there).
inline float Tanh(float x) {
  const float ax = std::fabs(x);
  const float x2 = x * x;
  float s = 6404582.0f / 10854718875.0f;
  s = s * x2 - 929569.0f / 638512875.0f;
  s = s * x2 + 21844.0f / 6081075.0f;
  s = s * x2 - 1382.0f / 155925.0f;
  s = s * x2 + 62.0f / 2835.0f;
  s = s * x2 - 17.0f / 315.0f;
  s = s * x2 + 2.0f / 15.0f;
  s = s * x2 - 1.0f / 3.0f;
  const float small = x + x * (x2 * s);
  const float large = std::copysign(1.0f - 2.0f / (Exp(2.0f * ax) + 1.0f), x);
  return ax < 0.5f ? small : large;
}

// The pivoted statistics of one row (layer_norm.cc's forward, in the same order).
struct RowStats {
  float p, m, rs;
};

inline RowStats Stats(const float* v, int64_t n, float eps) {
  const float p = v[0];
  const float m = SumShifted(v, n, p) / static_cast<float>(n);
  const float var = SumSquaresCentred(v, n, p, m) / static_cast<float>(n);
  return {p, m, 1.0f / std::sqrt(var + eps)};
}

inline void Normalize(const float* v, int64_t n, RowStats s, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = ((v[i] - s.p) - s.m) * s.rs;
}

// One gate pre-activation: LN(a)[k] * a1[k] + LN(u)[k] * a2[k] + shift[k].
inline float Gate(const float* a, const float* u, RowStats sa, RowStats su, const float* a1,
                  const float* a2, const float* shift, int64_t k) {
  return (((a[k] - sa.p) - sa.m) * sa.rs) * a1[k] + (((u[k] - su.p) - su.m) * su.rs) * a2[k] +
         shift[k];
}

// The backward of y = LN(v) * gain + ... from dy, in two passes over the row: dv (the
// layer-norm backward of dxhat = dy * gain) and the gain's column sum dgain += dy * xhat.
inline void LnBwdFromGain(const float* v, RowStats s, const float* dy, const float* gain,
                          int64_t n, float* dgain, float* dv) {
  float acc[kLanes] = {}, acc_x[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    LNORM_IVDEP
    for (int64_t j = 0; j < kLanes; ++j) {
      const float xhat = ((v[i + j] - s.p) - s.m) * s.rs;
      const float d = dy[i + j] * gain[i + j];
      acc[j] += d;
      acc_x[j] += d * xhat;
      dgain[i + j] += dy[i + j] * xhat;
    }
  }
  float tail = 0.f, tail_x = 0.f;
  for (; i < n; ++i) {
    const float xhat = ((v[i] - s.p) - s.m) * s.rs;
    const float d = dy[i] * gain[i];
    tail += d;
    tail_x += d * xhat;
    dgain[i] += dy[i] * xhat;
  }
  const float mean = (Reduce(acc) + tail) / static_cast<float>(n);
  const float mean_x = (Reduce(acc_x) + tail_x) / static_cast<float>(n);
  LNORM_IVDEP
  for (int64_t k = 0; k < n; ++k) {
    const float xhat = ((v[k] - s.p) - s.m) * s.rs;
    dv[k] = (dy[k] * gain[k] - mean - xhat * mean_x) * s.rs;
  }
}

// One chunk's scratch rows, carved from one allocation.
class Scratch {
 public:
  explicit Scratch(int64_t floats) : buf_(floats) {}
  float* Take(int64_t n) {
    float* p = buf_.data() + used_;
    used_ += n;
    return p;
  }

 private:
  std::vector<float> buf_;
  int64_t used_ = 0;
};

// Column sums of several parameter gradients for one chunk of rows: float32 partials over up
// to kFlushRows rows (vectorized), added into float64 totals.
struct ColumnSums {
  static constexpr int64_t kFlushRows = 16;
  std::vector<std::vector<double>> sums;
  std::vector<std::vector<float>> partial;
  int64_t pending = 0;
  explicit ColumnSums(const std::vector<int64_t>& sizes) {
    for (int64_t n : sizes) {
      sums.emplace_back(n, 0.0);
      partial.emplace_back(n, 0.f);
    }
  }
  void Add(size_t k, const float* v) {
    float* s = partial[k].data();
    const int64_t n = static_cast<int64_t>(partial[k].size());
    LNORM_IVDEP
    for (int64_t i = 0; i < n; ++i) s[i] += v[i];
  }
  // After each row: every kFlushRows rows (and at the end) the partials go into the totals.
  void EndRow(bool last) {
    if (++pending < kFlushRows && !last) return;
    for (size_t k = 0; k < sums.size(); ++k) {
      for (size_t i = 0; i < sums[k].size(); ++i) {
        sums[k][i] += partial[k][i];
        partial[k][i] = 0.f;
      }
    }
    pending = 0;
  }
};

// Adds the chunks' sums in chunk order into the float32 outputs.
void CombineColumns(const std::vector<ColumnSums>& parts, const std::vector<float*>& outs) {
  for (size_t k = 0; k < outs.size(); ++k) {
    std::vector<double> total(parts[0].sums[k].size(), 0.0);
    for (const ColumnSums& part : parts) {
      for (size_t i = 0; i < total.size(); ++i) total[i] += part.sums[k][i];
    }
    for (size_t i = 0; i < total.size(); ++i) outs[k][i] = static_cast<float>(total[i]);
  }
}

bool SameRows(int64_t rows, std::initializer_list<ffi::Buffer<ffi::F32>*> buffers) {
  for (auto* b : buffers) {
    if (Rows(*b) != rows) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------- LN-LSTM

ffi::Error LnLstmFwd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> wh, ffi::Buffer<ffi::F32> wx,
                     ffi::Buffer<ffi::F32> c, ffi::Buffer<ffi::F32> a1, ffi::Buffer<ffi::F32> a2,
                     ffi::Buffer<ffi::F32> shift, ffi::Buffer<ffi::F32> a3,
                     ffi::Buffer<ffi::F32> b3, ffi::ResultBuffer<ffi::F32> c_new,
                     ffi::ResultBuffer<ffi::F32> h_new, float eps) {
  const int64_t rows = Rows(c), hidden = Cols(c), width = 4 * hidden;
  if (Cols(wh) != width || Cols(wx) != width || !SameRows(rows, {&wh, &wx}) ||
      a1.element_count() != static_cast<size_t>(width) ||
      a3.element_count() != static_cast<size_t>(hidden)) {
    return ffi::Error::InvalidArgument("lnorm_ln_lstm_fwd: operand shapes do not match");
  }
  if (rows == 0 || hidden == 0) return ffi::Error::Success();
  const float *whd = wh.typed_data(), *wxd = wx.typed_data(), *cd = c.typed_data();
  const float *a1d = a1.typed_data(), *a2d = a2.typed_data(), *shd = shift.typed_data();
  const float *a3d = a3.typed_data(), *b3d = b3.typed_data();
  float *cnd = c_new->typed_data(), *hnd = h_new->typed_data();
  const int64_t chunks = NumChunks(pool, rows, width, kMinCellChunk);
  ParallelFor(pool, chunks, [&](int64_t chunk) {
    Scratch scratch(2 * hidden);
    float *so = scratch.Take(hidden), *chat = scratch.Take(hidden);
    const int64_t r_end = rows * (chunk + 1) / chunks;
    for (int64_t r = rows * chunk / chunks; r < r_end; ++r) {
      const float *a = whd + r * width, *u = wxd + r * width, *cp = cd + r * hidden;
      float *cn = cnd + r * hidden, *hn = hnd + r * hidden;
      const RowStats sa = Stats(a, width, eps), su = Stats(u, width, eps);
      LNORM_IVDEP
      for (int64_t j = 0; j < hidden; ++j) {
        const float f = Gate(a, u, sa, su, a1d, a2d, shd, j);
        const float i = Gate(a, u, sa, su, a1d, a2d, shd, hidden + j);
        const float g = Gate(a, u, sa, su, a1d, a2d, shd, 3 * hidden + j);
        cn[j] = Sigmoid(f) * cp[j] + Sigmoid(i) * Tanh(g);
        so[j] = Sigmoid(Gate(a, u, sa, su, a1d, a2d, shd, 2 * hidden + j));
      }
      Normalize(cn, hidden, Stats(cn, hidden, eps), chat);
      LNORM_IVDEP
      for (int64_t j = 0; j < hidden; ++j) hn[j] = so[j] * Tanh(chat[j] * a3d[j] + b3d[j]);
    }
  });
  return ffi::Error::Success();
}

ffi::Error LnLstmBwd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> wh, ffi::Buffer<ffi::F32> wx,
                     ffi::Buffer<ffi::F32> c, ffi::Buffer<ffi::F32> a1, ffi::Buffer<ffi::F32> a2,
                     ffi::Buffer<ffi::F32> shift, ffi::Buffer<ffi::F32> a3,
                     ffi::Buffer<ffi::F32> b3, ffi::Buffer<ffi::F32> dc_new,
                     ffi::Buffer<ffi::F32> dh_new, ffi::ResultBuffer<ffi::F32> dwh,
                     ffi::ResultBuffer<ffi::F32> dwx, ffi::ResultBuffer<ffi::F32> dc,
                     ffi::ResultBuffer<ffi::F32> da1, ffi::ResultBuffer<ffi::F32> da2,
                     ffi::ResultBuffer<ffi::F32> dshift, ffi::ResultBuffer<ffi::F32> da3,
                     ffi::ResultBuffer<ffi::F32> db3, float eps) {
  const int64_t rows = Rows(c), hidden = Cols(c), width = 4 * hidden;
  if (Cols(wh) != width || Cols(wx) != width || !SameRows(rows, {&wh, &wx, &dc_new, &dh_new}) ||
      a1.element_count() != static_cast<size_t>(width) ||
      a3.element_count() != static_cast<size_t>(hidden)) {
    return ffi::Error::InvalidArgument("lnorm_ln_lstm_bwd: operand shapes do not match");
  }
  const std::vector<float*> param_grads = {da1->typed_data(), da2->typed_data(),
                                           dshift->typed_data(), da3->typed_data(),
                                           db3->typed_data()};
  const std::vector<int64_t> sizes = {width, width, width, hidden, hidden};
  if (rows == 0 || hidden == 0) {
    for (size_t k = 0; k < sizes.size(); ++k) std::fill(param_grads[k], param_grads[k] + sizes[k], 0.f);
    return ffi::Error::Success();
  }
  const float *whd = wh.typed_data(), *wxd = wx.typed_data(), *cd = c.typed_data();
  const float *a1d = a1.typed_data(), *a2d = a2.typed_data(), *shd = shift.typed_data();
  const float *a3d = a3.typed_data(), *b3d = b3.typed_data();
  const float *dcnd = dc_new.typed_data(), *dhnd = dh_new.typed_data();
  float *dwhd = dwh->typed_data(), *dwxd = dwx->typed_data(), *dcd = dc->typed_data();
  const int64_t chunks = NumChunks(pool, rows, width, kMinCellChunk);
  std::vector<ColumnSums> parts(chunks, ColumnSums(sizes));
  ParallelFor(pool, chunks, [&](int64_t chunk) {
    ColumnSums& sums = parts[chunk];
    Scratch scratch(width + 6 * hidden);
    float *dgates = scratch.Take(width), *sf = scratch.Take(hidden), *si = scratch.Take(hidden),
          *tg = scratch.Take(hidden), *cn = scratch.Take(hidden), *dn = scratch.Take(hidden),
          *dcn = scratch.Take(hidden);
    const int64_t r_end = rows * (chunk + 1) / chunks;
    for (int64_t r = rows * chunk / chunks; r < r_end; ++r) {
      const float *a = whd + r * width, *u = wxd + r * width, *cp = cd + r * hidden;
      const float *dcr = dcnd + r * hidden, *dhr = dhnd + r * hidden;
      const RowStats sa = Stats(a, width, eps), su = Stats(u, width, eps);
      // The forward again (gates, c_new), keeping what the backward needs.
      float* so = dgates + 2 * hidden;  // Holds sigmoid(o) until its gradient replaces it.
      LNORM_IVDEP
      for (int64_t j = 0; j < hidden; ++j) {
        const int64_t f = j, i = hidden + j, o = 2 * hidden + j, g = 3 * hidden + j;
        sf[j] = Sigmoid(Gate(a, u, sa, su, a1d, a2d, shd, f));
        si[j] = Sigmoid(Gate(a, u, sa, su, a1d, a2d, shd, i));
        so[j] = Sigmoid(Gate(a, u, sa, su, a1d, a2d, shd, o));
        tg[j] = Tanh(Gate(a, u, sa, su, a1d, a2d, shd, g));
        cn[j] = sf[j] * cp[j] + si[j] * tg[j];
      }
      const RowStats sc = Stats(cn, hidden, eps);
      // h = so * tanh(n), n = LN(c_new) a3 + b3: the output gate's gradient and dn.
      LNORM_IVDEP
      for (int64_t j = 0; j < hidden; ++j) {
        const float tn = Tanh((((cn[j] - sc.p) - sc.m) * sc.rs) * a3d[j] + b3d[j]);
        const float sig_o = so[j];
        so[j] = dhr[j] * tn * sig_o * (1.0f - sig_o);
        dn[j] = dhr[j] * sig_o * (1.0f - tn * tn);
      }
      sums.Add(4, dn);
      LnBwdFromGain(cn, sc, dn, a3d, hidden, sums.partial[3].data(), dcn);
      float* dcp = dcd + r * hidden;
      LNORM_IVDEP
      for (int64_t j = 0; j < hidden; ++j) {
        const float d = dcr[j] + dcn[j];  // The carried c_new and the path through h_new.
        dcp[j] = d * sf[j];
        dgates[j] = d * cp[j] * sf[j] * (1.0f - sf[j]);
        dgates[hidden + j] = d * tg[j] * si[j] * (1.0f - si[j]);
        dgates[3 * hidden + j] = d * si[j] * (1.0f - tg[j] * tg[j]);
      }
      sums.Add(2, dgates);
      LnBwdFromGain(a, sa, dgates, a1d, width, sums.partial[0].data(), dwhd + r * width);
      LnBwdFromGain(u, su, dgates, a2d, width, sums.partial[1].data(), dwxd + r * width);
      sums.EndRow(r + 1 == r_end);
    }
  });
  CombineColumns(parts, param_grads);
  return ffi::Error::Success();
}

// ----------------------------------------------------------------------------------- LN-GRU

struct GruOperands {
  const float *wh, *wx, *cx, *ch, *h, *a1, *a2, *shift, *a3, *shift_c, *a4, *b4;
};

ffi::Error CheckGru(const char* name, int64_t rows, int64_t hidden, ffi::Buffer<ffi::F32>& wh,
                    ffi::Buffer<ffi::F32>& wx, ffi::Buffer<ffi::F32>& cx,
                    ffi::Buffer<ffi::F32>& ch, ffi::Buffer<ffi::F32>& a1,
                    ffi::Buffer<ffi::F32>& a3) {
  if (Cols(wh) != 2 * hidden || Cols(wx) != 2 * hidden || Cols(cx) != hidden ||
      Cols(ch) != hidden || !SameRows(rows, {&wh, &wx, &cx, &ch}) ||
      a1.element_count() != static_cast<size_t>(2 * hidden) ||
      a3.element_count() != static_cast<size_t>(hidden)) {
    return ffi::Error::InvalidArgument(std::string(name) + ": operand shapes do not match");
  }
  return ffi::Error::Success();
}

ffi::Error LnGruFwd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> wh, ffi::Buffer<ffi::F32> wx,
                    ffi::Buffer<ffi::F32> cx, ffi::Buffer<ffi::F32> ch, ffi::Buffer<ffi::F32> h,
                    ffi::Buffer<ffi::F32> a1, ffi::Buffer<ffi::F32> a2,
                    ffi::Buffer<ffi::F32> shift, ffi::Buffer<ffi::F32> a3,
                    ffi::Buffer<ffi::F32> shift_c, ffi::Buffer<ffi::F32> a4,
                    ffi::Buffer<ffi::F32> b4, ffi::ResultBuffer<ffi::F32> h_new, float eps) {
  const int64_t rows = Rows(h), hidden = Cols(h), width = 2 * hidden;
  ffi::Error check = CheckGru("lnorm_ln_gru_fwd", rows, hidden, wh, wx, cx, ch, a1, a3);
  if (check.failure()) return check;
  if (rows == 0 || hidden == 0) return ffi::Error::Success();
  const GruOperands op = {wh.typed_data(), wx.typed_data(),    cx.typed_data(), ch.typed_data(),
                          h.typed_data(),  a1.typed_data(),    a2.typed_data(), shift.typed_data(),
                          a3.typed_data(), shift_c.typed_data(), a4.typed_data(), b4.typed_data()};
  float* hnd = h_new->typed_data();
  const int64_t chunks = NumChunks(pool, rows, width + 2 * hidden, kMinCellChunk);
  ParallelFor(pool, chunks, [&](int64_t chunk) {
    const int64_t r_end = rows * (chunk + 1) / chunks;
    for (int64_t r = rows * chunk / chunks; r < r_end; ++r) {
      const float *a = op.wh + r * width, *u = op.wx + r * width;
      const float *vx = op.cx + r * hidden, *vh = op.ch + r * hidden, *hp = op.h + r * hidden;
      const RowStats sa = Stats(a, width, eps), su = Stats(u, width, eps);
      const RowStats sx = Stats(vx, hidden, eps), sh = Stats(vh, hidden, eps);
      float* hn = hnd + r * hidden;
      LNORM_IVDEP
      for (int64_t j = 0; j < hidden; ++j) {
        const float z = Sigmoid(Gate(a, u, sa, su, op.a1, op.a2, op.shift, j));
        const float rg = Sigmoid(Gate(a, u, sa, su, op.a1, op.a2, op.shift, hidden + j));
        const float chn = (((vh[j] - sh.p) - sh.m) * sh.rs) * op.a4[j] + op.b4[j];
        const float cxn = (((vx[j] - sx.p) - sx.m) * sx.rs) * op.a3[j] + op.shift_c[j];
        hn[j] = (1.0f - z) * hp[j] + z * Tanh(cxn + rg * chn);
      }
    }
  });
  return ffi::Error::Success();
}

ffi::Error LnGruBwd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> wh, ffi::Buffer<ffi::F32> wx,
                    ffi::Buffer<ffi::F32> cx, ffi::Buffer<ffi::F32> ch, ffi::Buffer<ffi::F32> h,
                    ffi::Buffer<ffi::F32> a1, ffi::Buffer<ffi::F32> a2,
                    ffi::Buffer<ffi::F32> shift, ffi::Buffer<ffi::F32> a3,
                    ffi::Buffer<ffi::F32> shift_c, ffi::Buffer<ffi::F32> a4,
                    ffi::Buffer<ffi::F32> b4, ffi::Buffer<ffi::F32> dh_new,
                    ffi::ResultBuffer<ffi::F32> dwh, ffi::ResultBuffer<ffi::F32> dwx,
                    ffi::ResultBuffer<ffi::F32> dcx, ffi::ResultBuffer<ffi::F32> dch,
                    ffi::ResultBuffer<ffi::F32> dh, ffi::ResultBuffer<ffi::F32> da1,
                    ffi::ResultBuffer<ffi::F32> da2, ffi::ResultBuffer<ffi::F32> dshift,
                    ffi::ResultBuffer<ffi::F32> da3, ffi::ResultBuffer<ffi::F32> dshift_c,
                    ffi::ResultBuffer<ffi::F32> da4, ffi::ResultBuffer<ffi::F32> db4, float eps) {
  const int64_t rows = Rows(h), hidden = Cols(h), width = 2 * hidden;
  ffi::Error check = CheckGru("lnorm_ln_gru_bwd", rows, hidden, wh, wx, cx, ch, a1, a3);
  if (check.failure()) return check;
  if (Rows(dh_new) != rows) return ffi::Error::InvalidArgument("lnorm_ln_gru_bwd: dh_new rows");
  const std::vector<float*> param_grads = {da1->typed_data(), da2->typed_data(),
                                           dshift->typed_data(), da3->typed_data(),
                                           dshift_c->typed_data(), da4->typed_data(),
                                           db4->typed_data()};
  const std::vector<int64_t> sizes = {width, width, width, hidden, hidden, hidden, hidden};
  if (rows == 0 || hidden == 0) {
    for (size_t k = 0; k < sizes.size(); ++k) std::fill(param_grads[k], param_grads[k] + sizes[k], 0.f);
    return ffi::Error::Success();
  }
  const GruOperands op = {wh.typed_data(), wx.typed_data(),    cx.typed_data(), ch.typed_data(),
                          h.typed_data(),  a1.typed_data(),    a2.typed_data(), shift.typed_data(),
                          a3.typed_data(), shift_c.typed_data(), a4.typed_data(), b4.typed_data()};
  const float* dhnd = dh_new.typed_data();
  float *dwhd = dwh->typed_data(), *dwxd = dwx->typed_data(), *dcxd = dcx->typed_data();
  float *dchd = dch->typed_data(), *dhd = dh->typed_data();
  const int64_t chunks = NumChunks(pool, rows, width + 2 * hidden, kMinCellChunk);
  std::vector<ColumnSums> parts(chunks, ColumnSums(sizes));
  ParallelFor(pool, chunks, [&](int64_t chunk) {
    ColumnSums& sums = parts[chunk];
    Scratch scratch(width + 2 * hidden);
    float *dgates = scratch.Take(width), *dpre = scratch.Take(hidden), *dchn = scratch.Take(hidden);
    const int64_t r_end = rows * (chunk + 1) / chunks;
    for (int64_t r = rows * chunk / chunks; r < r_end; ++r) {
      const float *a = op.wh + r * width, *u = op.wx + r * width;
      const float *vx = op.cx + r * hidden, *vh = op.ch + r * hidden, *hp = op.h + r * hidden;
      const float* dy = dhnd + r * hidden;
      const RowStats sa = Stats(a, width, eps), su = Stats(u, width, eps);
      const RowStats sx = Stats(vx, hidden, eps), sh = Stats(vh, hidden, eps);
      float* dhp = dhd + r * hidden;
      LNORM_IVDEP
      for (int64_t j = 0; j < hidden; ++j) {
        const int64_t zk = j, rk = hidden + j;
        const float z = Sigmoid(Gate(a, u, sa, su, op.a1, op.a2, op.shift, zk));
        const float rg = Sigmoid(Gate(a, u, sa, su, op.a1, op.a2, op.shift, rk));
        const float chn = (((vh[j] - sh.p) - sh.m) * sh.rs) * op.a4[j] + op.b4[j];
        const float cxn = (((vx[j] - sx.p) - sx.m) * sx.rs) * op.a3[j] + op.shift_c[j];
        const float cand = Tanh(cxn + rg * chn);
        dhp[j] = dy[j] * (1.0f - z);
        dgates[zk] = dy[j] * (cand - hp[j]) * z * (1.0f - z);
        dpre[j] = dy[j] * z * (1.0f - cand * cand);
        dgates[rk] = dpre[j] * chn * rg * (1.0f - rg);
        dchn[j] = dpre[j] * rg;
      }
      sums.Add(2, dgates);
      sums.Add(4, dpre);
      sums.Add(6, dchn);
      LnBwdFromGain(a, sa, dgates, op.a1, width, sums.partial[0].data(), dwhd + r * width);
      LnBwdFromGain(u, su, dgates, op.a2, width, sums.partial[1].data(), dwxd + r * width);
      LnBwdFromGain(vx, sx, dpre, op.a3, hidden, sums.partial[3].data(), dcxd + r * hidden);
      LnBwdFromGain(vh, sh, dchn, op.a4, hidden, sums.partial[5].data(), dchd + r * hidden);
      sums.EndRow(r + 1 == r_end);
    }
  });
  CombineColumns(parts, param_grads);
  return ffi::Error::Success();
}

}  // namespace

#define LNORM_F32_ARG Arg<ffi::Buffer<ffi::F32>>()
#define LNORM_F32_RET Ret<ffi::Buffer<ffi::F32>>()

XLA_FFI_DEFINE_HANDLER_SYMBOL(LnormLnLstmFwd, LnLstmFwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .LNORM_F32_ARG  // wh
                                  .LNORM_F32_ARG  // wx
                                  .LNORM_F32_ARG  // c
                                  .LNORM_F32_ARG  // a1
                                  .LNORM_F32_ARG  // a2
                                  .LNORM_F32_ARG  // shift
                                  .LNORM_F32_ARG  // a3
                                  .LNORM_F32_ARG  // b3
                                  .LNORM_F32_RET  // c_new
                                  .LNORM_F32_RET  // h_new
                                  .Attr<float>("eps"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LnormLnLstmBwd, LnLstmBwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .LNORM_F32_ARG  // wh
                                  .LNORM_F32_ARG  // wx
                                  .LNORM_F32_ARG  // c
                                  .LNORM_F32_ARG  // a1
                                  .LNORM_F32_ARG  // a2
                                  .LNORM_F32_ARG  // shift
                                  .LNORM_F32_ARG  // a3
                                  .LNORM_F32_ARG  // b3
                                  .LNORM_F32_ARG  // dc_new
                                  .LNORM_F32_ARG  // dh_new
                                  .LNORM_F32_RET  // dwh
                                  .LNORM_F32_RET  // dwx
                                  .LNORM_F32_RET  // dc
                                  .LNORM_F32_RET  // da1
                                  .LNORM_F32_RET  // da2
                                  .LNORM_F32_RET  // dshift
                                  .LNORM_F32_RET  // da3
                                  .LNORM_F32_RET  // db3
                                  .Attr<float>("eps"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LnormLnGruFwd, LnGruFwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .LNORM_F32_ARG  // wh
                                  .LNORM_F32_ARG  // wx
                                  .LNORM_F32_ARG  // cx
                                  .LNORM_F32_ARG  // ch
                                  .LNORM_F32_ARG  // h
                                  .LNORM_F32_ARG  // a1
                                  .LNORM_F32_ARG  // a2
                                  .LNORM_F32_ARG  // shift
                                  .LNORM_F32_ARG  // a3
                                  .LNORM_F32_ARG  // shift_c
                                  .LNORM_F32_ARG  // a4
                                  .LNORM_F32_ARG  // b4
                                  .LNORM_F32_RET  // h_new
                                  .Attr<float>("eps"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LnormLnGruBwd, LnGruBwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .LNORM_F32_ARG  // wh
                                  .LNORM_F32_ARG  // wx
                                  .LNORM_F32_ARG  // cx
                                  .LNORM_F32_ARG  // ch
                                  .LNORM_F32_ARG  // h
                                  .LNORM_F32_ARG  // a1
                                  .LNORM_F32_ARG  // a2
                                  .LNORM_F32_ARG  // shift
                                  .LNORM_F32_ARG  // a3
                                  .LNORM_F32_ARG  // shift_c
                                  .LNORM_F32_ARG  // a4
                                  .LNORM_F32_ARG  // b4
                                  .LNORM_F32_ARG  // dh_new
                                  .LNORM_F32_RET  // dwh
                                  .LNORM_F32_RET  // dwx
                                  .LNORM_F32_RET  // dcx
                                  .LNORM_F32_RET  // dch
                                  .LNORM_F32_RET  // dh
                                  .LNORM_F32_RET  // da1
                                  .LNORM_F32_RET  // da2
                                  .LNORM_F32_RET  // dshift
                                  .LNORM_F32_RET  // da3
                                  .LNORM_F32_RET  // dshift_c
                                  .LNORM_F32_RET  // da4
                                  .LNORM_F32_RET  // db4
                                  .Attr<float>("eps"));
