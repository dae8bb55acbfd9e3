#include "fuzz_common.h"
#include "mcompress/io/llama2c.h"

// The same bytes are tried both as a checkpoint and as a tokenizer.bin.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  mcfuzz::run(data, size, [](const std::string& p) { return mc::open_llama2c(p); });
  try {
    auto tok = mc::read_llama2c_tokenizer(mcfuzz::input_path(data, size));
    (void)tok.vocab.size();
  } catch (const mc::InputError&) {
  }
  return 0;
}
