#include "fuzz_common.h"
#include "mcompress/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return mcfuzz::run(data, size, [](const std::string& p) { return mc::open_safetensors(p); });
}
