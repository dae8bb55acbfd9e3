// llama2.c version-2 (Q8_0) export: the file export.py's version2_export writes and runq.c reads.
//
// Layout (checked against llama2.c export.py version2_export and runq.c read_checkpoint /
// memory_map_weights):
//   header, 256 bytes: uint32 magic 0x616b3432 ("ak42"), int32 version 2, int32 dim, hidden_dim,
//   n_layers, n_heads, n_kv_heads, vocab_size, max_seq_len, uint8 shared_classifier, int32 group_size
//   (at byte 37, unaligned: separate struct.pack calls), zeros up to 256.
//   float32 norms: attention_norm of every layer, ffn_norm of every layer, the final norm.
//   then per quantized tensor its int8 values followed by its float32 scales (one per group_size values
//   of the flattened tensor): tok_embeddings, wq (all layers), wk, wv, wo, w1, w2, w3, then the
//   classifier when not shared.
// Quantization (export.py quantize_q80): scale = max|w| / 127 per group, q = round(w / scale).
// runq.c multiplies group by group along each row (for j <= n - GS) and quantizes activations in
// n / GS groups, so the group size must divide dim and hidden_dim: 64 halved until it does (export.py
// checks only dim, which for hidden_dim 172 would leave runq.c skipping the last columns of w2).
// RoPE: llama2.c rotates interleaved pairs; rotate-half (Hugging Face) models get their q/k rows
// permuted back.
#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>

#include "export/free_space.h"
#include "hf_input.h"
#include "mcompress/atomic_file.h"
#include "mcompress/error.h"
#include "mcompress/export/hf.h"

namespace mc {

namespace {

constexpr uint32_t kMagic = 0x616b3432;
constexpr int kHeaderBytes = 256;

void write_f32(AtomicFile& f, const at::Tensor& t) {
  at::Tensor c = t.to(at::kFloat).contiguous();
  f.write(c.data_ptr<float>(), uint64_t(c.numel()) * 4);
}

// int8 values and per-group scales of one tensor (rows in llama2.c order). Exact from an int8
// symmetric grid whose groups each hold whole llama2.c groups; otherwise quantize_q80 of the float values.
std::pair<at::Tensor, at::Tensor> q8_of(const at::Tensor& w, const QuantResult* q, int64_t gs, bool& exact) {
  exact = false;
  if (q && q->spec.bits == 8 && q->spec.symmetric && !q->g_idx.defined() &&
      (q->spec.group_size <= 0 || q->spec.group_size % gs == 0) && q->codes.size(1) % gs == 0) {
    const int64_t in = q->codes.size(1);
    at::Tensor first_col = at::arange(0, in, gs, at::kLong);  // first column of each llama2.c group
    at::Tensor ours = q->spec.group_size > 0 ? at::floor_divide(first_col, q->spec.group_size) : at::zeros_like(first_col);
    at::Tensor vals = (q->codes.to(at::kInt) - 128).to(at::kChar).reshape({-1});
    at::Tensor scales = q->scales.index_select(1, ours).contiguous().reshape({-1});
    exact = true;
    return {vals, scales};
  }
  return quantize_q80(w.reshape({-1}), gs);
}

}  // namespace

ExportSummary export_llama2c_q8(const std::string& model_path, const std::string& out_file) {
  if (std::filesystem::is_directory(out_file)) fail("export", out_file, ": is a directory; llama2c-q8 writes one file");
  hfx::ExportInput in = hfx::read_export_input(model_path);
  const LlamaConfig& c = in.cfg;
  auto refuse = [&](const std::string& why) { fail("export", model_path, ": ", why, "; llama2.c's runq.c cannot run it"); };
  if (!c.family.empty()) refuse(c.family + " ((1 + w) and sandwich norms, GELU, softcaps)");
  if (c.head_dim * c.n_heads != c.dim) refuse("head_dim * n_heads != dim");
  if (c.qkv_bias || c.o_bias) refuse("attention biases");
  if (c.rope_theta != 10000.0) refuse("rope_theta " + std::to_string(c.rope_theta) + " (runq.c uses 10000)");
  if (!c.rope_scaling.empty()) refuse("rope scaling '" + c.rope_scaling + "'");
  if (c.sliding_window > 0) refuse("sliding-window attention");
  if (c.fused_qkv_gate_up) refuse("fused qkv_proj / gate_up_proj (Phi-3)");
  if (c.rotary_dim > 0) refuse("partial rotary embedding");
  const int64_t gs = llama2c_q8_group_size(c.dim, c.hidden_dim);

  std::vector<std::string> notes;
  notes.push_back("group size " + std::to_string(gs) + " (64 halved until it divides dim " + std::to_string(c.dim) +
                  " and hidden_dim " + std::to_string(c.hidden_dim) + "): " +
                  std::to_string(8 + 32.0 / double(gs)).substr(0, 5) + " bits per quantized weight");
  if (std::fabs(c.norm_eps - 1e-5) > 1e-12)
    notes.push_back("norm_eps " + std::to_string(c.norm_eps) + " is not stored: runq.c uses 1e-5");
  if (c.rope == RopeLayout::RotateHalf) notes.push_back("q/k rows permuted from rotate-half to llama2.c's interleaved RoPE");

  // The file's size: the header, float32 norms, and per quantized tensor a byte per value and a float32 scale
  // per group.
  auto q8_bytes = [&](const std::string& role, int64_t block) {
    const auto n = uint64_t(shape_numel(in.src.shape(hfx::key_of(in, role, block))));
    return n + n / uint64_t(gs) * 4;
  };
  uint64_t bytes = kHeaderBytes + uint64_t(2 * c.n_layers + 1) * uint64_t(c.dim) * 4;
  bytes += q8_bytes("embed", -1) + (c.tied ? 0 : q8_bytes("output", -1));
  for (const char* role : {"wq", "wk", "wv", "wo", "w1", "w2", "w3"})
    for (int64_t l = 0; l < c.n_layers; ++l) bytes += q8_bytes(role, l);
  require_free_space(out_file, bytes, "export");

  AtomicFile f(out_file, "export");
  f.write_le<uint32_t>(kMagic);
  f.write_le<int32_t>(2);
  for (int64_t v : {c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.max_seq_len}) {
    if (v > INT32_MAX) fail("export", model_path, ": config value ", v, " does not fit llama2.c's int32 header");
    f.write_le<int32_t>(int32_t(v));
  }
  f.write_le<uint8_t>(c.tied ? 1 : 0);
  f.write_le<int32_t>(int32_t(gs));
  f.write_zeros(kHeaderBytes - f.tell());

  for (int64_t l = 0; l < c.n_layers; ++l) write_f32(f, hfx::param_of(in, "attn_norm", l));
  for (int64_t l = 0; l < c.n_layers; ++l) write_f32(f, hfx::param_of(in, "ffn_norm", l));
  write_f32(f, hfx::param_of(in, "final_norm"));

  int exact_n = 0, requant_n = 0;
  auto put = [&](const std::string& role, int64_t block) {
    const std::string key = hfx::key_of(in, role, block);
    at::Tensor w = hfx::param_of(in, role, block);
    std::optional<QuantResult> q = hfx::quant_of(in, key);
    if (c.rope == RopeLayout::RotateHalf && (role == "wq" || role == "wk")) {
      at::Tensor perm = rope_row_permutation(role == "wq" ? c.n_heads : c.n_kv_heads, c.head_dim, false);
      w = w.index_select(0, perm);
      if (q) q = permute_quant_rows(*q, perm);
    }
    if (w.numel() % gs != 0) fail("export", model_path, ": ", key, ": ", w.numel(), " values are not whole groups of ", gs);
    bool exact = false;
    auto [vals, scales] = q8_of(w, q ? &*q : nullptr, gs, exact);
    (exact ? exact_n : requant_n) += 1;
    f.write(vals.contiguous().data_ptr<int8_t>(), uint64_t(vals.numel()));
    write_f32(f, scales);
    in.src.release(key);
  };
  put("embed", -1);
  for (const char* role : {"wq", "wk", "wv", "wo", "w1", "w2", "w3"})
    for (int64_t l = 0; l < c.n_layers; ++l) put(role, l);
  if (!c.tied) put("output", -1);
  if (f.tell() != bytes) fail<Error>("export", out_file, ": wrote ", f.tell(), " bytes, expected ", bytes);
  f.commit();

  notes.push_back(std::to_string(exact_n) + " tensors carried over exactly from int8 codes, " + std::to_string(requant_n) +
                  " quantized to Q8_0 (max|w|/127 per group) from their " +
                  (in.quantized.empty() ? "float" : "float or dequantized") + " values");
  ExportSummary s;
  s.notes = std::move(notes);
  s.files.push_back(out_file);
  s.bytes = std::filesystem::file_size(out_file);
  return s;
}

}  // namespace mc
