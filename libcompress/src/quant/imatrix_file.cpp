// llama.cpp imatrix files (quant/imatrix_file.h): GGUF and legacy .dat read, GGUF written, and the statistics
// collected from calibration data on the float model.
#include "mcompress/quant/imatrix_file.h"

#include <ATen/ATen.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <set>

#include "mcompress/calib.h"
#include "mcompress/checkpoint.h"
#include "mcompress/error.h"
#include "mcompress/export/gguf.h"
#include "mcompress/io/gguf.h"
#include "mcompress/model.h"
#include "mcompress/models/llama.h"
#include "mcompress/quant/hessian.h"

namespace mc {

namespace {

constexpr const char* kComp = "imatrix";

// Legacy .dat: a little-endian stream of int32s, names and float arrays; every read is bounds-checked.
struct DatCursor {
  const std::string& path;
  const std::string bytes;
  size_t at = 0;
  int32_t i32(const char* what) {
    if (bytes.size() - at < 4) fail(kComp, path, ": truncated at byte ", at, " reading ", what);
    int32_t v;
    std::memcpy(&v, bytes.data() + at, 4);
    at += 4;
    return v;
  }
  std::string text(int32_t n, const char* what) {
    if (n < 0 || bytes.size() - at < size_t(n)) fail(kComp, path, ": bad length ", n, " of ", what, " at byte ", at);
    std::string s = bytes.substr(at, size_t(n));
    at += size_t(n);
    return s;
  }
};

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail<FileError>(kComp, path, ": cannot open");
  return std::string(std::istreambuf_iterator<char>(f), {});
}

ImatrixData read_dat(const std::string& path, std::string bytes) {
  DatCursor c{path, std::move(bytes)};
  ImatrixData d;
  d.format = "dat";
  const int32_t n = c.i32("the entry count");
  if (n < 0 || n > 1000000) fail(kComp, path, ": ", n, " entries: not an imatrix file (GGUF or legacy .dat)");
  for (int32_t e = 0; e < n; ++e) {
    const std::string name = c.text(c.i32("a name length"), "an entry name");
    const int32_t ncall = c.i32("ncall"), nval = c.i32("nval");
    if (nval < 0 || (c.bytes.size() - c.at) / 4 < size_t(nval))
      fail(kComp, path, ": entry '", name, "' claims ", nval, " values, more than the file holds");
    ImatrixEntry& en = d.entries[name];
    en.sum_sq.resize(size_t(nval));
    std::memcpy(en.sum_sq.data(), c.bytes.data() + c.at, size_t(nval) * 4);
    c.at += size_t(nval) * 4;
    en.count = float(ncall);  // values are the mean square times ncall (llama-quantize divides by ncall)
  }
  if (c.at < c.bytes.size()) {  // optional trailer: last call and the dataset's name
    d.chunk_count = c.i32("last_call");
    if (c.at < c.bytes.size()) d.datasets.push_back(c.text(c.i32("the dataset name length"), "the dataset name"));
  }
  return d;
}

ImatrixData read_gguf_imatrix(const std::string& path) {
  const auto r = open_gguf(path);
  ImatrixData d;
  d.format = "gguf";
  bool typed = false;
  for (const auto& [k, v] : gguf_kv(*r)) {
    if (k == "general.type") typed = v.s == "imatrix";
    else if (k == "imatrix.datasets") d.datasets = v.as;
    else if (k == "imatrix.chunk_count") d.chunk_count = v.i;
    else if (k == "imatrix.chunk_size") d.chunk_size = v.i;
  }
  if (!typed) fail(kComp, path, ": a GGUF file without general.type = \"imatrix\": not an imatrix file");
  for (const TensorInfo& t : r->tensors()) {
    const bool sums = t.name.size() > 8 && t.name.compare(t.name.size() - 8, 8, ".in_sum2") == 0;
    const bool counts = t.name.size() > 7 && t.name.compare(t.name.size() - 7, 7, ".counts") == 0;
    if (!sums && !counts) fail(kComp, path, ": tensor '", t.name, "' is neither <name>.in_sum2 nor <name>.counts");
    if (t.dtype != DType::F32) fail(kComp, path, ": tensor '", t.name, "' is ", dtype_name(t.dtype), ", expected F32");
    const int64_t rows = t.shape.size() == 2 ? t.shape[0] : 1;
    if (t.shape.empty() || t.shape.size() > 2 || rows != 1)
      fail(kComp, path, ": tensor '", t.name, "' has ", rows, " matrices (expert stacks are not supported) or a bad shape");
    const HostTensor h = r->load(t.name);
    const float* p = reinterpret_cast<const float*>(h.data);
    ImatrixEntry& e = d.entries[t.name.substr(0, t.name.size() - (sums ? 8 : 7))];
    if (sums) {
      e.sum_sq.assign(p, p + h.numel());
    } else {
      if (h.numel() != 1) fail(kComp, path, ": tensor '", t.name, "' has ", h.numel(), " counts, expected 1");
      e.count = p[0];
    }
  }
  for (const auto& [name, e] : d.entries) {
    if (e.sum_sq.empty()) fail(kComp, path, ": '", name, ".counts' without '", name, ".in_sum2'");
    if (!r->contains(name + ".counts")) fail(kComp, path, ": '", name, ".in_sum2' without '", name, ".counts'");
  }
  return d;
}

const LlamaConfig& llama_config_of(const Model& model) {
  const auto* llama = dynamic_cast<const LlamaModel*>(&model);
  if (!llama) fail(kComp, "llama.cpp imatrix names exist for llama-family models only");
  return llama->config();
}

}  // namespace

std::vector<float> ImatrixEntry::importance() const {
  std::vector<float> v = sum_sq;
  if (count > 0)
    for (float& x : v) x /= count;
  return v;
}

ImatrixData read_imatrix(const std::string& path) {
  std::string bytes = read_all(path);
  if (bytes.size() >= 4 && bytes.compare(0, 4, "GGUF") == 0) return read_gguf_imatrix(path);
  if (bytes.size() < 4) fail(kComp, path, ": ", bytes.size(), " bytes: not an imatrix file (GGUF or legacy .dat)");
  return read_dat(path, std::move(bytes));
}

void write_imatrix_gguf(const std::string& path, const ImatrixData& d) {
  std::vector<GgufKV> kv;
  kv.emplace_back("general.type", gguf_string("imatrix"));
  kv.emplace_back("imatrix.datasets", gguf_string_array(d.datasets));
  kv.emplace_back("imatrix.chunk_count", gguf_u32(uint32_t(d.chunk_count)));
  kv.emplace_back("imatrix.chunk_size", gguf_u32(uint32_t(d.chunk_size)));
  std::vector<HostTensor> tensors;
  for (const auto& [name, e] : d.entries) {
    // ne [in, 1] and [1, 1] as llama-imatrix writes them: row-major [1, in] and [1, 1].
    tensors.push_back(HostTensor::from_f32(name + ".in_sum2", {1, int64_t(e.sum_sq.size())}, e.sum_sq.data()));
    tensors.push_back(HostTensor::from_f32(name + ".counts", {1, 1}, &e.count));
  }
  write_gguf(path, kv, tensors);
}

std::map<std::string, std::string> gguf_names_by_layer(const Model& model) {
  const LlamaConfig& c = llama_config_of(model);
  std::map<std::string, std::string> by_key;  // checkpoint key -> gguf name
  for (const GgufWeightName& n : gguf_llama_tensor_names(c)) by_key[llama_param_name(c, n.role, n.block)] = n.gguf;
  std::map<std::string, std::string> out;
  for (const LayerInfo& l : model.layers()) {
    auto it = by_key.find(l.weight);
    if (it != by_key.end()) out[l.name] = it->second;
  }
  return out;
}

ImatrixData collect_imatrix(Model& model, const at::Tensor& calib, int64_t batch) {
  const std::map<std::string, std::string> names = gguf_names_by_layer(model);
  std::set<std::string> targets;
  for (const LayerInfo& l : model.layers())
    if (l.block >= 0 && l.kind == LayerKind::Linear && names.count(l.name)) targets.insert(l.name);
  ImatrixData d;
  d.format = "gguf";
  // Nothing is changed: each block's statistics come from the float model's own activations.
  SequentialOptions so;
  so.batch = batch;
  compress_blocks(model, calib, targets, [&](int, const std::vector<const LayerInfo*>& layers, const BlockStats& st) {
    for (const LayerInfo* l : layers) {
      const HessianAccumulator& h = *st.at(l->name);
      const at::Tensor s = h.sum_sq().to(at::kFloat).contiguous();
      ImatrixEntry& e = d.entries[names.at(l->name)];
      e.sum_sq.assign(s.data_ptr<float>(), s.data_ptr<float>() + s.numel());
      e.count = float(h.samples());
    }
  }, so);
  d.chunk_count = calib.size(0);
  d.chunk_size = calib.dim() > 1 ? calib.size(1) : 1;
  return d;
}

at::Tensor imatrix_importance(const ImatrixData& d, const std::string& path, const std::string& gguf_name,
                              int64_t in_features, const std::string& layer) {
  const auto it = d.entries.find(gguf_name);
  const std::string of = layer.empty() ? "" : " (layer " + layer + ")";
  if (it == d.entries.end()) fail(kComp, path, ": no entry '", gguf_name, "'", of);
  const std::vector<float> v = it->second.importance();
  if (int64_t(v.size()) != in_features)
    fail(kComp, path, ": '", gguf_name, "' has ", v.size(), " values, the weight", of, " has ", in_features,
         " input columns");
  for (float x : v)
    if (!std::isfinite(x) || x < 0) fail(kComp, path, ": '", gguf_name, "' holds a negative or non-finite value ", x);
  return at::tensor(v, at::kFloat);
}

}  // namespace mc
