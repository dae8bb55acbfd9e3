// Model-free quantization (export/model_free.h): a checkpoint streamed tensor by tensor through RTN into
// a compressed-tensors "pack-quantized" directory (or our packed file), written atomically.
#include <ATen/ATen.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <tuple>

#include "export/fp_ct.h"
#include "hf_input.h"
#include "mcompress/checkpoint.h"
#include "mcompress/error.h"
#include "mcompress/export/hf.h"
#include "mcompress/export/model_free.h"
#include "mcompress/io/hf_dir.h"
#include "mcompress/io/safetensors.h"
#include "mcompress/job_data.h"
#include "mcompress/mapped_file.h"
#include "mcompress/quant/packed.h"
#include "mcompress/torch_bridge.h"

namespace mc {

namespace {

namespace fs = std::filesystem;
constexpr const char* kComp = "model-free";
// Rows per block of the error measurement: about 1 Mi values, so its temporaries stay small next to the
// tensor itself.
constexpr int64_t kErrorBlockElems = int64_t(1) << 20;
// Values converted to float32 between releases of the mapped pages read (4 MiB of float32).
constexpr int64_t kConvertChunk = int64_t(1) << 20;

std::string module_of(const std::string& name) { return name.substr(0, name.size() - 7); }  // "x.weight" -> "x"

bool is_lm_head(const std::string& m) {
  return m == "lm_head" || (m.size() > 8 && m.compare(m.size() - 8, 8, ".lm_head") == 0);
}

// ||W - Q(W)||_F / ||W||_F and max |W - Q(W)|, dequantizing a block of rows at a time.
std::pair<double, double> weight_errors(const at::Tensor& w, const QuantResult& q) {
  const int64_t rows = w.size(0), step = std::max<int64_t>(1, kErrorBlockElems / std::max<int64_t>(1, w.size(1)));
  double se = 0, sw = 0, mx = 0;
  for (int64_t r = 0; r < rows; r += step) {
    const int64_t n = std::min(step, rows - r);
    QuantResult part = q;
    part.codes = q.codes.narrow(0, r, n), part.scales = q.scales.narrow(0, r, n), part.zeros = q.zeros.narrow(0, r, n);
    const at::Tensor x = w.narrow(0, r, n);
    const at::Tensor d = part.dequantize().sub_(x);
    se += at::sum(d.square(), at::kDouble).item<double>();
    sw += at::sum(x.square(), at::kDouble).item<double>();
    mx = std::max(mx, double(d.abs().max().item<float>()));
  }
  return {sw > 0 ? std::sqrt(se / sw) : 0.0, mx};
}

// The same for a floating-point format (the whole tensor at once: FpQuantResult has no row slices).
std::pair<double, double> fp_weight_errors(const at::Tensor& w, const FpQuantResult& q) {
  const at::Tensor d = q.dequantize().sub_(w);
  const double sw = at::sum(w.square(), at::kDouble).item<double>();
  const double se = at::sum(d.square(), at::kDouble).item<double>();
  return {sw > 0 ? std::sqrt(se / sw) : 0.0, double(d.abs().max().item<float>())};
}

// The input's config.json (key order kept), or nothing when there is none beside the weights.
std::optional<nlohmann::ordered_json> input_config(const std::string& input) {
  const fs::path dir = fs::is_directory(input) ? fs::path(input) : fs::path(input).parent_path();
  const fs::path p = (dir.empty() ? fs::path(".") : dir) / "config.json";
  if (!fs::is_regular_file(p)) return std::nullopt;
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(read_file_text(p.string()));
  } catch (const nlohmann::json::exception& e) {
    fail(kComp, p.string(), ": expected a JSON object (the model's Hugging Face config), but it is not valid JSON (",
         e.what(), ")");
  }
  if (!j.is_object()) fail(kComp, p.string(), ": expected a JSON object, got JSON ", j.type_name());
  if (j.contains("quantization_config"))
    fail(kComp, p.string(), ": the model is already quantized (quantization_config with quant_method '",
         j["quantization_config"].value("quant_method", std::string("?")),
         "'); model-free quantization needs the float checkpoint");
  return j;
}

// The output file of each tensor: the shard of a sharded directory keeps its name, anything else is
// model.safetensors.
std::string shard_of(const CheckpointReader& r, const std::string& name) {
  if (const auto* hf = dynamic_cast<const HfDirReader*>(&r); hf && hf->sharded()) return hf->shard_of(name);
  return "model.safetensors";
}

uint64_t file_bytes(const std::string& p) {
  std::error_code ec;
  const auto n = fs::file_size(p, ec);
  return ec ? 0 : uint64_t(n);
}

// The compressed-tensors parts of one quantized weight (export/model_free.h); returns their bytes.
uint64_t add_ct_parts(SafetensorsStreamWriter& w, const std::string& module, const QuantResult& q,
                      const std::string& where) {
  const int bits = q.spec.bits;
  std::vector<HostTensor> parts;
  parts.push_back(from_torch(module + ".weight_packed", pack_int32_words(q.codes, bits)));
  parts.push_back(hfx::to_f16(module + ".weight_scale", q.scales.contiguous(), where));
  if (!q.spec.symmetric) {
    const at::Tensor zp = q.zeros.round().to(at::kByte).t().contiguous();  // [G, out]: packed along out
    parts.push_back(from_torch(module + ".weight_zero_point", pack_int32_words(zp, bits).t().contiguous()));
  }
  parts.push_back(from_torch(module + ".weight_shape", at::tensor({q.codes.size(0), q.codes.size(1)}, at::kLong)));
  uint64_t bytes = 0;
  for (const HostTensor& p : parts) w.add(p), bytes += p.nbytes;
  return bytes;
}

// Stored bytes of one weight in our packed layout (quant/packed.h).
uint64_t packed_bytes(const QuantResult& q) {
  const int64_t out = q.codes.size(0), in = q.codes.size(1), g = q.n_groups();
  return uint64_t(out * packed_row_bytes(in, q.spec.bits) + out * g * 2 +
                  (q.spec.symmetric ? 0 : out * packed_row_bytes(g, q.spec.bits)));
}

}  // namespace

ModelFreeResult quantize_model_free(const std::string& input, const std::string& out, const ModelFreeOptions& o,
                                    const ModelFreeCallbacks& cb) {
  const QuantSpec& spec = o.spec;
  spec.validate("(all tensors)", 1 << 30);
  const bool ct = o.format == "compressed-tensors";
  if (!ct && o.format != "mcompress")
    fail(kComp, "--format '", o.format, "' is not a model-free output format (allowed: compressed-tensors, mcompress)");
  auto reader = open_model_free_input(input);
  std::optional<nlohmann::ordered_json> config = input_config(input);  // before the plan: "already quantized"
  const std::vector<ModelFreeTensor> plan = model_free_plan(*reader, o);
  ModelFreeResult res;
  if (o.fp) {  // the output format and every width, before anything is written
    if (!ct) fail(kComp, "--scheme ", fp_scheme_name(*o.fp), " is written as compressed-tensors only, not '", o.format, "'");
    hfx::fp_ct_format(*o.fp, input);
    std::vector<std::pair<std::string, int64_t>> widths;
    for (const ModelFreeTensor& t : plan)
      if (t.quantize) widths.emplace_back(t.name, t.shape[1]);
    hfx::fp_check_widths(*o.fp, widths, input, res.warnings);
  }

  hfx::AtomicDir dir(out);
  std::set<std::string> shards_in;
  for (const ModelFreeTensor& t : plan) shards_in.insert(shard_of(*reader, t.name));
  const bool sharded = ct && shards_in.size() > 1;
  if (const auto* hf = dynamic_cast<const HfDirReader*>(reader.get())) {
    for (const HfShard& s : hf->shards()) res.size_in += s.file_bytes;
  } else {
    res.size_in = file_bytes(input);
  }

  // One writer open at a time: the tensors come shard by shard (HfDirReader's order).
  std::unique_ptr<SafetensorsStreamWriter> writer;
  std::unique_ptr<PackedCheckpointWriter> packed;
  if (!ct) packed = std::make_unique<PackedCheckpointWriter>(dir.file("model.safetensors"));
  std::string open_shard;
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  uint64_t total_tensor_bytes = 0;
  auto close_shard = [&] {
    if (writer) writer->finish({{"format", "pt"}});
    writer.reset();
  };
  std::vector<std::string> float_modules;  // 2-D float .weight tensors left unquantized
  bool lm_head_quantized = false, ragged = false;
  const int64_t n = int64_t(plan.size());
  for (int64_t i = 0; i < n; ++i) {
    const ModelFreeTensor& t = plan[size_t(i)];
    const auto t0 = std::chrono::steady_clock::now();
    const std::string shard = shard_of(*reader, t.name);
    if (ct && shard != open_shard) {
      close_shard();
      writer = std::make_unique<SafetensorsStreamWriter>(dir.file(shard));
      open_shard = shard;
    }
    const HostTensor v = reader->load(t.name);
    std::optional<ModelFreeRow> row;
    if (!t.quantize) {
      if (t.candidate) float_modules.push_back(module_of(t.name));
      if (ct) {
        writer->add(v, [&](uint64_t off, uint64_t len) { release_mapped_pages(v.data + off, len); });
        weight_map[t.name] = shard, total_tensor_bytes += v.nbytes;
      } else {
        packed->add_dense(t.name, to_torch(v));
      }
      res.copied += 1, res.copied_bytes += v.nbytes;
    } else {
      // The float32 copy (bf16/f16 widened exactly), converted a chunk at a time with the chunk's mapped
      // pages let go behind it: the tensor is never resident twice.
      std::vector<float> f(size_t(shape_numel(t.shape)));
      const int64_t esize = dtype_info(v.dtype).block_bytes, numel = int64_t(f.size());
      for (int64_t b = 0; b < numel; b += kConvertChunk) {
        const int64_t e = std::min(numel, b + kConvertChunk);
        to_f32_range(v, b, e, f.data() + b);
        release_mapped_pages(v.data + b * esize, uint64_t((e - b) * esize));
      }
      const at::Tensor w = at::from_blob(f.data(), {t.shape[0], t.shape[1]}, at::kFloat);
      ModelFreeRow r{t.name, t.shape, t.dtype, t.nbytes};
      if (o.fp) {
        const FpQuantResult fq = fp_quantize(w, *o.fp, t.name);
        std::tie(r.rel_error, r.max_abs_error) = fp_weight_errors(w, fq);
        const uint64_t before = writer->spooled_bytes();
        for (const HostTensor& part : hfx::fp_ct_parts(module_of(t.name), fq)) {
          writer->add(part);
          weight_map[part.name] = shard;
        }
        r.bytes_out = writer->spooled_bytes() - before;
        total_tensor_bytes += r.bytes_out;
      } else {
        const QuantResult q = rtn_quantize(w, spec, t.name);
        std::tie(r.rel_error, r.max_abs_error) = weight_errors(w, q);
        ragged = ragged || (spec.group_size > 0 && t.shape[1] % spec.group_size != 0);
        if (ct) {
          const uint64_t before = writer->spooled_bytes();
          r.bytes_out = add_ct_parts(*writer, module_of(t.name), q, input);
          total_tensor_bytes += writer->spooled_bytes() - before;
          for (const char* part : {".weight_packed", ".weight_scale", ".weight_zero_point", ".weight_shape"})
            if (writer->contains(module_of(t.name) + part)) weight_map[module_of(t.name) + part] = shard;
        } else {
          packed->add_quantized(t.name, q);
          r.bytes_out = packed_bytes(q);
        }
      }
      lm_head_quantized = lm_head_quantized || is_lm_head(module_of(t.name));
      row = std::move(r);
    }
    release_mapped_pages(v.data, v.nbytes);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (row) {
      row->seconds = secs;
      res.rows.push_back(*row);
    }
    if (cb.progress) cb.progress(t, row ? &res.rows.back() : nullptr, i + 1, n, secs);
  }
  close_shard();
  if (packed) packed->finish({{"format", "pt"}});

  if (sharded) {
    nlohmann::ordered_json index;
    index["metadata"] = {{"total_size", total_tensor_bytes}};
    index["weight_map"] = weight_map;
    dir.write_text("model.safetensors.index.json", index.dump(2) + "\n");
  }
  const std::string scheme = o.fp ? fp_scheme_name(*o.fp) : spec.describe();
  if (ct) {
    std::vector<std::string> ignore;
    if (!lm_head_quantized) ignore.push_back("lm_head");
    for (const auto& m : float_modules)
      if (m != "lm_head") ignore.push_back(m);
    const nlohmann::ordered_json qc =
        o.fp ? hfx::fp_ct_qconfig(*o.fp, ignore) : hfx::compressed_tensors_qconfig(spec, false, ignore);
    nlohmann::ordered_json cfg = config ? *config : nlohmann::ordered_json::object();
    cfg["quantization_config"] = qc;
    dir.write_text("config.json", cfg.dump(2) + "\n");
    if (o.fp)
      res.notes.push_back(str("compressed-tensors ", hfx::fp_ct_format(*o.fp, input), ", ", scheme, ", weights only"));
    else
      res.notes.push_back(str("compressed-tensors pack-quantized, ", scheme, ": weight_packed int32 (", 32 / spec.bits,
                              " codes per word), weight_scale float16",
                              spec.symmetric ? "" : ", weight_zero_point int32 packed along the output dimension",
                              ", weight_shape int64"));
    res.notes.push_back(sharded ? str(shards_in.size(), " shards with the input's file names, and model.safetensors.index.json")
                                : std::string("one file: model.safetensors"));
    if (!config)
      res.warnings.push_back("no config.json beside the input: the output's config.json holds only quantization_config "
                             "(add the model's own keys before loading it in Transformers or vLLM)");
    if (!o.fp && spec.bits != 4 && spec.bits != 8)
      res.warnings.push_back(str(spec.bits, "-bit weights: compressed-tensors reads them, but vLLM's WNA16 kernels load "
                                 "4 and 8 bits only"));
    if (ragged)
      res.warnings.push_back(str("group_size ", spec.group_size, " does not divide every input dimension: the last group "
                                 "of those rows is shorter (compressed-tensors counts ceil(in / group_size) groups; "
                                 "some vLLM kernels need whole groups)"));
    if (!o.fp && spec.group_size < 0) res.notes.push_back("per-tensor grid written as per-channel (strategy channel), every row the same scale");
  } else {
    if (config) dir.write_text("config.json", config->dump(2) + "\n");
    res.notes.push_back(str("mcompress packed layout (docs/packed-format.md), ", scheme, ": one file model.safetensors"));
  }
  copy_companion_files(input, "", dir.path());
  for (const auto& e : fs::directory_iterator(dir.path()))
    if (e.path().extension() == ".safetensors") res.size_out += file_bytes(e.path().string());
  if (cb.before_commit) cb.before_commit(dir.path(), res);
  ExportSummary s = dir.commit(res.notes);
  res.files = s.files;
  return res;
}

}  // namespace mc
