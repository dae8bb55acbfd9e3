// summarize_hf_config: the fields inspect shows, with the defaults Hugging Face applies when a key is
// absent (num_key_value_heads = heads, head_dim = hidden / heads), the text_config of multimodal
// configs, both spellings of the rope scaling type, and a wrong-typed field named in one line.
#include <nlohmann/json.hpp>

#include "mcompress/error.h"
#include "mcompress/io/hf_dir.h"
#include "test_utils.h"

using namespace mc;

TEST_CASE("hf config summary: absent kv heads and head_dim take Hugging Face's defaults", "[hf_dir]") {
  auto c = summarize_hf_config(nlohmann::json::parse(R"({"architectures": ["MistralForCausalLM"], "hidden_size": 96,
      "num_attention_heads": 6, "num_hidden_layers": 3, "rope_scaling": null})"), "config.json");
  CHECK(c.architecture == "MistralForCausalLM");
  CHECK((c.num_kv_heads == 6 && c.kv_heads_derived));
  CHECK((c.head_dim == 16 && c.head_dim_derived));
  CHECK(c.tie_word_embeddings == -1);
  CHECK(c.rope_scaling_type.empty());
}

TEST_CASE("hf config summary: Qwen3 head_dim independent of hidden / heads, old rope 'type' key", "[hf_dir]") {
  auto c = summarize_hf_config(nlohmann::json::parse(R"({"hidden_size": 64, "num_attention_heads": 8,
      "num_key_value_heads": 4, "head_dim": 128, "tie_word_embeddings": false, "rope_theta": 1000000,
      "rope_scaling": {"type": "yarn", "factor": 4.0}})"), "config.json");
  CHECK((c.head_dim == 128 && !c.head_dim_derived));
  CHECK((c.num_kv_heads == 4 && !c.kv_heads_derived));
  CHECK(c.tie_word_embeddings == 0);
  CHECK(c.rope_theta == 1000000.0);
  CHECK(c.rope_scaling_type == "yarn");
}

TEST_CASE("hf config summary: Gemma 3 keeps the language model under text_config", "[hf_dir]") {
  auto c = summarize_hf_config(nlohmann::json::parse(R"({"architectures": ["Gemma3ForConditionalGeneration"],
      "torch_dtype": "bfloat16", "text_config": {"hidden_size": 40, "num_hidden_layers": 2, "num_attention_heads": 2,
      "head_dim": 32, "vocab_size": 262208, "rope_scaling": {"rope_type": "linear", "factor": 8.0}}})"), "c.json");
  CHECK(c.architecture == "Gemma3ForConditionalGeneration");
  CHECK(c.torch_dtype == "bfloat16");
  CHECK((c.hidden_size == 40 && c.head_dim == 32 && c.vocab_size == 262208));
  CHECK(c.rope_scaling_type == "linear");
}

TEST_CASE("hf config summary: a wrong-typed field is one InputError naming the file and the key", "[hf_dir]") {
  for (const char* bad : {R"({"hidden_size": "64"})", R"({"num_attention_heads": -2})", R"({"architectures": "Llama"})",
                          R"({"tie_word_embeddings": 1})", R"({"rope_scaling": {"factor": 2.0}})"}) {
    INFO(bad);
    try {
      summarize_hf_config(nlohmann::json::parse(bad), "dir/config.json");
      FAIL("accepted");
    } catch (const InputError& e) {
      const std::string m = e.what();
      CHECK(m.find("dir/config.json: expected \"") != std::string::npos);
      CHECK(m.find('\n') == std::string::npos);
    }
  }
}
