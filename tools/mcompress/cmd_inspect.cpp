// mcompress inspect FILE|DIR [--json] [--no-stats] [--raw]: format, every tensor with statistics, totals.
// A Hugging Face directory (config.json + model.safetensors or shards with index.json) is read as one model:
// config summary, shards and sizes, dtypes, every tensor with its shard. A packed checkpoint written by
// mcompress shows its quantized weights grouped (scheme, bytes, bits per weight); --raw lists the parts.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "cli.h"
#include "mcompress/checkpoint.h"
#include "mcompress/error.h"
#include "mcompress/io/hf_dir.h"
#include "mcompress/quant/packed_summary.h"

namespace mcli {

namespace {

nlohmann::json finite_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

using Row = std::vector<std::string>;

// Left-aligned text columns, right-aligned number columns (from `first_number` on).
void print_table(const Row& header, const std::vector<Row>& rows, size_t first_number) {
  std::vector<size_t> w(header.size());
  for (size_t i = 0; i < header.size(); ++i) w[i] = header[i].size();
  for (const auto& r : rows)
    for (size_t i = 0; i < w.size(); ++i) w[i] = std::max(w[i], r[i].size());
  auto line = [&](const Row& r) {
    std::string s;
    for (size_t i = 0; i < w.size(); ++i) {
      const std::string pad(w[i] - r[i].size(), ' ');
      s += i >= first_number ? pad + r[i] : r[i] + (i + 1 < w.size() ? pad : "");
      if (i + 1 < w.size()) s += "  ";
    }
    std::cout << s << "\n";
  };
  line(header);
  for (const auto& r : rows) line(r);
}

nlohmann::ordered_json config_json(const mc::HfConfigSummary& c) {
  nlohmann::ordered_json j;
  auto opt = [](int64_t v) { return v > 0 ? nlohmann::json(v) : nlohmann::json(nullptr); };
  j["architecture"] = c.architecture;
  j["model_type"] = c.model_type;
  j["hidden_size"] = opt(c.hidden_size);
  j["num_hidden_layers"] = opt(c.num_layers);
  j["num_attention_heads"] = opt(c.num_heads);
  j["num_key_value_heads"] = opt(c.num_kv_heads);
  j["head_dim"] = opt(c.head_dim);
  j["head_dim_derived"] = c.head_dim_derived;
  j["intermediate_size"] = opt(c.intermediate_size);
  j["vocab_size"] = opt(c.vocab_size);
  j["max_position_embeddings"] = opt(c.max_position_embeddings);
  j["tie_word_embeddings"] = c.tie_word_embeddings < 0 ? nlohmann::json(nullptr) : nlohmann::json(c.tie_word_embeddings == 1);
  j["rope_theta"] = c.rope_theta > 0 ? nlohmann::json(c.rope_theta) : nlohmann::json(nullptr);
  j["rope_scaling"] = c.rope_scaling_type.empty() ? nlohmann::json(nullptr) : nlohmann::json(c.rope_scaling_type);
  j["torch_dtype"] = c.torch_dtype;
  return j;
}

void print_config(const mc::HfConfigSummary& c) {
  auto n = [](int64_t v) { return v > 0 ? with_commas(static_cast<uint64_t>(v)) : std::string("-"); };
  auto s = [](const std::string& v) { return v.empty() ? std::string("-") : v; };
  std::cout << "config\n"
            << "  architecture        " << s(c.architecture) << (c.model_type.empty() ? "" : " (" + c.model_type + ")") << "\n"
            << "  hidden size         " << n(c.hidden_size) << "\n"
            << "  layers              " << n(c.num_layers) << "\n"
            << "  heads / kv heads    " << n(c.num_heads) << " / " << n(c.num_kv_heads)
            << (c.kv_heads_derived ? " (= heads)" : "") << "\n"
            << "  head_dim            " << n(c.head_dim) << (c.head_dim_derived ? " (hidden / heads)" : "") << "\n"
            << "  intermediate size   " << n(c.intermediate_size) << "\n"
            << "  vocab size          " << n(c.vocab_size) << "\n"
            << "  tie embeddings      " << (c.tie_word_embeddings < 0 ? "-" : c.tie_word_embeddings ? "true" : "false") << "\n"
            << "  rope_theta          " << (c.rope_theta > 0 ? fmt("%g", c.rope_theta) : "-") << "\n"
            << "  rope_scaling        " << s(c.rope_scaling_type) << "\n"
            << "  torch_dtype         " << s(c.torch_dtype) << "\n";
}

}  // namespace

int cmd_inspect(const std::vector<std::string>& args, mc::EventSink& events) {
  po::options_description desc("inspect options");
  std::string file;
  bool json = false, no_stats = false, raw = false;
  desc.add_options()
      ("file", po::value<std::string>(&file)->required(),
       "checkpoint: safetensors, PyTorch zip, HDF5, GGUF, llama2.c, or a Hugging Face model directory")
      ("json", po::bool_switch(&json), "print JSON instead of a table")
      ("no-stats", po::bool_switch(&no_stats), "skip min/max/mean/std (reads only the header)")
      ("raw", po::bool_switch(&raw), "packed checkpoints: list every stored tensor instead of grouping the quantized parts");
  po::positional_options_description pos;
  pos.add("file", 1);
  po::variables_map vm;
  CommonOptions common;
  if (!parse_command_line("inspect", "FILE|DIR [--json] [--no-stats] [--raw]", args, desc, pos, vm, common, events))
    return 0;

  std::unique_ptr<mc::CheckpointReader> reader;
  const mc::HfDirReader* hf = nullptr;
  uint64_t file_bytes = 0;
  if (std::filesystem::is_directory(file)) {
    auto dir = mc::open_hf_dir(file);
    hf = dir.get();
    for (const auto& s : hf->shards()) file_bytes += s.file_bytes;
    reader = std::move(dir);
  } else {
    reader = mc::open_checkpoint(file);
    file_bytes = std::filesystem::file_size(file);
  }
  const auto packed = mc::summarize_packed(*reader);
  const bool grouped = !packed.empty() && !raw;

  uint64_t params = 0, bytes = 0;
  nlohmann::ordered_json j;
  j["file"] = file;
  j["format"] = reader->format();
  j["file_bytes"] = file_bytes;
  if (hf) {
    j["config"] = hf->config().is_null() ? nlohmann::ordered_json(nullptr) : config_json(hf->config_summary());
    j["shards"] = nlohmann::json::array();
    for (const auto& s : hf->shards())
      j["shards"].push_back({{"file", s.file}, {"file_bytes", s.file_bytes}, {"tensor_bytes", s.tensor_bytes},
                             {"tensors", s.tensors}});
    j["unlisted_tensors"] = hf->unlisted();
  }
  j["metadata"] = reader->metadata();
  j["tensors"] = nlohmann::json::array();

  struct DTypeTotal { uint64_t tensors = 0, params = 0, bytes = 0; };
  std::map<std::string, DTypeTotal> by_dtype;
  std::vector<Row> rows;
  auto num = [](double v) { return fmt("%.4g", v); };
  for (const auto& ti : reader->tensors()) {
    const int64_t numel = mc::shape_numel(ti.shape);
    params += static_cast<uint64_t>(numel);
    bytes += ti.nbytes;
    auto& d = by_dtype[mc::dtype_name(ti.dtype)];
    d.tensors += 1, d.params += static_cast<uint64_t>(numel), d.bytes += ti.nbytes;
    const bool part = grouped && mc::is_packed_part(packed, ti.name);
    nlohmann::ordered_json t;
    t["name"] = ti.name;
    t["dtype"] = mc::dtype_name(ti.dtype);
    t["shape"] = ti.shape;
    t["numel"] = numel;
    t["bytes"] = ti.nbytes;
    t["offset"] = ti.offset;
    if (hf) t["shard"] = hf->shard_of(ti.name);
    Row r{ti.name, mc::dtype_name(ti.dtype), mc::shape_str(ti.shape), with_commas(ti.nbytes), "", "", "", "", ""};
    if (hf) r.push_back(hf->shard_of(ti.name));
    if (!no_stats && !(part && !json)) {
      mc::TensorStats s = mc::tensor_stats(reader->load(ti.name));
      t["min"] = finite_or_null(s.min);
      t["max"] = finite_or_null(s.max);
      t["mean"] = finite_or_null(s.mean);
      t["std"] = finite_or_null(s.std);
      t["nan"] = s.nan;
      t["inf"] = s.inf;
      r[4] = num(s.min), r[5] = num(s.max), r[6] = num(s.mean), r[7] = num(s.std);
      r[8] = s.nan || s.inf ? std::to_string(s.nan) + "/" + std::to_string(s.inf) : "-";
    }
    j["tensors"].push_back(t);
    if (!part) rows.push_back(r);
  }
  j["total_tensors"] = reader->tensors().size();
  j["total_parameters"] = params;
  j["total_bytes"] = bytes;
  j["dtypes"] = nlohmann::json::object();
  for (const auto& [name, d] : by_dtype)
    j["dtypes"][name] = {{"tensors", d.tensors}, {"parameters", d.params}, {"bytes", d.bytes}};

  uint64_t q_bytes = 0, q_params = 0;
  if (!packed.empty()) {
    j["quantized"] = nlohmann::json::array();
    for (const auto& e : packed) {
      q_bytes += e.bytes, q_params += static_cast<uint64_t>(e.numel);
      j["quantized"].push_back({{"name", e.key}, {"scheme", e.scheme}, {"bits", e.bits}, {"group_size", e.group_size},
                                {"symmetric", e.symmetric}, {"g_idx", e.g_idx}, {"sparse", e.sparse},
                                {"shape", e.shape}, {"weight_shape", e.weight_shape}, {"parts", e.parts},
                                {"bytes", e.bytes}, {"bits_per_weight", e.bits_per_weight}});
    }
    j["quantized_summary"] = {{"weights", packed.size()}, {"parameters", q_params}, {"bytes", q_bytes},
                              {"bits_per_weight", 8.0 * static_cast<double>(q_bytes) / static_cast<double>(q_params)}};
  }

  if (json) {
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::cout << "file        " << file << "\n"
            << "format      " << reader->format() << "\n"
            << "tensors     " << reader->tensors().size() << "\n"
            << "parameters  " << with_commas(params) << "\n"
            << "data        " << human_bytes(bytes) << " (" << (hf ? "files " : "file ") << human_bytes(file_bytes) << ")\n";
  if (hf) {
    if (!hf->config().is_null()) print_config(hf->config_summary());
    else std::cout << "config      none (no config.json)\n";
    std::cout << (hf->sharded() ? "shards (model.safetensors.index.json)\n" : "shards\n");
    for (const auto& s : hf->shards())
      std::cout << "  " << s.file << "  " << s.tensors << " tensors  " << with_commas(s.file_bytes) << " bytes ("
                << human_bytes(s.file_bytes) << ")\n";
    std::cout << "  total  " << with_commas(file_bytes) << " bytes (" << human_bytes(file_bytes) << ")\n";
    for (const auto& u : hf->unlisted()) std::cout << "  warning: " << u << " is not listed in index.json\n";
  }
  std::cout << "dtypes\n";
  for (const auto& [name, d] : by_dtype)
    std::cout << "  " << name << "  " << d.tensors << " tensors  " << with_commas(d.params) << " parameters  "
              << with_commas(d.bytes) << " bytes (" << human_bytes(d.bytes) << ")\n";
  if (!reader->metadata().empty()) {
    std::cout << "metadata\n";
    for (const auto& [k, v] : reader->metadata()) {
      std::string shown = v.size() > 100 ? v.substr(0, 97) + "..." : v;
      std::cout << "  " << k << " = " << shown << "\n";
    }
  }
  if (!packed.empty()) {
    std::cout << "quantized   " << packed.size() << " weights, " << with_commas(q_params) << " parameters in "
              << human_bytes(q_bytes) << ": " << fmt("%.4g", 8.0 * static_cast<double>(q_bytes) / static_cast<double>(q_params))
              << " bits per weight\n";
  }
  if (grouped) {
    std::cout << "\n";
    std::vector<Row> qrows;
    for (const auto& e : packed)
      qrows.push_back({e.key, e.scheme, mc::shape_str(e.weight_shape), with_commas(e.bytes), fmt("%.4g", e.bits_per_weight),
                       std::to_string(e.parts.size())});
    print_table({"weight", "scheme", "shape", "bytes", "bits/weight", "parts"}, qrows, 3);
    if (rows.empty()) return 0;
    std::cout << "\nother tensors\n";
  }
  std::cout << "\n";
  Row header{"name", "dtype", "shape", "bytes", "min", "max", "mean", "std", "nan/inf"};
  if (no_stats) {
    header.resize(4);
    for (auto& r : rows) r.erase(r.begin() + 4, r.begin() + 9);
  }
  if (hf) header.push_back("shard");
  // The shard column is text: print it after the numbers, left-aligned by padding to its width.
  if (hf) {
    size_t sw = 5;
    for (const auto& r : rows) sw = std::max(sw, r.back().size());
    header.back().resize(sw, ' ');
    for (auto& r : rows) r.back().resize(sw, ' ');
  }
  print_table(header, rows, 3);
  return 0;
}

}  // namespace mcli
