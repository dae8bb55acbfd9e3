// Text documents and pre-tokenized token files.
#include <cstdint>
#include <string_view>

#include "mcompress/datasets.h"
#include "mcompress/error.h"
#include "mcompress/mapped_file.h"

namespace mc {

namespace {

constexpr const char* kComp = "data";

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

void add_document(std::vector<std::string>& docs, std::string_view d) {
  d = trim(d);
  if (!d.empty()) docs.emplace_back(d);
}

}  // namespace

std::vector<std::string> read_documents(const std::string& path, const std::string& separator) {
  auto file = MappedFile::open(path, kComp);
  const std::string_view text(reinterpret_cast<const char*>(file->data()), size_t(file->size()));
  std::vector<std::string> docs;
  if (!separator.empty()) {
    size_t start = 0;
    for (size_t hit; (hit = text.find(separator, start)) != std::string_view::npos; start = hit + separator.size())
      add_document(docs, text.substr(start, hit - start));
    add_document(docs, text.substr(start));
  } else {
    // Documents are runs of lines that are not blank (whitespace only); the text between a document's first
    // and last line is kept as it is.
    size_t doc_start = std::string_view::npos, doc_end = 0;
    for (size_t pos = 0; pos < text.size();) {
      size_t eol = text.find('\n', pos);
      if (eol == std::string_view::npos) eol = text.size();
      const bool blank = trim(text.substr(pos, eol - pos)).empty();
      if (!blank) {
        if (doc_start == std::string_view::npos) doc_start = pos;
        doc_end = eol;
      } else if (doc_start != std::string_view::npos) {
        add_document(docs, text.substr(doc_start, doc_end - doc_start));
        doc_start = std::string_view::npos;
      }
      pos = eol + 1;
    }
    if (doc_start != std::string_view::npos) add_document(docs, text.substr(doc_start, doc_end - doc_start));
  }
  if (docs.empty()) {
    if (separator.empty())
      fail(kComp, path, ": no documents (", text.size(), " bytes; documents are separated by blank lines)");
    fail(kComp, path, ": no documents (", text.size(), " bytes; documents are separated by '", separator, "')");
  }
  return docs;
}

std::vector<int32_t> read_token_file(const std::string& path, int bytes_per_token) {
  if (bytes_per_token != 2 && bytes_per_token != 4)
    fail(kComp, path, ": bytes_per_token must be 2 (uint16) or 4 (uint32), got ", bytes_per_token);
  auto file = MappedFile::open(path, kComp);
  const uint64_t size = file->size();
  if (size == 0) fail(kComp, path, ": no tokens (empty file)");
  if (size % uint64_t(bytes_per_token) != 0)
    fail(kComp, path, ": size ", size, " bytes is not a multiple of ", bytes_per_token,
         " bytes per token (wrong token width or truncated file)");
  const size_t n = size_t(size / uint64_t(bytes_per_token));
  std::vector<int32_t> ids(n);
  const uint8_t* p = file->data();
  if (bytes_per_token == 2) {
    for (size_t i = 0; i < n; ++i) ids[i] = int32_t(uint32_t(p[2 * i]) | (uint32_t(p[2 * i + 1]) << 8));
  } else {
    for (size_t i = 0; i < n; ++i) {
      const uint32_t v = uint32_t(p[4 * i]) | (uint32_t(p[4 * i + 1]) << 8) | (uint32_t(p[4 * i + 2]) << 16) |
                         (uint32_t(p[4 * i + 3]) << 24);
      if (v > uint32_t(INT32_MAX))
        fail(kComp, path, ": token ", i, " has id ", v, ", beyond int32 (is the file uint16, or not a token file?)");
      ids[i] = int32_t(v);
    }
  }
  return ids;
}

}  // namespace mc
