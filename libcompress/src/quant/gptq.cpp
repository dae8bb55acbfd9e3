// GPTQ with lazy block updates (gptq.h), in the form with V, the upper triangular factor of the
// damped H = V Vᵀ (gptq_prep.h): with Vs = V scaled to a unit diagonal (Vs[i, j] = V[i, j] / V[j, j])
// and D = W - Q the quantization errors against the ORIGINAL weights, column j is quantized from
//   w̃_j = W_j + Σ_{i<j} D_i Vs[i, j].
// The weights stay in their [out, in] layout (columns in quantization order); Wc holds the current
// w̃, W the original:
//   for each block [i1, i2):
//     for each run of the block's columns in one group ([s0, s1), split where a dynamic group starts):
//       (fit the group's grid: one ATen call over all rows, on the weights the authors' form would
//        hold for the group's columns: group_weights())
//       rows in parallel (at::get_num_threads() plain threads), each row on its own, plain C++ on
//       contiguous memory:
//         for j in [s0, s1): code of w̃[r, j] -> D[r, j] = W[r, j] - q -> w̃[r, j+1:i2] += D[r, j] Vs[j, j+1:i2]
//     Wc[:, i2:] += D[:, i1:i2] Vs[i1:i2, i2:]        (one GEMM, BLAS threads)
// A row's work inside a block is a short loop over memory that stays in L1 (its 128 weights and
// errors) with the block of Vs (64 KiB at block 128) in L2, so it is cheap next to the GEMM, which
// with the one Cholesky of prepare() is all the O(n³) work. The rounding of a weight is
// round_column's (rtn.cpp's) operation for operation, in float32, so for the same w̃ the codes are
// the reference's bit for bit. A dynamic group that starts inside a block is fitted on the
// up-to-date weights: its in-block columns are current; its columns past the block get the block's
// pending update first (a small GEMM), so the result equals the column-by-column reference up to
// float rounding.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <thread>
#include <vector>

#include "mcompress/quant/gptq.h"
#include "quant/gptq_prep.h"

namespace mc {

using namespace gptq_detail;

namespace {

// Rows per parallel task: enough that the per-task setup (a few pointers) is noise.
constexpr int64_t kRowsPerTask = 64;
// The rounding constant of gptq_prep.cpp / rtn.cpp (1.5 * 2^23, in float).
constexpr float kMagic = 12582912.0f;

// One column's grid as raw row arrays (float32 [out] each).
struct ColGrid {
  const float *inv, *zero_magic, *zero, *scale;
};

ColGrid col_grid(const Grid& g) {
  return {g.inv.data_ptr<float>(), g.zero_magic.data_ptr<float>(), g.zero.data_ptr<float>(), g.scale.data_ptr<float>()};
}

struct Block {
  float* wc;            // current weights [out, in]
  const float* w0;      // original weights [out, in]
  uint8_t* codes;       // [out, in], quantization order
  float* d;             // [out, ld_d]: W - Q of the block's columns
  const float* vs;      // unit upper factor [in, in]
  const float* vdiag;   // V[j, j]
  int64_t in, ld_d, i1, i2, s0, s1;
  float maxq;
};

// Columns [s0, s1) of rows [r0, r1); returns Σ err² of them (err = (w̃ - q) V[j, j]).
double quantize_rows(const Block& b, const std::vector<ColGrid>& grids, int64_t r0, int64_t r1) {
  double loss = 0;
  for (int64_t r = r0; r < r1; ++r) {
    float* __restrict w = b.wc + r * b.in;
    const float* w0 = b.w0 + r * b.in;
    uint8_t* code = b.codes + r * b.in;
    float* d = b.d + r * b.ld_d;  // d[j - i1] for j in [i1, i2)
    for (int64_t j = b.s0; j < b.s1; ++j) {
      const ColGrid& g = grids[size_t(j - b.s0)];
      const float x = w[j];
      // round_column: x * inv + zero_magic, clamped, minus the magic; value (code - zero) * scale
      float t = x * g.inv[r];
      t = t + g.zero_magic[r];
      t = std::min(std::max(t, kMagic), kMagic + b.maxq);
      const float c = t - kMagic;
      const float q = (c - g.zero[r]) * g.scale[r];
      code[j] = uint8_t(c);  // an exact integer 0..maxq
      const double e = double((x - q) * b.vdiag[j]);
      loss += e * e;
      const float dj = w0[j] - q;
      d[j - b.i1] = dj;
      const float* __restrict v = b.vs + j * b.in;
      for (int64_t k = j + 1; k < b.i2; ++k) w[k] += dj * v[k];
    }
  }
  return loss;
}

// The weights the authors' algorithm holds for the columns [s0, e) of a group when it reaches s0, from
// cur, what this one holds (gptq_prep.h): only column s0 itself is the same in both. With
// P = (cur - W) diag(V) = D_{<s0} V_{<s0, [s0, e)}, theirs are W + P U_g, where U_g is the inverse
// of V's diagonal block [s0, e) (their Hinv is V⁻¹ and its block [s0, e) only sees V's block). With
// V = Vs diag(V) that is W + (cur - W) Vs_g⁻¹: the unit factor's block alone.
// The first group has P = 0 and is fitted on W exactly.
at::Tensor group_weights(const Prep& p, const at::Tensor& Vs, const at::Tensor& cur, int64_t s0, int64_t e) {
  const at::Tensor W = p.W.narrow(1, s0, e - s0);
  if (s0 == 0) return W;
  const at::Tensor Vg = Vs.narrow(0, s0, e - s0).narrow(1, s0, e - s0);
  const at::Tensor Ug = at::linalg_solve_triangular(Vg, at::eye(e - s0, Vg.options()), /*upper=*/true);
  return at::addmm(W, cur.sub(W), Ug);
}

}  // namespace

GptqResult gptq_quantize(const at::Tensor& W, const at::Tensor& H, const GptqOptions& o, const std::string& layer) {
  if (!W.is_cpu()) {  // the row loop is plain C++: run on the CPU, hand the results back on the device
    const at::Device dev = W.device();
    GptqResult r = gptq_quantize(W.cpu(), H.cpu(), o, layer);
    for (at::Tensor* t : {&r.quant.codes, &r.quant.scales, &r.quant.zeros, &r.quant.g_idx, &r.perm, &r.g_idx})
      if (t->defined()) *t = t->to(dev);
    return r;
  }
  Prep p = prepare(W, H, o, layer);
  const int64_t out = p.W.size(0), in = p.in, bs = std::min(o.block_size, in);
  const at::Tensor vdiag = p.V.diagonal().contiguous();
  // Scaled to a unit diagonal in place: V's own buffer, not a second [in, in] matrix.
  at::Tensor Vs = std::move(p.V);
  Vs.div_(vdiag.unsqueeze(0));
  at::Tensor Wc = p.W.clone();
  at::Tensor codes_perm = at::empty({out, in}, p.W.options().dtype(at::kByte));
  at::Tensor D = at::empty({out, bs}, p.W.options());
  const int64_t tasks = std::max<int64_t>(1, (out + kRowsPerTask - 1) / kRowsPerTask);
  std::vector<double> losses(size_t(tasks), 0.0);  // per task, summed in a fixed order below
  const int64_t workers = std::min<int64_t>(tasks, std::max(1, at::get_num_threads()));
  Block b{Wc.data_ptr<float>(), p.W.data_ptr<float>(), codes_perm.data_ptr<uint8_t>(), D.data_ptr<float>(),
          Vs.data_ptr<float>(), vdiag.data_ptr<float>(), in, bs, 0, 0, 0, 0, float((1 << o.spec.bits) - 1)};
  std::vector<ColGrid> grids;
  for (int64_t i1 = 0; i1 < in; i1 += bs) {
    const int64_t i2 = std::min(i1 + bs, in), count = i2 - i1;
    for (int64_t s0 = i1; s0 < i2;) {
      const int64_t s1 = p.dynamic ? std::min(i2, (s0 / p.gcols + 1) * p.gcols) : i2;
      if (p.starts_group(s0)) {
        const int64_t e = p.group_end(s0);
        at::Tensor cur = Wc.narrow(1, s0, e - s0).clone();
        if (e > i2 && s0 > i1)  // columns past the block still miss this block's update
          cur.narrow(1, i2 - s0, e - i2).addmm_(D.narrow(1, 0, s0 - i1), Vs.narrow(0, i1, s0 - i1).narrow(1, i2, e - i2));
        p.grids[size_t(p.group_at(s0))] = fit(group_weights(p, Vs, cur, s0, e), o.spec, layer);
      }
      grids.clear();
      for (int64_t j = s0; j < s1; ++j) grids.push_back(col_grid(p.grids[size_t(p.group_at(j))]));
      b.i1 = i1, b.i2 = i2, b.s0 = s0, b.s1 = s1;
      run_row_tasks(tasks, workers, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t)
          losses[size_t(t)] += quantize_rows(b, grids, t * kRowsPerTask, std::min(out, (t + 1) * kRowsPerTask));
      });
      s0 = s1;
    }
    if (i2 < in) Wc.narrow(1, i2, in - i2).addmm_(D.narrow(1, 0, count), Vs.narrow(0, i1, count).narrow(1, i2, in - i2));
  }
  double loss = 0;
  for (double l : losses) loss += l;  // fixed order
  return finish(p, o, codes_perm, loss);
}

}  // namespace mc
