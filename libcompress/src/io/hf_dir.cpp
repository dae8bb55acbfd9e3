#include "mcompress/io/hf_dir.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "mcompress/error.h"
#include "mcompress/io/safetensors.h"

namespace mc {

namespace {

namespace fs = std::filesystem;
constexpr const char* kComp = "hf";

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) fail<FileError>(kComp, p.string(), ": cannot read");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

nlohmann::json parse_json(const fs::path& p, const char* expected) {
  try {
    auto j = nlohmann::json::parse(read_text(p));
    if (!j.is_object()) fail(kComp, p.string(), ": expected ", expected, ", got JSON ", j.type_name());
    return j;
  } catch (const nlohmann::json::exception& e) {
    fail(kComp, p.string(), ": expected ", expected, " but it is not valid JSON (", e.what(), ")");
  }
}

// Shard name -> the tensors index.json lists in it (in index order of first appearance per shard).
std::map<std::string, std::vector<std::string>> read_index(const fs::path& index) {
  const nlohmann::json j = parse_json(index, "a JSON object with \"weight_map\": {tensor: shard file}");
  auto wm = j.find("weight_map");
  if (wm == j.end() || !wm->is_object())
    fail(kComp, index.string(), ": expected \"weight_map\": {tensor: shard file}, ",
         wm == j.end() ? std::string("found no weight_map") : str("got ", wm->type_name()));
  std::map<std::string, std::vector<std::string>> by_shard;
  for (const auto& [name, file] : wm->items()) {
    if (!file.is_string())
      fail(kComp, index.string(), ": weight_map['", name, "'] should name a shard file, got ", file.type_name());
    const std::string f = file.get<std::string>();
    if (f.empty() || f.find('/') != std::string::npos || f.find('\\') != std::string::npos || f == "." || f == "..")
      fail(kComp, index.string(), ": shard name '", f, "' of tensor '", name, "' must be a file in the same directory");
    by_shard[f].push_back(name);
  }
  if (by_shard.empty()) fail(kComp, index.string(), ": weight_map lists no tensors");
  return by_shard;
}

}  // namespace

HfConfigSummary summarize_hf_config(const nlohmann::json& config, const std::string& path) {
  HfConfigSummary s;
  const nlohmann::json& top = config;
  const nlohmann::json& c =
      config.contains("text_config") && config["text_config"].is_object() ? config["text_config"] : config;
  auto wrong = [&](const char* key, const char* want, const nlohmann::json& v) {
    fail(kComp, path, ": expected \"", key, "\" to be ", want, ", got ", v.type_name(), " ", v.dump());
  };
  auto get_int = [&](const char* key, int64_t& out) {
    const nlohmann::json* v = c.contains(key) ? &c[key] : top.contains(key) ? &top[key] : nullptr;
    if (!v || v->is_null()) return;
    if (!v->is_number_integer() || v->get<int64_t>() < 0) wrong(key, "a non-negative integer", *v);
    out = v->get<int64_t>();
  };
  auto get_str = [&](const char* key, std::string& out) {
    const nlohmann::json* v = c.contains(key) ? &c[key] : top.contains(key) ? &top[key] : nullptr;
    if (!v || v->is_null()) return;
    if (!v->is_string()) wrong(key, "a string", *v);
    out = v->get<std::string>();
  };
  if (top.contains("architectures")) {
    const auto& a = top["architectures"];
    if (!a.is_array() || (!a.empty() && !a[0].is_string())) wrong("architectures", "a list of strings", a);
    if (!a.empty()) s.architecture = a[0].get<std::string>();
  }
  get_str("model_type", s.model_type);
  get_str("torch_dtype", s.torch_dtype);
  if (s.torch_dtype.empty()) get_str("dtype", s.torch_dtype);  // newer transformers write "dtype"
  get_int("hidden_size", s.hidden_size);
  get_int("num_hidden_layers", s.num_layers);
  get_int("num_attention_heads", s.num_heads);
  get_int("num_key_value_heads", s.num_kv_heads);
  get_int("head_dim", s.head_dim);
  get_int("intermediate_size", s.intermediate_size);
  get_int("vocab_size", s.vocab_size);
  get_int("max_position_embeddings", s.max_position_embeddings);
  if (s.num_kv_heads == 0 && s.num_heads > 0) s.num_kv_heads = s.num_heads, s.kv_heads_derived = true;
  if (s.head_dim == 0 && s.num_heads > 0 && s.hidden_size > 0)
    s.head_dim = s.hidden_size / s.num_heads, s.head_dim_derived = true;
  for (const nlohmann::json* o : {&c, &top}) {
    if (!o->contains("tie_word_embeddings") || s.tie_word_embeddings >= 0) continue;
    const auto& v = (*o)["tie_word_embeddings"];
    if (!v.is_boolean()) wrong("tie_word_embeddings", "true or false", v);
    s.tie_word_embeddings = v.get<bool>() ? 1 : 0;
  }
  const nlohmann::json* theta = c.contains("rope_theta") ? &c["rope_theta"] : nullptr;
  if (theta && !theta->is_null()) {
    if (!theta->is_number()) wrong("rope_theta", "a number", *theta);
    s.rope_theta = theta->get<double>();
  }
  const nlohmann::json* rs = c.contains("rope_scaling") ? &c["rope_scaling"] : nullptr;
  if (rs && !rs->is_null()) {
    if (!rs->is_object()) wrong("rope_scaling", "an object or null", *rs);
    for (const char* k : {"rope_type", "type"})
      if (rs->contains(k) && (*rs)[k].is_string()) {
        s.rope_scaling_type = (*rs)[k].get<std::string>();
        break;
      }
    if (s.rope_scaling_type.empty()) wrong("rope_scaling", "an object with \"rope_type\"", *rs);
  }
  return s;
}

bool is_hf_dir(const std::string& path) {
  std::error_code ec;
  if (!fs::is_directory(path, ec)) return false;
  return fs::exists(fs::path(path) / "model.safetensors", ec) ||
         fs::exists(fs::path(path) / "model.safetensors.index.json", ec);
}

std::unique_ptr<HfDirReader> open_hf_dir(const std::string& dir_str) {
  const fs::path dir(dir_str);
  const fs::path single = dir / "model.safetensors", index = dir / "model.safetensors.index.json",
                 cfg = dir / "config.json";
  std::unique_ptr<HfDirReader> r(new HfDirReader(dir_str));
  if (fs::exists(cfg)) {
    r->config_ = parse_json(cfg, "a JSON object (the model's Hugging Face config)");
    r->summary_ = summarize_hf_config(r->config_, cfg.string());
  }

  std::map<std::string, std::vector<std::string>> listed;  // shard -> tensors index.json puts there
  if (fs::exists(index)) {
    listed = read_index(index);
    r->sharded_ = true;
  } else if (fs::exists(single)) {
    listed["model.safetensors"] = {};
  } else {
    fail(kComp, dir_str, ": expected model.safetensors or model.safetensors.index.json in this directory "
         "(pytorch_model.bin directories are not supported: convert the weights to safetensors first)");
  }

  std::map<std::string, std::string> holder;  // tensor -> shard, to catch a tensor in two shards
  for (const auto& [file, names] : listed) {
    const fs::path p = dir / file;
    if (!fs::is_regular_file(p)) {
      if (names.empty()) fail(kComp, p.string(), ": expected a safetensors file");
      fail(kComp, index.string(), ": shard '", file, "' (listed for ", names.size(), " tensors, e.g. '",
           names.front(), "') does not exist in ", dir_str);
    }
    auto reader = open_safetensors(p.string());
    for (const auto& name : names)
      if (!reader->contains(name))
        fail(kComp, index.string(), ": tensor '", name, "' is listed in shard '", file, "' which does not hold it");
    const std::set<std::string> want(names.begin(), names.end());
    HfShard sh{file, static_cast<uint64_t>(fs::file_size(p)), 0, reader->tensors().size()};
    for (const auto& ti : reader->tensors()) {
      auto [it, fresh] = holder.emplace(ti.name, file);
      if (!fresh)
        fail(kComp, dir_str, ": tensor '", ti.name, "' is in two shards, '", it->second, "' and '", file, "'");
      if (r->sharded_ && !want.count(ti.name)) r->unlisted_.push_back(file + ":" + ti.name);
      sh.tensor_bytes += ti.nbytes;
      r->add_tensor(ti, kComp);
      r->shard_index_.push_back(r->shards_.size());
    }
    for (const auto& [k, v] : reader->metadata()) r->metadata_.emplace(k, v);  // the first shard's value wins
    r->shards_.push_back(sh);
    r->readers_.push_back(std::move(reader));
  }
  return r;
}

const std::string& HfDirReader::shard_of(const std::string& name) const {
  info(name);  // throws when absent
  return shards_[shard_index_[index_.at(name)]].file;
}

HostTensor HfDirReader::load(const std::string& name) const {
  info(name);
  return readers_[shard_index_[index_.at(name)]]->load(name);
}

}  // namespace mc
