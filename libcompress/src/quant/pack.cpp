// Bit packing of quantization codes: each row is a little-endian bit stream of `bits`-bit codes,
// padded with zero bits to a whole byte (see docs/packed-format.md). int8/int4/int2 have byte-wise
// loops; int3/5/6/7 go through a small shift register. Rows are packed in parallel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstring>

#include "mcompress/error.h"
#include "mcompress/quant/packed.h"

namespace mc {

namespace {

constexpr const char* kComp = "pack";
constexpr int64_t kGrainBytes = 1 << 16;  // codes per parallel task, at least

void check_bits(int bits) {
  if (bits < 2 || bits > 8) fail(kComp, "bits ", bits, " outside 2..8");
}

// Packs one row; returns the OR of its codes (to check that they fit in `bits`).
uint8_t pack_row(const uint8_t* c, int64_t cols, int bits, uint8_t* dst) {
  uint8_t seen = 0;
  switch (bits) {
    case 8:
      std::memcpy(dst, c, size_t(cols));
      return 0;
    case 4: {
      const int64_t pairs = cols / 2;
      for (int64_t j = 0; j < pairs; ++j) {
        const uint8_t a = c[2 * j], b = c[2 * j + 1];
        seen |= a | b;
        dst[j] = uint8_t(a | (b << 4));
      }
      if (cols & 1) seen |= c[cols - 1], dst[pairs] = c[cols - 1];
      return seen;
    }
    case 2: {
      const int64_t quads = cols / 4;
      for (int64_t j = 0; j < quads; ++j) {
        const uint8_t* q = c + 4 * j;
        seen |= q[0] | q[1] | q[2] | q[3];
        dst[j] = uint8_t(q[0] | (q[1] << 2) | (q[2] << 4) | (q[3] << 6));
      }
      if (cols % 4) {
        uint8_t b = 0;
        for (int64_t k = 4 * quads; k < cols; ++k) seen |= c[k], b = uint8_t(b | (c[k] << (2 * (k - 4 * quads))));
        dst[quads] = b;
      }
      return seen;
    }
    default: {
      uint32_t acc = 0;
      int n = 0;
      for (int64_t k = 0; k < cols; ++k) {
        seen |= c[k];
        acc |= uint32_t(c[k]) << n;
        n += bits;
        while (n >= 8) *dst++ = uint8_t(acc), acc >>= 8, n -= 8;
      }
      if (n > 0) *dst = uint8_t(acc & ((1u << n) - 1));
      return seen;
    }
  }
}

void unpack_row(const uint8_t* src, int64_t cols, int bits, uint8_t* c) {
  switch (bits) {
    case 8:
      std::memcpy(c, src, size_t(cols));
      return;
    case 4:
      for (int64_t k = 0; k < cols; ++k) c[k] = uint8_t((src[k >> 1] >> ((k & 1) * 4)) & 0xF);
      return;
    case 2:
      for (int64_t k = 0; k < cols; ++k) c[k] = uint8_t((src[k >> 2] >> ((k & 3) * 2)) & 0x3);
      return;
    default: {
      const uint32_t mask = (1u << bits) - 1;
      uint32_t acc = 0;
      int n = 0;
      for (int64_t k = 0; k < cols; ++k) {
        if (n < bits) acc |= uint32_t(*src++) << n, n += 8;
        c[k] = uint8_t(acc & mask);
        acc >>= bits;
        n -= bits;
      }
    }
  }
}

}  // namespace

int64_t packed_row_bytes(int64_t cols, int bits) { return (cols * bits + 7) / 8; }

void pack_codes_into(const at::Tensor& codes, int bits, uint8_t* dst) {
  check_bits(bits);
  if (codes.scalar_type() != at::kByte)
    fail(kComp, "codes must be uint8, got ", c10::toString(codes.scalar_type()));
  if (codes.dim() != 1 && codes.dim() != 2) fail(kComp, "codes must be 1-D or 2-D, got ", codes.dim(), " dims");
  const at::Tensor c = codes.to(at::kCPU).contiguous();
  const int64_t rows = c.dim() == 2 ? c.size(0) : 1, cols = c.size(-1);
  const int64_t rb = packed_row_bytes(cols, bits);
  if (rows == 0 || cols == 0) return;
  const uint8_t* src = c.data_ptr<uint8_t>();
  std::vector<uint8_t> seen(size_t(rows), 0);
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrainBytes / cols), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) seen[size_t(r)] = pack_row(src + r * cols, cols, bits, dst + r * rb);
  });
  if (bits < 8) {
    for (int64_t r = 0; r < rows; ++r) {
      if (seen[size_t(r)] >> bits) {
        for (int64_t k = 0; k < cols; ++k)
          if (src[r * cols + k] >> bits)
            fail(kComp, "code ", int(src[r * cols + k]), " at [", r, ", ", k, "] does not fit in ", bits, " bits");
      }
    }
  }
}

std::vector<uint8_t> pack_codes(const at::Tensor& codes, int bits) {
  check_bits(bits);
  const int64_t rows = codes.dim() == 2 ? codes.size(0) : 1, cols = codes.dim() ? codes.size(-1) : 0;
  std::vector<uint8_t> out(size_t(rows * packed_row_bytes(cols, bits)));
  pack_codes_into(codes, bits, out.data());
  return out;
}

at::Tensor unpack_codes(const uint8_t* packed, int64_t rows, int64_t cols, int bits) {
  check_bits(bits);
  if (rows < 0 || cols < 0) fail(kComp, "negative shape [", rows, ", ", cols, "]");
  at::Tensor c = at::empty({rows, cols}, at::kByte);
  if (rows == 0 || cols == 0) return c;
  uint8_t* dst = c.data_ptr<uint8_t>();
  const int64_t rb = packed_row_bytes(cols, bits);
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrainBytes / cols), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) unpack_row(packed + r * rb, cols, bits, dst + r * cols);
  });
  return c;
}

}  // namespace mc
