// Packed quantized checkpoints in safetensors (layout: docs/packed-format.md).
#include "mcompress/quant/packed.h"

#include <ATen/ATen.h>

#include <functional>

#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "mcompress/error.h"
#include "mcompress/io/safetensors.h"
#include "mcompress/mapped_file.h"
#include "mcompress/quant/packed_entries.h"
#include "mcompress/torch_bridge.h"

namespace mc {

namespace {

constexpr const char* kComp = "pack";

// One packed weight as described in the metadata.
struct PackedEntry {
  QuantSpec spec;
  int64_t out = 0, in = 0;
  std::vector<int64_t> weight_shape;  // when the weight is not [out, in] (conv kernels)
  bool g_idx = false;                 // "<key>.g_idx" maps columns to groups (act-order GPTQ)
  bool float_zeros = false;           // "<key>.zeros" is F16 [out, G] (fractional zero points, HQQ)
  bool mins = false;                  // "<key>.mins" F16 [out, G] instead of zeros: value = code * scale - min
  bool quantized = true;              // false: a sparse entry of float16 values ("dtype": "F16")
  std::optional<SparseLayout> sparse; // a sparse entry (quant/sparse.h)
  int64_t kept = 0;                   // sparse: entries stored
};

// The parts an entry may have; those it does not use must be absent.
const char* const kPartSuffixes[] = {".qweight", ".scales", ".zeros", ".mins", ".g_idx", ".mask", ".indices", ".values"};

nlohmann::json describe_entry(const QuantResult& q, bool float_zeros) {
  nlohmann::json j = {{"bits", q.spec.bits},
                      {"group_size", q.spec.group_size},
                      {"symmetric", q.spec.symmetric},
                      {"mse_clip", q.spec.mse_clip},
                      {"shape", {q.codes.size(0), q.codes.size(1)}}};
  if (!q.weight_shape.empty()) j["weight_shape"] = q.weight_shape;
  if (q.g_idx.defined()) j["g_idx"] = true;  // absent otherwise: such files stay as they were
  if (float_zeros) j["zero_dtype"] = "F16";  // likewise
  if (q.mins.defined()) j["mins"] = true;     // likewise (the K-quant lattice, quant/autoround.h)
  return j;
}

// The grid of `q` as stored: fp16 scales, float zeros, int32 g_idx (undefined without one); float_zeros:
// the zeros are stored as float16 values rather than packed codes.
struct StoredGrid {
  at::Tensor s16, z, gi;
  bool float_zeros = false;
  at::Tensor mins;  // float32 [out, G], float16 values: stored instead of the zeros
};

// Checks that `q` is what rtn_quantize produces and returns its grid as stored.
StoredGrid checked_grid(const std::string& key, const QuantResult& q) {
  if (!q.codes.defined() || q.codes.dim() != 2 || q.codes.scalar_type() != at::kByte)
    fail<Error>(kComp, key, ": codes must be a uint8 [out, in] tensor");
  const int64_t rows = q.codes.size(0), in = q.codes.size(1);
  q.spec.validate(key, in);
  const int64_t G = q.spec.n_groups(in);
  for (const at::Tensor* t : {&q.scales, &q.zeros})
    if (!t->defined() || t->dim() != 2 || t->size(0) != rows || t->size(1) != G)
      fail<Error>(kComp, key, ": scales and zeros must be [", rows, ", ", G, "] for ", q.spec.describe(), " of ",
                  rows, "x", in);
  const at::Tensor s = q.scales.to(at::kCPU).to(at::kFloat);
  const at::Tensor s16 = s.to(at::kHalf);
  if (!s16.to(at::kFloat).equal(s) || !at::isfinite(s).all().item<bool>())
    fail<Error>(kComp, key, ": scales must be finite float16 values (compute the codes with fp16 scales, "
                "see round_up_to_f16 in quant/rtn.h)");
  const at::Tensor z = q.zeros.to(at::kCPU).to(at::kFloat);
  const int maxq = (1 << q.spec.bits) - 1;
  bool float_zeros = false;
  if (q.mins.defined()) {  // value = code * scale - min: the mins are stored, the zeros are their derived form
    const at::Tensor mn = q.mins.to(at::kCPU).to(at::kFloat);
    if (q.spec.symmetric || q.g_idx.defined() || mn.dim() != 2 || mn.size(0) != rows || mn.size(1) != G)
      fail<Error>(kComp, key, ": mins must be [", rows, ", ", G, "] on an asymmetric grid without g_idx");
    if (!at::isfinite(mn).all().item<bool>() || !mn.to(at::kHalf).to(at::kFloat).equal(mn))
      fail<Error>(kComp, key, ": mins must be finite float16 values");
    StoredGrid g{s16, z, at::Tensor(), false, mn};
    return g;
  }
  if (q.spec.symmetric) {
    if (!z.eq(double(1 << (q.spec.bits - 1))).all().item<bool>())
      fail<Error>(kComp, key, ": symmetric zeros must all be ", 1 << (q.spec.bits - 1));
  } else if (!(z.eq(z.round()) & z.ge(0) & z.le(maxq)).all().item<bool>()) {
    // Fractional zero points (HQQ) are stored as float16: they must be float16 values already.
    float_zeros = true;
    if (!at::isfinite(z).all().item<bool>() || !z.to(at::kHalf).to(at::kFloat).equal(z))
      fail<Error>(kComp, key, ": asymmetric zeros must be integers in 0..", maxq, " or float16 values (compute the "
                  "codes with the zeros rounded to float16, see quant/hqq.h)");
  }
  at::Tensor gi;
  if (q.g_idx.defined()) {
    if (q.g_idx.dim() != 1 || q.g_idx.size(0) != in || !at::isIntegralType(q.g_idx.scalar_type(), false))
      fail<Error>(kComp, key, ": g_idx must be an integer [", in, "] tensor, got ", c10::toString(q.g_idx.scalar_type()),
                  " ", q.g_idx.sizes());
    gi = q.g_idx.to(at::kCPU).to(at::kInt).contiguous();
    if (!(gi.ge(0) & gi.lt(G)).all().item<bool>())
      fail<Error>(kComp, key, ": g_idx values must lie in 0..", G - 1, " (", G, " groups)");
  }
  return {s16, z, gi, float_zeros};
}

// The grid's tensors, after the codes: scales, zeros (asymmetric), g_idx (when defined).
void append_grid(const std::string& key, const QuantResult& q, const StoredGrid& g, std::vector<HostTensor>& out) {
  out.push_back(from_torch(key + ".scales", g.s16));
  if (g.mins.defined())
    out.push_back(from_torch(key + ".mins", g.mins.to(at::kHalf).contiguous()));
  else if (g.float_zeros)
    out.push_back(from_torch(key + ".zeros", g.z.to(at::kHalf).contiguous()));
  else if (!q.spec.symmetric)
    out.push_back(HostTensor::owned(key + ".zeros", DType::U8, {g.z.size(0), packed_row_bytes(g.z.size(1), q.spec.bits)},
                                    pack_codes(g.z.to(at::kByte), q.spec.bits)));
  if (g.gi.defined()) out.push_back(from_torch(key + ".g_idx", g.gi));
}

// Checks `q` and returns its tensors in the packed layout, and its description.
nlohmann::json append_packed(const std::string& key, const QuantResult& q, std::vector<HostTensor>& out) {
  const StoredGrid g = checked_grid(key, q);
  out.push_back(HostTensor::owned(key + ".qweight", DType::U8, {q.codes.size(0), packed_row_bytes(q.codes.size(1), q.spec.bits)},
                                  pack_codes(q.codes, q.spec.bits)));
  append_grid(key, q, g, out);
  return describe_entry(q, g.float_zeros);
}

// Parses the metadata's description: key -> entry. Throws InputError naming the file.
std::map<std::string, PackedEntry> parse_description(const CheckpointReader& reader) {
  const std::string& path = reader.path();
  auto it = reader.metadata().find(kPackedMetadataKey);
  if (it == reader.metadata().end())
    fail(kComp, path, ": no '", kPackedMetadataKey, "' metadata: not a packed checkpoint");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(it->second);
  } catch (const nlohmann::json::exception& e) {
    fail(kComp, path, ": metadata '", kPackedMetadataKey, "' is not valid JSON: ", e.what());
  }
  if (!j.is_object() || !j.contains("format") || !j["format"].is_string())
    fail(kComp, path, ": metadata '", kPackedMetadataKey, "' lacks a \"format\" string");
  if (j["format"] != kPackedFormat)
    fail(kComp, path, ": unsupported packed format '", j["format"].get<std::string>(), "' (this build reads ",
         kPackedFormat, ")");
  if (!j.contains("tensors") || !j["tensors"].is_object())
    fail(kComp, path, ": metadata '", kPackedMetadataKey, "' lacks a \"tensors\" object");
  std::map<std::string, PackedEntry> entries;
  for (auto& [key, e] : j["tensors"].items()) {
    PackedEntry pe;
    try {
      if (e.contains("sparse")) {
        const auto& sp = e.at("sparse");
        const std::string layout = sp.at("layout").get<std::string>();
        SparseLayout l;
        if (layout == "n:m") {
          l.n = sp.at("n").get<int>(), l.m = sp.at("m").get<int>();
          if (l.bitmask()) throw std::runtime_error("an n:m layout needs n and m above 0");
        } else if (layout != "bitmask") {
          throw std::runtime_error("sparse layout '" + layout + "' is neither \"bitmask\" nor \"n:m\"");
        }
        pe.sparse = l;
        pe.kept = sp.at("kept").get<int64_t>();
        pe.quantized = e.contains("bits");
        if (!pe.quantized && e.at("dtype").get<std::string>() != "F16")
          throw std::runtime_error("sparse values must have \"dtype\": \"F16\" (or the entry \"bits\")");
      }
      if (pe.quantized) {
        pe.spec.bits = e.at("bits").get<int>();
        pe.spec.group_size = e.at("group_size").get<int64_t>();
        pe.spec.symmetric = e.at("symmetric").get<bool>();
        pe.spec.mse_clip = e.value("mse_clip", false);
      }
      const auto& shape = e.at("shape");
      if (!shape.is_array() || shape.size() != 2) throw std::runtime_error("shape must be [out, in]");
      pe.out = shape[0].get<int64_t>();
      pe.in = shape[1].get<int64_t>();
      if (e.contains("weight_shape")) pe.weight_shape = e.at("weight_shape").get<std::vector<int64_t>>();
      if (e.contains("g_idx")) pe.g_idx = e.at("g_idx").get<bool>();
      if (e.contains("zero_dtype")) {
        if (e.at("zero_dtype").get<std::string>() != "F16") throw std::runtime_error("\"zero_dtype\" must be \"F16\"");
        if (!pe.quantized || pe.spec.symmetric) throw std::runtime_error("\"zero_dtype\" needs an asymmetric grid");
        pe.float_zeros = true;
      }
      if (e.contains("mins") && e.at("mins").get<bool>()) {
        if (!pe.quantized || pe.spec.symmetric || pe.float_zeros || pe.g_idx)
          throw std::runtime_error("\"mins\" needs an asymmetric grid without \"zero_dtype\" or \"g_idx\"");
        pe.mins = true;
      }
    } catch (const std::exception& ex) {
      fail(kComp, path, ": packed tensor '", key, "': bad description: ", ex.what());
    }
    if (pe.out < 0 || pe.in < 0 || (pe.in > 0 && pe.out > (int64_t(1) << 50) / pe.in))
      fail(kComp, path, ": packed tensor '", key, "': bad shape [", pe.out, ", ", pe.in, "]");
    if (!pe.weight_shape.empty()) {
      int64_t n = 1;
      for (int64_t d : pe.weight_shape) n = d < 0 || (d && n > (int64_t(1) << 40) / d) ? -1 : n * d;
      if (pe.weight_shape.size() > 8 || pe.weight_shape[0] != pe.out || n != pe.out * pe.in)
        fail(kComp, path, ": packed tensor '", key, "': weight_shape does not match shape [", pe.out, ", ", pe.in, "]");
    }
    try {
      if (pe.quantized) pe.spec.validate(key, pe.in);
      if (pe.sparse) pe.sparse->validate(key, pe.in);
    } catch (const InputError& ex) {
      fail(kComp, path, ": ", ex.what());
    }
    entries.emplace(key, pe);
  }
  return entries;
}

// Loads `name` after checking its dtype and shape against the description.
HostTensor load_part(const CheckpointReader& reader, const std::string& key, const std::string& name, DType dtype,
                     const Shape& shape) {
  if (!reader.contains(name)) fail(kComp, reader.path(), ": packed tensor '", key, "' lacks '", name, "'");
  const TensorInfo& ti = reader.info(name);
  if (ti.dtype != dtype || ti.shape != shape)
    fail(kComp, reader.path(), ": '", name, "' is ", dtype_name(ti.dtype), " ", shape_str(ti.shape), ", expected ",
         dtype_name(dtype), " ", shape_str(shape));
  return reader.load(name);
}

// The grid of a quantized entry (scales, zeros, g_idx); the codes are left to the caller.
QuantResult load_grid(const CheckpointReader& reader, const std::string& key, const PackedEntry& e) {
  const int bits = e.spec.bits;
  const int64_t G = e.spec.n_groups(e.in);
  QuantResult q;
  q.spec = e.spec;
  q.scales = to_torch(load_part(reader, key, key + ".scales", DType::F16, {e.out, G})).to(at::kFloat);
  if (!at::isfinite(q.scales).all().item<bool>())
    fail(kComp, reader.path(), ": '", key, ".scales' holds NaN or Inf");
  if (e.spec.symmetric) {
    if (reader.contains(key + ".zeros"))
      fail(kComp, reader.path(), ": packed tensor '", key, "' is symmetric but has '", key, ".zeros'");
    q.zeros = at::full({e.out, G}, double(1 << (bits - 1)), at::kFloat);
  } else if (e.mins) {
    if (reader.contains(key + ".zeros"))
      fail(kComp, reader.path(), ": packed tensor '", key, "' has mins and '", key, ".zeros'");
    q.mins = to_torch(load_part(reader, key, key + ".mins", DType::F16, {e.out, G})).to(at::kFloat);
    if (!at::isfinite(q.mins).all().item<bool>())
      fail(kComp, reader.path(), ": '", key, ".mins' holds NaN or Inf");
    q.zeros = q.mins / q.scales;
  } else if (e.float_zeros) {
    q.zeros = to_torch(load_part(reader, key, key + ".zeros", DType::F16, {e.out, G})).to(at::kFloat);
    if (!at::isfinite(q.zeros).all().item<bool>())
      fail(kComp, reader.path(), ": '", key, ".zeros' holds NaN or Inf");
  } else {
    HostTensor zt = load_part(reader, key, key + ".zeros", DType::U8, {e.out, packed_row_bytes(G, bits)});
    q.zeros = unpack_codes(zt.data, e.out, G, bits).to(at::kFloat);
  }
  if (!e.mins && reader.contains(key + ".mins"))
    fail(kComp, reader.path(), ": packed tensor '", key, "' has '", key, ".mins' but its description lacks \"mins\": true");
  if (e.g_idx) {
    q.g_idx = to_torch(load_part(reader, key, key + ".g_idx", DType::I32, {e.in})).clone();
    const at::Tensor bad = (q.g_idx.lt(0) | q.g_idx.ge(G)).nonzero();
    if (bad.numel() > 0) {
      const int64_t c = bad[0][0].item<int64_t>();
      fail(kComp, reader.path(), ": '", key, ".g_idx' maps column ", c, " to group ", q.g_idx[c].item<int64_t>(),
           ", outside 0..", G - 1, " (", G, " groups of ", e.spec.group_cols(e.in), " columns)");
    }
  } else if (reader.contains(key + ".g_idx")) {
    fail(kComp, reader.path(), ": packed tensor '", key, "' has '", key, ".g_idx' but its description lacks \"g_idx\": true");
  }
  return q;
}

// The tensor whose place in the file is the entry's place in read_packed_checkpoint's output.
std::string primary_part(const std::string& key, const PackedEntry& e) {
  return key + (e.quantized ? ".qweight" : ".values");
}

// Rejects parts the entry's description does not call for ("w.mask" next to a dense quantized "w").
void reject_stray_parts(const CheckpointReader& reader, const std::string& key, const PackedEntry& e) {
  std::set<std::string> used = {primary_part(key, e)};
  if (e.quantized) used.insert({key + ".scales", key + ".zeros", key + ".mins", key + ".g_idx"});  // checked by load_grid
  if (e.sparse) used.insert(key + (e.sparse->bitmask() ? ".mask" : ".indices"));
  for (const char* suffix : kPartSuffixes)
    if (!used.count(key + suffix) && reader.contains(key + suffix))
      fail(kComp, reader.path(), ": packed tensor '", key, "' has '", key, suffix, "', which its description (",
           e.quantized ? "int" + std::to_string(e.spec.bits) : std::string("F16"), ", ",
           e.sparse ? e.sparse->describe() : std::string("dense"), ") does not use");
}

// Loads and checks one entry's parts: the grid and codes, or the float16 values; the mask when sparse.
PackedEntryParts load_entry(const CheckpointReader& reader, const std::string& key, const PackedEntry& e) {
  PackedEntryParts p;
  p.sparse = e.sparse;
  p.weight_shape = e.weight_shape.empty() ? std::vector<int64_t>{e.out, e.in} : e.weight_shape;
  if (!e.sparse) {
    QuantResult q = load_grid(reader, key, e);
    HostTensor qw = load_part(reader, key, key + ".qweight", DType::U8, {e.out, packed_row_bytes(e.in, e.spec.bits)});
    q.codes = unpack_codes(qw.data, e.out, e.in, e.spec.bits);
    q.weight_shape = e.weight_shape;
    reject_stray_parts(reader, key, e);
    p.quant = std::move(q);
  } else {
    SparseParts sp = decode_sparse_parts(reader, key, e.out, e.in, *e.sparse, e.kept, e.quantized ? e.spec.bits : 0);
    p.mask = sp.mask;
    if (e.quantized) {
      QuantResult q = load_grid(reader, key, e);
      q.codes = sp.stored;
      q.weight_shape = e.weight_shape;
      p.quant = std::move(q);
    } else {
      p.values = sp.stored;
    }
    reject_stray_parts(reader, key, e);
  }
  return p;
}

// The entry's float32 values, in the parameter's shape.
at::Tensor dequantized_entry(const CheckpointReader& reader, const std::string& key, const PackedEntry& e) {
  const PackedEntryParts p = load_entry(reader, key, e);
  at::Tensor w;
  if (!p.quant)
    w = p.values;
  else if (!p.sparse)
    w = p.quant->dequantize();
  else
    w = at::where(p.mask, p.quant->dequantize(), at::zeros({}, at::kFloat));
  if (!e.weight_shape.empty()) w = w.reshape(e.weight_shape);
  return w;
}

HostTensor dequantize_entry(const CheckpointReader& reader, const std::string& key, const PackedEntry& e) {
  return from_torch(key, dequantized_entry(reader, key, e));
}

}  // namespace

struct PackedCheckpointWriter::Impl {
  explicit Impl(const std::string& path) : out(path) {}
  SafetensorsStreamWriter out;
  nlohmann::json desc = nlohmann::json::object();
};

PackedCheckpointWriter::PackedCheckpointWriter(std::string path)
    : path_(std::move(path)), impl_(std::make_unique<Impl>(path_)) {}
PackedCheckpointWriter::~PackedCheckpointWriter() = default;

void PackedCheckpointWriter::add_dense(const std::string& name, const at::Tensor& t) {
  if (impl_->desc.contains(name) || impl_->out.contains(name + ".qweight"))
    fail(kComp, path_, ": '", name, "' is given both dense and quantized");
  impl_->out.add(from_torch(name, t));
}

void PackedCheckpointWriter::add_quantized(const std::string& key, const QuantResult& q) {
  if (impl_->out.contains(key)) fail(kComp, path_, ": '", key, "' is given both dense and quantized");
  std::vector<HostTensor> parts;
  nlohmann::json desc = append_packed(key, q, parts);
  for (const auto& t : parts) impl_->out.add(t);
  impl_->desc[key] = std::move(desc);
}

void PackedCheckpointWriter::add_sparse(const std::string& key, const at::Tensor& weight, const SparseLayout& layout,
                                        const QuantResult* quant) {
  if (impl_->out.contains(key) || impl_->desc.contains(key))
    fail(kComp, path_, ": '", key, "' is given twice (dense, quantized or sparse)");
  if (!weight.defined() || weight.dim() < 2 || !at::isFloatingType(weight.scalar_type()))
    fail(kComp, path_, ": sparse weight '", key, "' must be a floating-point [out, in] tensor");
  const at::Tensor w = weight.to(at::kCPU).to(at::kFloat).reshape({weight.size(0), -1});
  std::vector<int64_t> wshape;
  if (weight.dim() != 2) wshape = weight.sizes().vec();
  std::vector<HostTensor> parts;
  int64_t kept = 0;
  nlohmann::json j;
  if (quant) {
    if (!quant->codes.defined() || quant->codes.sizes() != w.sizes())
      fail<Error>(kComp, key, ": the codes must cover the whole ", w.size(0), "x", w.size(1), " weight");
    if (!quant->weight_shape.empty() && !wshape.empty() && quant->weight_shape != wshape)
      fail<Error>(kComp, key, ": weight shape ", weight.sizes(), " differs from the quantization's weight_shape");
    const StoredGrid g = checked_grid(key, *quant);
    const at::Tensor stray = quant->dequantize().ne(0) & w.eq(0);
    if (stray.any().item<bool>()) {
      const at::Tensor p = stray.nonzero()[0];
      fail<Error>(kComp, key, ": the codes dequantize to ", quant->dequantize()[p[0]][p[1]].item<float>(), " at [",
                  p[0].item<int64_t>(), ", ", p[1].item<int64_t>(), "], where the weight is pruned (quantize the pruned weight)");
    }
    parts = encode_sparse(key, w, layout, quant->codes, quant->spec.bits, &kept);
    append_grid(key, *quant, g, parts);
    j = describe_entry(*quant, g.float_zeros);
  } else {
    parts = encode_sparse(key, w, layout, at::Tensor(), 0, &kept);
    j = {{"dtype", "F16"}, {"shape", {w.size(0), w.size(1)}}};
  }
  if (!wshape.empty()) j["weight_shape"] = wshape;
  j["sparse"] = layout.bitmask() ? nlohmann::json{{"layout", "bitmask"}, {"kept", kept}}
                                 : nlohmann::json{{"layout", "n:m"}, {"n", layout.n}, {"m", layout.m}, {"kept", kept}};
  for (const auto& t : parts) impl_->out.add(t);
  impl_->desc[key] = j;
}

void PackedCheckpointWriter::finish(const std::map<std::string, std::string>& metadata) {
  std::map<std::string, std::string> meta = metadata;
  meta[kPackedMetadataKey] = nlohmann::json{{"format", kPackedFormat}, {"tensors", impl_->desc}}.dump();
  impl_->out.finish(meta);
}

void write_packed_checkpoint(const std::string& path, const std::map<std::string, at::Tensor>& dense,
                             const std::map<std::string, QuantResult>& quantized,
                             const std::map<std::string, std::string>& metadata,
                             const std::map<std::string, SparseEntry>& sparse) {
  for (const auto& [name, t] : dense)
    if (quantized.count(name)) fail(kComp, path, ": '", name, "' is given both dense and quantized");
  for (const auto& [key, s] : sparse)
    if (dense.count(key) || quantized.count(key)) fail(kComp, path, ": '", key, "' is given both sparse and dense or quantized");
  PackedCheckpointWriter w(path);
  for (const auto& [name, t] : dense) w.add_dense(name, t);
  for (const auto& [key, q] : quantized) w.add_quantized(key, q);
  for (const auto& [key, s] : sparse) w.add_sparse(key, s.weight, s.layout, s.quant ? &*s.quant : nullptr);
  w.finish(metadata);
}

bool is_packed_checkpoint(const CheckpointReader& reader) {
  return reader.metadata().count(kPackedMetadataKey) != 0;
}

namespace {

// The file's tensors in order, each entry at the place of its primary part (entry(key, e)) and every tensor
// that is no entry's part as it is (dense(info)); InputError for an entry stored both ways or lacking its
// primary part.
void walk_parameters(const CheckpointReader& reader, const std::map<std::string, PackedEntry>& entries,
                     const std::function<void(const std::string&, const PackedEntry&)>& entry,
                     const std::function<void(const TensorInfo&)>& dense) {
  std::set<std::string> parts;
  std::map<std::string, std::string> primary;  // primary part -> key
  for (const auto& [key, e] : entries) {
    if (reader.contains(key))
      fail(kComp, reader.path(), ": '", key, "' is stored both dense and packed");
    for (const char* suffix : kPartSuffixes) parts.insert(key + suffix);
    primary[primary_part(key, e)] = key;
  }
  std::set<std::string> done;
  for (const TensorInfo& ti : reader.tensors()) {
    auto it = primary.find(ti.name);
    if (it != primary.end()) {
      entry(it->second, entries.at(it->second));
      done.insert(it->second);
      continue;
    }
    if (parts.count(ti.name)) continue;
    dense(ti);
  }
  for (const auto& [key, e] : entries)
    if (!done.count(key)) fail(kComp, reader.path(), ": packed tensor '", key, "' lacks '", primary_part(key, e), "'");
}

}  // namespace

std::vector<HostTensor> read_packed_checkpoint(const CheckpointReader& reader) {
  std::vector<HostTensor> out;
  walk_parameters(
      reader, parse_description(reader),
      [&](const std::string& key, const PackedEntry& e) { out.push_back(dequantize_entry(reader, key, e)); },
      [&](const TensorInfo& ti) { out.push_back(reader.load(ti.name)); });
  return out;
}

std::map<std::string, PackedEntryParts> read_packed_entries(const CheckpointReader& reader) {
  std::map<std::string, PackedEntryParts> out;
  for (const auto& [key, e] : parse_description(reader)) {
    if (reader.contains(key)) fail(kComp, reader.path(), ": '", key, "' is stored both dense and packed");
    out.emplace(key, load_entry(reader, key, e));
  }
  return out;
}

struct PackedEntryReader::Impl {
  std::unique_ptr<CheckpointReader> reader;
  std::map<std::string, PackedEntry> entries;
  std::map<std::string, PackedEntryInfo> infos;
  const PackedEntry& entry(const std::string& key) const {
    auto it = entries.find(key);
    if (it == entries.end()) fail(kComp, reader->path(), ": no packed tensor '", key, "'");
    return it->second;
  }
};

PackedEntryReader::PackedEntryReader(std::unique_ptr<CheckpointReader> reader) : impl_(std::make_unique<Impl>()) {
  impl_->entries = parse_description(*reader);
  for (const auto& [key, e] : impl_->entries) {
    if (reader->contains(key)) fail(kComp, reader->path(), ": '", key, "' is stored both dense and packed");
    PackedEntryInfo& i = impl_->infos[key];
    if (e.quantized) i.spec = e.spec;
    i.g_idx = e.g_idx, i.float_zeros = e.float_zeros, i.mins = e.mins, i.sparse = e.sparse.has_value(), i.out = e.out, i.in = e.in, i.weight_shape = e.weight_shape;
  }
  impl_->reader = std::move(reader);
}

PackedEntryReader::~PackedEntryReader() = default;

const CheckpointReader& PackedEntryReader::file() const { return *impl_->reader; }
bool PackedEntryReader::contains(const std::string& key) const { return impl_->entries.count(key) != 0; }

const PackedEntryInfo& PackedEntryReader::info(const std::string& key) const {
  impl_->entry(key);
  return impl_->infos.at(key);
}

std::vector<std::string> PackedEntryReader::keys() const {
  std::vector<std::string> k;
  for (const auto& [key, e] : impl_->entries) k.push_back(key);
  return k;
}

std::vector<HostTensor> PackedEntryReader::parameters_unread() const {
  const CheckpointReader& r = *impl_->reader;
  std::vector<HostTensor> out;
  walk_parameters(
      r, impl_->entries,
      [&](const std::string& key, const PackedEntry&) {
        const Shape shape = impl_->infos.at(key).shape();
        out.push_back(HostTensor::view(key, DType::F32, shape, nullptr, uint64_t(shape_numel(shape)) * 4, nullptr));
      },
      [&](const TensorInfo& ti) { out.push_back(r.load(ti.name)); });
  return out;
}

PackedEntryParts PackedEntryReader::load(const std::string& key) const {
  return load_entry(*impl_->reader, key, impl_->entry(key));
}

at::Tensor PackedEntryReader::dequantized(const std::string& key) const {
  return dequantized_entry(*impl_->reader, key, impl_->entry(key)).contiguous();
}

void PackedEntryReader::release(const std::string& key) const {
  impl_->entry(key);
  // Only a mapped file's views: madvise on a loaded copy could drop neighbouring heap pages.
  const auto* mapped = dynamic_cast<const MappedCheckpointReader*>(impl_->reader.get());
  if (!mapped) return;
  for (const char* suffix : kPartSuffixes)
    if (mapped->contains(key + suffix)) {
      const HostTensor v = mapped->load(key + suffix);
      release_mapped_pages(v.data, v.nbytes);
    }
}

}  // namespace mc
