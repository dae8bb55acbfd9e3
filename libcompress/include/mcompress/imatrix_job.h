// `mcompress imatrix`: llama.cpp's importance matrix of a model on calibration text, written as llama-imatrix's
// GGUF file (quant/imatrix_file.h), for `quantize --method imatrix --imatrix FILE`, `export --format gguf:TYPE
// --imatrix FILE` and llama.cpp's own llama-quantize --imatrix.
#pragma once
#include <cstdint>
#include <string>

#include "mcompress/events.h"

namespace mc {

struct ImatrixJob {
  std::string model, out;
  std::string calib;            // text (or token) file
  std::string tokenizer;        // "" = the one beside the model
  int64_t samples = 128, seqlen = 128, batch = 8;
  uint64_t seed = 0;
};

// Draws `samples` windows of `seqlen` tokens from `calib`, runs them through the float model and writes the
// file atomically. Returns a one-line summary (also printed unless quiet).
std::string run_imatrix(const ImatrixJob& job, const EventSink& events);

}  // namespace mc
