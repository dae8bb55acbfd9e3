// The export stage (mcompress export, a recipe's `export:`): a model written for other runtimes.
#pragma once
#include <cstdint>
#include <string>

#include "mcompress/events.h"

namespace mc {

struct ExportJob {
  std::string model, out;
  std::string format;      // gguf:TYPE | hf-gptq | compressed-tensors | llama2c-q8
  std::string tokenizer;   // "" = the one beside the model
  std::string name;        // gguf: general.name
  std::string eval;        // evaluate the input and the exported file read back
  std::string imatrix;     // gguf: llama.cpp imatrix file, importance weights for Q2_K/Q3_K/IQ4_NL/IQ4_XS
  int64_t window = 128, max_docs = 0;
  bool truncate = false;
};

extern const char* const kExportFormats;

// Writes the export; prints each tensor's type and note (gguf), the bits per weight per type, sizes,
// and with `eval` the metric before and after. Returns the result as a JSON object's text (also sent
// as a "result" event).
std::string run_export(const ExportJob& job, const EventSink& events);

}  // namespace mc
