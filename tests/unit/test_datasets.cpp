// Datasets: documents, token files, MNIST idx (values read once with /usr/bin/python3 gzip + struct) and
// tensor files.
#include <functional>
#include <numeric>

#include "mcompress/checkpoint.h"
#include "mcompress/datasets.h"
#include "mcompress/error.h"
#include "test_utils.h"

namespace {

void write_text(const std::string& p, const std::string& s) {
  mctest::write_bytes(p, std::vector<uint8_t>(s.begin(), s.end()));
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const mc::InputError& e) {
    return e.what();
  }
  return "(no error)";
}

void put_be32(std::vector<uint8_t>& b, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(uint8_t(v >> s));
}

std::vector<uint8_t> idx_images(uint32_t n, uint32_t rows, uint32_t cols, uint32_t magic = 2051) {
  std::vector<uint8_t> b;
  for (uint32_t v : {magic, n, rows, cols}) put_be32(b, v);
  for (uint32_t i = 0; i < n * rows * cols; ++i) b.push_back(uint8_t(i * 7));
  return b;
}

std::vector<uint8_t> idx_labels(uint32_t n) {
  std::vector<uint8_t> b;
  for (uint32_t v : {2049u, n}) put_be32(b, v);
  for (uint32_t i = 0; i < n; ++i) b.push_back(uint8_t(i % 10));
  return b;
}

}  // namespace

TEST_CASE("read_documents: TinyStories separators, blank lines, custom separators", "[data]") {
  MC_REQUIRE_SHARED(path, "tinystories/validation_100.txt");
  const auto docs = mc::read_documents(path);
  REQUIRE(docs.size() == 100);
  CHECK(docs[1].rfind("Once upon a time, in a warm and sunny place, there was a big pit.", 0) == 0);
  for (const auto& d : docs) {
    CHECK(!d.empty());
    CHECK(d.find("<|endoftext|>") == std::string::npos);
    CHECK(d.front() != '\n');
    CHECK(d.back() != '\n');
  }

  mctest::TempDir dir;
  write_text(dir.file("para.txt"), "\n  first line\nsecond line \n\n \t \n\n third\r\n\n\n  ");
  CHECK(mc::read_documents(dir.file("para.txt"), "") == std::vector<std::string>{"first line\nsecond line", "third"});
  write_text(dir.file("sep.txt"), "a ### b###### c\n");
  CHECK(mc::read_documents(dir.file("sep.txt"), "###") == std::vector<std::string>{"a", "b", "c"});
  write_text(dir.file("one.txt"), "no separator here\n\nat all");
  CHECK(mc::read_documents(dir.file("one.txt")) == std::vector<std::string>{"no separator here\n\nat all"});

  write_text(dir.file("empty.txt"), "");
  CHECK_THAT(error_of([&] { mc::read_documents(dir.file("empty.txt")); }), Catch::Contains("no documents"));
  write_text(dir.file("blank.txt"), " \n\n<|endoftext|>\n  ");
  CHECK_THAT(error_of([&] { mc::read_documents(dir.file("blank.txt")); }),
             Catch::StartsWith("[data] " + dir.file("blank.txt") + ": no documents"));
  CHECK_THAT(error_of([&] { mc::read_documents(dir.file("none.txt")); }), Catch::Contains("cannot open"));
}

TEST_CASE("read_token_file: uint16 and uint32 little-endian round trip and checks", "[data]") {
  mctest::TempDir dir;
  const std::vector<int32_t> ids = {0, 1, 255, 256, 50256, 65535};
  std::vector<uint8_t> u16, u32;
  for (int32_t v : ids) {
    for (int k = 0; k < 2; ++k) u16.push_back(uint8_t(uint32_t(v) >> (8 * k)));
    for (int k = 0; k < 4; ++k) u32.push_back(uint8_t(uint32_t(v) >> (8 * k)));
  }
  u32.insert(u32.end(), {0x40, 0x42, 0x0F, 0x00});  // 1,000,000 needs more than 16 bits
  mctest::write_bytes(dir.file("a.u16"), u16);
  mctest::write_bytes(dir.file("a.u32"), u32);
  CHECK(mc::read_token_file(dir.file("a.u16"), 2) == ids);
  std::vector<int32_t> ids32 = ids;
  ids32.push_back(1000000);
  CHECK(mc::read_token_file(dir.file("a.u32"), 4) == ids32);
  // 6 * 4 + 4 = 28 bytes read as uint16: 14 tokens; a 3-byte file is not whole tokens.
  CHECK(mc::read_token_file(dir.file("a.u32"), 2).size() == 14);
  mctest::write_bytes(dir.file("odd.bin"), {1, 2, 3});
  CHECK_THAT(error_of([&] { mc::read_token_file(dir.file("odd.bin"), 2); }), Catch::Contains("not a multiple of 2"));
  CHECK_THAT(error_of([&] { mc::read_token_file(dir.file("a.u16"), 3); }), Catch::Contains("must be 2 (uint16) or 4"));
  mctest::write_bytes(dir.file("big.bin"), {0xFF, 0xFF, 0xFF, 0xFF});
  CHECK_THAT(error_of([&] { mc::read_token_file(dir.file("big.bin"), 4); }), Catch::Contains("beyond int32"));
  mctest::write_bytes(dir.file("empty.bin"), {});
  CHECK_THAT(error_of([&] { mc::read_token_file(dir.file("empty.bin"), 2); }), Catch::Contains("no tokens"));
}

TEST_CASE("read_mnist: the t10k set (gzip) against values read with Python", "[data]") {
  MC_REQUIRE_SHARED(images, "mnist/t10k-images-idx3-ubyte.gz");
  MC_REQUIRE_SHARED(labels, "mnist/t10k-labels-idx1-ubyte.gz");
  const mc::LabeledData d = mc::read_mnist(images, labels);
  REQUIRE(d.count == 10000);
  CHECK(d.example_shape == mc::Shape{784});
  REQUIRE(d.inputs.size() == size_t(10000 * 784));
  REQUIRE(d.labels.size() == 10000u);
  // Reference: /usr/bin/python3, gzip.open(...).read(), header skipped, bytes as ints.
  CHECK(std::vector<int64_t>(d.labels.begin(), d.labels.begin() + 10) == std::vector<int64_t>{7, 2, 1, 0, 4, 1, 4, 9, 5, 9});
  std::vector<int> hist(10, 0);
  for (int64_t l : d.labels) ++hist[size_t(l)];
  CHECK(hist == std::vector<int>{980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009});
  CHECK(std::vector<float>(d.inputs.begin() + 202, d.inputs.begin() + 210) ==
        std::vector<float>{84, 185, 159, 151, 60, 36, 0, 0});
  CHECK(std::accumulate(d.inputs.begin(), d.inputs.begin() + 784, 0.0) == 18454.0);
  CHECK(d.inputs[9999 * 784 + 400] == 253.0f);
  CHECK(std::accumulate(d.inputs.begin(), d.inputs.end(), 0.0) == 264923200.0);  // exact: integers < 2^53

  // A gzip file cut in half fails with a read error rather than returning part of the data.
  mctest::TempDir dir;
  std::vector<uint8_t> gz = mctest::read_bytes(images);
  gz.resize(gz.size() / 2);
  mctest::write_bytes(dir.file("cut.gz"), gz);
  CHECK_THAT(error_of([&] { mc::read_mnist(dir.file("cut.gz"), labels); }), Catch::Contains(dir.file("cut.gz")));
  // Images and labels swapped: bad magic.
  CHECK_THAT(error_of([&] { mc::read_mnist(labels, images); }), Catch::Contains("bad idx magic 2049, expected 2051"));
}

TEST_CASE("read_mnist: raw idx files, truncation and count checks", "[data]") {
  mctest::TempDir dir;
  mctest::write_bytes(dir.file("img"), idx_images(3, 2, 2));
  mctest::write_bytes(dir.file("lab"), idx_labels(3));
  const mc::LabeledData d = mc::read_mnist(dir.file("img"), dir.file("lab"));
  CHECK(d.count == 3);
  CHECK(d.example_shape == mc::Shape{4});
  CHECK(d.inputs == std::vector<float>{0, 7, 14, 21, 28, 35, 42, 49, 56, 63, 70, 77});
  CHECK(d.labels == std::vector<int64_t>{0, 1, 2});

  auto img = idx_images(3, 2, 2);
  img.pop_back();
  mctest::write_bytes(dir.file("short"), img);
  CHECK_THAT(error_of([&] { mc::read_mnist(dir.file("short"), dir.file("lab")); }), Catch::Contains("truncated"));
  mctest::write_bytes(dir.file("hdr"), {0, 0, 8, 3, 0, 0});
  CHECK_THAT(error_of([&] { mc::read_mnist(dir.file("hdr"), dir.file("lab")); }), Catch::Contains("truncated idx header"));
  mctest::write_bytes(dir.file("magic"), idx_images(3, 2, 2, 2052));
  CHECK_THAT(error_of([&] { mc::read_mnist(dir.file("magic"), dir.file("lab")); }), Catch::Contains("bad idx magic 2052"));
  mctest::write_bytes(dir.file("lab4"), idx_labels(4));
  CHECK_THAT(error_of([&] { mc::read_mnist(dir.file("img"), dir.file("lab4")); }), Catch::Contains("3 images but"));
  CHECK_THAT(error_of([&] { mc::read_mnist(dir.file("nope"), dir.file("lab")); }), Catch::Contains("cannot open"));
}

TEST_CASE("read_tensor_dataset: inputs to float32, integer labels to int64", "[data]") {
  mctest::TempDir dir;
  const std::vector<uint8_t> px = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 255};
  std::vector<uint8_t> lab(3 * 4);
  for (int i = 0; i < 3; ++i) lab[size_t(4 * i)] = uint8_t(i + 5);  // int32 5, 6, 7
  const mc::HostTensor x = mc::HostTensor::owned("inputs", mc::DType::U8, {3, 2, 2}, px);
  const mc::HostTensor y = mc::HostTensor::owned("labels", mc::DType::I32, {3}, lab);
  const std::string p = dir.file("d.safetensors");
  mc::write_checkpoint(p, {x, y});
  const mc::LabeledData d = mc::read_tensor_dataset(p);
  CHECK(d.count == 3);
  CHECK(d.example_shape == mc::Shape{2, 2});
  CHECK(d.inputs == std::vector<float>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 255});
  CHECK(d.labels == std::vector<int64_t>{5, 6, 7});

  CHECK_THAT(error_of([&] { mc::read_tensor_dataset(p, "x"); }), Catch::Contains("no tensor 'x' (the file has: "));
  const std::vector<float> f = {1, 2, 3};
  mc::write_checkpoint(dir.file("f.safetensors"), {x, mc::HostTensor::from_f32("labels", {3}, f.data())});
  CHECK_THAT(error_of([&] { mc::read_tensor_dataset(dir.file("f.safetensors")); }),
             Catch::Contains("expected an integer type"));
  mc::write_checkpoint(dir.file("n.safetensors"), {x, mc::HostTensor::owned("labels", mc::DType::I32, {2},
                                                                            std::vector<uint8_t>(8, 0))});
  CHECK_THAT(error_of([&] { mc::read_tensor_dataset(dir.file("n.safetensors")); }), Catch::Contains("3 examples"));
}
