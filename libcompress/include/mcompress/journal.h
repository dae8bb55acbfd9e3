// Resumable layer-sequential runs (quantize, prune). After every block, what the block produced is
// saved in a journal directory (the CLI uses OUT/.resume): the block's results as tensors plus a JSON
// record, and the calibration hidden states that feed the next block. A run killed at any point
// (kill -9 included) and started again with the same inputs and options restores the finished blocks
// from the journal and continues with the next one; the output is byte-identical to an uninterrupted
// run because every block sees exactly the inputs and parameters it saw the first time.
//
// Files (each written atomically): identity.json (what the run computes; a journal with another
// identity is discarded), PHASE-block-K.safetensors (block K's tensors, its record in the metadata),
// PHASE-hidden.safetensors (the hidden states after the newest finished block). A phase is one pass
// over the blocks ("scan", "quantize", "prune").
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "mcompress/quant/rtn.h"
#include "mcompress/report.h"

namespace mc {

class BlockJournal {
 public:
  // What a block produced besides tensors (stored as JSON in the block file's metadata).
  struct Record {
    std::vector<LayerRow> rows;
    std::vector<std::string> warnings;
    std::map<std::string, double> numbers;  // doubles round-trip exactly
  };
  struct Entry {
    std::map<std::string, at::Tensor> tensors;
    Record record;
  };

  // Opens (creating) dir. identity: JSON text naming what the run computes; an existing journal with
  // another identity is deleted (its blocks belong to other settings).
  BlockJournal(std::string dir, std::string identity);

  const std::string& dir() const { return dir_; }
  // Whether the directory held blocks of an earlier run with this identity.
  bool resumed() const { return resumed_; }
  // "scan: 5 blocks, quantize: 2 blocks" (phases with finished blocks), for the resume message.
  std::string summary() const;
  // Number of finished blocks of `phase` (0 .. n): blocks 0..finished-1 can be loaded, and
  // hidden(phase) is the input of block `finished`.
  int finished(const std::string& phase) const;
  // The hidden states after block finished(phase) - 1, moved to `device`.
  std::vector<at::Tensor> hidden(const std::string& phase, const c10::Device& device) const;
  Entry load(const std::string& phase, int block) const;
  // Saves block `block` (tensors are copied to CPU) and then the hidden states after it.
  void save(const std::string& phase, int block, const std::map<std::string, at::Tensor>& tensors,
            const Record& record, const std::vector<at::Tensor>& hidden);
  // Deletes the journal (the run is complete).
  void remove();

 private:
  std::string path(const std::string& phase, const std::string& what) const;
  std::string dir_;
  bool resumed_ = false;
};

// A QuantResult as journal tensors under `key` (key + ".codes", ".scales", ".zeros", ".g_idx", and
// ".grid": bits, symmetric, group size, mse clip, the weight's own shape) and back, exactly.
// Codes of up to 4 bits are kept two a byte ("<key>.codes4", even element in the low nibble, with
// "<key>.codes_shape"); wider ones, or an odd count, a byte each ("<key>.codes"). Both are read back.
void journal_put_quant(std::map<std::string, at::Tensor>& tensors, const std::string& key, const QuantResult& q);
QuantResult journal_get_quant(const std::map<std::string, at::Tensor>& tensors, const std::string& key);

}  // namespace mc
