// A model whose parameters are read one at a time (exports of models larger than memory, issue 17):
// nothing is widened, converted or dequantized at load; the caller widens one parameter when it needs it
// and hands its pages back after.
#pragma once
#include <ATen/core/Tensor.h>

#include <memory>
#include <string>

#include "mcompress/model.h"
#include "mcompress/quant/packed_entries.h"

namespace mc {

struct StreamedModel {
  // bf16/f16 weights as views of the mapped checkpoint in their stored dtype (LoadOptions::keep_dtype),
  // float32 ones as views too.
  std::unique_ptr<Model> model;
  // When the weights file is a packed checkpoint: its entries, read one at a time. Their parameters in
  // `model` are placeholders holding no data (PackedEntryReader::parameters_unread). Null otherwise.
  std::unique_ptr<PackedEntryReader> packed;
};

// load_model(path) with the same checks of names, shapes and config, for reading parameters one at a time.
// The model is not meant to run: W8A8 activation metadata is not applied and packed entries are not read.
// Inputs that are not streamed (GGUF, Hugging Face GPTQ directories) are loaded as load_model loads them.
StreamedModel load_model_streamed(const std::string& path);

// float32 values of a tensor: bf16 widened at memory speed (exact), f16 converted (exact), float32 as it is.
at::Tensor widen(const at::Tensor& t);
// bf16 copy of a float32 tensor, rounded to nearest even as ATen rounds (NaN stays NaN), at memory speed.
at::Tensor to_bf16(const at::Tensor& x);
// Hands the whole pages inside t's bytes back to the kernel (MADV_PAGEOUT: clean file pages are dropped and
// read again if touched, anonymous ones swapped where there is swap; nothing is lost). Best effort.
void page_out(const at::Tensor& t);
// Hands the heap's free pages back to the kernel (malloc_trim) once the resident set has grown by 512 MiB
// since the last time: Model::release_param (low-memory mode) and the calibration passes call it after each
// layer / batch, so a streamed compression's fragmented heap does not grow layer by layer.
void release_heap();

}  // namespace mc
