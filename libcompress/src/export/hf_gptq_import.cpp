// Reading a Hugging Face GPTQ checkpoint (checkpoint_format "gptq") back as float weights, the way
// AutoGPTQ's QuantLinear dequantizes: unpack qweight along the input dimension and qzeros along the
// output dimension, add 1 to the zeros, scales[g_idx] * (q - zeros[g_idx]).
#include <ATen/ATen.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "mcompress/error.h"
#include "mcompress/export/hf.h"
#include "mcompress/torch_bridge.h"

namespace mc {

int hf_gptq_bits(const std::string& path) {
  std::ifstream f(path);
  if (!f) fail("llama", path, ": cannot read");
  std::stringstream ss;
  ss << f.rdbuf();
  try {
    auto j = nlohmann::json::parse(ss.str());
    if (!j.contains("quantization_config") || !j["quantization_config"].is_object()) return 0;
    const auto& q = j["quantization_config"];
    const std::string method = q.value("quant_method", "");
    if (method != "gptq")
      fail("llama", path, ": quantization_config.quant_method '", method, "' is not supported (readable: gptq)");
    const std::string fmt = q.value("checkpoint_format", "gptq");
    if (fmt != "gptq")
      fail("llama", path, ": GPTQ checkpoint_format '", fmt, "' is not supported (readable: gptq, zeros stored minus 1)");
    const int bits = q.at("bits").get<int>();
    if (bits != 2 && bits != 3 && bits != 4 && bits != 8) fail("llama", path, ": GPTQ bits ", bits, " (allowed: 2, 3, 4, 8)");
    return bits;
  } catch (const nlohmann::json::exception& e) {
    fail("llama", path, ": bad config.json: ", e.what());
  }
}

std::map<std::string, HostTensor> dequantize_hf_gptq(const std::map<std::string, HostTensor>& tensors, int bits,
                                                     const std::string& where) {
  const std::string suffix = ".qweight";
  std::map<std::string, HostTensor> out;
  for (const auto& [name, t] : tensors) {
    auto ends = [&](const std::string& s) { return name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0; };
    if (ends(".qzeros") || ends(".scales") || ends(".g_idx")) continue;  // read with their qweight
    if (!ends(suffix)) {
      out[name] = t;
      continue;
    }
    const std::string m = name.substr(0, name.size() - suffix.size());
    auto part = [&](const char* s, DType dt) -> at::Tensor {
      auto it = tensors.find(m + s);
      if (it == tensors.end()) fail("llama", where, ": GPTQ module ", m, " lacks ", m, s);
      if (it->second.dtype != dt || it->second.shape.size() != (std::string(s) == ".g_idx" ? size_t{1} : size_t{2}))
        fail("llama", where, ": ", m, s, " is ", dtype_name(it->second.dtype), " ", shape_str(it->second.shape),
             ", expected ", dtype_name(dt), std::string(s) == ".g_idx" ? " [in]" : " 2-D");
      return to_torch(it->second);
    };
    at::Tensor qw = part(".qweight", DType::I32), qz = part(".qzeros", DType::I32);
    at::Tensor sc = part(".scales", DType::F16).to(at::kFloat), g = part(".g_idx", DType::I32).to(at::kLong);
    const int64_t in = g.size(0), out_f = qw.size(1), groups = sc.size(0);
    if (qw.size(0) * 32 != in * bits || sc.size(1) != out_f || qz.size(0) != groups || qz.size(1) * 32 != out_f * bits)
      fail("llama", where, ": ", m, ": shapes qweight ", shape_str(Shape(qw.sizes().begin(), qw.sizes().end())), ", qzeros ",
           shape_str(Shape(qz.sizes().begin(), qz.sizes().end())), ", scales ", shape_str(Shape(sc.sizes().begin(), sc.sizes().end())),
           ", g_idx [", in, "] do not fit ", bits, "-bit GPTQ");
    if (in > 0 && (g.min().item<int64_t>() < 0 || g.max().item<int64_t>() >= groups))
      fail("llama", where, ": ", m, ".g_idx holds a group outside 0..", groups - 1);
    at::Tensor codes = unpack_int32_rows(qw.t().contiguous(), in, bits).to(at::kFloat);  // [out, in]
    at::Tensor zeros = unpack_int32_rows(qz.contiguous(), out_f, bits).to(at::kFloat) + 1;  // [G, out]
    at::Tensor w = (codes - zeros.index_select(0, g).t()) * sc.index_select(0, g).t();
    out[m + ".weight"] = from_torch(m + ".weight", w.contiguous());
  }
  return out;
}

}  // namespace mc
