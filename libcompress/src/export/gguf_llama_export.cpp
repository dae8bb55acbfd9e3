// export_gguf: a llama model (any file load_model reads; packed checkpoints with their quantizer results)
// to a GGUF file with llama.cpp's names, metadata and tokenizer. Type rules: see export/gguf.h.
#include <ATen/ATen.h>

#include <filesystem>
#include <map>
#include <optional>

#include "export/export_source.h"
#include "export/gguf_gemma.h"
#include "export/gguf_phi3.h"
#include "export/gguf_vocab.h"
#include "mcompress/checkpoint.h"
#include "mcompress/error.h"
#include "mcompress/export/gguf.h"
#include "mcompress/half.h"
#include "mcompress/model.h"
#include "mcompress/models/llama.h"
#include "mcompress/quant/imatrix_file.h"
#include "mcompress/quant/packed.h"

namespace mc {

namespace {

namespace fs = std::filesystem;

struct TypeName {
  const char* name;
  std::optional<DType> dtype;  // empty: a mix (q4_k_m, auto)
  uint32_t file_type;          // llama_ftype
};
const TypeName kTypes[] = {
    {"f32", DType::F32, 0},   {"f16", DType::F16, 1},   {"q8_0", DType::Q8_0, 7},  {"q4_0", DType::Q4_0, 2},
    {"q4_1", DType::Q4_1, 3}, {"q5_0", DType::Q5_0, 8}, {"q5_1", DType::Q5_1, 9},  {"q4_k", DType::Q4_K, 14},
    {"q5_k", DType::Q5_K, 16}, {"q6_k", DType::Q6_K, 18}, {"mxfp4", DType::MXFP4, 38}, {"q4_k_m", {}, 15},
    {"q2_k", DType::Q2_K, 10}, {"q3_k", DType::Q3_K, 11}, {"iq4_nl", DType::IQ4_NL, 25}, {"iq4_xs", DType::IQ4_XS, 30},
    {"auto", {}, 0},
};

// One weight to export: where it comes from and what it becomes. Nothing of its values is held: they are
// read, encoded and written one weight at a time (encode_item).
struct Item {
  std::string gguf, key, role;
  int64_t block = -1;
  Shape shape;
  at::Tensor fixed;                         // float32 values made here (rope factors); else the parameter `key`
  const PackedEntryInfo* packed = nullptr;  // a packed checkpoint's quantizer result for it (dense entries)
  at::Tensor order;                         // int64 [rows]: llama.cpp's row i is row order[i] (q/k); else undefined
  bool plus_one = false;                    // written as 1 + w (Gemma norms)
  DType dtype = DType::F32;
  std::string note;
  std::vector<float> importance;            // [in]: each column's weight in the fit (from an imatrix file)
  int64_t numel() const { return shape_numel(shape); }
};

// llama.cpp: use_more_bits in llama_tensor_get_type.
bool use_more_bits(int64_t i, int64_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

bool f16_exact(const at::Tensor& w) {
  at::Tensor back = w.to(at::kHalf).to(at::kFloat);
  return at::equal(back, w);
}

// The type requested for a 2-D weight before the row-length check (q: its quantizer result, for auto).
DType wanted_type(const std::string& type, const Item& it, const QuantResult* q_in, const LlamaConfig& c,
                  std::string* why) {
  for (const auto& t : kTypes) {
    if (type != t.name || !t.dtype) continue;
    // llama.cpp keeps the output (the tied embedding being the output) at Q6_K in its low-bit mixes.
    const bool low_bit = *t.dtype == DType::Q2_K || *t.dtype == DType::Q3_K || *t.dtype == DType::IQ4_NL ||
                         *t.dtype == DType::IQ4_XS;
    if (low_bit && (it.role == "output" || (it.role == "embed" && c.tied))) return *why = type + ": output", DType::Q6_K;
    return *t.dtype;
  }
  if (type == "q4_k_m") {
    const bool output = it.role == "output" || (it.role == "embed" && c.tied);
    if (output) return *why = "q4_k_m: output", DType::Q6_K;
    if ((it.role == "wv" || it.role == "w2") && use_more_bits(it.block, c.n_layers))
      return *why = "q4_k_m: use_more_bits layer", DType::Q6_K;
    if (it.role == "wqkv") return *why = "q4_k_m: fused qkv", DType::Q5_K;  // llama-quantize's attn_qkv rule
    return DType::Q4_K;
  }
  // auto
  if (!q_in) return *why = "dense -> F16", DType::F16;
  const QuantResult& q = *q_in;
  const std::string grid = q.spec.describe() + (q.g_idx.defined() ? " act-order" : "");
  if (q.mins.defined() && q.spec.bits <= 5 && q.codes.size(1) % 256 == 0)  // the K-quant lattice (--autoround-kquant)
    return *why = "exact from the K-quant lattice", q.spec.bits <= 4 ? DType::Q4_K : DType::Q5_K;
  for (DType t : {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0})  // smallest first
    if (maps_exactly(q, t)) return *why = "exact from " + grid, t;
  *why = "fitted to " + grid;
  if (q.spec.bits <= 4) return DType::Q4_K;
  if (q.spec.bits == 5) return DType::Q5_K;
  if (q.spec.bits == 6) return DType::Q6_K;
  return DType::Q8_0;
}

// it.dtype and the note saying why (the note on an exact mapping is added when the weight is encoded).
void choose_type(Item& it, const std::string& type, const LlamaConfig& c, const ExportSource& src) {
  if (it.role == "attn_norm" || it.role == "ffn_norm" || it.role == "final_norm" || it.role == "q_norm" ||
      it.role == "k_norm" || it.role == "post_attn_norm" || it.role == "pre_ffn_norm" ||
      it.role == "post_ffn_norm" || it.role == "rope_factors") {
    it.dtype = DType::F32, it.note = c.norm_plus_one && it.role != "rope_factors" ? "norm, 1 + w" : "norm";
    return;
  }
  if (it.shape.size() == 1) {  // biases
    it.dtype = DType::F32, it.note = "bias";
    return;
  }
  std::optional<QuantResult> q;  // auto maps each packed grid to the type it fits
  if (type == "auto" && it.packed) q = src.entry(it.key).quant, src.release(it.key);
  std::string why;
  DType t = wanted_type(type, it, q ? &*q : nullptr, c, &why);
  const int64_t cols = it.shape[1];
  const int64_t be = dtype_info(t).block_elems;
  if (cols % be != 0) {
    DType fb = t == DType::Q4_K   ? DType::Q5_0
               : t == DType::Q5_K ? DType::Q5_1
               : t == DType::Q6_K ? DType::Q8_0
               : t == DType::Q2_K || t == DType::Q3_K ? DType::Q4_0
               : t == DType::IQ4_XS                   ? DType::IQ4_NL
                                                      : DType::F16;
    if (cols % 32 != 0) fb = DType::F16;
    if (fb == DType::F16 && type == "auto" && !f16_exact(src.value(it.key))) fb = DType::F32;
    why = str("fallback ", dtype_name(t), " -> ", dtype_name(fb), ": row length ", cols, " not a multiple of ", be,
              why.empty() ? "" : " (" + why + ")");
    t = fb;
  }
  it.dtype = t, it.note = why;
}

// Hugging Face rotate-half q/k rows -> Meta's interleaved pairs (convert_hf_to_gguf.py's permute): row
// h*hd + 2i + c of the result is row h*hd + c*hd/2 + i of the input.
at::Tensor interleave_index(int64_t heads, int64_t hd) {
  at::Tensor idx = at::arange(heads * hd, at::kLong).view({heads, 2, hd / 2}).transpose(1, 2).reshape({-1});
  return idx;
}

QuantResult permute_rows(const QuantResult& q, const at::Tensor& idx) {
  QuantResult r = q;
  r.codes = q.codes.index_select(0, idx);
  r.scales = q.scales.index_select(0, idx);
  r.zeros = q.zeros.index_select(0, idx);
  if (q.mins.defined()) r.mins = q.mins.index_select(0, idx);
  return r;
}

// llama.cpp's architecture for a llama-family model, or one line naming what none of them can express.
//   llama  Llama 2/3.x, Mistral, TinyLlama, SmolLM: optional q/k/v/o biases, rope_freqs (llama3 scaling)
//   qwen2  q/k/v biases, no o bias (Qwen2, Qwen2.5)
//   qwen3  per-head q/k RMSNorm, no biases (Qwen3)
//   phi3   fused qkv / gate_up (Phi-3, 3.5, 4-mini), longrope factors as rope_factors_long/short
std::string gguf_arch(const LlamaConfig& c, const std::string& where) {
  if (c.fused_qkv_gate_up) return "phi3";
  const bool rope_freqs = c.rope_scaling == "llama3" || c.rope_scaling == "factors";
  std::string arch = "llama";
  if (c.qk_norm) {
    if (c.qkv_bias || c.o_bias)
      fail("gguf", where, ": per-head q/k norms with attention biases: llama.cpp's qwen3 has no attention biases");
    arch = "qwen3";
  } else if (c.qkv_bias && !c.o_bias) {
    arch = "qwen2";
  }
  if (rope_freqs && arch != "llama")
    fail("gguf", where, ": llama3 rope scaling with ", c.qk_norm ? "q/k norms" : "q/k/v biases",
         ": llama.cpp's ", arch, " does not read rope_freqs");
  return arch;
}

std::string find_tokenizer(const std::string& model_path, const std::string& given) {
  if (!given.empty()) return given;
  const fs::path p(model_path);
  const fs::path dir = fs::is_directory(p) ? p : p.parent_path();
  for (const char* name : {"tokenizer.json", "tokenizer.bin"})
    if (fs::exists(dir / name)) return (dir / name).string();
  fail("gguf", model_path, ": no tokenizer.json or tokenizer.bin beside the model; pass the tokenizer "
       "(llama.cpp needs the vocabulary in the file)");
}

uint32_t file_type_of(const std::string& type, const std::vector<Item>& items) {
  for (const auto& t : kTypes)
    if (type == t.name && type != "auto") return t.file_type;
  std::map<DType, int64_t> params;  // auto: the type holding most parameters
  for (const auto& it : items)
    if (it.shape.size() == 2) params[it.dtype] += it.numel();
  DType best = DType::F16;
  int64_t most = -1;
  for (const auto& [t, n] : params)
    if (n > most) most = n, best = t;
  const std::map<DType, uint32_t> ft = {{DType::F32, 0},  {DType::F16, 1},  {DType::Q4_0, 2},  {DType::Q4_1, 3},
                                        {DType::Q8_0, 7}, {DType::Q5_0, 8}, {DType::Q5_1, 9},  {DType::Q4_K, 14},
                                        {DType::Q5_K, 16}, {DType::Q6_K, 18}};
  return ft.at(best);
}

QuantResult rows_of(const QuantResult& q, int64_t first, int64_t n) {
  QuantResult r = q;
  r.codes = q.codes.narrow(0, first, n), r.scales = q.scales.narrow(0, first, n), r.zeros = q.zeros.narrow(0, first, n);
  if (q.mins.defined()) r.mins = q.mins.narrow(0, first, n);
  return r;
}

// The bytes of one weight, encoded a block of rows at a time from its source (its pages handed back after);
// adds the notes on exact mappings. Rows are encoded independently, so the blocks give the whole-matrix bytes.
std::vector<uint8_t> encode_item(const ExportSource& src, Item& it) {
  if (it.fixed.defined()) return encode_matrix(it.dtype, it.fixed.data_ptr<float>(), 1, it.fixed.numel());
  const int64_t rows = it.shape.size() == 2 ? it.shape[0] : 1, cols = it.shape.back();
  const uint64_t row_bytes = *dtype_nbytes(it.dtype, cols);
  std::vector<uint8_t> out(size_t(rows) * row_bytes);
  const float* imp = it.importance.empty() ? nullptr : it.importance.data();
  auto put = [&](const std::vector<uint8_t>& b, int64_t first) { std::copy(b.begin(), b.end(), out.begin() + first * row_bytes); };
  if (it.packed && it.dtype != DType::F32 && it.dtype != DType::F16) {
    QuantResult q = *src.entry(it.key).quant;
    if (it.order.defined()) q = permute_rows(q, it.order);
    const bool exact = maps_exactly(q, it.dtype);
    if (exact && it.note.find("exact") == std::string::npos)
      it.note += std::string(it.note.empty() ? "" : "; ") + "exact from " + q.spec.describe();
    int64_t inexact = 0;  // blocks whose min is not a float16 value (Q4_1, Q5_1)
    for (int64_t r = 0, step = export_block_rows(cols); r < rows; r += step) {
      int64_t k = 0;
      put(encode_from_quant(rows_of(q, r, std::min(step, rows - r)), it.dtype, &k, imp), r);
      inexact += k;
    }
    if (exact && (it.dtype == DType::Q4_1 || it.dtype == DType::Q5_1) && inexact > 0)
      it.note += str("; ", inexact, " blocks with the min rounded to float16");
    src.release(it.key);
    return out;
  }
  src.for_row_blocks(it.key, it.order, [&](const at::Tensor& v, int64_t first) {
    const at::Tensor x = it.plus_one ? (v + 1.0).contiguous() : v;  // Gemma norms as 1 + w
    put(encode_matrix(it.dtype, x.data_ptr<float>(), x.size(0), x.size(1), nullptr, imp), first);
  });
  return out;
}

// The imatrix file is read and checked here, before anything is written: every 2-D weight of the blocks must
// have its entry, of its input width (a file for another model is refused even where the type ignores it); the
// output and the embedding need none (llama-imatrix leaves them out unless --process-output). Weights of a type
// fitted with importance take their column importance from it.
void attach_importance(std::vector<Item>& items, const std::string& path) {
  const ImatrixData im = read_imatrix(path);
  for (Item& it : items) {
    if (it.shape.size() != 2 || it.fixed.defined() || (it.block < 0 && !im.entries.count(it.gguf))) continue;
    const at::Tensor imp = imatrix_importance(im, path, it.gguf, it.shape[1], it.key);
    const DType t = it.dtype;
    const bool weighted = t == DType::Q2_K || t == DType::Q3_K || t == DType::IQ4_NL || t == DType::IQ4_XS ||
                          t == DType::Q4_K || t == DType::Q5_K;
    if (!weighted) continue;
    it.importance.assign(imp.data_ptr<float>(), imp.data_ptr<float>() + imp.numel());
    it.note += std::string(it.note.empty() ? "" : "; ") + "imatrix";
  }
}

// Writes the file, each weight encoded as the writer reaches it; returns what each became.
std::vector<GgufTensorChoice> write_items(const ExportSource& src, const std::string& out_path,
                                          const std::vector<GgufKV>& kv, std::vector<Item>& items) {
  std::vector<GgufTensorSource> tensors;
  for (Item& it : items) {
    Item* p = &it;
    tensors.push_back({it.gguf, it.dtype, it.shape, [&src, p] { return encode_item(src, *p); }});
  }
  write_gguf(out_path, kv, tensors);
  std::vector<GgufTensorChoice> choices;
  for (const Item& it : items)
    choices.push_back({it.gguf, dtype_name(it.dtype), it.note, it.numel(), *dtype_nbytes(it.dtype, it.numel())});
  return choices;
}

}  // namespace

// llama.cpp's tensor names of the parameters, in file order (gguf.h).
std::vector<GgufWeightName> gguf_llama_tensor_names(const LlamaConfig& c) {
  std::vector<GgufWeightName> names;
  auto add = [&](const std::string& gguf, const std::string& role, int64_t blk) { names.push_back({gguf, role, blk}); };
  add("token_embd.weight", "embed", -1);
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string b = "blk." + std::to_string(i) + ".";
    if (gguf_detail::is_gemma_arch(c.family)) {
      for (const auto& [gguf, role] : gguf_detail::gemma_block_tensors(c)) add(b + gguf + ".weight", role, i);
      continue;
    }
    add(b + "attn_norm.weight", "attn_norm", i);
    if (c.fused_qkv_gate_up) {  // phi3: the fused tensors as they are (NEOX RoPE: HF row order)
      add(b + "attn_qkv.weight", "wqkv", i);
      add(b + "attn_output.weight", "wo", i);
      add(b + "ffn_norm.weight", "ffn_norm", i);
      add(b + "ffn_up.weight", "w13", i);
      add(b + "ffn_down.weight", "w2", i);
      continue;
    }
    add(b + "attn_q.weight", "wq", i);
    add(b + "attn_k.weight", "wk", i);
    add(b + "attn_v.weight", "wv", i);
    if (c.qkv_bias) {
      add(b + "attn_q.bias", "bq", i);
      add(b + "attn_k.bias", "bk", i);
      add(b + "attn_v.bias", "bv", i);
    }
    if (c.qk_norm) {
      add(b + "attn_q_norm.weight", "q_norm", i);
      add(b + "attn_k_norm.weight", "k_norm", i);
    }
    add(b + "attn_output.weight", "wo", i);
    if (c.o_bias) add(b + "attn_output.bias", "bo", i);
    add(b + "ffn_norm.weight", "ffn_norm", i);
    add(b + "ffn_gate.weight", "w1", i);
    add(b + "ffn_up.weight", "w3", i);
    add(b + "ffn_down.weight", "w2", i);
  }
  add("output_norm.weight", "final_norm", -1);
  if (!c.tied) add("output.weight", "output", -1);
  return names;
}

const char* gguf_export_types() {
  return "f32|f16|q8_0|q4_0|q4_1|q5_0|q5_1|q2_k|q3_k|q4_k|q5_k|q6_k|iq4_nl|iq4_xs|mxfp4|q4_k_m|auto";
}

std::vector<GgufTensorChoice> export_gguf(const std::string& model_path, const std::string& out_path,
                                          const GgufExportOptions& opts) {
  std::string type = opts.type.rfind("gguf:", 0) == 0 ? opts.type.substr(5) : opts.type;
  for (auto& ch : type) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  bool known = false;
  for (const auto& t : kTypes) known = known || type == t.name;
  if (!known) fail("gguf", "unknown type '", opts.type, "' (allowed: ", gguf_export_types(), ")");

  const ExportSource src(model_path);  // bf16/f16 weights stay mapped, packed entries packed, until written
  if (!src.is_llama()) fail("gguf", model_path, ": GGUF export needs a llama model, this is '", src.arch(), "'");
  const LlamaConfig& c = src.config();
  const std::string arch = c.family.empty() ? gguf_arch(c, model_path) : c.family;
  const std::string tok_path = find_tokenizer(model_path, opts.tokenizer);

  const bool gemma = gguf_detail::is_gemma_arch(arch);  // llama.cpp's gemma2 / gemma3 (gguf_gemma.cpp)
  const std::vector<GgufKV> gemma_kv = gemma ? gguf_detail::gemma_model_kv(c, model_path) : std::vector<GgufKV>{};

  // llama.cpp's arch llama rotates interleaved pairs (its converter permutes Hugging Face's q/k rows), qwen2
  // and qwen3 rotate halves (NEOX, rows as Hugging Face stores them). Rows of q/k (and their biases) are
  // reordered where our model's layout differs from the arch's.
  const bool neox = arch != "llama";
  const bool reorder = neox ? c.rope == RopeLayout::Interleaved : c.rope == RopeLayout::RotateHalf;
  auto row_order = [&](const std::string& role) {
    const at::Tensor idx = interleave_index(role == "wq" || role == "bq" ? c.n_heads : c.n_kv_heads, c.head_dim);
    return neox ? at::argsort(idx) : idx;  // argsort: the inverse permutation (interleaved -> halves)
  };

  std::vector<Item> items;
  auto add = [&](const std::string& gguf, const std::string& role, int64_t blk) {
    Item it;
    it.gguf = gguf, it.role = role, it.block = blk;
    it.key = llama_param_name(c.names, role, blk);
    it.shape = src.shape(it.key);
    it.plus_one = c.norm_plus_one && it.shape.size() == 1;
    // Quantizer results of a packed checkpoint (sparse entries: their dense values).
    if (const PackedEntryInfo* e = src.entry_info(it.key); e && e->spec && !e->sparse) it.packed = e;
    if (reorder && (role == "wq" || role == "wk" || role == "bq" || role == "bk")) it.order = row_order(role);
    choose_type(it, type, c, src);
    items.push_back(std::move(it));
  };
  const std::vector<GgufWeightName> names = gguf_llama_tensor_names(c);  // token_embd first
  add(names[0].gguf, names[0].role, names[0].block);
  if (c.rope_scaling == "llama3" || c.rope_scaling == "factors") {  // arch llama only (gguf_arch)
    const std::vector<double> f = c.rope_scaling == "llama3" ? llama3_rope_freq_factors(c) : c.rope_freq_factors;
    Item it;
    it.gguf = "rope_freqs.weight", it.role = "rope_freqs", it.dtype = DType::F32;
    it.fixed = at::tensor(f, at::kDouble).to(at::kFloat).contiguous();
    it.shape = {it.fixed.numel()};
    it.note = c.rope_scaling == "llama3" ? "llama3 rope scaling" : "rope frequency factors";
    items.push_back(std::move(it));
  }
  for (size_t i = 1; i < names.size(); ++i) add(names[i].gguf, names[i].role, names[i].block);
  for (const auto& [gguf, values] : gguf_detail::phi3_rope_factor_tensors(c)) {
    Item it;
    it.gguf = gguf, it.role = "rope_factors";
    it.fixed = at::tensor(std::vector<float>(values.begin(), values.end()));
    it.shape = {it.fixed.numel()};
    choose_type(it, type, c, src);
    items.push_back(std::move(it));
  }

  if (!opts.imatrix.empty()) attach_importance(items, opts.imatrix);

  std::vector<GgufKV> kv;
  const std::string name = opts.name.empty() ? fs::path(model_path).stem().string() : opts.name;
  const std::string a = arch + ".";
  kv.emplace_back("general.architecture", gguf_string(arch));
  kv.emplace_back("general.name", gguf_string(name));
  kv.emplace_back("general.file_type", gguf_u32(file_type_of(type, items)));
  kv.emplace_back("general.quantization_version", gguf_u32(2));
  if (c.fused_qkv_gate_up || gemma) {
    for (auto& e : gemma ? gemma_kv : gguf_detail::phi3_model_kv(c)) kv.push_back(std::move(e));
    for (auto& e : gguf_detail::tokenizer_kv(tok_path, c.vocab_size, c.bos_id, c.eos_id, name)) kv.push_back(std::move(e));
    return write_items(src, out_path, kv, items);
  }
  // Mistral's sliding window: llama.cpp's llama/qwen2/qwen3 attend to the whole context, which equals
  // sliding-window attention up to the window's length, so that is the context length written.
  const int64_t ctx = c.sliding_window > 0 ? std::min(c.max_seq_len, c.sliding_window) : c.max_seq_len;
  kv.emplace_back(a + "context_length", gguf_u32(uint32_t(ctx)));
  kv.emplace_back(a + "embedding_length", gguf_u32(uint32_t(c.dim)));
  kv.emplace_back(a + "block_count", gguf_u32(uint32_t(c.n_layers)));
  kv.emplace_back(a + "feed_forward_length", gguf_u32(uint32_t(c.hidden_dim)));
  kv.emplace_back(a + "rope.dimension_count", gguf_u32(uint32_t(c.head_dim)));
  kv.emplace_back(a + "rope.freq_base", gguf_f32(float(c.rope_theta)));
  kv.emplace_back(a + "attention.head_count", gguf_u32(uint32_t(c.n_heads)));
  kv.emplace_back(a + "attention.head_count_kv", gguf_u32(uint32_t(c.n_kv_heads)));
  kv.emplace_back(a + "attention.layer_norm_rms_epsilon", gguf_f32(float(c.norm_eps)));
  kv.emplace_back(a + "vocab_size", gguf_u32(uint32_t(c.vocab_size)));
  if (c.head_dim * c.n_heads != c.dim) {
    kv.emplace_back(a + "attention.key_length", gguf_u32(uint32_t(c.head_dim)));
    kv.emplace_back(a + "attention.value_length", gguf_u32(uint32_t(c.head_dim)));
  }
  if (c.rope_scaling == "linear") {
    kv.emplace_back(a + "rope.scaling.type", gguf_string("linear"));
    kv.emplace_back(a + "rope.scaling.factor", gguf_f32(float(c.rope_factor)));
  }
  for (auto& e : gguf_detail::tokenizer_kv(tok_path, c.vocab_size, c.bos_id, c.eos_id, name)) kv.push_back(std::move(e));

  return write_items(src, out_path, kv, items);
}

}  // namespace mc
