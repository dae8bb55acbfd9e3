#pragma once

namespace mc {
// Sets the intra-op thread count of LibTorch (and OpenMP/OpenBLAS through it). n <= 0: all cores.
// Returns the count in effect.
int set_threads(int n);
int hardware_threads();
}  // namespace mc
