#include "ptq_journal.h"

#include <ATen/ATen.h>

#include "mcompress/model.h"

namespace mc {

namespace {
constexpr const char* kQuant = "q:";   // journal tensor prefix of a quantized weight
constexpr const char* kParam = "p:";   // ... of another parameter the block changed
constexpr const char* kActBits = "act_bits:";
constexpr const char* kActFormat = "act_format:";  // ActFormat as a number; absent: int
constexpr const char* kLora = "lora:";  // ... of an EoRA adapter: "lora:<layer>.A", "lora:<layer>.B"
}  // namespace

void use_w8a8(Model& m, const std::string& layer, const QuantResult& q, const ActQuant& act) {
  m.set_input_quant(layer, act);
  const QuantSpec& sp = q.spec;
  if (act.format == ActFormat::int_ && act.bits == 8 && sp.bits == 8 && sp.symmetric && sp.group_size == 0)
    m.set_int8_weight(layer, q.scales.reshape({-1}).to(m.device()));
}

void PtqBlockSaver::snapshot() {
  params_ = m_.params();  // shallow: replaced parameters are new tensors
}

void PtqBlockSaver::save(int k, const PtqResult& res, BlockJournal::Entry& e) const {
  std::map<std::string, at::Tensor>& tensors = e.tensors;
  std::set<std::string> quantized;
  for (const auto& l : m_.layers()) {
    if (l.block != k) continue;
    auto q = res.quantized.find(l.weight);
    if (q != res.quantized.end() && quantized.insert(l.weight).second) journal_put_quant(tensors, kQuant + l.weight, q->second);
    auto a = res.act_bits.find(l.name);
    if (a != res.act_bits.end()) {
      e.record.numbers[kActBits + l.name] = a->second;
      if (res.act_format != ActFormat::int_) e.record.numbers[kActFormat + l.name] = static_cast<int>(res.act_format);
    }
    auto ad = res.adapters.find(l.name);
    if (ad != res.adapters.end()) {
      tensors[kLora + l.name + ".A"] = ad->second.A;
      tensors[kLora + l.name + ".B"] = ad->second.B;
    }
  }
  for (const auto& [key, t] : m_.params()) {
    auto before = params_.find(key);
    if (!quantized.count(key) && t.defined() && (before == params_.end() || !t.is_same(before->second)))
      tensors[kParam + key] = t;
  }
}

int64_t restore_ptq_block(const BlockJournal::Entry& e, Model& m, PtqResult& res) {
  int64_t n = 0;
  for (const auto& [name, t] : e.tensors) {
    if (name.rfind(kParam, 0) == 0) {
      m.set_param(name.substr(2), t);
    } else if (name.rfind(kQuant, 0) == 0 && name.size() > 5 && name.compare(name.size() - 5, 5, ".grid") == 0) {
      const std::string key = name.substr(2, name.size() - 7);
      QuantResult q = journal_get_quant(e.tensors, name.substr(0, name.size() - 5));
      m.set_param(key, q.dequantize().reshape(m.param(key).sizes()));
      res.quantized.insert_or_assign(key, std::move(q));
      ++n;
    }
  }
  // EoRA: the model computed with Ŵ + B A after the block (the same sum as quantize_model's).
  for (const auto& [name, t] : e.tensors) {
    if (name.rfind(kLora, 0) != 0 || name.compare(name.size() - 2, 2, ".A") != 0) continue;
    const std::string layer = name.substr(5, name.size() - 7);
    LowRankAdapter ad{t, e.tensors.at(std::string(kLora) + layer + ".B")};
    const std::string key = m.layer(layer).weight;
    const at::Tensor w = m.param(key);
    m.set_param(key, (w.reshape({w.size(0), -1}) + ad.B.mm(ad.A)).reshape(w.sizes()));
    res.adapters[layer] = std::move(ad);
  }
  for (const auto& [name, bits] : e.record.numbers)
    if (name.rfind(kActBits, 0) == 0) {
      const std::string layer = name.substr(9);
      auto f = e.record.numbers.find(kActFormat + layer);
      const ActQuant act{f == e.record.numbers.end() ? ActFormat::int_ : static_cast<ActFormat>(static_cast<int>(f->second)),
                         static_cast<int>(bits)};
      res.act_bits[layer] = act.bits;
      res.act_format = act.format;
      use_w8a8(m, layer, res.quantized.at(m.layer(layer).weight), act);
    }
  return n;
}

}  // namespace mc
