// mcompress generate MODEL --prompt TEXT: sample a continuation with the KV cache, seeded.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.h"
#include "mcompress/error.h"
#include "mcompress/generate.h"
#include "mcompress/model.h"
#include "mcompress/tokenizer.h"
#include "mcompress/tokenizer_config.h"
#include "model_files.h"

namespace mcli {

int cmd_generate(const std::vector<std::string>& args, mc::EventSink& events) {
  po::options_description desc("generate options");
  std::string model_path, prompt, tokenizer, device;
  mc::GenerateOptions g;
  bool json = false;
  desc.add_options()
      ("model", po::value<std::string>(&model_path)->required(), "language model (llama2.c, Hugging Face, mcompress)")
      ("prompt", po::value<std::string>(&prompt)->default_value(""), "text to continue")
      ("tokenizer", po::value<std::string>(&tokenizer), "tokenizer.bin / tokenizer.json (default: one beside the model)")
      ("max-tokens", po::value<int64_t>(&g.max_tokens)->default_value(100), "tokens to generate at most")
      ("temperature", po::value<double>(&g.temperature)->default_value(0.8), "0 = greedy")
      ("top-p", po::value<double>(&g.top_p)->default_value(0.9), "nucleus sampling threshold (1 = off)")
      ("seed", po::value<uint64_t>(&g.seed)->default_value(42), "random seed (same seed, same text)")
      ("device", po::value<std::string>(&device)->default_value("cpu"), "cpu or cuda")
      ("json", po::bool_switch(&json), "print JSON (prompt, text, ids, speed) instead of streaming text");
  po::positional_options_description pos;
  pos.add("model", 1);
  po::variables_map vm;
  CommonOptions common;
  const std::string usage =
      "MODEL --prompt \"Once upon a time\" [--tokenizer T] [--max-tokens 100] [--temperature 0.8] [--top-p 0.9] "
      "[--seed 42]";
  if (!parse_command_line("generate", usage, args, desc, pos, vm, common, events)) return 0;
  if (g.max_tokens < 0) mc::fail("cli", "--max-tokens must be >= 0");
  if (g.temperature < 0) mc::fail("cli", "--temperature must be >= 0");
  if (!(g.top_p > 0 && g.top_p <= 1)) mc::fail("cli", "--top-p must be in (0, 1]");

  mc::LoadOptions lo;
  lo.device = device;
  auto model = mc::load_model(model_path, lo);
  if (!model->is_language_model()) mc::fail("generate", model_path, " is a ", model->arch(), ", not a language model");
  const std::string tok_path = tokenizer.empty() ? find_tokenizer(model_path) : tokenizer;
  if (tok_path.empty())
    mc::fail("generate", "no tokenizer beside ", model_path, " (tokenizer.bin, tok*.bin, tokenizer.json): pass --tokenizer");
  auto tok = mc::load_tokenizer(tok_path);
  if (tok->text_vocab_size() > model->vocab_size())  // fewer tokens than embedding rows: a padded vocabulary (Qwen)
    mc::fail("generate", tok_path, ": tokenizer has ", tok->text_vocab_size(), " tokens but the model's vocabulary has ",
             "only ", model->vocab_size());
  // A padded embedding's extra rows have no text: ids the tokenizer lacks decode as nothing.
  auto decode = [&](const std::vector<int32_t>& v) {
    std::vector<int32_t> known;
    for (int32_t id : v)
      if (id >= 0 && id < tok->vocab_size()) known.push_back(id);
    return tok->decode(known);
  };

  std::vector<int32_t> ids;
  // With a tokenizer_config.json beside the tokenizer: BOS exactly when it says so (add_bos_token, or
  // Llama 3's post-processor), as llama.cpp does with the add_bos_token the GGUF export writes from it;
  // its eos_token stops. Otherwise (llama2.c, a bare tokenizer.json): BOS (or EOS when there is none) first.
  const mc::TokenizerConfig tc = mc::read_tokenizer_config(tok_path);
  int32_t bos = tok->bos_id() >= 0 ? tok->bos_id() : tok->eos_id();
  if (tc.found) bos = tc.add_bos ? int32_t(tc.bos_id >= 0 ? tc.bos_id : tok->bos_id()) : -1;
  if (bos >= 0) ids.push_back(bos);
  for (int32_t id : tok->encode(prompt)) {
    if (id >= model->vocab_size())  // a special token beyond the embedding (Gemma 3's image token)
      mc::fail("generate", "the prompt holds token id ", id, ", outside the model's vocabulary of ", model->vocab_size());
    ids.push_back(id);
  }
  if (ids.empty()) mc::fail("generate", "empty prompt and the tokenizer has no BOS/EOS to start from");
  for (int64_t s : {int64_t(tok->bos_id()), int64_t(tok->eos_id()), tc.eos_id})
    if (s >= 0) g.stop_ids.push_back(int32_t(s));  // run.c stops at BOS; HF models at EOS

  // Stream: print what decode(all ids) adds at each step (decode is prefix-stable for these tokenizers).
  const size_t prompt_len = ids.size();
  std::vector<int32_t> all(ids.begin() + (bos >= 0 ? 1 : 0), ids.end());
  std::string shown = decode(all);
  if (!json) std::cout << shown << std::flush;
  const auto t0 = std::chrono::steady_clock::now();
  auto out = mc::generate(*model, ids, g, [&](int32_t id) {
    all.push_back(id);
    if (json) return;
    std::string text = decode(all);
    if (text.size() > shown.size() && text.compare(0, shown.size(), shown) == 0) {
      std::cout << text.substr(shown.size()) << std::flush;
      shown = std::move(text);
    }
  });
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double tps = double(out.size()) / std::max(secs, 1e-9);
  if (json) {
    nlohmann::ordered_json j;
    j["model"] = model_path, j["prompt"] = prompt, j["seed"] = g.seed, j["temperature"] = g.temperature;
    j["top_p"] = g.top_p, j["prompt_tokens"] = prompt_len;
    j["prompt_ids"] = std::vector<int32_t>(ids.begin(), ids.begin() + std::ptrdiff_t(prompt_len));
    j["ids"] = out, j["text"] = decode(all);
    j["generated_tokens"] = out.size(), j["tokens_per_second"] = tps;
    // Random or partial output can end inside a multi-byte character (byte-fallback tokens): shown as U+FFFD.
    std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    return 0;
  }
  const std::string final_text = decode(all);
  if (final_text.size() > shown.size() && final_text.compare(0, shown.size(), shown) == 0)
    std::cout << final_text.substr(shown.size());
  std::cout << "\n" << std::flush;  // before the stderr summary
  if (!common.quiet) std::fprintf(stderr, "[%zu tokens, %.1f tokens/s]\n", out.size(), tps);
  return 0;
}

}  // namespace mcli
