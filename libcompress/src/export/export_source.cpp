// ExportSource (export_source.h): a llama model's parameters one at a time.
#include "export_source.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <filesystem>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "mcompress/error.h"

namespace mc {

namespace {

namespace fs = std::filesystem;

// Values per block of rows widened at once: 4 Mi (16 MiB of float32), enough rows for every thread of
// the encoders and small next to any tensor that matters for memory.
constexpr int64_t kBlockElems = int64_t(1) << 22;

}  // namespace

void return_free_heap() {
#if defined(__GLIBC__)
  ::malloc_trim(0);
#endif
}

int64_t export_block_rows(int64_t cols) { return std::max<int64_t>(1, kBlockElems / std::max<int64_t>(1, cols)); }

ExportSource::ExportSource(const std::string& path) : path_(path) {
  m_ = load_model_streamed(path);
  if (const auto* llama = dynamic_cast<const LlamaModel*>(m_.model.get())) cfg_ = llama->config(), llama_ = true;
  entries_visible_ = m_.packed && !fs::is_directory(path);
}

const LlamaConfig& ExportSource::config() const {
  if (!llama_) fail<Error>("export", path_, ": not a llama model");
  return cfg_;
}

Shape ExportSource::shape(const std::string& key) const {
  const at::Tensor& p = m_.model->param(key);
  return Shape(p.sizes().begin(), p.sizes().end());
}

bool ExportSource::is_entry(const std::string& key) const { return m_.packed && m_.packed->contains(key); }

const PackedEntryInfo* ExportSource::entry_info(const std::string& key) const {
  return entries_visible_ && is_entry(key) ? &m_.packed->info(key) : nullptr;
}

std::vector<std::string> ExportSource::entry_keys() const {
  return entries_visible_ ? m_.packed->keys() : std::vector<std::string>{};
}

PackedEntryParts ExportSource::entry(const std::string& key) const {
  if (!entry_info(key)) fail<Error>("export", path_, ": '", key, "' is not a packed entry");
  return m_.packed->load(key);
}

at::Tensor ExportSource::stored(const std::string& key) const {
  return is_entry(key) ? m_.packed->dequantized(key) : m_.model->param(key);
}

at::Tensor ExportSource::value(const std::string& key) const { return widen(stored(key)).contiguous(); }

void ExportSource::for_row_blocks(const std::string& key, const at::Tensor& order,
                                  const std::function<void(const at::Tensor&, int64_t)>& fn) const {
  const at::Tensor all = stored(key);
  const at::Tensor t = all.dim() == 2 ? all : all.reshape({1, -1});
  const int64_t rows = t.size(0), cols = t.size(1);
  const int64_t step = export_block_rows(cols);
  for (int64_t r = 0; r < rows; r += step) {
    const int64_t n = std::min(step, rows - r);
    const at::Tensor part = order.defined() ? t.index_select(0, order.narrow(0, r, n)) : t.narrow(0, r, n);
    fn(widen(part).contiguous(), r);
    if (!order.defined()) page_out(part);
  }
  release(key);
}

void ExportSource::release(const std::string& key) const {
  if (is_entry(key)) m_.packed->release(key);
  else page_out(m_.model->param(key));
}

}  // namespace mc
