// The llama model an export writes, read one parameter at a time (issue 17: exports of models larger than
// memory): bf16/f16 weights stay mapped in their stored dtype and are widened a block of rows at a time, a
// packed checkpoint's entries are read when asked for, and each parameter's pages are handed back once it
// is written. Peak memory: about one tensor's output and a block of rows, whatever the model's size.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "mcompress/models/llama.h"
#include "mcompress/quant/packed_entries.h"
#include "mcompress/streamed_model.h"

namespace mc {

class ExportSource {
 public:
  // Loads as load_model_streamed does (its InputErrors); any model, so the exporter names what it refuses.
  explicit ExportSource(const std::string& path);

  const std::string& path() const { return path_; }
  bool is_llama() const { return llama_; }
  std::string arch() const { return m_.model->arch(); }
  const LlamaConfig& config() const;  // Error when not is_llama()
  Shape shape(const std::string& key) const;

  // The packed entry behind `key` when the input is a packed checkpoint file, else nullptr. A directory
  // holding one exports the dequantized values, as load_model gives them (the exports read quantizer
  // results from files only).
  const PackedEntryInfo* entry_info(const std::string& key) const;
  std::vector<std::string> entry_keys() const;  // sorted; empty when entry_info is always nullptr
  PackedEntryParts entry(const std::string& key) const;

  // The parameter as float32 (a widened or dequantized copy, or the float32 mapped view itself: do not
  // write to it).
  at::Tensor value(const std::string& key) const;
  // fn(rows, first) for consecutive blocks of rows of the float32 parameter, in order (a 1-D parameter is
  // one row): rows [first, first + n) as a contiguous float32 [n, cols] tensor. With `order` (int64 [rows]),
  // row i is the parameter's row order[i]. Each block's source pages are handed back after fn.
  void for_row_blocks(const std::string& key, const at::Tensor& order,
                      const std::function<void(const at::Tensor& rows, int64_t first)>& fn) const;
  // Hands back the pages reading `key` mapped in.
  void release(const std::string& key) const;

 private:
  bool is_entry(const std::string& key) const;
  at::Tensor stored(const std::string& key) const;  // as held: mapped view, or the dequantized entry

  std::string path_;
  StreamedModel m_;
  LlamaConfig cfg_;
  bool llama_ = false;
  bool entries_visible_ = false;
};

// Hands the heap's free pages back to the kernel (glibc's malloc_trim). The freed temporaries of a block's
// tensors otherwise stay in the process, fragmented, and the peak grows with the model (hf-gptq of an 8B
// model: 4.07 GB instead of 1.3 GB). Reusing them costs page faults again: call it once per block.
void return_free_heap();

// Rows of a [rows, cols] tensor per block of for_row_blocks (about 4 Mi values): for exporters that
// encode other sources (quantizer results) in the same blocks.
int64_t export_block_rows(int64_t cols);

}  // namespace mc
