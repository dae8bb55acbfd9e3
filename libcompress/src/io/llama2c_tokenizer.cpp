// llama2.c tokenizer files (tokenizer.bin / tok512.bin): u32 max_token_length, then until the end of
// the file, per token: f32 score, i32 length, `length` bytes (no terminator).
#include <limits>

#include "mcompress/atomic_file.h"
#include "mcompress/byte_cursor.h"
#include "mcompress/error.h"
#include "mcompress/io/llama2c.h"
#include "mcompress/mapped_file.h"

namespace mc {

namespace {
constexpr const char* kComp = "llama2c-tokenizer";
}

Llama2cTokenizer read_llama2c_tokenizer(const std::string& path) {
  auto file = MappedFile::open(path, kComp);
  ByteCursor c(file->data(), file->size(), kComp, path);
  Llama2cTokenizer tok;
  tok.max_token_length = c.read<uint32_t>("max_token_length");
  while (c.remaining() > 0) {
    const uint64_t at = c.pos();
    const size_t id = tok.vocab.size();
    if (c.remaining() < 8)
      c.error(str("truncated: token ", id, " at offset ", at, " needs 8 bytes for score and length, ",
                  c.remaining(), " left"));
    const float score = c.read<float>("token score");
    const int32_t len = c.read<int32_t>("token length");
    if (len < 0) c.error(str("token ", id, " at offset ", at, " has negative length ", len));
    if (uint64_t(len) > c.remaining())
      c.error(str("truncated: token ", id, " at offset ", at, " has length ", len, " but only ", c.remaining(),
                  " bytes are left"));
    tok.vocab.push_back(c.read_string(uint64_t(len), "token bytes"));
    tok.scores.push_back(score);
  }
  return tok;
}

void write_llama2c_tokenizer(const std::string& path, const Llama2cTokenizer& tok) {
  if (tok.vocab.size() != tok.scores.size())
    fail(kComp, path, ": ", tok.vocab.size(), " tokens but ", tok.scores.size(), " scores");
  size_t longest = 0;
  for (const std::string& t : tok.vocab) longest = std::max(longest, t.size());
  if (longest > tok.max_token_length)
    fail(kComp, path, ": max_token_length ", tok.max_token_length, " is shorter than the longest token (", longest,
         " bytes); llama2.c sizes its buffers by it");
  if (longest > uint64_t(std::numeric_limits<int32_t>::max()))
    fail(kComp, path, ": a token of ", longest, " bytes does not fit the int32 length field");
  AtomicFile f(path, kComp);
  f.write_le<uint32_t>(tok.max_token_length);
  for (size_t i = 0; i < tok.vocab.size(); ++i) {
    f.write_le<float>(tok.scores[i]);
    f.write_le<int32_t>(int32_t(tok.vocab[i].size()));
    f.write(tok.vocab[i].data(), tok.vocab[i].size());
  }
  f.commit();
}

}  // namespace mc
