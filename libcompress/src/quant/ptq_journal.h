// quantize_model's use of the block journal (journal.h, through block_driver.h): what one quantized
// block leaves behind besides its report rows and warnings (its QuantResults, activation bits, and every
// other parameter it changed, e.g. norms that absorbed AWQ/SmoothQuant scales) saved after the block and
// put back on resume.
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
  void snapshot();
  // Block k into e: its quantized layers and activation bits, the parameters replaced since snapshot()
  // (other than quantized weights).
  void save(int k, const PtqResult& res, BlockJournal::Entry& e) const;

 private:
  const Model& m_;
  std::map<std::string, at::Tensor> params_;
};

// Puts a block back from its journal entry: the model's parameters (quantized weights dequantized), W8A8
// input quantization, and res's quantized entries and act_bits. Returns the number of quantized layers
// restored.
int64_t restore_ptq_block(const BlockJournal::Entry& e, Model& m, PtqResult& res);

// W8A8 on `layer`: per-token input quantization, and the int8 kernel when the weight grid allows it.
void use_w8a8(Model& m, const std::string& layer, const QuantResult& q, const ActQuant& act);

}  // namespace mc
