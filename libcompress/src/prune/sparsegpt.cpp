// SparseGPT with lazy block updates in the authors' form (sparsegpt.h). Preparation (dead columns,
// damping with retries) is gptq_prep's prepare(); the factor is its hinv_of(), the authors' upper
// Cholesky factor of the damped H⁻¹. Per block [i1, i2):
//   unstructured: mask of the whole block from one ATen sort of W1² / d²
//   column loop: rows in parallel (plain threads, as gptq.cpp), each row plain C++ on contiguous memory:
//     (N:M: at a group's first column, choose the row's N smallest scores of the group)
//     q = 0 / w / quantized w;  err = (w - q) / d_j;  w1[j+1:i2] -= err Hinv[j, j+1:i2]
//   (with dynamic quant groups the loop is split where a group starts: its grid is fitted on all rows'
//    current weights, one ATen call)
//   trailing update: W[:, i2:] -= Err1 Hinv[i1:i2, i2:] (one GEMM).
#include "mcompress/prune/sparsegpt.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <thread>
#include <vector>

#include "mcompress/error.h"
#include "quant/gptq_prep.h"

namespace mc {

using namespace gptq_detail;

namespace {

constexpr const char* kComp = "sparsegpt";
constexpr int64_t kRowsPerTask = 64;
constexpr float kMagic = 12582912.0f;  // rounding constant of rtn.cpp / gptq_prep.cpp (1.5 * 2^23)

std::string where(const std::string& layer) { return layer.empty() ? std::string() : "layer " + layer + ": "; }

bool nm_mode(const SparseGptOptions& o) { return o.prune_n != 0 || o.prune_m != 0; }

void validate(const at::Tensor& W, const at::Tensor& H, const SparseGptOptions& o, const std::string& layer) {
  if (W.dim() != 2) fail(kComp, where(layer), "expected a 2-D weight [out, in], got ", W.dim(), " dims");
  if (!at::isFloatingType(W.scalar_type()) || !H.defined() || !at::isFloatingType(H.scalar_type()))
    fail(kComp, where(layer), "expected floating-point W and H");
  const int64_t in = W.size(1);
  if (H.dim() != 2 || H.size(0) != in || H.size(1) != in)
    fail(kComp, where(layer), "Hessian ", H.sizes(), " does not match in_features ", in, " (expected [", in, ", ", in,
         "])");
  if (in < 1 || W.size(0) < 1) fail(kComp, where(layer), "empty weight ", W.sizes());
  if (nm_mode(o)) {
    if (o.prune_n < 1 || o.prune_n >= o.prune_m)
      fail(kComp, where(layer), "N:M ", o.prune_n, ":", o.prune_m, " needs 1 <= N < M (e.g. 2:4, 4:8)");
    if (in % o.prune_m != 0)
      fail(kComp, where(layer), o.prune_n, ":", o.prune_m, " needs the input width (", in, ") to be a multiple of ",
           o.prune_m);
  } else if (!(o.sparsity >= 0 && o.sparsity < 1)) {
    fail(kComp, where(layer), "sparsity ", o.sparsity, " outside [0, 1)");
  }
  if (o.block_size < 1) fail(kComp, where(layer), "block_size ", o.block_size, " must be >= 1");
  if (!(o.damp >= 0) || !std::isfinite(o.damp)) fail(kComp, where(layer), "damp ", o.damp, " must be a number >= 0");
  if (o.max_damp_retries < 0 || o.max_damp_retries > 20)
    fail(kComp, where(layer), "max_damp_retries ", o.max_damp_retries, " outside 0..20");
  if (o.quant) {
    o.quant->validate(layer, in);
    if (o.quant->group_size < 0)
      fail(kComp, where(layer), "group_size ", o.quant->group_size,
           " (per tensor) is not supported; use a group size >= 1 or 0 (per output channel)");
  }
  if (!at::isfinite(W).all().item<bool>()) fail(kComp, where(layer), "weights contain NaN or Inf");
  if (!at::isfinite(H).all().item<bool>()) fail(kComp, where(layer), "Hessian contains NaN or Inf");
}

struct ColGrid {
  const float *inv, *zero_magic, *zero, *scale;
};

// One block's state, raw pointers (all float32 / uint8 contiguous).
struct Block {
  float* w1;          // [out, count]: the block's current weights
  float* err;         // [out, count]: Err1
  float* wout;        // [out, in]: receives q
  uint8_t* keep;      // [out, in]: 1 = kept (unstructured: filled before the loop)
  uint8_t* codes;     // [out, in] or nullptr
  const float* hinv;  // [in, in] upper
  int64_t in, count, i1, s0, s1;
  int n, m;           // N:M (m = 0: unstructured)
  float maxq;
};

// Columns [s0, s1) of rows [r0, r1); returns Σ (w - q)² / d².
double prune_rows(const Block& b, const std::vector<ColGrid>& grids, int64_t r0, int64_t r1) {
  double loss = 0;
  std::vector<int> order(size_t(std::max(b.m, 1)));
  std::vector<float> score(size_t(std::max(b.m, 1)));
  for (int64_t r = r0; r < r1; ++r) {
    float* __restrict w = b.w1 + r * b.count;
    float* e = b.err + r * b.count;
    uint8_t* keep = b.keep + r * b.in;
    for (int64_t j = b.s0; j < b.s1; ++j) {
      const int64_t c = j - b.i1;  // column inside the block
      const float d = b.hinv[j * b.in + j];
      if (b.m > 0 && j % b.m == 0) {  // the row's N smallest w² / d² of columns j..j+M
        for (int t = 0; t < b.m; ++t) {
          const float dt = b.hinv[(j + t) * b.in + j + t];
          score[size_t(t)] = (w[c + t] * w[c + t]) / (dt * dt);
          order[size_t(t)] = t;
        }
        std::stable_sort(order.begin(), order.end(), [&](int a, int z) { return score[size_t(a)] < score[size_t(z)]; });
        for (int t = 0; t < b.m; ++t) keep[j + t] = 1;
        for (int t = 0; t < b.n; ++t) keep[j + order[size_t(t)]] = 0;
      }
      const float x = w[c];
      float q = 0;
      if (!grids.empty()) {
        const ColGrid& g = grids[size_t(j - b.s0)];
        if (keep[j]) {  // rtn.cpp's rounding, operation for operation
          float t = x * g.inv[r];
          t = t + g.zero_magic[r];
          t = std::min(std::max(t, kMagic), kMagic + b.maxq);
          const float code = t - kMagic;
          q = (code - g.zero[r]) * g.scale[r];
          b.codes[r * b.in + j] = uint8_t(code);
        } else {  // quantize(0) is the zero point, dequantized exactly to 0
          b.codes[r * b.in + j] = uint8_t(g.zero[r]);
        }
      } else if (keep[j]) {
        q = x;
      }
      b.wout[r * b.in + j] = q;
      const float diff = x - q;
      loss += double(diff) * double(diff) / (double(d) * double(d));
      const float ej = diff / d;
      e[c] = ej;
      if (ej != 0) {
        const float* __restrict h = b.hinv + j * b.in;
        for (int64_t k = c + 1; k < b.count; ++k) w[k] -= ej * h[b.i1 + k];
      }
    }
  }
  return loss;
}

}  // namespace

SparseGptResult sparsegpt_prune(const at::Tensor& W, const at::Tensor& H, const SparseGptOptions& o,
                                const std::string& layer) {
  validate(W, H, o, layer);
  if (!W.is_cpu()) {  // the row loop is plain C++: run on the CPU, hand the results back on the device
    const at::Device dev = W.device();
    SparseGptResult r = sparsegpt_prune(W.cpu(), H.cpu(), o, layer);
    r.weight = r.weight.to(dev), r.mask = r.mask.to(dev);
    if (r.quant)
      for (at::Tensor* t : {&r.quant->codes, &r.quant->scales, &r.quant->zeros}) *t = t->to(dev);
    return r;
  }
  GptqOptions go;
  if (o.quant) {
    go.spec = *o.quant;
  } else {  // prepare() fits a per-channel grid that is not used
    go.spec.bits = 8;
    go.spec.group_size = 0;
  }
  go.damp = o.damp;
  go.block_size = o.block_size;
  go.max_damp_retries = o.max_damp_retries;
  Prep p;
  try {
    p = prepare(W, H, go, layer);
  } catch (const InputError& e) {  // only the damping can fail after validate(): name this component
    std::string msg = e.what();
    if (msg.rfind("[gptq]", 0) == 0) msg = "[sparsegpt]" + msg.substr(6);
    throw InputError(msg);
  }
  const at::Tensor Hinv = hinv_of(p);
  const int64_t out = p.W.size(0), in = p.in;
  const bool fixed = o.mask.defined();
  if (fixed && (o.mask.dim() != 2 || o.mask.size(0) != out || o.mask.size(1) != in))
    fail(kComp, where(layer), "the fixed mask must be [", out, ", ", in, "]");
  const bool nm = nm_mode(o) && !fixed;
  int64_t bs = std::min(o.block_size, in);
  if (nm) bs = std::max<int64_t>(o.prune_m, bs / o.prune_m * o.prune_m);  // groups never straddle blocks
  at::Tensor Wc = p.W.clone();  // becomes the result
  at::Tensor keep = at::ones({out, in}, p.W.options().dtype(at::kByte));
  at::Tensor codes;
  if (o.quant) codes = at::empty({out, in}, keep.options());
  at::Tensor W1 = at::empty({out, bs}, p.W.options()), Err1 = at::empty({out, bs}, p.W.options());
  const at::Tensor hdiag = Hinv.diagonal().contiguous();
  const int64_t tasks = (out + kRowsPerTask - 1) / kRowsPerTask;
  const int64_t workers = std::min<int64_t>(tasks, std::max(1, at::get_num_threads()));
  std::vector<double> losses(size_t(tasks), 0.0);  // per task, summed in a fixed order
  std::vector<ColGrid> grids;
  const float* hp = Hinv.data_ptr<float>();
  for (int64_t i1 = 0; i1 < in; i1 += bs) {
    const int64_t i2 = std::min(i1 + bs, in), count = i2 - i1;
    at::Tensor w1 = W1.narrow(1, 0, count), err1 = Err1.narrow(1, 0, count);
    if (count != bs) w1 = at::empty({out, count}, W1.options()), err1 = at::empty({out, count}, W1.options());
    w1.copy_(Wc.narrow(1, i1, count));
    if (fixed) {
      keep.narrow(1, i1, count).copy_(o.mask.narrow(1, i1, count));
    } else if (!nm) {  // the block's k smallest W1² / d², over all rows together (the reference's flat sort)
      const int64_t k = int64_t(o.sparsity * double(out * count));
      if (k > 0) {
        const at::Tensor d = hdiag.narrow(0, i1, count);
        const at::Tensor score = w1.square().div(d.square().unsqueeze(0)).reshape({-1});
        const at::Tensor idx = std::get<1>(at::sort(score, /*stable=*/true, 0, /*descending=*/false)).narrow(0, 0, k);
        at::Tensor kb = at::ones({out * count}, keep.options()).index_fill_(0, idx, 0).view({out, count});
        keep.narrow(1, i1, count).copy_(kb);
      }
    }
    for (int64_t s0 = i1; s0 < i2;) {
      const bool dyn = o.quant && p.dynamic;
      const int64_t s1 = dyn ? std::min(i2, (s0 / p.gcols + 1) * p.gcols) : i2;
      if (dyn && p.starts_group(s0)) {  // fit on the group's current weights (pending updates applied)
        const int64_t e = p.group_end(s0);
        at::Tensor cur = at::empty({out, e - s0}, W1.options());
        const int64_t inb = std::min(e, i2) - s0;
        cur.narrow(1, 0, inb).copy_(w1.narrow(1, s0 - i1, inb));
        if (e > i2) {
          at::Tensor past = cur.narrow(1, inb, e - i2);
          past.copy_(Wc.narrow(1, i2, e - i2));
          if (s0 > i1) past.addmm_(err1.narrow(1, 0, s0 - i1), Hinv.narrow(0, i1, s0 - i1).narrow(1, i2, e - i2), 1, -1);
        }
        p.grids[size_t(p.group_at(s0))] = fit(cur, *o.quant, layer);
      }
      grids.clear();
      if (o.quant)
        for (int64_t j = s0; j < s1; ++j) {
          const Grid& g = p.grids[size_t(p.group_at(j))];
          grids.push_back({g.inv.data_ptr<float>(), g.zero_magic.data_ptr<float>(), g.zero.data_ptr<float>(),
                           g.scale.data_ptr<float>()});
        }
      Block b{w1.data_ptr<float>(), err1.data_ptr<float>(), Wc.data_ptr<float>(), keep.data_ptr<uint8_t>(),
              o.quant ? codes.data_ptr<uint8_t>() : nullptr, hp, in, count, i1, s0, s1,
              nm ? o.prune_n : 0, nm ? o.prune_m : 0, o.quant ? float((1 << o.quant->bits) - 1) : 0.f};
      run_row_tasks(tasks, workers, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t)
          losses[size_t(t)] += prune_rows(b, grids, t * kRowsPerTask, std::min(out, (t + 1) * kRowsPerTask));
      });
      s0 = s1;
    }
    if (i2 < in) Wc.narrow(1, i2, in - i2).addmm_(err1, Hinv.narrow(0, i1, count).narrow(1, i2, in - i2), 1, -1);
  }
  SparseGptResult r;
  double loss = 0;
  for (double l : losses) loss += l;
  r.loss = loss / 2;
  r.weight = Wc;
  r.mask = keep.to(at::kBool);
  r.damp_retries = p.retries;
  r.dead_columns = p.dead;
  if (o.quant) r.quant = finish(p, go, codes, 0.0).quant;
  return r;
}

}  // namespace mc
