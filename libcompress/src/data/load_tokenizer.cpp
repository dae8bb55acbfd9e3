// load_tokenizer: tokenizer.json (JSON text) or llama2.c tokenizer.bin (binary), chosen by content.
#include <string>

#include "data/tokenizer_impl.h"
#include "mcompress/error.h"
#include "mcompress/mapped_file.h"

namespace mc {

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  auto file = MappedFile::open(path, "tokenizer");
  if (file->size() == 0) fail("tokenizer", path, ": empty file, expected a tokenizer.json or a llama2.c tokenizer.bin");
  const auto* p = reinterpret_cast<const char*>(file->data());
  size_t i = file->size() >= 3 && std::string(p, 3) == "\xEF\xBB\xBF" ? 3 : 0;  // UTF-8 BOM
  while (i < file->size() && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r')) ++i;
  if (i < file->size() && p[i] == '{') return load_hf_tokenizer(path, std::string(p, file->size()));
  file.reset();
  return load_llama2c_tokenizer(path);
}

}  // namespace mc
