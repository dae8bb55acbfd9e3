// Writes a small seed corpus for every fuzz target with the project's own writers:
//   fuzz_seeds DIR   ->  DIR/{safetensors,torch_zip,gguf,llama2c}/seed-*
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <fstream>
#include <string>
#include <vector>

#include "mcompress/half.h"
#include "mcompress/io/llama2c.h"
#include "mcompress/io/safetensors.h"
#include "mcompress/io/torch_zip.h"

namespace fs = std::filesystem;
using mc::DType;
using mc::HostTensor;

namespace {

HostTensor ramp(const std::string& name, mc::Shape shape, float scale) {
  std::vector<float> v(static_cast<size_t>(mc::shape_numel(shape)));
  for (size_t i = 0; i < v.size(); ++i) v[i] = scale * (static_cast<float>(i % 17) - 8.0f);
  return HostTensor::from_f32(name, shape, v.data());
}

std::vector<HostTensor> mixed_tensors() {
  std::vector<HostTensor> t;
  t.push_back(ramp("w", {4, 8}, 0.1f));
  t.push_back(mc::convert_dtype(ramp("h", {3}, 1.0f), DType::F16));
  t.push_back(mc::convert_dtype(ramp("b", {2, 2}, 1.0f), DType::BF16));
  t.push_back(HostTensor::owned("i", DType::I64, {2}, std::vector<uint8_t>(16, 1)));
  t.push_back(HostTensor::owned("m", DType::BOOL, {3}, {1, 0, 1}));
  return t;
}

// Minimal GGUF v3 image: two kvs, an F32, an F16, a Q8_0 and a Q4_0 tensor, 32-byte alignment.
std::vector<uint8_t> tiny_gguf() {
  std::vector<uint8_t> out;
  auto put = [&](const void* p, size_t n) { out.insert(out.end(), (const uint8_t*)p, (const uint8_t*)p + n); };
  auto u32 = [&](uint32_t v) { put(&v, 4); };
  auto u64 = [&](uint64_t v) { put(&v, 8); };
  auto str = [&](const std::string& s) { u64(s.size()); put(s.data(), s.size()); };
  put("GGUF", 4);
  u32(3);
  u64(4);  // tensors
  u64(2);  // kvs
  str("general.architecture"); u32(8); str("llama");
  str("llama.block_count"); u32(4); u32(1);
  struct T { const char* name; uint32_t type; uint64_t ne0, ne1, bytes; };
  const T ts[] = {{"a", 0, 4, 2, 32}, {"b", 1, 8, 1, 16}, {"c", 8, 32, 2, 68}, {"d", 2, 32, 1, 18}};
  uint64_t off = 0;
  std::vector<uint64_t> offs;
  for (const T& t : ts) {
    str(t.name); u32(2); u64(t.ne0); u64(t.ne1); u32(t.type); u64(off);
    offs.push_back(off);
    off += (t.bytes + 31) / 32 * 32;
  }
  while (out.size() % 32) out.push_back(0);
  size_t base = out.size();
  out.resize(base + off, 0);
  for (size_t i = 0; i < 4; ++i)
    for (uint64_t k = 0; k < ts[i].bytes; ++k) out[base + offs[i] + k] = static_cast<uint8_t>(k * 29 + i);
  uint16_t one = mc::f32_to_f16(0.5f);  // sensible scales for the quantized blocks
  std::memcpy(&out[base + offs[2]], &one, 2);
  std::memcpy(&out[base + offs[2] + 34], &one, 2);
  std::memcpy(&out[base + offs[3]], &one, 2);
  return out;
}

std::vector<HostTensor> tiny_llama(bool shared) {
  // dim 8, hidden 16, 2 layers, 2 heads, 1 kv head, vocab 8.
  const int64_t dim = 8, hid = 16, kv = 4, vocab = 8;
  std::vector<HostTensor> t;
  t.push_back(ramp("tok_embeddings.weight", {vocab, dim}, 0.01f));
  for (int l = 0; l < 2; ++l) {
    std::string p = "layers." + std::to_string(l) + ".";
    t.push_back(ramp(p + "attention_norm.weight", {dim}, 0.1f));
    t.push_back(ramp(p + "attention.wq.weight", {dim, dim}, 0.01f));
    t.push_back(ramp(p + "attention.wk.weight", {kv, dim}, 0.01f));
    t.push_back(ramp(p + "attention.wv.weight", {kv, dim}, 0.01f));
    t.push_back(ramp(p + "attention.wo.weight", {dim, dim}, 0.01f));
    t.push_back(ramp(p + "ffn_norm.weight", {dim}, 0.1f));
    t.push_back(ramp(p + "feed_forward.w1.weight", {hid, dim}, 0.01f));
    t.push_back(ramp(p + "feed_forward.w2.weight", {dim, hid}, 0.01f));
    t.push_back(ramp(p + "feed_forward.w3.weight", {hid, dim}, 0.01f));
  }
  t.push_back(ramp("norm.weight", {dim}, 0.1f));
  if (!shared) t.push_back(ramp("output.weight", {vocab, dim}, 0.01f));
  return t;
}

void write_file(const fs::path& p, const std::vector<uint8_t>& b) {
  std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), b.size());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_seeds DIR\n");
    return 2;
  }
  fs::path dir = argv[1];
  for (const char* t : {"safetensors", "torch_zip", "gguf", "llama2c"}) fs::create_directories(dir / t);
  auto ts = mixed_tensors();
  mc::write_safetensors((dir / "safetensors/seed-mixed").string(), ts, {{"k", "v"}});
  mc::write_safetensors((dir / "safetensors/seed-one").string(), {ramp("x", {2}, 1.0f)}, {});
  mc::write_torch_zip((dir / "torch_zip/seed-mixed").string(), ts, {});
  mc::write_torch_zip((dir / "torch_zip/seed-one").string(), {ramp("x", {2, 3}, 1.0f)}, {});
  write_file(dir / "gguf/seed-tiny", tiny_gguf());
  const std::map<std::string, std::string> cfg = {{"n_heads", "2"}, {"n_kv_heads", "1"}, {"seq_len", "4"}};
  mc::write_llama2c((dir / "llama2c/seed-legacy").string(), tiny_llama(true), cfg, 0);
  mc::write_llama2c((dir / "llama2c/seed-v1").string(), tiny_llama(false), cfg, 1);
  mc::Llama2cTokenizer tok;
  tok.max_token_length = 3;
  for (int i = 0; i < 8; ++i) {
    tok.vocab.push_back(std::string(1 + i % 3, static_cast<char>('a' + i)));
    tok.scores.push_back(-static_cast<float>(i));
  }
  mc::write_llama2c_tokenizer((dir / "llama2c/seed-tokenizer").string(), tok);
  std::printf("seeds written to %s\n", dir.c_str());
  return 0;
}
