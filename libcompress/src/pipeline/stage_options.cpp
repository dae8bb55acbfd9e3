// The option tables of the stages and their checked accessors (stage_options.h).
#include "mcompress/stage_options.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <map>

#include "mcompress/error.h"

namespace mc {

namespace {

using T = OptionType;

// What quantize and prune share: evaluation and calibration data, tokenizer, architecture, protocol.
std::vector<OptionDef> data_options(const char* calib_samples_default, const char* calib_samples_help) {
  return {
      {"eval", T::Text, "", "evaluation data (text, token file, MNIST directory, tensor file)"},
      {"calib", T::Text, "", "calibration data (required by calibrated methods; never the --eval data unless "
                             "--calib-from-eval)"},
      {"calib-from-eval", T::Flag, "", "calibrate on the --eval data (the report then says the figures are not "
                                       "held out)"},
      {"calib-samples", T::Int, calib_samples_default, calib_samples_help},
      {"calib-range", T::Text, "", "calibrate on documents/examples START:END of --calib only (e.g. 0:5000)"},
      {"eval-range", T::Text, "",
       "evaluate on documents/examples START:END of --eval only (e.g. 5000:10000: one file split into a "
       "calibration part and a held-out part with --calib-range)"},
      {"calib-seqlen", T::Int, "128", "tokens per calibration sequence"},
      {"seed", T::Int, "0", "seed of the calibration sampling"},
      {"tokenizer", T::Text, "", "tokenizer (default: one beside the model)"},
      {"arch", T::Text, "", "classifier architecture YAML"},
      {"window", T::Int, "128", "evaluation window (tokens)"},
      {"truncate", T::Flag, "", "score only each document's first window"},
      {"separator", T::Text, "<|endoftext|>", "document separator"},
      {"max-docs", T::Int, "0", "evaluate at most N documents (0 = all)"},
      {"device", T::Text, "cpu", "cpu or cuda"},
      {"compute", T::Text, "f32",
       "calibration forward: f32, or bf16 (linear layers multiply in bf16 on AVX512-BF16 / CUDA, ~2x faster "
       "here; Hessians and statistics stay float32; evaluations stay f32)"},
  };
}

std::vector<OptionDef> with(std::vector<OptionDef> a, const std::vector<OptionDef>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

const std::map<std::string, std::vector<OptionDef>>& tables() {
  static const std::map<std::string, std::vector<OptionDef>> t = {
      {"quantize",
       with({
                {"method", T::Text, "rtn",
                 "rtn | hqq | imatrix | gptq | awq | autoround | smoothquant (all but rtn and hqq need calibration data)"},
                {"bits", T::Int, "4", "bits per weight, 2..8 (smoothquant: 8)"},
                {"group-size", T::Int, "32",
                 "input columns per scale (a row whose length it does not divide ends with a shorter group)"},
                {"per-channel", T::Flag, "", "one scale per output channel (smoothquant's default)"},
                {"per-tensor", T::Flag, "", "one scale for the whole matrix (rtn)"},
                {"sym", T::Flag, "", "symmetric grid, no zero point (default; hqq refuses it)"},
                {"asym", T::Flag, "", "asymmetric grid with a zero point per group (hqq's default and only grid)"},
                {"mse-clip", T::Flag, "", "rtn/gptq: search a clip ratio per group minimising the squared error"},
                {"targets", T::List, "",
                 "comma-separated layer patterns to quantize (glob, or re:REGEX); default: every linear layer but "
                 "the classifier"},
                {"ignore", T::List, "", "comma-separated layer patterns to leave dense"},
                {"quantize-embeddings", T::Flag, "", "also quantize the token embedding (RTN)"},
                {"quantize-classifier", T::Flag, "", "also quantize the output classifier (RTN)"},
                {"quantize-conv", T::Flag, "", "also quantize Conv2d kernels (as [out, in*kh*kw] matrices)"},
                {"true-sequential", T::Flag, "",
                 "inside a block, quantize q,k,v -> o -> gate,up -> down, each on inputs from the already quantized ones"},
                {"fp64", T::Flag, "", "accumulate Hessians in float64"},
                {"act-order", T::Flag, "", "gptq: quantize columns by descending Hessian diagonal"},
                {"static-groups", T::Flag, "", "gptq: fit every group's grid up front on the original weights"},
                {"damp", T::Real, "0.01", "gptq: damping as a fraction of mean(diag H)"},
                {"keep-sparsity", T::Flag, "",
                 "keep the zeros of a pruned model (gptq compensates them like SparseGPT) and store the sparse layout"},
                {"hqq-iters", T::Int, "20",
                 "hqq: zero-point updates per group (p 0.7, beta 10 x 1.01 per update, a group stops when its "
                 "error stops falling; 0 = RTN asymmetric)"},
                {"no-clip", T::Flag, "", "awq: skip the clipping search"},
                {"autoround-iters", T::Int, "200",
                 "autoround: signed-gradient steps per block (AutoRound's default 200; on CPU 50, its light preset, "
                 "costs a quarter; each step runs the block forward and backward on --autoround-batch sequences)"},
                {"autoround-lr", T::Real, "0", "autoround: first step size, decaying linearly to 0 (0: 1 / iters)"},
                {"autoround-batch", T::Int, "8", "autoround: calibration sequences per step"},
                {"autoround-no-minmax", T::Flag, "", "autoround: tune only the rounding offsets, not the range factors"},
                {"autoround-kquant", T::Flag, "",
                 "autoround: tune on llama.cpp's Q4_K / Q5_K lattice (6-bit group scales and mins under float16 "
                 "super-block scales; needs --bits 4|5 --asym --group-size 32; layers whose rows are not a multiple "
                 "of 256 stay on the plain grid): export --format gguf:q4_k|q5_k then writes the tuned values "
                 "bit for bit"},
                {"eora", T::Int, "0",
                 "EoRA: fit a rank-N correction B A of each calibrated layer's quantization error in the eigenspace "
                 "of its calibration inputs (Liu et al. 2024; training-free), written beside the model as a PEFT "
                 "LoRA adapter in DIR/eora/; the report evaluates with and without it (16-64 typical)"},
                {"kv-bits", T::Int, "0",
                 "8: quantize the KV cache too, keys (after RoPE) and values per kv head with static scales "
                 "calibrated on each block's quantized outputs (stored in the file, applied by eval/generate/run); 0: off"},
                {"kv-format", T::Text, "int8", "KV cache grid with --kv-bits 8: int8 (amax/127) or fp8 (E4M3, amax/448)"},
                {"kv-hadamard", T::Flag, "",
                 "with --kv-bits 8: rotate each head's keys and values by a Hadamard matrix before rounding them (QuaRot's "
                 "online rotation; spreads outlier channels, the float attention is unchanged)"},
                {"alpha", T::Real, "0.5", "smoothquant: migration strength 0..1"},
                {"act-bits", T::Int, "8",
                 "bits of the per-token activations (dynamic, symmetric), 2..8: smoothquant's (default 8); with any "
                 "other method, given explicitly, every quantized linear's input is quantized too (W4A8, W4A4)"},
                {"act-format", T::Text, "int",
                 "format of the quantized activations with any weight method: int (--act-bits bits, per token), "
                 "fp8 (E4M3 per token), mxfp8 / mxfp4 (OCP MX, groups of 32), nvfp4 (groups of 16, E4M3 scales); "
                 "all dynamic and simulated in float (W4A8-FP8, W4A4-NVFP4); a format other than int implies "
                 "its own bits"},
                {"rotate", T::Text, "none",
                 "llama family: rotate the model before quantizing (QuaRot/SpinQuant with fixed Hadamards; the float "
                 "model computes the same function): hadamard = norms folded, R1 on the residual stream, R2 per head "
                 "on v/o, fully offline (exports to HF/GGUF); hadamard-online = also R4, an online Hadamard on "
                 "down_proj's input that our runtime applies (eval/generate; export refuses it); none"},
                {"rotate-seed", T::Int, "0", "--rotate: seed of R1's random signs"},
                {"simulate-int8", T::Flag, "", "smoothquant: evaluate with simulated (float) int8 matmuls only"},
                {"imatrix", T::Text, "",
                 "imatrix: the importance from a llama.cpp imatrix file (GGUF or legacy .dat, e.g. from mcompress "
                 "imatrix or llama-imatrix) instead of calibration data; every quantized block layer needs its entry"},
                {"target-bpw", T::Real, "0",
                 "mixed precision: mean code bits per weight to meet (e.g. 3.5), bits chosen per layer by a "
                 "sensitivity scan"},
                {"bits-candidates", T::List, "3,4,8", "mixed precision: bit widths to choose from"},
                {"override", T::Repeated, "",
                 "per-layer grid, repeatable: PATTERN:bits=8,group-size=64|per-channel,sym|asym (first match wins)"},
                {"model-free", T::Flag, "",
                 "RTN on the tensors of any safetensors checkpoint (file or Hugging Face directory, sharded or "
                 "not; ViT, BERT, Whisper, MoE ...) without running the model, one tensor in memory at a time; "
                 "writes a compressed-tensors pack-quantized directory (vLLM) with report.json/md. Default "
                 "targets: every 2-D floating-point tensor named *.weight except embeddings (names containing "
                 "'embed', GPT-2's wte/wpe), lm_head, norms and MoE routers (modules ending in .gate/_gate); "
                 "--targets/--ignore match tensor or module names (plain name, glob, or re:REGEX); --group-size "
                 "0 or -1: per channel. Other tensors are copied unchanged; one output shard per input shard"},
                {"scheme", T::Text, "",
                 "a floating-point weight format instead of an integer grid: fp8 | fp8-channel | fp8-block (E4M3, "
                 "float32 scale per tensor / output channel / 128x128 block) | mxfp4 | mxfp8 (OCP MX: E2M1 / E4M3, "
                 "E8M0 scale per 32) | nvfp4 (E2M1, E4M3 scale per 16, float32 tensor scale). Weights only, no "
                 "calibration; the model is evaluated with the dequantized weights and written as compressed-tensors "
                 "(float-quantized, mxfp4-pack-quantized, nvfp4-pack-quantized; mxfp8 has no such format and is "
                 "refused). With --model-free: any safetensors checkpoint"},
                {"format", T::Text, "compressed-tensors",
                 "with --model-free: compressed-tensors (pack-quantized, as vLLM loads it) | mcompress (our packed "
                 "file)"},
            },
            data_options("0", "calibration sequences / examples (default: 128; 8 for rtn's per-layer errors)"))},
      {"prune",
       with({
                {"method", T::Text, "sparsegpt", "sparsegpt | wanda | magnitude"},
                {"sparsity", T::Real, "0.5", "fraction of weights zeroed, [0, 1)"},
                {"pattern", T::Text, "", "N:M semi-structured: N of every M input columns zeroed (2:4, 4:8)"},
                {"distribution", T::Text, "uniform",
                 "sparsity per layer: uniform | global (magnitude) | owl (outlier-weighted per block)"},
                {"owl-lambda", T::Real, "0.08", "owl: largest deviation from --sparsity"},
                {"owl-threshold", T::Real, "5", "owl: outlier = score above this x the layer mean"},
                {"bits", T::Int, "0", "also quantize the survivors to B bits (sparsegpt: in the same pass)"},
                {"group-size", T::Int, "32", "with --bits: input columns per scale"},
                {"per-channel", T::Flag, "", "with --bits: one scale per output channel"},
                {"asym", T::Flag, "", "with --bits: asymmetric grid"},
                {"structured", T::Text, "",
                 "llama: remove whole parts instead, e.g. ffn=0.25,heads=0.25,blocks=1 (fractions of FFN channels "
                 "and heads per block, whole blocks); smaller shapes, faster forward"},
                {"storage", T::Text, "sparse", "sparse (bitmask or N:M indices + packed survivors) or dense"},
                {"targets", T::List, "", "comma-separated layer patterns (glob or re:REGEX)"},
                {"ignore", T::List, "", "comma-separated layer patterns to leave alone"},
                {"true-sequential", T::Flag, "", "prune q,k,v -> o -> gate,up -> down in turn"},
                {"damp", T::Real, "0.01", "sparsegpt: damping as a fraction of mean(diag H)"},
            },
            data_options("128", "calibration sequences / examples"))},
      {"distill",
       {
           {"teacher", T::Text, "", "teacher model"},
           {"student-config", T::Text, "",
            "student from a config (YAML/JSON; a classifier: an architecture YAML), random init"},
           {"student-init", T::Text, "",
            "student pruned from the teacher: prune:every=2,ffn=0.5,heads=0.5 (LM) or prune:hidden=100 (classifier)"},
           {"student", T::Text, "", "a compressed model to recover (its masks and quantization grids are kept)"},
           {"data", T::Text, "", "training data: text, token file (.u16/.u32), MNIST directory or tensor file"},
           {"data-range", T::Text, "", "use documents/examples START:END of --data"},
           {"generate", T::Int, "0",
            "sample N sequences from the teacher (LM) or N mixup inputs (classifier) as training data"},
           {"gen-length", T::Int, "0", "tokens per generated sequence (0: seq-len + 1)"},
           {"gen-temperature", T::Real, "1", "sampling temperature of generated data"},
           {"gen-top-p", T::Real, "1", "nucleus of generated data (1: the full distribution)"},
           {"eval", T::Text, "", "held-out data: evaluated during training and for the report"},
           {"eval-range", T::Text, "", "use documents/examples START:END of --eval"},
           {"loss", T::Text, "kl=1,T=2", "weighted terms: kl, reverse_kl, jsd (beta), ce, hidden, attention; T temperature"},
           {"layer-map", T::Text, "", "student:teacher block pairs for hidden/attention terms (default: uniform)"},
           {"steps", T::Int, "1000", "optimizer steps"},
           {"batch", T::Int, "16", "sequences (examples) per micro-batch"},
           {"accumulate", T::Int, "1", "micro-batches per step"},
           {"seq-len", T::Int, "128", "tokens per training sequence"},
           {"lr", T::Real, "1e-3", "peak learning rate"},
           {"min-lr", T::Real, "-1", "final learning rate (default lr/10)"},
           {"warmup", T::Int, "50", "linear warm-up steps"},
           {"weight-decay", T::Real, "0", "AdamW decoupled weight decay (never on frozen-grid weights)"},
           {"grad-clip", T::Real, "1", "global gradient norm clip (0: off)"},
           {"eval-every", T::Int, "200", "steps between held-out evaluations"},
           {"checkpoint-every", T::Int, "200", "steps between training checkpoints"},
           {"resume", T::Flag, "", "continue from OUT/train-state.safetensors"},
           {"seed", T::Int, "1", "seed of init, sampling and data order"},
           {"calib-samples", T::Int, "64", "--student-init: sequences/examples ranking what is pruned"},
           {"tokenizer", T::Text, "", "tokenizer (default: the one beside the teacher)"},
           {"tokens-u16", T::Flag, "", "--data is a token file of uint16 ids (else by extension .u16/.u32)"},
           {"tokens-u32", T::Flag, "", "--data is a token file of uint32 ids"},
           {"arch", T::Text, "", "classifier architecture YAML of the teacher"},
           {"window", T::Int, "128", "report: tokens per evaluation window"},
           {"truncate", T::Flag, "", "report: score only each document's first window"},
           {"max-docs", T::Int, "0", "report: evaluate at most N documents (0: all)"},
           {"device", T::Text, "cpu", "cpu or cuda"},
       }},
  };
  return t;
}

// Edit distance, for "did you mean".
size_t distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t prev = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t cur = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] == b[j - 1] ? 0 : 1)});
      prev = cur;
    }
  }
  return row[b.size()];
}

bool parse_int(const std::string& v, int64_t& out) {
  if (v.empty()) return false;
  errno = 0;
  char* end = nullptr;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  if (errno || *end) return false;
  out = x;
  return true;
}

bool parse_real(const std::string& v, double& out) {
  if (v.empty()) return false;
  errno = 0;
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  if (errno || *end) return false;
  out = x;
  return true;
}

}  // namespace

const std::vector<OptionDef>& stage_option_table(const std::string& pass) {
  auto it = tables().find(pass);
  if (it == tables().end()) fail("pipeline", "unknown stage '", pass, "' (allowed: quantize, prune, distill)");
  return it->second;
}

StageOptions::StageOptions(std::string pass, OptionValues given, std::string where)
    : pass_(std::move(pass)), where_(std::move(where)), given_(std::move(given)) {
  const auto& table = stage_option_table(pass_);
  for (auto& [name, value] : given_) {
    std::replace(name.begin(), name.end(), '_', '-');
    auto it = std::find_if(table.begin(), table.end(), [&](const OptionDef& d) { return d.name == name; });
    if (it == table.end()) {
      const OptionDef* best = nullptr;
      size_t bd = 3;
      for (const auto& d : table)
        if (size_t dd = distance(name, d.name); dd < bd) bd = dd, best = &d;
      mc::fail("pipeline", where_, ": option '", name, "' is not a ", pass_, " option",
           best ? " (did you mean '" + best->name + "'?)" : std::string(" (see mcompress ") + pass_ + " --help)");
    }
    int64_t i = 0;
    double r = 0;
    switch (it->type) {
      case OptionType::Flag:
        if (!value.empty() && value != "true")
          mc::fail("pipeline", where_, ": option '", name, "' is a flag (true, or leave it out), not '", value, "'");
        value.clear();
        break;
      case OptionType::Int:
        if (!parse_int(value, i)) mc::fail("pipeline", where_, ": option '", name, "' must be an integer, not '", value, "'");
        break;
      case OptionType::Real:
        if (!parse_real(value, r)) mc::fail("pipeline", where_, ": option '", name, "' must be a number, not '", value, "'");
        break;
      default:
        break;
    }
  }
}

const OptionDef& StageOptions::def(const std::string& name) const {
  for (const auto& d : stage_option_table(pass_))
    if (d.name == name) return d;
  throw Error("[pipeline] internal: option '" + name + "' is not in the " + pass_ + " table");
}

bool StageOptions::has(const std::string& name) const {
  def(name);
  for (const auto& [k, v] : given_)
    if (k == name) return true;
  return false;
}

std::string StageOptions::value(const std::string& name) const {
  const OptionDef& d = def(name);
  std::string v = d.default_value;
  for (const auto& [k, x] : given_)
    if (k == name) v = x;  // the last one given wins
  return v;
}

bool StageOptions::flag(const std::string& name) const { return has(name); }

int64_t StageOptions::integer(const std::string& name) const {
  int64_t i = 0;
  parse_int(value(name), i);
  return i;
}

uint64_t StageOptions::unsigned_integer(const std::string& name) const {
  const int64_t v = integer(name);
  if (v < 0) fail(name, "must be >= 0");
  return static_cast<uint64_t>(v);
}

double StageOptions::real(const std::string& name) const {
  double r = 0;
  parse_real(value(name), r);
  return r;
}

std::string StageOptions::text(const std::string& name) const { return value(name); }

std::vector<std::string> StageOptions::list(const std::string& name) const { return split_list(value(name)); }

std::vector<std::string> StageOptions::repeated(const std::string& name) const {
  def(name);
  std::vector<std::string> v;
  for (const auto& [k, x] : given_)
    if (k == name) v.push_back(x);
  return v;
}

void StageOptions::set_default(const std::string& name, const std::string& value) {
  if (value.empty() && def(name).type != OptionType::Flag) return;
  if (!has(name)) given_.emplace_back(name, value);
}

void StageOptions::fail(const std::string& name, const std::string& message) const {
  mc::fail("pipeline", where_, ": --", name, " ", message);
}

std::vector<std::string> StageOptions::args() const {
  std::vector<std::string> a;
  for (const auto& [k, v] : given_) {
    a.push_back("--" + k);
    if (def(k).type != OptionType::Flag) a.push_back(v);
  }
  return a;
}

std::string StageOptions::describe() const {
  std::string s = pass_;
  for (const auto& a : args()) s += " " + a;
  return s;
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> v;
  std::string cur;
  for (char c : s + ",") {
    if (c == ',') {
      if (!cur.empty()) v.push_back(cur);
      cur.clear();
    } else if (c != ' ') {
      cur += c;
    }
  }
  return v;
}

}  // namespace mc
