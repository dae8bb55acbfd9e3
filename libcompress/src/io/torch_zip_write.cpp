// Writer: the pickle torch.save(OrderedDict) produces (protocol 2), one storage per distinct tensor
// buffer (tensors viewing the same bytes share a storage, as tied weights do in PyTorch), stored in a
// zip laid out as torch.save lays it out.
#include <map>
#include <tuple>

#include "io/pickle.h"
#include "io/torch_zip_format.h"
#include "io/zip_archive.h"
#include "mcompress/atomic_file.h"
#include "mcompress/error.h"
#include "mcompress/io/torch_zip.h"

namespace mc {

using namespace torch_zip;

void write_torch_zip(const std::string& path, const std::vector<HostTensor>& tensors,
                     const std::map<std::string, std::string>& metadata) {
  std::map<std::string, size_t> names;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const HostTensor& t = tensors[i];
    if (is_block(t.dtype))
      fail(kComponent, path, ": tensor '", t.name, "' is ", dtype_name(t.dtype),
           ", a block-quantized type a PyTorch checkpoint cannot hold (convert to f16/bf16/f32 first)");
    if (t.name.empty()) fail(kComponent, path, ": tensor ", i, " has an empty name");
    if (!names.emplace(t.name, i).second) fail(kComponent, path, ": duplicate tensor name '", t.name, "'");
    const auto need = dtype_nbytes(t.dtype, t.numel());
    if (!need || *need != t.nbytes || (t.nbytes && !t.data))
      fail(kComponent, path, ": tensor '", t.name, "' ", dtype_name(t.dtype), " ", shape_str(t.shape), " has ",
           t.nbytes, " bytes of data, expected ", need ? *need : 0);
  }

  const std::string dir = "archive/";
  pickle::Pickler pk;
  std::vector<size_t> storage_of(tensors.size());
  std::vector<size_t> storages;  // index of the first tensor of each storage
  std::map<std::tuple<const uint8_t*, uint64_t, DType>, size_t> storage_by_buffer;
  pk.global("collections", "OrderedDict");
  pk.tuple(0);
  pk.reduce();
  pk.mark();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const HostTensor& t = tensors[i];
    size_t s = storages.size();
    if (t.nbytes) {
      auto [it, fresh] = storage_by_buffer.emplace(std::make_tuple(t.data, t.nbytes, t.dtype), s);
      if (!fresh) s = it->second;
    }
    if (s == storages.size()) storages.push_back(i);
    storage_of[i] = s;
    const char* storage_type = "";
    for (const auto& st : kStorageTypes)
      if (st.dtype == t.dtype) storage_type = st.name;

    pk.unicode(t.name);
    pk.global("torch._utils", "_rebuild_tensor_v2");
    pk.mark();
    pk.mark();  // persistent id: ('storage', torch.FloatStorage, key, 'cpu', numel)
    pk.unicode("storage");
    pk.global("torch", storage_type);
    pk.unicode(std::to_string(s));
    pk.unicode("cpu");
    pk.integer(t.numel());
    pk.tuple_from_mark();
    pk.binpersid();
    pk.integer(0);  // storage offset
    Shape stride(t.shape.size(), 1);
    for (size_t d = t.shape.size(); d-- > 1;) stride[d - 1] = stride[d] * t.shape[d];
    for (const Shape* dims : {&t.shape, static_cast<const Shape*>(&stride)}) {
      if (dims->size() > 3) pk.mark();
      for (int64_t x : *dims) pk.integer(x);
      if (dims->size() > 3) pk.tuple_from_mark();
      else pk.tuple(static_cast<int>(dims->size()));
    }
    pk.boolean(false);  // requires_grad
    pk.global("collections", "OrderedDict");  // backward_hooks
    pk.tuple(0);
    pk.reduce();
    pk.tuple_from_mark();
    pk.reduce();
  }
  pk.setitems_from_mark();
  const std::string& pkl = pk.finish();

  AtomicFile out(path, kComponent);
  zip::Writer zw(out, kComponent);
  zw.add(dir + "data.pkl", pkl.data(), pkl.size());
  zw.add(dir + "byteorder", "little", 6);
  for (size_t s = 0; s < storages.size(); ++s) {
    const HostTensor& t = tensors[storages[s]];
    zw.add(dir + "data/" + std::to_string(s), t.data, t.nbytes);
  }
  if (!metadata.empty()) {
    pickle::Pickler mp;
    mp.empty_dict();
    mp.mark();
    for (const auto& [k, v] : metadata) {
      mp.unicode(k);
      mp.unicode(v);
    }
    mp.setitems_from_mark();
    const std::string& m = mp.finish();
    zw.add(dir + kMetadataEntry, m.data(), m.size());
  }
  zw.add(dir + "version", "3\n", 2);
  zw.finish();
  out.commit();
}

}  // namespace mc
