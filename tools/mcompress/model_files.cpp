#include "model_files.h"

#include <algorithm>
#include <filesystem>
#include <set>
#include <vector>

#include <fstream>
#include <memory>

#include "mcompress/error.h"
#include "mcompress/model.h"
#include "mcompress/tokenizer.h"

namespace mcli {

namespace fs = std::filesystem;

namespace {

bool has_ext(const std::string& p, std::initializer_list<const char*> exts) {
  const std::string e = fs::path(p).extension().string();
  for (const char* x : exts)
    if (e == x) return true;
  return false;
}

// An MNIST directory: t10k (or train) images and labels, gzip-compressed or raw.
mc::LabeledData read_mnist_dir(const std::string& dir) {
  for (const char* split : {"t10k", "train"}) {
    for (const char* gz : {".gz", ""}) {
      const fs::path img = fs::path(dir) / (std::string(split) + "-images-idx3-ubyte" + gz);
      const fs::path lab = fs::path(dir) / (std::string(split) + "-labels-idx1-ubyte" + gz);
      if (fs::exists(img) && fs::exists(lab)) return mc::read_mnist(img.string(), lab.string());
    }
  }
  mc::fail("eval", dir, ": directory holds no MNIST t10k-images-idx3-ubyte[.gz] + t10k-labels-idx1-ubyte[.gz]");
}

// A NUL byte in the first 64 KiB: not a text file.
bool looks_binary(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string head(65536, '\0');
  in.read(head.data(), std::streamsize(head.size()));
  head.resize(size_t(in.gcount()));
  return head.find('\0') != std::string::npos;
}

}  // namespace

std::string find_tokenizer(const std::string& model_path) {
  fs::path dir = fs::is_directory(model_path) ? fs::path(model_path) : fs::path(model_path).parent_path();
  if (dir.empty()) dir = ".";
  for (const char* name : {"tokenizer.bin", "tokenizer.json"})
    if (fs::exists(dir / name)) return (dir / name).string();
  std::vector<std::string> found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (e.is_regular_file() && n.rfind("tok", 0) == 0 && n.size() > 4 && n.compare(n.size() - 4, 4, ".bin") == 0)
      found.push_back(e.path().string());
  }
  std::sort(found.begin(), found.end());
  return found.empty() ? "" : found.front();
}

uint64_t count_parameters(const mc::Model& model) {
  std::set<const void*> seen;
  uint64_t n = 0;
  for (const auto& [key, t] : model.params())
    if (seen.insert(t.data_ptr()).second) n += uint64_t(t.numel());
  return n;
}

uint64_t model_bytes(const std::string& model_path) {
  if (!fs::is_directory(model_path)) return fs::file_size(model_path);
  uint64_t n = 0;
  for (const auto& e : fs::directory_iterator(model_path)) {
    const std::string ext = e.path().extension().string();
    if (e.is_regular_file() && (ext == ".safetensors" || ext == ".bin" || ext == ".pt")) n += e.file_size();
  }
  return n;
}

EvalData load_eval_data(const mc::Model& model, const std::string& model_path, const EvalDataOptions& o) {
  const std::string& data = o.data;
  if (!fs::exists(data)) mc::fail("eval", data, ": no such file or directory");
  EvalData ed;
  ed.labeled = fs::is_directory(data) || has_ext(data, {".safetensors", ".h5", ".hdf5", ".pt", ".pth"});
  if (ed.labeled) {
    if (model.is_language_model())
      mc::fail("eval", data, ": labeled examples (MNIST / tensor file) need a classifier, but ", model_path,
               " is a language model");
    ed.examples = fs::is_directory(data) ? read_mnist_dir(data) : mc::read_tensor_dataset(data);
    return ed;
  }
  if (!model.is_language_model())
    mc::fail("eval", data, ": a classifier needs labeled examples (an MNIST directory or a tensor file), not text");
  ed.tokenizer_path = o.tokenizer.empty() ? find_tokenizer(model_path) : o.tokenizer;
  std::unique_ptr<mc::Tokenizer> tok;
  if (!ed.tokenizer_path.empty()) tok = mc::load_tokenizer(ed.tokenizer_path);
  if (tok && tok->vocab_size() != model.vocab_size())
    mc::fail("eval", ed.tokenizer_path, ": tokenizer has ", tok->vocab_size(), " tokens but the model's vocabulary has ",
             model.vocab_size());
  const bool tokens = o.tokens_u16 || o.tokens_u32 || has_ext(data, {".u16", ".u32", ".tok16", ".tok32"});
  if (tokens) {
    const int bpt = (o.tokens_u32 || has_ext(data, {".u32", ".tok32"})) ? 4 : 2;
    ed.corpus = mc::make_lm_corpus(mc::read_token_file(data, bpt), tok.get());
    return ed;
  }
  if (!tok)
    mc::fail("eval", "no tokenizer beside ", model_path, " (tokenizer.bin, tok*.bin, tokenizer.json): pass --tokenizer");
  if (looks_binary(data))
    mc::fail("eval", data, ": holds NUL bytes, not text (a token file? pass --tokens-u16 or --tokens-u32)");
  auto docs = mc::read_documents(data, o.separator);
  if (docs.empty()) mc::fail("eval", data, ": no documents (empty file, or only separators)");
  ed.corpus = mc::make_lm_corpus(*tok, docs);
  return ed;
}

}  // namespace mcli
