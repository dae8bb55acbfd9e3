// splitmix64: a tiny portable generator whose whole state is one integer, so generated data are the
// same on every platform and a sampler's position can be saved for exact resume.
#pragma once
#include <cmath>
#include <cstdint>

namespace mc {

struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }  // [0, 1)
  uint64_t below(uint64_t n) { return next() % n; }
  float normal(float stddev) {  // Box-Muller
    double u1 = uniform() + 1e-300, u2 = uniform();
    return static_cast<float>(stddev * std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }
};

}  // namespace mc
