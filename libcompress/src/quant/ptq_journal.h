// quantize_model's use of the block journal (journal.h): what one quantized block leaves behind (its
// QuantResults, report rows, warnings, activation bits, and every other parameter it changed, e.g.
// norms that absorbed AWQ/SmoothQuant scales) saved after the block and put back on resume.
#pragma once
#include <map>
#include <set>
#include <string>

#include "mcompress/journal.h"
#include "mcompress/ptq.h"

namespace mc {

class Model;

// Watches the model between blocks: snapshot() after a block is finished, then save() after the next.
class PtqBlockSaver {
 public:
  explicit PtqBlockSaver(const Model& m) : m_(m) {}
  void snapshot(const PtqResult& res);
  // Saves block k: rows and warnings added to res since snapshot(), block k's quantized layers, the
  // parameters replaced since snapshot() (other than quantized weights).
  void save(BlockJournal& j, int k, const PtqResult& res, const std::vector<at::Tensor>& hidden);

 private:
  const Model& m_;
  std::map<std::string, at::Tensor> params_;
  size_t rows_ = 0, warnings_ = 0;
};

// Puts block k back from the journal: the model's parameters (quantized weights dequantized), W8A8
// input quantization, and res's quantized entries, rows, warnings and act_bits. Returns the number of
// quantized layers restored.
int64_t restore_ptq_block(const BlockJournal& j, int k, Model& m, PtqResult& res);

// W8A8 on `layer`: per-token input quantization, and the int8 kernel when the weight grid allows it.
void use_w8a8(Model& m, const std::string& layer, const QuantResult& q, int act_bits);

}  // namespace mc
