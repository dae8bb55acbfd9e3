// BlockJournal (journal.h): per-block results and hidden states in safetensors files.
#include "mcompress/journal.h"

#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "mcompress/atomic_file.h"
#include "mcompress/error.h"
#include "mcompress/io/safetensors.h"
#include "mcompress/torch_bridge.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace mc {

namespace {

constexpr const char* kComp = "resume";

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_tensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
                   const std::map<std::string, std::string>& metadata) {
  std::vector<HostTensor> host;
  for (const auto& [name, t] : tensors) host.push_back(from_torch(name, t.detach().cpu()));
  write_safetensors(path, host, metadata);
}

std::map<std::string, at::Tensor> read_tensors(const std::string& path, std::map<std::string, std::string>* metadata) {
  auto r = open_safetensors(path);
  std::map<std::string, at::Tensor> out;
  for (const auto& info : r->tensors()) out[info.name] = to_torch(r->load(info.name)).clone();
  if (metadata) *metadata = r->metadata();
  return out;
}

json row_json(const LayerRow& r) {
  json j = {{"name", r.name}, {"shape", r.shape}, {"scheme", r.scheme}, {"params", r.params},
            {"bits_per_weight", r.bits_per_weight}, {"note", r.note}};
  if (r.rel_output_error) j["rel_output_error"] = *r.rel_output_error;
  return j;
}

LayerRow row_from(const json& j) {
  LayerRow r;
  r.name = j.at("name"), r.shape = j.at("shape"), r.scheme = j.at("scheme"), r.params = j.at("params");
  r.bits_per_weight = j.at("bits_per_weight"), r.note = j.at("note");
  if (j.contains("rel_output_error")) r.rel_output_error = j.at("rel_output_error").get<double>();
  return r;
}

}  // namespace

BlockJournal::BlockJournal(std::string dir, std::string identity) : dir_(std::move(dir)) {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) fail(kComp, dir_, ": cannot create the resume journal: ", ec.message());
  const std::string id_path = (fs::path(dir_) / "identity.json").string();
  const bool same = fs::exists(id_path) && read_text(id_path) == identity;
  for (const auto& e : fs::directory_iterator(dir_)) {
    const std::string name = e.path().filename().string();
    // Blocks of other settings, and temp files of a killed writer, go.
    if (!same || name.find(".tmp-") != std::string::npos) fs::remove_all(e.path(), ec);
    else if (name.size() > 12 && name.find("-block-") != std::string::npos) resumed_ = true;
  }
  if (!same) {
    AtomicFile f(id_path, kComp);
    f.write(identity.data(), identity.size());
    f.commit();
  }
}

std::string BlockJournal::path(const std::string& phase, const std::string& what) const {
  return (fs::path(dir_) / (phase + "-" + what + ".safetensors")).string();
}

int BlockJournal::finished(const std::string& phase) const {
  const std::string h = path(phase, "hidden");
  if (!fs::exists(h)) return 0;
  try {
    const int last = std::stoi(open_safetensors(h)->metadata().at("after_block"));
    for (int k = 0; k <= last; ++k)
      if (!fs::exists(path(phase, "block-" + std::to_string(k)))) return 0;
    return last + 1;
  } catch (const std::exception&) {
    return 0;  // unreadable: start the phase again
  }
}

std::string BlockJournal::summary() const {
  std::map<std::string, int> phases;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    const std::string name = e.path().filename().string();
    const size_t h = name.find("-hidden.safetensors");
    if (h != std::string::npos && h + 19 == name.size()) phases[name.substr(0, h)] = finished(name.substr(0, h));
  }
  std::string s;
  for (const auto& [phase, n] : phases)
    if (n > 0) s += (s.empty() ? "" : ", ") + phase + ": " + std::to_string(n) + (n == 1 ? " block" : " blocks");
  return s;
}

std::vector<at::Tensor> BlockJournal::hidden(const std::string& phase, const c10::Device& device) const {
  std::map<std::string, std::string> meta;
  auto t = read_tensors(path(phase, "hidden"), &meta);
  std::vector<at::Tensor> out(t.size());
  for (auto& [name, v] : t) {
    const size_t i = std::stoul(name.substr(name.find('.') + 1));
    if (i >= out.size()) fail(kComp, path(phase, "hidden"), ": unexpected tensor '", name, "'");
    out[i] = v.to(device);
  }
  return out;
}

BlockJournal::Entry BlockJournal::load(const std::string& phase, int block) const {
  std::map<std::string, std::string> meta;
  const std::string p = path(phase, "block-" + std::to_string(block));
  Entry e;
  e.tensors = read_tensors(p, &meta);
  try {
    const json j = json::parse(meta.at("record"));
    for (const auto& r : j.at("rows")) e.record.rows.push_back(row_from(r));
    e.record.warnings = j.at("warnings").get<std::vector<std::string>>();
    e.record.numbers = j.at("numbers").get<std::map<std::string, double>>();
  } catch (const std::exception& ex) {
    fail(kComp, p, ": bad journal record (", ex.what(), "); delete ", dir_, " to start over");
  }
  return e;
}

void BlockJournal::save(const std::string& phase, int block, const std::map<std::string, at::Tensor>& tensors,
                        const Record& record, const std::vector<at::Tensor>& hidden) {
  json rows = json::array();
  for (const auto& r : record.rows) rows.push_back(row_json(r));
  const json j = {{"rows", rows}, {"warnings", record.warnings}, {"numbers", record.numbers}};
  write_tensors(path(phase, "block-" + std::to_string(block)), tensors, {{"record", j.dump()}});
  std::map<std::string, at::Tensor> h;
  for (size_t i = 0; i < hidden.size(); ++i) h["hidden." + std::to_string(i)] = hidden[i];
  write_tensors(path(phase, "hidden"), h, {{"after_block", std::to_string(block)}});
}

void BlockJournal::remove() {
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

void journal_put_quant(std::map<std::string, at::Tensor>& tensors, const std::string& key, const QuantResult& q) {
  const at::Tensor c = q.codes.contiguous();
  if (q.spec.bits <= 4 && c.scalar_type() == at::kByte && c.numel() % 2 == 0 && c.is_cpu()) {
    // Two codes a byte (the even element in the low nibble): an 8B model's journal is 3.6 GB instead of 7.3.
    const at::Tensor pairs = c.reshape({-1, 2});
    tensors[key + ".codes4"] = pairs.select(1, 0).bitwise_or(pairs.select(1, 1).bitwise_left_shift(4));
    tensors[key + ".codes_shape"] = at::tensor(c.sizes().vec(), at::kLong);
  } else {
    tensors[key + ".codes"] = q.codes;
  }
  tensors[key + ".scales"] = q.scales;
  tensors[key + ".zeros"] = q.zeros;
  if (q.g_idx.defined()) tensors[key + ".g_idx"] = q.g_idx;
  if (q.mins.defined()) tensors[key + ".mins"] = q.mins;
  std::vector<int64_t> grid = {q.spec.bits, q.spec.symmetric, q.spec.group_size, q.spec.mse_clip};
  grid.insert(grid.end(), q.weight_shape.begin(), q.weight_shape.end());
  tensors[key + ".grid"] = at::tensor(grid, at::kLong);
}

QuantResult journal_get_quant(const std::map<std::string, at::Tensor>& tensors, const std::string& key) {
  auto get = [&](const char* part) -> const at::Tensor& {
    auto it = tensors.find(key + part);
    if (it == tensors.end()) fail(kComp, "journal entry of ", key, " has no ", part);
    return it->second;
  };
  QuantResult q;
  if (tensors.count(key + ".codes4")) {
    const at::Tensor packed = get(".codes4").contiguous(), shape = get(".codes_shape").contiguous();
    const std::vector<int64_t> dims(shape.data_ptr<int64_t>(), shape.data_ptr<int64_t>() + shape.numel());
    q.codes = at::stack({packed.bitwise_and(15), packed.bitwise_right_shift(4)}, 1).reshape(dims);
  } else {
    q.codes = get(".codes");
  }
  q.scales = get(".scales"), q.zeros = get(".zeros");
  if (tensors.count(key + ".g_idx")) q.g_idx = tensors.at(key + ".g_idx");
  if (tensors.count(key + ".mins")) q.mins = tensors.at(key + ".mins");
  const at::Tensor g = get(".grid").contiguous();
  const int64_t* v = g.data_ptr<int64_t>();
  q.spec.bits = static_cast<int>(v[0]), q.spec.symmetric = v[1] != 0, q.spec.group_size = v[2], q.spec.mse_clip = v[3] != 0;
  q.weight_shape.assign(v + 4, v + g.numel());
  return q;
}

}  // namespace mc
