// Layer norm (Ba, Kiros & Hinton 2016, eqs. 3-4) over the last axis, float32, for XLA:CPU.
//
// Two XLA FFI handlers, called from lnorm.functional through jax.ffi (see lnorm/_ffi.py,
// which compiles this file on first use against the installed jaxlib's headers):
//
//   lnorm_layer_norm_fwd(x[N, H], scale[Gs, H], bias[Gb, H]; eps)
//       -> y[N, H], pivot[N], mean[N], rstd[N]
//   lnorm_layer_norm_bwd(x[N, H], scale[Gs, H], pivot[N], mean[N], rstd[N], dy[N, H])
//       -> dx[N, H], dscale[Ds, H], dbias[Db, H]
//
// (Leading dimensions are flattened into the N rows; shapes above are element counts.)
// For every row a (the H values of one case), with p = a[0] the pivot:
//
//   mean  = 1/H sum_i (a_i - p)                          (relative to the pivot)
//   rstd  = 1 / sqrt(1/H sum_i ((a_i - p) - mean)^2 + eps)
//   xhat  = ((a - p) - mean) * rstd,     y = xhat * scale + bias
//   dx    = rstd * (g - mean(g) - xhat * mean(g * xhat)),   g = scale * dy
//   dscale = sum over rows of dy * xhat,  dbias = sum over rows of dy
//
// Centring on the pivot keeps float32 exact at any offset: a - p is exact when the row's
// values lie within a factor 2 of each other, so the statistics carry rounding errors
// relative to the spread of the row, not to its mean. The math is the same as the XLA path
// (lnorm.functional._layer_norm_stats and _layer_norm_tangent), in the same order.
//
// Parameters and gradients come in groups of consecutive rows, which is how vmap reaches
// the kernel: scale has Gs rows (row n of x uses scale row n / (N / Gs)), and dscale/dbias
// sum over groups of N / Ds and N / Db consecutive rows. Unbatched, Gs = Gb = Ds = Db = 1.
//
// Rows are independent: they are split into contiguous chunks run on XLA's intra-op thread
// pool, with the calling thread claiming chunks too (no thread ever waits on a chunk that
// has not started, so a busy pool cannot deadlock). Column sums (dscale, dbias) are kept per
// chunk in float64 and added in chunk order: the result does not depend on which thread ran
// which chunk.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common.h"

namespace ffi = xla::ffi;

namespace {

using namespace lnorm;  // NOLINT: this file's helpers.

// Rows added in float32 before a column partial is flushed into float64.
constexpr int64_t kFlushRows = 16;

// The number of rows per group of a [G, H] parameter or gradient over N rows.
bool RowsPerGroup(size_t elements, int64_t rows, int64_t cols, int64_t* per_group) {
  if (cols == 0) {
    *per_group = std::max<int64_t>(rows, 1);
    return true;
  }
  const int64_t groups = static_cast<int64_t>(elements) / cols;
  if (groups < 1 || groups * cols != static_cast<int64_t>(elements) || rows % groups != 0) {
    return false;
  }
  *per_group = std::max<int64_t>(rows / groups, 1);
  return true;
}

ffi::Error LayerNormFwd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                        ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y,
                        ffi::ResultBuffer<ffi::F32> pivot, ffi::ResultBuffer<ffi::F32> mean,
                        ffi::ResultBuffer<ffi::F32> rstd, float eps) {
  const int64_t rows = Rows(x), cols = Cols(x);
  int64_t scale_rows, bias_rows;
  if (!RowsPerGroup(scale.element_count(), rows, cols, &scale_rows) ||
      !RowsPerGroup(bias.element_count(), rows, cols, &bias_rows)) {
    return ffi::Error::InvalidArgument("lnorm_layer_norm_fwd: scale/bias rows must divide x's");
  }
  if (rows == 0 || cols == 0) return ffi::Error::Success();
  const float* xd = x.typed_data();
  const float* sd = scale.typed_data();
  const float* bd = bias.typed_data();
  float* yd = y->typed_data();
  float* pd = pivot->typed_data();
  float* md = mean->typed_data();
  float* rd = rstd->typed_data();
  const int64_t chunks = NumChunks(pool, rows, cols);
  ParallelFor(pool, chunks, [&](int64_t c) {
    const int64_t r0 = rows * c / chunks, r1 = rows * (c + 1) / chunks;
    for (int64_t r = r0; r < r1; ++r) {
      const float* a = xd + r * cols;
      const float* g = sd + (r / scale_rows) * cols;
      const float* b = bd + (r / bias_rows) * cols;
      float* out = yd + r * cols;
      const float p = a[0];
      // jnp.mean divides the sum by H (not multiply by 1/H): keep its rounding.
      const float m = SumShifted(a, cols, p) / static_cast<float>(cols);
      const float var = SumSquaresCentred(a, cols, p, m) / static_cast<float>(cols);
      const float rs = 1.0f / std::sqrt(var + eps);
      for (int64_t i = 0; i < cols; ++i) out[i] = (((a[i] - p) - m) * rs) * g[i] + b[i];
      pd[r] = p;
      md[r] = m;
      rd[r] = rs;
    }
  });
  return ffi::Error::Success();
}

// Column partial sums of one chunk for the groups its rows touch, in float64.
struct ColumnPartial {
  int64_t first_group = 0;
  std::vector<double> sums;  // [groups touched, cols]
};

ffi::Error LayerNormBwd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                        ffi::Buffer<ffi::F32> pivot, ffi::Buffer<ffi::F32> mean,
                        ffi::Buffer<ffi::F32> rstd, ffi::Buffer<ffi::F32> dy,
                        ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dscale,
                        ffi::ResultBuffer<ffi::F32> dbias) {
  const int64_t rows = Rows(x), cols = Cols(x);
  int64_t scale_rows, ds_rows, db_rows;
  if (!RowsPerGroup(scale.element_count(), rows, cols, &scale_rows) ||
      !RowsPerGroup(dscale->element_count(), rows, cols, &ds_rows) ||
      !RowsPerGroup(dbias->element_count(), rows, cols, &db_rows)) {
    return ffi::Error::InvalidArgument(
        "lnorm_layer_norm_bwd: scale/dscale/dbias rows must divide x's");
  }
  float* dsd = dscale->typed_data();
  float* dbd = dbias->typed_data();
  std::fill(dsd, dsd + dscale->element_count(), 0.f);
  std::fill(dbd, dbd + dbias->element_count(), 0.f);
  if (rows == 0 || cols == 0) return ffi::Error::Success();
  const float* xd = x.typed_data();
  const float* sd = scale.typed_data();
  const float* pd = pivot.typed_data();
  const float* md = mean.typed_data();
  const float* rd = rstd.typed_data();
  const float* dyd = dy.typed_data();
  float* dxd = dx->typed_data();
  const int64_t chunks = NumChunks(pool, rows, cols);
  std::vector<ColumnPartial> ds_parts(chunks), db_parts(chunks);
  const float fcols = static_cast<float>(cols);

  ParallelFor(pool, chunks, [&](int64_t c) {
    const int64_t r0 = rows * c / chunks, r1 = rows * (c + 1) / chunks;
    ColumnPartial& dsp = ds_parts[c];
    ColumnPartial& dbp = db_parts[c];
    dsp.first_group = r0 / ds_rows;
    dbp.first_group = r0 / db_rows;
    dsp.sums.assign(((r1 - 1) / ds_rows - dsp.first_group + 1) * cols, 0.0);
    dbp.sums.assign(((r1 - 1) / db_rows - dbp.first_group + 1) * cols, 0.0);
    // Column sums of up to kFlushRows rows of one group, in float32, then into float64.
    std::vector<float> ds_acc(cols, 0.f), db_acc(cols, 0.f);
    int64_t pending = 0, ds_group = dsp.first_group, db_group = dbp.first_group;
    auto flush = [&]() {
      double* ds_out = dsp.sums.data() + (ds_group - dsp.first_group) * cols;
      double* db_out = dbp.sums.data() + (db_group - dbp.first_group) * cols;
      for (int64_t i = 0; i < cols; ++i) {
        ds_out[i] += ds_acc[i];
        db_out[i] += db_acc[i];
        ds_acc[i] = 0.f;
        db_acc[i] = 0.f;
      }
      pending = 0;
    };
    for (int64_t r = r0; r < r1; ++r) {
      if (r / ds_rows != ds_group || r / db_rows != db_group || pending == kFlushRows) {
        if (pending) flush();
        ds_group = r / ds_rows;
        db_group = r / db_rows;
      }
      const float* a = xd + r * cols;
      const float* g = sd + (r / scale_rows) * cols;
      const float* d = dyd + r * cols;
      float* out = dxd + r * cols;
      const float p = pd[r], m = md[r], rs = rd[r];
      // Pass 1 (the row stays in L1 for pass 2): sum(g*dy), sum(g*dy*xhat), column sums.
      float acc_g[kLanes] = {}, acc_gx[kLanes] = {};
      float* dsa = ds_acc.data();
      float* dba = db_acc.data();
      int64_t i = 0;
      for (; i + kLanes <= cols; i += kLanes) {
        for (int64_t j = 0; j < kLanes; ++j) {
          const float xhat = ((a[i + j] - p) - m) * rs;
          const float gdy = g[i + j] * d[i + j];
          acc_g[j] += gdy;
          acc_gx[j] += gdy * xhat;
          dsa[i + j] += d[i + j] * xhat;
          dba[i + j] += d[i + j];
        }
      }
      float tail_g = 0.f, tail_gx = 0.f;
      for (; i < cols; ++i) {
        const float xhat = ((a[i] - p) - m) * rs;
        const float gdy = g[i] * d[i];
        tail_g += gdy;
        tail_gx += gdy * xhat;
        dsa[i] += d[i] * xhat;
        dba[i] += d[i];
      }
      const float mean_g = (Reduce(acc_g) + tail_g) / fcols;
      const float mean_gx = (Reduce(acc_gx) + tail_gx) / fcols;
      // Pass 2: dx = rstd * (g*dy - mean(g*dy) - xhat * mean(g*dy*xhat)).
      for (int64_t k = 0; k < cols; ++k) {
        const float xhat = ((a[k] - p) - m) * rs;
        out[k] = (g[k] * d[k] - mean_g - xhat * mean_gx) * rs;
      }
      ++pending;
    }
    if (pending) flush();
  });

  // Chunks in order: a group split between chunks is added up the same way on every run.
  auto combine = [&](const std::vector<ColumnPartial>& parts, float* out, size_t out_elems) {
    std::vector<double> total(out_elems, 0.0);
    for (const ColumnPartial& part : parts) {
      double* dst = total.data() + part.first_group * cols;
      for (size_t i = 0; i < part.sums.size(); ++i) dst[i] += part.sums[i];
    }
    for (size_t i = 0; i < out_elems; ++i) out[i] = static_cast<float>(total[i]);
  };
  combine(ds_parts, dsd, dscale->element_count());
  combine(db_parts, dbd, dbias->element_count());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LnormLayerNormFwd, LayerNormFwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scale
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y
                                  .Ret<ffi::Buffer<ffi::F32>>()  // pivot
                                  .Ret<ffi::Buffer<ffi::F32>>()  // mean
                                  .Ret<ffi::Buffer<ffi::F32>>()  // rstd
                                  .Attr<float>("eps"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LnormLayerNormBwd, LayerNormBwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scale
                                  .Arg<ffi::Buffer<ffi::F32>>()  // pivot
                                  .Arg<ffi::Buffer<ffi::F32>>()  // mean
                                  .Arg<ffi::Buffer<ffi::F32>>()  // rstd
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dy
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dx
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dscale
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dbias
);
