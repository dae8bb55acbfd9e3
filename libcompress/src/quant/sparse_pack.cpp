// Sparse entries of packed checkpoints: bitmask or N:M positions plus the kept values or codes
// (layout: docs/packed-format.md, "Sparse entries"; API: quant/sparse.h).
#include <ATen/ATen.h>

#include "mcompress/checkpoint.h"
#include "mcompress/error.h"
#include "mcompress/quant/packed.h"
#include "mcompress/quant/sparse.h"
#include "mcompress/torch_bridge.h"

namespace mc {

namespace {

constexpr const char* kComp = "sparse";
constexpr double kF16Max = 65504.0;  // largest finite float16

// Loads `name` after checking its dtype and shape (the same check packed.cpp makes for its parts).
HostTensor load_checked(const CheckpointReader& reader, const std::string& key, const std::string& name, DType dtype,
                        const Shape& shape) {
  if (!reader.contains(name)) fail(kComp, reader.path(), ": sparse tensor '", key, "' lacks '", name, "'");
  const TensorInfo& ti = reader.info(name);
  if (ti.dtype != dtype || ti.shape != shape)
    fail(kComp, reader.path(), ": '", name, "' is ", dtype_name(ti.dtype), " ", shape_str(ti.shape), ", expected ",
         dtype_name(dtype), " ", shape_str(shape));
  return reader.load(name);
}

// [r, c] of the first true entry of a 2-D or 3-D bool tensor.
std::vector<int64_t> first_true(const at::Tensor& t) {
  const at::Tensor nz = t.nonzero();
  std::vector<int64_t> at_(size_t(nz.size(1)));
  for (int64_t d = 0; d < nz.size(1); ++d) at_[size_t(d)] = nz[0][d].item<int64_t>();
  return at_;
}

at::Tensor bit_weights() { return at::tensor({1, 2, 4, 8, 16, 32, 64, 128}, at::kByte); }

}  // namespace

std::string SparseLayout::describe() const {
  return bitmask() ? std::string("bitmask") : std::to_string(n) + ":" + std::to_string(m);
}

void SparseLayout::validate(const std::string& layer, int64_t in_features) const {
  if (bitmask()) return;
  if (m < 2 || m > 16 || n < 1 || n >= m)
    fail(kComp, "layer ", layer, ": N:M layout ", n, ":", m, " needs 2 <= m <= 16 and 1 <= n < m (n zeroed of every m; "
         "n = m = 0 for a bitmask)");
  if (in_features % m != 0)
    fail(kComp, "layer ", layer, ": N:M groups of ", m, " columns do not divide in_features ", in_features,
         " (use the bitmask layout)");
}

int SparseLayout::index_bits() const {
  if (bitmask()) return 0;
  int b = 0;
  while ((1 << b) < m) ++b;
  return std::max(2, b);
}

std::vector<HostTensor> encode_sparse(const std::string& key, const at::Tensor& w_in, const SparseLayout& layout,
                                      const at::Tensor& codes_in, int bits, int64_t* kept) {
  if (!w_in.defined() || w_in.dim() != 2 || !at::isFloatingType(w_in.scalar_type()))
    fail(kComp, key, ": the weight must be a floating-point [out, in] tensor");
  const at::Tensor w = w_in.to(at::kCPU).to(at::kFloat).contiguous();
  const int64_t out = w.size(0), in = w.size(1);
  layout.validate(key, in);
  const bool quantized = codes_in.defined();
  at::Tensor stored;  // float16 values or uint8 codes [out, in]
  if (quantized) {
    if (codes_in.scalar_type() != at::kByte || codes_in.sizes() != w.sizes())
      fail(kComp, key, ": codes must be uint8 ", w.sizes(), ", got ", c10::toString(codes_in.scalar_type()), " ",
           codes_in.sizes());
    stored = codes_in.to(at::kCPU).contiguous();
  } else {
    const at::Tensor bad = at::isfinite(w).logical_not() | w.abs().gt(kF16Max);
    if (bad.any().item<bool>()) {
      const auto p = first_true(bad);
      fail(kComp, key, ": value ", w[p[0]][p[1]].item<float>(), " at [", p[0], ", ", p[1],
           "] is not a finite float16 value (|x| <= 65504); store this weight quantized or dense");
    }
    stored = w.to(at::kHalf);
  }
  const at::Tensor nz = w.ne(0);
  std::vector<HostTensor> parts;
  if (layout.bitmask()) {
    const int64_t rb = (in + 7) / 8;
    at::Tensor bitsq = at::zeros({out, rb * 8}, at::kByte);
    bitsq.narrow(1, 0, in).copy_(nz);
    const at::Tensor mask = bitsq.view({out, rb, 8}).mul(bit_weights()).sum(-1).to(at::kByte);
    parts.push_back(from_torch(key + ".mask", mask));
    *kept = nz.sum().item<int64_t>();
    const at::Tensor flat = stored.masked_select(nz);  // row by row, in column order
    if (quantized)
      parts.push_back(HostTensor::owned(key + ".qweight", DType::U8, {packed_row_bytes(*kept, bits)},
                                        pack_codes(flat, bits)));
    else
      parts.push_back(from_torch(key + ".values", flat));
    return parts;
  }
  const int64_t m = layout.m, k = layout.m - layout.n, g = in / m, K = g * k;
  const at::Tensor nzg = nz.view({out, g, m});
  const at::Tensor over = nzg.sum(-1).gt(k);
  if (over.any().item<bool>()) {
    const auto p = first_true(over);
    fail(kComp, key, ": row ", p[0], ", columns ", p[1] * m, "..", p[1] * m + m - 1, " hold ",
         nzg[p[0]][p[1]].sum().item<int64_t>(), " non-zeros; a ", layout.describe(), " layout keeps ", k,
         " of every ", m, " (prune with this N:M pattern, or use the bitmask layout)");
  }
  // The non-zeros of each group, then its first zeros until there are k: sort by (zero?, position).
  const at::Tensor order = nzg.logical_not().to(at::kLong).mul(m).add(at::arange(m, at::kLong));
  const at::Tensor idx = std::get<0>(std::get<1>(order.sort(-1)).narrow(-1, 0, k).sort(-1));  // [out, g, k]
  const at::Tensor cols = idx.add(at::arange(g, at::kLong).mul(m).view({1, g, 1})).reshape({out, K});
  const int ib = layout.index_bits();
  parts.push_back(HostTensor::owned(key + ".indices", DType::U8, {out, packed_row_bytes(K, ib)},
                                    pack_codes(idx.to(at::kByte).reshape({out, K}), ib)));
  const at::Tensor kept_vals = stored.gather(1, cols);
  if (quantized)
    parts.push_back(HostTensor::owned(key + ".qweight", DType::U8, {out, packed_row_bytes(K, bits)},
                                      pack_codes(kept_vals, bits)));
  else
    parts.push_back(from_torch(key + ".values", kept_vals));
  *kept = out * K;
  return parts;
}

SparseParts decode_sparse_parts(const CheckpointReader& reader, const std::string& key, int64_t out, int64_t in,
                                const SparseLayout& layout, int64_t kept, int bits) {
  const std::string& path = reader.path();
  try {
    layout.validate(key, in);
  } catch (const InputError& e) {
    fail(kComp, path, ": ", e.what());
  }
  SparseParts p;
  const bool quantized = bits > 0;
  const std::string vname = key + (quantized ? ".qweight" : ".values");
  if (layout.bitmask()) {
    if (kept < 0 || kept > out * in)
      fail(kComp, path, ": sparse tensor '", key, "': kept ", kept, " outside 0..", out * in);
    const int64_t rb = (in + 7) / 8;
    const at::Tensor bytes = to_torch(load_checked(reader, key, key + ".mask", DType::U8, {out, rb}));
    const at::Tensor bitsq = bytes.unsqueeze(-1).bitwise_and(bit_weights()).ne(0).reshape({out, rb * 8});
    if (rb * 8 > in) {
      const at::Tensor pad = bitsq.narrow(1, in, rb * 8 - in);
      if (pad.any().item<bool>()) {
        const auto q = first_true(pad);
        fail(kComp, path, ": '", key, ".mask' row ", q[0], " marks column ", in + q[1], ", past the last column ",
             in - 1);
      }
    }
    p.mask = bitsq.narrow(1, 0, in).contiguous();
    const int64_t count = p.mask.sum().item<int64_t>();
    if (count != kept)
      fail(kComp, path, ": '", key, ".mask' marks ", count, " kept entries, the description says \"kept\": ", kept);
    at::Tensor flat;
    if (quantized) {
      const HostTensor qw = load_checked(reader, key, vname, DType::U8, {packed_row_bytes(kept, bits)});
      flat = unpack_codes(qw.data, 1, kept, bits).view({kept});
      p.stored = at::zeros({out, in}, at::kByte);
    } else {
      flat = to_torch(load_checked(reader, key, vname, DType::F16, {kept})).to(at::kFloat);
      p.stored = at::zeros({out, in}, at::kFloat);
    }
    p.stored.masked_scatter_(p.mask, flat);
  } else {
    const int64_t m = layout.m, k = layout.m - layout.n, g = in / m, K = g * k;
    if (kept != out * K)
      fail(kComp, path, ": sparse tensor '", key, "': \"kept\": ", kept, ", a ", layout.describe(), " layout of ", out,
           "x", in, " keeps ", out * K);
    const int ib = layout.index_bits();
    const HostTensor it = load_checked(reader, key, key + ".indices", DType::U8, {out, packed_row_bytes(K, ib)});
    const at::Tensor idx = unpack_codes(it.data, out, K, ib).to(at::kLong).view({out, g, k});
    const at::Tensor big = idx.ge(m);
    if (big.any().item<bool>()) {
      const auto q = first_true(big);
      fail(kComp, path, ": '", key, ".indices' row ", q[0], " group ", q[1], " holds position ",
           idx[q[0]][q[1]][q[2]].item<int64_t>(), ", outside 0..", m - 1);
    }
    if (k > 1) {
      const at::Tensor unordered = idx.narrow(2, 1, k - 1).le(idx.narrow(2, 0, k - 1));
      if (unordered.any().item<bool>()) {
        const auto q = first_true(unordered);
        fail(kComp, path, ": '", key, ".indices' row ", q[0], " group ", q[1],
             ": positions are not strictly ascending within the group");
      }
    }
    const at::Tensor cols = idx.add(at::arange(g, at::kLong).mul(m).view({1, g, 1})).reshape({out, K});
    p.mask = at::zeros({out, in}, at::kBool).scatter_(1, cols, true);
    at::Tensor vals;
    if (quantized) {
      const HostTensor qw = load_checked(reader, key, vname, DType::U8, {out, packed_row_bytes(K, bits)});
      vals = unpack_codes(qw.data, out, K, bits);
      p.stored = at::zeros({out, in}, at::kByte);
    } else {
      vals = to_torch(load_checked(reader, key, vname, DType::F16, {out, K})).to(at::kFloat);
      p.stored = at::zeros({out, in}, at::kFloat);
    }
    p.stored.scatter_(1, cols, vals);
  }
  if (!quantized && !at::isfinite(p.stored).all().item<bool>())
    fail(kComp, path, ": '", vname, "' holds NaN or Inf");
  return p;
}

namespace {
int64_t grid_bytes(int64_t out, int64_t in, const QuantSpec& s, bool g_idx) {
  const int64_t G = s.n_groups(in);
  return out * G * 2 + (s.symmetric ? 0 : out * packed_row_bytes(G, s.bits)) + (g_idx ? 4 * in : 0);
}
}  // namespace

int64_t sparse_bytes(int64_t out, int64_t in, int64_t kept, const SparseLayout& layout, const QuantSpec* spec,
                     bool g_idx) {
  int64_t b = spec ? grid_bytes(out, in, *spec, g_idx) : 0;
  if (layout.bitmask()) return b + out * ((in + 7) / 8) + (spec ? packed_row_bytes(kept, spec->bits) : 2 * kept);
  const int64_t K = in / layout.m * (layout.m - layout.n);
  return b + out * packed_row_bytes(K, layout.index_bits()) + (spec ? out * packed_row_bytes(K, spec->bits) : out * K * 2);
}

int64_t dense_packed_bytes(int64_t out, int64_t in, const QuantSpec* spec, bool g_idx) {
  return spec ? out * packed_row_bytes(in, spec->bits) + grid_bytes(out, in, *spec, g_idx) : out * in * 2;
}

}  // namespace mc
