// Layout pieces of the Hugging Face and llama2.c exports: int32 bit packing, the RoPE row permutation
// of q/k, padding a quantized matrix, and llama2.c's Q8_0 quantization.
#include <ATen/ATen.h>

#include <cstring>

#include "mcompress/error.h"
#include "mcompress/export/hf.h"

namespace mc {

at::Tensor pack_int32_rows(const at::Tensor& codes, int bits) {
  if (bits < 1 || bits > 8) fail("export", "pack_int32_rows: bits ", bits, " outside 1..8");
  if (codes.dim() != 2) fail("export", "pack_int32_rows: codes must be 2-D, got ", codes.dim(), "-D");
  at::Tensor c = codes.to(at::kByte).contiguous();
  const int64_t rows = c.size(0), cols = c.size(1), words = (cols * bits + 31) / 32;
  at::Tensor out = at::zeros({rows, words}, at::kInt);
  const uint8_t* src = c.data_ptr<uint8_t>();
  auto* dst = reinterpret_cast<uint32_t*>(out.data_ptr<int32_t>());
  const uint32_t limit = 1u << bits;
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* row = src + r * cols;
    uint32_t* w = dst + r * words;
    // A 64-bit accumulator: append each code above the bits already held, flush whole words.
    uint64_t acc = 0;
    int held = 0;
    int64_t wi = 0;
    for (int64_t k = 0; k < cols; ++k) {
      if (row[k] >= limit) fail("export", "pack_int32_rows: code ", int(row[k]), " at [", r, ", ", k, "] does not fit ", bits, " bits");
      acc |= uint64_t(row[k]) << held;
      held += bits;
      if (held >= 32) {
        w[wi++] = uint32_t(acc);
        acc >>= 32;
        held -= 32;
      }
    }
    if (held > 0) w[wi++] = uint32_t(acc);
  }
  return out;
}

at::Tensor unpack_int32_rows(const at::Tensor& packed, int64_t cols, int bits) {
  if (bits < 1 || bits > 8) fail("export", "unpack_int32_rows: bits ", bits, " outside 1..8");
  if (packed.dim() != 2 || packed.scalar_type() != at::kInt)
    fail("export", "unpack_int32_rows: expected a 2-D int32 tensor");
  const int64_t rows = packed.size(0), words = packed.size(1);
  if (words != (cols * bits + 31) / 32)
    fail("export", "unpack_int32_rows: ", words, " words per row do not hold ", cols, " codes of ", bits, " bits");
  at::Tensor p = packed.contiguous();
  at::Tensor out = at::empty({rows, cols}, at::kByte);
  const auto* src = reinterpret_cast<const uint32_t*>(p.data_ptr<int32_t>());
  uint8_t* dst = out.data_ptr<uint8_t>();
  const uint64_t mask = (1u << bits) - 1;
  for (int64_t r = 0; r < rows; ++r) {
    const uint32_t* w = src + r * words;
    for (int64_t k = 0; k < cols; ++k) {
      const int64_t bit = k * bits, wi = bit / 32, off = bit % 32;
      uint64_t v = w[wi];
      if (wi + 1 < words) v |= uint64_t(w[wi + 1]) << 32;
      dst[r * cols + k] = uint8_t((v >> off) & mask);
    }
  }
  return out;
}

at::Tensor pack_int32_words(const at::Tensor& codes, int bits) {
  if (bits < 1 || bits > 8) fail("export", "pack_int32_words: bits ", bits, " outside 1..8");
  if (32 % bits == 0) return pack_int32_rows(codes, bits);
  if (codes.dim() != 2) fail("export", "pack_int32_words: codes must be 2-D, got ", codes.dim(), "-D");
  at::Tensor c = codes.to(at::kByte).contiguous();
  const int64_t rows = c.size(0), cols = c.size(1), per_word = 32 / bits, words = (cols + per_word - 1) / per_word;
  at::Tensor out = at::zeros({rows, words}, at::kInt);
  const uint8_t* src = c.data_ptr<uint8_t>();
  auto* dst = reinterpret_cast<uint32_t*>(out.data_ptr<int32_t>());
  const uint32_t limit = 1u << bits;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < cols; ++k) {
      const uint8_t v = src[r * cols + k];
      if (v >= limit) fail("export", "pack_int32_words: code ", int(v), " at [", r, ", ", k, "] does not fit ", bits, " bits");
      dst[r * words + k / per_word] |= uint32_t(v) << (bits * (k % per_word));
    }
  return out;
}

at::Tensor unpack_int32_words(const at::Tensor& packed, int64_t cols, int bits) {
  if (bits < 1 || bits > 8) fail("export", "unpack_int32_words: bits ", bits, " outside 1..8");
  if (32 % bits == 0) return unpack_int32_rows(packed, cols, bits);
  if (packed.dim() != 2 || packed.scalar_type() != at::kInt)
    fail("export", "unpack_int32_words: expected a 2-D int32 tensor");
  const int64_t rows = packed.size(0), words = packed.size(1), per_word = 32 / bits;
  if (words != (cols + per_word - 1) / per_word)
    fail("export", "unpack_int32_words: ", words, " words per row do not hold ", cols, " codes of ", bits, " bits");
  at::Tensor p = packed.contiguous();
  at::Tensor out = at::empty({rows, cols}, at::kByte);
  const auto* src = reinterpret_cast<const uint32_t*>(p.data_ptr<int32_t>());
  uint8_t* dst = out.data_ptr<uint8_t>();
  const uint32_t mask = (1u << bits) - 1;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < cols; ++k)
      dst[r * cols + k] = uint8_t((src[r * words + k / per_word] >> (bits * (k % per_word))) & mask);
  return out;
}

at::Tensor rope_row_permutation(int64_t n_heads, int64_t head_dim, bool to_hf) {
  if (n_heads <= 0 || head_dim <= 0 || head_dim % 2 != 0)
    fail("export", "rope permutation: n_heads ", n_heads, " and head_dim ", head_dim, " must be positive, head_dim even");
  // Meta row (h, i, t) = h*hd + 2i + t  <->  HF row (h, t, i) = h*hd + t*hd/2 + i.
  at::Tensor perm = at::empty({n_heads * head_dim}, at::kLong);
  int64_t* p = perm.data_ptr<int64_t>();
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < n_heads; ++h)
    for (int64_t t = 0; t < 2; ++t)
      for (int64_t i = 0; i < half; ++i) {
        const int64_t meta = h * head_dim + 2 * i + t, hf = h * head_dim + t * half + i;
        if (to_hf) p[hf] = meta;
        else p[meta] = hf;
      }
  return perm;
}

QuantResult permute_quant_rows(const QuantResult& q, const at::Tensor& perm) {
  if (perm.dim() != 1 || perm.size(0) != q.codes.size(0))
    fail("export", "row permutation of length ", perm.numel(), " for a matrix of ", q.codes.size(0), " rows");
  QuantResult r = q;
  r.codes = q.codes.index_select(0, perm);
  r.scales = q.scales.index_select(0, perm);
  r.zeros = q.zeros.index_select(0, perm);
  return r;
}

QuantResult pad_quant(const QuantResult& q, int64_t out_to, int64_t in_to) {
  const int64_t out = q.codes.size(0), in = q.codes.size(1);
  if (out_to < out || in_to < in) fail("export", "pad_quant: cannot shrink [", out, ", ", in, "] to [", out_to, ", ", in_to, "]");
  if (out_to == out && in_to == in) return q;
  const float sym_zero = float(1 << (q.spec.bits - 1));
  const bool grouped = q.spec.group_size > 0;
  const int64_t g_old = q.n_groups(), g_new = grouped ? (in_to + q.spec.group_size - 1) / q.spec.group_size : 1;
  QuantResult r = q;
  // grid: new groups (columns), then new rows
  at::Tensor scales = at::ones({out_to, g_new}, at::kFloat), zeros = at::full({out_to, g_new}, sym_zero, at::kFloat);
  scales.narrow(0, 0, out).narrow(1, 0, g_old).copy_(q.scales);
  zeros.narrow(0, 0, out).narrow(1, 0, g_old).copy_(q.zeros);
  // column -> group of the padded matrix
  at::Tensor cols = at::arange(in_to, at::kLong);
  at::Tensor gidx = grouped ? at::floor_divide(cols, q.spec.group_size) : at::zeros({in_to}, at::kLong);
  if (q.g_idx.defined()) gidx.narrow(0, 0, in).copy_(q.g_idx.to(at::kLong));
  // codes: the zero point of each place's group, then the original codes over the original part
  at::Tensor codes = zeros.index_select(1, gidx).to(at::kByte);
  codes.narrow(0, 0, out).narrow(1, 0, in).copy_(q.codes);
  r.codes = codes, r.scales = scales, r.zeros = zeros;
  if (q.g_idx.defined()) r.g_idx = gidx.to(at::kInt);
  return r;
}

int64_t llama2c_q8_group_size(int64_t dim, int64_t hidden_dim) {
  int64_t gs = 64;
  while (gs > 1 && (dim % gs != 0 || hidden_dim % gs != 0)) gs /= 2;
  return gs;
}

std::pair<at::Tensor, at::Tensor> quantize_q80(const at::Tensor& w, int64_t group_size) {
  if (group_size <= 0 || w.numel() % group_size != 0)
    fail("export", "quantize_q80: ", w.numel(), " values are not a whole number of groups of ", group_size);
  at::Tensor g = w.to(at::kFloat).reshape({-1, group_size});
  at::Tensor scale = g.abs().amax(1).div(127.0f);  // float32, as export.py: wmax / 127.0
  at::Tensor q = at::round(g / scale.unsqueeze(1));  // torch.round: half to even
  q = at::where(scale.unsqueeze(1) > 0, q, at::zeros_like(q));
  return {q.to(at::kChar).reshape({-1}), scale};
}

}  // namespace mc
