// Hugging Face exports of a quantized llama: the AutoGPTQ / Transformers GPTQ layout (hf-gptq) and
// compressed-tensors' pack-quantized format (vLLM, llm-compressor).
//
// Conventions, with where they were checked:
//  * GPTQ, checkpoint_format "gptq" (AutoGPTQ qlinear_cuda_old.py QuantLinear.pack / forward):
//    qweight int32 [in*bits/32, out], the codes of each output column packed along the input dimension
//    (32/bits per word, lowest bits first; 3 bits: 32 codes in 3 words); qzeros int32
//    [n_groups, out*bits/32] packed along the output dimension and holding zero - 1 (the loader adds 1
//    back: "zeros = zeros + 1"); scales fp16 [n_groups, out]; g_idx int32 [in]. A zero point of 0
//    cannot be stored (0 - 1 wraps to 2^bits - 1), so such grids are refused.
//  * compressed-tensors pack-quantized (compressors/pack_quantized: pack_to_int32, unpack_from_int32):
//    weight_packed int32 [out, ceil(in*bits/32)] packed along the input dimension, values = signed code
//    + 2^(bits-1) = our codes; weight_scale [out, n_groups]; asymmetric weight_zero_point int32
//    [ceil(out*bits/32), n_groups] (pack_to_int32 with packed_dim=0 of the signed zero point + offset =
//    our zero code); weight_shape int64 [2] (torch.tensor(weight.shape)); weight_g_idx for act-order.
//    PackedQuantizationCompressor.match accepts 4 and 8 bits, for which its older strided and newer
//    dense packings agree.
//  * q/k rows of interleaved (llama2.c/Meta) models are permuted to rotate-half (convert_llama_weights_to_hf.py).
#include <ATen/ATen.h>

#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>

#include "export/free_space.h"
#include "hf_input.h"
#include "mcompress/error.h"
#include "mcompress/export/hf.h"
#include "mcompress/io/safetensors.h"
#include "mcompress/torch_bridge.h"

namespace mc {

namespace {

using hfx::ExportInput;
using hfx::add_common_notes;
using hfx::add_dense;
using hfx::linear_roles;
using hfx::permutes;
using hfx::rope_perm;
using hfx::weight_f16;

enum class Fmt { Gptq, CompressedTensors };
const char* fmt_name(Fmt f) { return f == Fmt::Gptq ? "hf-gptq" : "compressed-tensors"; }


std::string spec_text(const QuantSpec& s) { return s.describe(); }

// One linear layer as the export writes it: its HF module name and where its weight comes from. Its
// codes, or its float values, are read when it is written (quant / weight below).
struct Linear {
  std::string module;  // model.layers.N.self_attn.q_proj
  std::string role, key;
  int64_t layer = 0;
  bool quantized = false;
};

struct Prepared {
  std::vector<Linear> linears;
  std::optional<QuantSpec> spec;  // the common grid
  bool act_order = false;
  std::vector<std::string> unquantized;
};


Prepared prepare(const ExportInput& in, Fmt fmt) {
  Prepared p;
  if (in.quantized.empty())
    fail("export", in.path, ": no quantized layers: ", fmt_name(fmt), " exports a quantized model "
         "(run mcompress quantize first, e.g. --method gptq --bits 4 --group-size 128)");
  for (int64_t l = 0; l < in.cfg.n_layers; ++l) {
    for (const char* role : linear_roles(in.cfg)) {
      const std::string key = hfx::key_of(in, role, l), hf = hfx::hf_name(role, l);
      Linear lin;
      lin.module = hf.substr(0, hf.size() - std::string(".weight").size());
      lin.role = role, lin.key = key, lin.layer = l;
      lin.quantized = in.quantized.count(key) > 0;
      if (!lin.quantized) {
        if (fmt == Fmt::Gptq)
          fail("export", in.path, ": ", key, " is not quantized; hf-gptq needs every linear layer of the blocks "
               "quantized (quantize the model with mcompress quantize first, or use --format compressed-tensors, "
               "which can leave layers in float16)");
        p.unquantized.push_back(lin.module);
      } else {
        const PackedEntryInfo& e = *in.src.entry_info(key);
        if (e.float_zeros)  // checked from the description, before anything is written
          fail("export", in.path, ": ", key, " has fractional zero points (float16, e.g. --method hqq), but ",
               fmt_name(fmt), " stores integer zero points: rounding them would change the model (use --format "
               "gguf, or quantize with another method)");
        if (e.mins)
          fail("export", in.path, ": ", key, " is on the GGUF K-quant lattice (--autoround-kquant: float16 mins), but ",
               fmt_name(fmt), " stores integer zero points: rounding them would change the model (use --format "
               "gguf:q4_k or gguf:q5_k)");
        if (p.spec && (p.spec->bits != e.spec->bits || p.spec->symmetric != e.spec->symmetric ||
                       p.spec->group_size != e.spec->group_size))
          fail("export", in.path, ": ", key, " is ", spec_text(*e.spec), " but other layers are ", spec_text(*p.spec),
               "; ", fmt_name(fmt), " holds one grid for the whole model (mixed precision cannot be exported)");
        p.spec = e.spec;
        p.act_order = p.act_order || e.g_idx;
      }
      p.linears.push_back(std::move(lin));
    }
  }
  if (!p.spec)
    fail("export", in.path, ": none of the blocks' linear layers is quantized (only ",
         *in.quantized.begin(), "...); ", fmt_name(fmt), " exports quantized linear layers");
  return p;
}

// A quantized linear's codes and grid in HF row order, read now.
QuantResult quant(const ExportInput& in, const Linear& lin) {
  QuantResult q = *hfx::quant_of(in, lin.key);
  if (permutes(in.cfg, lin.role)) q = permute_quant_rows(q, rope_perm(in.cfg, lin.role));
  return q;
}


// Bytes of the file an export of `p` writes, estimated from the shapes (the codes, their grids, float16 for
// the embedding and classifier; norms left out), twice: the tensors are spooled next to the output and copied
// into it.
uint64_t estimated_bytes(const ExportInput& in, const Prepared& p) {
  uint64_t n = 0;
  for (const Linear& lin : p.linears) {
    const Shape s = in.src.shape(lin.key);
    const uint64_t out = uint64_t(s[0]), cols = uint64_t(s[1]);
    const uint64_t groups = p.spec->group_size > 0 ? (cols + uint64_t(p.spec->group_size) - 1) / uint64_t(p.spec->group_size) : 1;
    n += lin.quantized ? out * cols * uint64_t(p.spec->bits) / 8 + groups * out * 3 + cols * 4 : out * cols * 2;
  }
  for (const char* role : {"embed", "output"})
    if (std::string(role) == "embed" || !in.cfg.tied) n += uint64_t(shape_numel(in.src.shape(hfx::key_of(in, role)))) * 2;
  return 2 * n;
}



// ---- hf-gptq ----------------------------------------------------------------------------------

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

void gptq_tensors(const std::string& path, const Linear& lin, const QuantResult& q, SafetensorsStreamWriter& out) {
  const int bits = q.spec.bits;
  const int64_t in_f = q.codes.size(1);
  out.add(from_torch(lin.module + ".qweight", pack_int32_rows(q.codes, bits).t().contiguous()));
  at::Tensor z = q.zeros.round() - 1;
  if (z.min().item<float>() < 0)
    fail("export", path, ": ", lin.module, ": a group has zero point 0, which the GPTQ format (it stores zero - 1) "
         "cannot hold; export this model with --format compressed-tensors, or quantize it with --sym");
  out.add(from_torch(lin.module + ".qzeros", pack_int32_rows(z.to(at::kByte).t().contiguous(), bits)));
  out.add(hfx::to_f16(lin.module + ".scales", q.scales.t().contiguous(), path));
  at::Tensor g = q.g_idx.defined() ? q.g_idx.to(at::kInt)
                 : q.spec.group_size > 0 ? at::floor_divide(at::arange(in_f, at::kInt), q.spec.group_size)
                                         : at::zeros({in_f}, at::kInt);
  out.add(from_torch(lin.module + ".g_idx", g.contiguous()));
}

}  // namespace

ExportSummary export_hf_gptq(const std::string& model_path, const std::string& out_dir) {
  hfx::AtomicDir dir(out_dir);
  ExportInput in = hfx::read_export_input(model_path);
  Prepared p = prepare(in, Fmt::Gptq);
  const QuantSpec& s = *p.spec;
  const LlamaConfig& c = in.cfg;
  if (s.bits != 2 && s.bits != 3 && s.bits != 4 && s.bits != 8)
    fail("export", model_path, ": ", s.bits, "-bit weights: hf-gptq holds 2, 3, 4 or 8 bits");
  const int64_t gs = s.group_size > 0 ? s.group_size : -1;
  // AutoGPTQ's shapes (in // 32 * bits rows, out // 32 * bits zero words) need multiples of 32, and its
  // group reshape needs group_size | in_features.
  const int64_t q_dim = c.n_heads * c.head_dim, kv_dim = c.n_kv_heads * c.head_dim;
  for (auto [what, n] : {std::pair<const char*, int64_t>{"hidden_size (dim)", c.dim}, {"n_heads * head_dim", q_dim},
                         {"n_kv_heads * head_dim", kv_dim}}) {
    if (n % 32 != 0) fail("export", model_path, ": ", what, " ", n, " is not a multiple of 32, which hf-gptq's int32 packing needs");
    if (gs > 0 && n % gs != 0)
      fail("export", model_path, ": group_size ", gs, " does not divide ", what, " ", n, ", which hf-gptq needs "
           "(AutoGPTQ groups are whole; use --format compressed-tensors)");
  }
  std::vector<std::string> notes;
  add_common_notes(in, notes);
  // The intermediate size can grow: zero rows of gate/up and zero columns of down compute the same.
  const int64_t multiple = gs > 0 ? std::lcm<int64_t>(32, gs) : 32;
  const int64_t inter = round_up(c.hidden_dim, multiple);
  if (inter != c.hidden_dim && c.fused_qkv_gate_up)
    fail("export", model_path, ": intermediate_size ", c.hidden_dim, " is not a multiple of ", multiple,
         " (32 and group_size), which hf-gptq needs, and a fused gate_up_proj (Phi-3) is not padded; use "
         "--format compressed-tensors");
  if (inter != c.hidden_dim)
    notes.push_back("intermediate_size padded from " + std::to_string(c.hidden_dim) + " to " + std::to_string(inter) +
                    " (multiple of 32" + (gs > 0 ? " and of group_size" : std::string()) +
                    " for GPTQ packing): the added gate/up rows and down columns hold the zero-point code and "
                    "dequantize to exactly 0, so the model computes the same function");
  require_free_space(out_dir, estimated_bytes(in, p), "export");
  SafetensorsStreamWriter tensors(dir.file("model.safetensors"));
  for (const Linear& lin : p.linears) {
    if (&lin != &p.linears.front() && lin.layer != (&lin - 1)->layer) return_free_heap();
    QuantResult q = quant(in, lin);
    // By the module's last name: Phi-3's fused "gate_up_proj" contains "up_proj" but is never padded (refused
    // above unless the intermediate size needs no padding).
    const std::string leaf = lin.module.substr(lin.module.rfind('.') + 1);
    const bool gate_up = leaf == "gate_proj" || leaf == "up_proj";
    const bool down = leaf == "down_proj";
    q = pad_quant(q, gate_up ? inter : q.codes.size(0), down ? inter : q.codes.size(1));
    gptq_tensors(model_path, lin, q, tensors);
    in.src.release(lin.key);
  }
  add_dense(in, tensors, notes);
  tensors.finish({{"format", "pt"}});

  nlohmann::ordered_json qc;
  qc["quant_method"] = "gptq";
  qc["bits"] = s.bits;
  qc["group_size"] = gs;
  qc["damp_percent"] = 0.01;
  qc["desc_act"] = p.act_order;
  qc["static_groups"] = false;
  qc["sym"] = s.symmetric;
  qc["true_sequential"] = false;
  qc["checkpoint_format"] = "gptq";
  qc["model_name_or_path"] = nullptr;
  qc["model_file_base_name"] = "model";
  dir.write_text("config.json", hfx::hf_config_json(c, inter, qc.dump()));
  dir.write_text("quantize_config.json", qc.dump(2) + "\n");
  notes.push_back("damp_percent, true_sequential and static_groups are not recorded in the packed file: "
                  "mcompress quantize's defaults (0.01, false, false) are written (informational for loaders)");
  if (s.group_size < 0) notes.push_back("per-tensor grid written as per-channel (group_size -1), every row the same scale");
  hfx::copy_tokenizer(model_path, dir, notes);
  return dir.commit(std::move(notes));
}

ExportSummary export_compressed_tensors(const std::string& model_path, const std::string& out_dir) {
  hfx::AtomicDir dir(out_dir);
  ExportInput in = hfx::read_export_input(model_path);
  Prepared p = prepare(in, Fmt::CompressedTensors);
  const QuantSpec& s = *p.spec;
  if (s.bits != 4 && s.bits != 8)
    fail("export", model_path, ": ", s.bits, "-bit weights: compressed-tensors pack-quantized holds 4 or 8 bits "
         "(PackedQuantizationCompressor); use --format hf-gptq for 2 or 3 bits");
  std::vector<std::string> notes;
  add_common_notes(in, notes);
  require_free_space(out_dir, estimated_bytes(in, p), "export");
  SafetensorsStreamWriter tensors(dir.file("model.safetensors"));
  bool ragged = false;
  for (const Linear& lin : p.linears) {
    if (&lin != &p.linears.front() && lin.layer != (&lin - 1)->layer) return_free_heap();
    if (!lin.quantized) {
      tensors.add(weight_f16(in, lin.module + ".weight", lin.role, lin.layer));
      continue;
    }
    const QuantResult q = quant(in, lin);
    const int64_t out_f = q.codes.size(0), in_f = q.codes.size(1);
    ragged = ragged || (s.group_size > 0 && in_f % s.group_size != 0);
    tensors.add(from_torch(lin.module + ".weight_packed", pack_int32_rows(q.codes, s.bits)));
    tensors.add(hfx::to_f16(lin.module + ".weight_scale", q.scales.contiguous(), model_path));
    if (!s.symmetric) {
      at::Tensor zp = q.zeros.round().to(at::kByte).t().contiguous();  // [G, out]: pack along out
      tensors.add(from_torch(lin.module + ".weight_zero_point", pack_int32_rows(zp, s.bits).t().contiguous()));
    }
    tensors.add(from_torch(lin.module + ".weight_shape", at::tensor({out_f, in_f}, at::kLong)));
    if (p.act_order) {
      at::Tensor g = q.g_idx.defined() ? q.g_idx.to(at::kInt)
                     : s.group_size > 0 ? at::floor_divide(at::arange(in_f, at::kInt), s.group_size)
                                        : at::zeros({in_f}, at::kInt);
      tensors.add(from_torch(lin.module + ".weight_g_idx", g.contiguous()));
    }
    in.src.release(lin.key);
  }
  add_dense(in, tensors, notes);
  tensors.finish({{"format", "pt"}});

  std::vector<std::string> ignore = {"lm_head"};
  ignore.insert(ignore.end(), p.unquantized.begin(), p.unquantized.end());
  const nlohmann::ordered_json qc = hfx::compressed_tensors_qconfig(s, p.act_order, ignore);
  dir.write_text("config.json", hfx::hf_config_json(in.cfg, in.cfg.hidden_dim, qc.dump()));
  if (!p.unquantized.empty())
    notes.push_back(std::to_string(p.unquantized.size()) + " linear layers not quantized in the input: stored as float16 and listed in 'ignore'");
  if (s.group_size < 0) notes.push_back("per-tensor grid written as per-channel (strategy channel), every row the same scale");
  if (ragged)
    notes.push_back("group_size " + std::to_string(s.group_size) + " does not divide every input dimension: the last "
                    "group of those rows is shorter (compressed-tensors counts ceil(in / group_size) groups; some vLLM "
                    "kernels need whole groups)");
  hfx::copy_tokenizer(model_path, dir, notes);
  return dir.commit(std::move(notes));
}


namespace hfx {

nlohmann::ordered_json compressed_tensors_qconfig(const QuantSpec& s, bool act_order, const std::vector<std::string>& ignore) {
  nlohmann::ordered_json w;
  w["num_bits"] = s.bits;
  w["type"] = "int";
  w["symmetric"] = s.symmetric;
  w["group_size"] = s.group_size > 0 ? nlohmann::ordered_json(s.group_size) : nlohmann::ordered_json(nullptr);
  w["strategy"] = s.group_size > 0 ? "group" : "channel";
  w["block_structure"] = nullptr;
  w["dynamic"] = false;
  w["actorder"] = act_order ? nlohmann::ordered_json("group") : nlohmann::ordered_json(nullptr);
  w["observer"] = "minmax";
  w["observer_kwargs"] = nlohmann::ordered_json::object();
  return ct_qconfig(w, "pack-quantized", ignore);
}

nlohmann::ordered_json ct_qconfig(const nlohmann::ordered_json& weights, const std::string& format,
                                  const std::vector<std::string>& ignore) {
  nlohmann::ordered_json g;
  g["targets"] = {"Linear"};
  g["weights"] = weights;
  g["input_activations"] = nullptr;
  g["output_activations"] = nullptr;
  nlohmann::ordered_json qc;
  qc["quant_method"] = "compressed-tensors";
  qc["format"] = format;
  qc["config_groups"] = {{"group_0", g}};
  qc["ignore"] = ignore;
  qc["kv_cache_scheme"] = nullptr;
  qc["quantization_status"] = "compressed";
  qc["global_compression_ratio"] = nullptr;
  return qc;
}

}  // namespace hfx

}  // namespace mc
