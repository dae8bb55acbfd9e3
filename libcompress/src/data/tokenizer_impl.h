// Internals of the tokenizers shared between the files of src/data.
#pragma once
#include <memory>
#include <string>

#include "mcompress/tokenizer.h"

namespace mc {

// llama2.c tokenizer.bin. Throws InputError "[tokenizer] path: ...".
std::unique_ptr<Tokenizer> load_llama2c_tokenizer(const std::string& path);
// Hugging Face tokenizer.json given its text; `path` names the file in errors.
std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& path, const std::string& json_text);

// "[component] rest" -> "rest" (to re-raise a lower layer's error under the tokenizer's name).
inline std::string strip_component(const std::string& msg) {
  if (!msg.empty() && msg[0] == '[') {
    const size_t end = msg.find("] ");
    if (end != std::string::npos) return msg.substr(end + 2);
  }
  return msg;
}

}  // namespace mc
