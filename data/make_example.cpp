// Writes a small deterministic checkpoint (an MLP with an embedding, float and integer tensors) as
// safetensors: the project's own example for the demo and tests. Same bytes on every run.
//   make_example OUT.safetensors
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "mcompress/error.h"
#include "mcompress/half.h"
#include "mcompress/io/safetensors.h"
#include "mcompress/rng.h"

namespace {

using Rng = mc::SplitMix64;

mc::HostTensor normal_f32(Rng& rng, const char* name, mc::Shape shape, float stddev) {
  std::vector<float> v(static_cast<size_t>(mc::shape_numel(shape)));
  for (auto& x : v) x = rng.normal(stddev);
  return mc::HostTensor::from_f32(name, shape, v.data());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_example OUT.safetensors\n");
    return 2;
  }
  try {
    Rng rng{20261123};
    std::vector<mc::HostTensor> t;
    t.push_back(normal_f32(rng, "embed.weight", {100, 32}, 1.0f));
    t.push_back(normal_f32(rng, "fc1.weight", {64, 32}, 1.0f / std::sqrt(32.0f)));
    t.push_back(normal_f32(rng, "fc1.bias", {64}, 0.01f));
    t.push_back(normal_f32(rng, "fc2.weight", {10, 64}, 1.0f / std::sqrt(64.0f)));
    t.push_back(normal_f32(rng, "fc2.bias", {10}, 0.01f));
    // A half-precision norm weight and integer buffers, as real checkpoints carry.
    std::vector<uint8_t> norm(32 * 2);
    for (int i = 0; i < 32; ++i) {
      uint16_t h = mc::f32_to_f16(1.0f + 0.05f * rng.normal(1.0f));
      std::memcpy(norm.data() + 2 * i, &h, 2);
    }
    t.push_back(mc::HostTensor::owned("norm.weight", mc::DType::F16, {32}, norm));
    std::vector<uint8_t> pos(16 * 8);
    for (int64_t i = 0; i < 16; ++i) std::memcpy(pos.data() + 8 * i, &i, 8);
    t.push_back(mc::HostTensor::owned("position_ids", mc::DType::I64, {16}, pos));
    mc::write_safetensors(argv[1], t, {{"generator", "mcompress data/make_example"}, {"seed", "20261123"}});
    std::printf("wrote %s (%zu tensors)\n", argv[1], t.size());
  } catch (const mc::InputError& e) {
    std::fprintf(stderr, "make_example: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
