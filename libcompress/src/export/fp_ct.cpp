// compressed-tensors float-quantized / mxfp4-pack-quantized / nvfp4-pack-quantized (fp_ct.h), and the
// llama export that writes them (export/hf.h export_compressed_tensors_fp).
#include "export/fp_ct.h"

#include <ATen/ATen.h>

#include "export/free_space.h"
#include "hf_input.h"
#include "mcompress/error.h"
#include "mcompress/export/hf.h"
#include "mcompress/io/safetensors.h"
#include "mcompress/torch_bridge.h"

namespace mc {
namespace hfx {

void fp_check_widths(FpScheme s, const std::vector<std::pair<std::string, int64_t>>& widths, const std::string& where,
                     std::vector<std::string>& notes) {
  const int64_t g = fp_scheme_group_size(s);
  std::string ragged;
  int64_t n = 0;
  for (const auto& [name, cols] : widths) {
    if (fp_scheme_is_fp4(s) && cols % 2 != 0)
      fail("export", where, ": ", name, " has an odd number of input columns (", cols, "); ", fp_scheme_name(s),
           " stores two codes per byte (leave it out with --ignore)");
    if ((fp_scheme_is_fp4(s) || s == FpScheme::mxfp8) && cols % g != 0) ragged += (n++ ? ", " : "") + name;
  }
  if (n > 0)
    notes.push_back(str("groups of ", g, " do not divide the input columns of ", n, " tensors (", ragged,
                        "): their rows end with a shorter group (ceil(in / ", g,
                        ") scales, as compressed-tensors pads; some vLLM kernels need whole groups)"));
}

std::string fp_ct_format(FpScheme s, const std::string& where) {
  switch (s) {
    case FpScheme::fp8:
    case FpScheme::fp8_channel:
    case FpScheme::fp8_block: return "float-quantized";
    case FpScheme::mxfp4: return "mxfp4-pack-quantized";
    case FpScheme::nvfp4: return "nvfp4-pack-quantized";
    case FpScheme::mxfp8: break;
  }
  fail("export", where, ": compressed-tensors has no format for mxfp8 (allowed: fp8, fp8-channel, fp8-block, mxfp4, "
       "nvfp4)");
}

nlohmann::ordered_json fp_ct_qconfig(FpScheme s, const std::vector<std::string>& ignore) {
  const bool fp4 = fp_scheme_is_fp4(s);
  nlohmann::ordered_json w;
  w["num_bits"] = fp4 ? 4 : 8;
  w["type"] = "float";
  w["symmetric"] = true;
  const int64_t g = fp_scheme_group_size(s);
  w["group_size"] = fp4 ? nlohmann::ordered_json(g) : nlohmann::ordered_json(nullptr);
  w["strategy"] = s == FpScheme::fp8 ? "tensor" : s == FpScheme::fp8_channel ? "channel"
                  : s == FpScheme::fp8_block ? "block" : s == FpScheme::nvfp4 ? "tensor_group" : "group";
  w["block_structure"] = s == FpScheme::fp8_block ? nlohmann::ordered_json({g, g}) : nlohmann::ordered_json(nullptr);
  w["dynamic"] = false;
  w["actorder"] = nullptr;
  w["observer"] = "minmax";
  w["observer_kwargs"] = nlohmann::ordered_json::object();
  return ct_qconfig(w, fp_ct_format(s, "quantization_config"), ignore);
}

std::vector<HostTensor> fp_ct_parts(const std::string& module, const FpQuantResult& q) {
  auto bytes_of = [](const std::string& name, DType dt, const at::Tensor& t) {
    const at::Tensor c = t.contiguous();
    const uint8_t* p = c.data_ptr<uint8_t>();
    Shape shape(c.sizes().begin(), c.sizes().end());
    return HostTensor::owned(name, dt, shape, std::vector<uint8_t>(p, p + c.numel()));
  };
  std::vector<HostTensor> parts;
  if (!fp_scheme_is_fp4(q.scheme)) {
    parts.push_back(bytes_of(module + ".weight", DType::F8_E4M3, q.codes));
    parts.push_back(from_torch(module + ".weight_scale", q.scales.contiguous()));
    return parts;
  }
  parts.push_back(from_torch(module + ".weight_packed", q.codes.contiguous()));
  if (q.scheme == FpScheme::nvfp4) {
    parts.push_back(bytes_of(module + ".weight_scale", DType::F8_E4M3, q.scales));
    parts.push_back(from_torch(module + ".weight_global_scale", q.global_scale.contiguous()));
  } else {
    parts.push_back(from_torch(module + ".weight_scale", q.scales.contiguous()));
  }
  return parts;
}

}  // namespace hfx

ExportSummary export_compressed_tensors_fp(const std::string& model_path, const std::string& out_dir, FpScheme s,
                                           const std::function<bool(const std::string&)>& selected) {
  const std::string format = hfx::fp_ct_format(s, model_path);  // mxfp8: refused before anything is written
  hfx::ExportInput in = hfx::read_export_input(model_path);
  if (!in.quantized.empty())
    fail("export", model_path, ": already quantized (", *in.quantized.begin(), "...); --scheme ", fp_scheme_name(s),
         " quantizes a float model");
  std::vector<std::string> notes;
  std::vector<std::pair<std::string, int64_t>> widths;
  for (int64_t l = 0; l < in.cfg.n_layers; ++l)
    for (const char* role : hfx::linear_roles(in.cfg)) {
      const std::string key = hfx::key_of(in, role, l);
      if (selected(key)) widths.emplace_back(key, in.src.shape(key)[1]);
    }
  hfx::fp_check_widths(s, widths, model_path, notes);  // before anything is written
  hfx::AtomicDir dir(out_dir);
  hfx::add_common_notes(in, notes);
  SafetensorsStreamWriter tensors(dir.file("model.safetensors"));
  std::vector<std::string> ignore = {"lm_head"};
  for (int64_t l = 0; l < in.cfg.n_layers; ++l) {
    for (const char* role : hfx::linear_roles(in.cfg)) {
      const std::string key = hfx::key_of(in, role, l), hf = hfx::hf_name(role, l);
      const std::string module = hf.substr(0, hf.size() - std::string(".weight").size());
      if (!selected(key)) {
        tensors.add(hfx::weight_f16(in, hf, role, l));
        ignore.push_back(module);
        continue;
      }
      at::Tensor w = hfx::param_of(in, role, l);
      if (hfx::permutes(in.cfg, role)) w = w.index_select(0, hfx::rope_perm(in.cfg, role));
      for (const HostTensor& t : hfx::fp_ct_parts(module, fp_quantize(w, s, key))) tensors.add(t);
      in.src.release(key);
    }
  }
  hfx::add_dense(in, tensors, notes);
  tensors.finish({{"format", "pt"}});
  const nlohmann::ordered_json qc = hfx::fp_ct_qconfig(s, ignore);
  dir.write_text("config.json", hfx::hf_config_json(in.cfg, in.cfg.hidden_dim, qc.dump()));
  notes.push_back("compressed-tensors " + format + " (" + fp_scheme_name(s) + "), weights only");
  if (s == FpScheme::fp8_block && in.cfg.rope == RopeLayout::Interleaved)
    notes.push_back("fp8-block: q/k blocks are formed in HF row order, so their scales differ from the in-process "
                    "evaluation's (row-wise schemes are unaffected)");
  hfx::copy_tokenizer(model_path, dir, notes);
  return dir.commit(std::move(notes));
}

}  // namespace mc
