// tokenizer_config.json of a Hugging Face model directory: which special tokens a text gets (BOS/EOS
// added or not), the ids of the named special tokens, and the chat template. One reader for generate,
// eval and the GGUF export, so they agree with llama.cpp (which reads the same fields through its converter).
//
//   TokenizerConfig tc = read_tokenizer_config("model/tokenizer.json");
//   if (tc.add_bos && tc.bos_id >= 0) ids.insert(ids.begin(), tc.bos_id);
#pragma once
#include <cstdint>
#include <string>

namespace mc {

struct TokenizerConfig {
  bool found = false;  // tokenizer_config.json exists beside the tokenizer.json
  // bos_token / eos_token / pad_token / unk_token (a string or an AddedToken {"content": ...}) resolved to
  // ids through tokenizer.json (added tokens first, then the model's vocab); -1 when null, absent or unknown.
  int64_t bos_id = -1, eos_id = -1, pad_id = -1, unk_id = -1;
  // add_bos_token / add_eos_token when given; otherwise what tokenizer.json's post_processor does to a
  // single text (a TemplateProcessing starting with the BOS token / ending with the EOS token: Llama 3).
  bool add_bos = false, add_eos = false;
  std::string chat_template;  // "" when none (a list of named templates: the one named "default")
};

// Reads tokenizer_config.json in the directory of `tokenizer_json` (a tokenizer.json path or the model
// directory). Without that file: found = false, add_bos/add_eos from the post_processor, ids -1.
// Throws InputError "[tokenizer] <file>: ..." for malformed JSON or a field of the wrong type.
TokenizerConfig read_tokenizer_config(const std::string& tokenizer_json);

}  // namespace mc
