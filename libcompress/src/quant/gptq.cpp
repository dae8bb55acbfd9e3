// GPTQ with lazy block updates (gptq.h). Output rows are independent given Hinv (every grid is per
// row), so the rows are split into one task per thread (at least kMinRowsPerTask rows each) run by
// at::parallel_for, each task running the whole column loop single-threaded: two synchronisations
// per layer instead of several per column, and ~8 small ATen calls per column per task (their
// dispatch, a few us each, is what a finer split would multiply). Per row the arithmetic does not
// depend on the split except inside the BLAS GEMM, whose per-element summation order could in
// principle differ between tiles. Inside a task the weights are held transposed, Wt [in, rows],
// so the column being quantized is one contiguous row:
//   for each block [i1, i2):
//     for each i: (fit the group's grid) -> codes of row i -> err = (w - q) / Hinv[i,i]
//                 -> Wt[i+1:i2] -= Hinv[i, i+1:i2]ᵀ ⊗ err
//     Wt[i2:] -= Hinv[i1:i2, i2:]ᵀ Err1          (one GEMM)
// A dynamic group that starts inside a block is fitted on the up-to-date weights: its in-block rows
// are current; its rows past the block get the block's pending update first (a small GEMM), so the
// result equals the column-by-column reference up to float rounding.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "mcompress/quant/gptq.h"
#include "quant/gptq_prep.h"

namespace mc {

using namespace gptq_detail;

namespace {

// Fewer rows than this per task and the per-column ATen dispatch outweighs the work (measured on
// 4096x4096, 1 thread: 16 tasks of 256 rows spend ~2 s of 3.7 s in dispatch).
constexpr int64_t kMinRowsPerTask = 256;

Grid rows_of(const Grid& g, int64_t r0, int64_t rc) {
  return {g.scale.narrow(0, r0, rc), g.inv.narrow(0, r0, rc), g.zero.narrow(0, r0, rc), g.zero_magic.narrow(0, r0, rc)};
}

// GPTQ on rows [r0, r0 + rc): codes into codes_perm [out, in] (quantization order), dynamic grids into
// the row slices of p.grids (allocated by the caller). Returns Σ err².
double quantize_rows(const Prep& p, const GptqOptions& o, const std::string& layer, const float* hdiag, int64_t r0,
                     int64_t rc, at::Tensor& codes_perm) {
  const int64_t in = p.in, bs = o.block_size;
  at::Tensor Wt = p.W.narrow(0, r0, rc).t().contiguous();  // [in, rc]
  at::Tensor codes_t = at::empty({in, rc}, Wt.options());
  std::vector<Grid> grids(p.grids.size());
  if (!p.dynamic)
    for (size_t g = 0; g < grids.size(); ++g) grids[g] = rows_of(p.grids[g], r0, rc);
  at::Tensor err_buf = at::empty({std::min(bs, in), rc}, Wt.options());
  at::Tensor loss = at::zeros({}, Wt.options().dtype(at::kDouble));
  for (int64_t i1 = 0; i1 < in; i1 += bs) {
    const int64_t i2 = std::min(i1 + bs, in), count = i2 - i1;
    at::Tensor W1 = Wt.narrow(0, i1, count);  // updated in place
    at::Tensor Err1 = err_buf.narrow(0, 0, count);
    at::Tensor Hinv1 = p.Hinv.narrow(0, i1, count).narrow(1, i1, count);
    for (int64_t i = 0; i < count; ++i) {
      const int64_t j = i1 + i;
      if (p.starts_group(j)) {
        const int64_t e = p.group_end(j);
        at::Tensor cur = Wt.narrow(0, j, e - j);
        if (e > i2 && i > 0) {  // rows past the block still miss this block's update
          cur = cur.clone();
          cur.narrow(0, i2 - j, e - i2)
              .addmm_(p.Hinv.narrow(0, i1, i).narrow(1, i2, e - i2).t(), Err1.narrow(0, 0, i), 1, -1);
        }
        grids[size_t(p.group_at(j))] = fit(cur.t(), o.spec, layer);
      }
      at::Tensor w = W1[i];
      at::Tensor q = round_column(w, grids[size_t(p.group_at(j))], o.spec.bits, codes_t[j]);
      at::Tensor err = Err1[i];
      at::sub_out(err, w, q).div_(double(hdiag[j]));
      if (i + 1 < count) W1.narrow(0, i + 1, count - i - 1).addr_(Hinv1[i].narrow(0, i + 1, count - i - 1), err, 1, -1);
    }
    loss.add_(at::sum(Err1.mul(Err1), at::kDouble));
    if (i2 < in) Wt.narrow(0, i2, in - i2).addmm_(p.Hinv.narrow(0, i1, count).narrow(1, i2, in - i2).t(), Err1, 1, -1);
  }
  codes_perm.narrow(0, r0, rc).copy_(codes_t.t());
  if (p.dynamic)
    for (size_t g = 0; g < grids.size(); ++g) {
      p.grids[g].scale.narrow(0, r0, rc).copy_(grids[g].scale);
      p.grids[g].zero.narrow(0, r0, rc).copy_(grids[g].zero);
    }
  return loss.item<double>();
}

}  // namespace

GptqResult gptq_quantize(const at::Tensor& W, const at::Tensor& H, const GptqOptions& o, const std::string& layer) {
  Prep p = prepare(W, H, o, layer);
  const int64_t out = p.W.size(0), in = p.in;
  const at::Tensor hdiag_t = p.Hinv.diagonal().cpu().contiguous();
  const float* hdiag = hdiag_t.data_ptr<float>();
  if (p.dynamic)  // filled row slice by row slice (finish() reads scale and zero)
    for (Grid& g : p.grids) g.scale = at::empty({out}, p.W.options()), g.zero = at::empty({out}, p.W.options());
  at::Tensor codes_perm = at::empty({out, in}, p.W.options());
  const int64_t threads = p.W.is_cpu() ? std::max(1, at::get_num_threads()) : 1;
  const int64_t rows_per_task = std::max(kMinRowsPerTask, (out + threads - 1) / threads);
  const int64_t tasks = (out + rows_per_task - 1) / rows_per_task;
  std::vector<double> losses(size_t(tasks), 0.0);
  auto run = [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = t * rows_per_task, rc = std::min(rows_per_task, out - r0);
      losses[size_t(t)] = quantize_rows(p, o, layer, hdiag, r0, rc, codes_perm);
    }
  };
  if (p.W.is_cpu())
    at::parallel_for(0, tasks, 1, run);
  else
    run(0, tasks);
  double loss = 0;
  for (double l : losses) loss += l;  // fixed order
  return finish(p, o, codes_perm, loss);
}

}  // namespace mc
