// mcompress train --data TRAIN.txt --tokenizer TOK [--valid VALID.txt] [model shape] [schedule] -o OUT
// Trains a LLaMA-architecture language model from scratch (the demo's default model).
#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <unistd.h>

#include "cli.h"
#include <nlohmann/json.hpp>
#include "model_files.h"
#include "mcompress/datasets.h"
#include "mcompress/error.h"
#include "mcompress/models/llama.h"
#include "mcompress/model.h"
#include "mcompress/tokenizer.h"
#include "mcompress/torch_bridge.h"
#include "mcompress/train.h"

namespace mcli {

namespace {


}  // namespace

int cmd_train(const std::vector<std::string>& args, mc::EventSink& events) {
  po::options_description desc("train options");
  std::string data, valid, tokenizer, out, device;
  mc::LlamaConfig c;  // llama2.c names and RoPE layout, tied classifier
  mc::TrainOptions o;
  desc.add_options()
      ("data", po::value<std::string>(&data)->required(), "training text (documents separated by <|endoftext|>)")
      ("valid", po::value<std::string>(&valid), "held-out text evaluated every --eval-every steps")
      ("tokenizer", po::value<std::string>(&tokenizer)->required(), "tokenizer.bin or tokenizer.json")
      ("output,o", po::value<std::string>(&out)->required(), "output checkpoint (.bin llama2.c, .safetensors, ...)")
      ("dim", po::value<int64_t>(&c.dim)->default_value(128), "model width")
      ("layers", po::value<int64_t>(&c.n_layers)->default_value(4), "transformer blocks")
      ("heads", po::value<int64_t>(&c.n_heads)->default_value(4), "attention heads")
      ("kv-heads", po::value<int64_t>(&c.n_kv_heads)->default_value(4), "key/value heads (grouped-query attention)")
      ("hidden", po::value<int64_t>(&c.hidden_dim)->default_value(0), "SwiGLU width (0: llama's 2/3 * 4 * dim, multiple of 32)")
      ("context", po::value<int64_t>(&c.max_seq_len)->default_value(256), "maximum sequence length of the model")
      ("steps", po::value<int64_t>(&o.steps)->default_value(1000), "optimizer steps")
      ("batch", po::value<int64_t>(&o.batch)->default_value(16), "sequences per step")
      ("accumulate", po::value<int64_t>(&o.accumulate)->default_value(1), "micro-batches per step")
      ("seq-len", po::value<int64_t>(&o.seq_len)->default_value(128), "tokens per training sequence")
      ("lr", po::value<double>(&o.lr)->default_value(3e-3), "peak learning rate")
      ("min-lr", po::value<double>(&o.min_lr)->default_value(3e-4), "final learning rate (cosine decay)")
      ("warmup", po::value<int64_t>(&o.warmup)->default_value(100), "linear warm-up steps")
      ("weight-decay", po::value<double>(&o.weight_decay)->default_value(0.1), "AdamW decoupled weight decay")
      ("grad-clip", po::value<double>(&o.grad_clip)->default_value(1.0), "global gradient norm clip (0: off)")
      ("eval-every", po::value<int64_t>(&o.eval_every)->default_value(200), "steps between held-out evaluations")
      ("checkpoint-every", po::value<int64_t>(&o.checkpoint_every)->default_value(0), "steps between training checkpoints")
      ("resume", po::bool_switch(&o.resume), "continue from OUT.train-state when it exists")
      ("seed", po::value<uint64_t>(&o.seed)->default_value(1), "seed of the initial weights and the data sampler")
      ("device", po::value<std::string>(&device)->default_value("cpu"), "cpu or cuda");
  po::positional_options_description pos;
  po::variables_map vm;
  CommonOptions common;
  if (!parse_command_line("train", "--data TEXT --tokenizer TOK -o OUT [options]", args, desc, pos, vm, common, events))
    return 0;
  if (c.hidden_dim == 0) c.hidden_dim = (2 * 4 * c.dim / 3 + 31) / 32 * 32;
  if (o.seq_len > c.max_seq_len) mc::fail("train", "--seq-len ", o.seq_len, " exceeds --context ", c.max_seq_len);
  if (c.n_heads <= 0 || c.dim % c.n_heads != 0) mc::fail("train", "--heads ", c.n_heads, " must divide --dim ", c.dim);
  c.head_dim = c.dim / c.n_heads;
  mc::validate(o);

  auto tok = mc::load_tokenizer(tokenizer);
  c.vocab_size = tok->vocab_size();
  c.validate();
  const auto train_tokens = text_token_stream(data, *tok);
  const auto valid_tokens = valid.empty() ? std::vector<int32_t>{} : text_token_stream(valid, *tok);
  o.checkpoint_path = out + ".train-state";

  std::map<std::string, mc::HostTensor> init;
  for (const auto& [k, t] : mc::init_llama_weights(c, o.seed)) init[k] = mc::from_torch(k, t);
  std::unique_ptr<mc::Model> model = std::make_unique<mc::LlamaModel>(c, init);
  init.clear();
  if (device != "cpu") model->to(c10::Device(device));
  if (!common.quiet)
    std::cout << "training " << c.n_layers << " blocks x dim " << c.dim << " (hidden " << c.hidden_dim << ", "
              << c.n_heads << " heads, " << c.n_kv_heads << " kv heads, vocab " << c.vocab_size << ") on "
              << train_tokens.size() << " tokens for " << o.steps << " steps of " << o.batch * o.accumulate << "x"
              << o.seq_len << " tokens" << std::endl;
  auto progress = events.train_progress();

  mc::TrainResult r = mc::train_language_model(*model, train_tokens, valid_tokens, o, progress);
  mc::save_model(*model, out);
  if (!common.quiet) {
    std::printf("trained in %.1f s (%.0f tokens/s): train loss %.4f", r.seconds, r.items_per_s, r.train_loss);
    if (r.valid_loss >= 0) std::printf(", held-out loss %.4f nats/token", r.valid_loss);
    std::printf("\nwrote %s\n", out.c_str());
  }
  return 0;
}

}  // namespace mcli
