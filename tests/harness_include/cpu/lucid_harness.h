// Host (g++) stand-ins for the GPU types, keywords and launch built-ins that MLX's generated
// Metal and CUDA kernel sources name. Written for this project's kernel harness; not MLX's
// headers. Just enough for a kernel body to compile as C++ and run, one "thread" per call.
#pragma once

#include <cstdint>
#include <cstring>

struct uint3 {
  unsigned int x, y, z;
};
using dim3 = uint3;

// IEEE binary16: the compiler's own type (round-to-nearest-even conversions).
using lucid_half = _Float16;

// bfloat16: the upper 16 bits of a float32, rounded to nearest even from float, NaN kept quiet.
struct lucid_bfloat16 {
  std::uint16_t bits;

  lucid_bfloat16() = default;
  explicit lucid_bfloat16(float value) {
    std::uint32_t word;
    std::memcpy(&word, &value, sizeof word);
    if ((word & 0x7fffffffu) > 0x7f800000u) {
      bits = static_cast<std::uint16_t>((word >> 16) | 0x40u);
    } else {
      bits = static_cast<std::uint16_t>((word + 0x7fffu + ((word >> 16) & 1u)) >> 16);
    }
  }
  operator float() const {
    std::uint32_t word = static_cast<std::uint32_t>(bits) << 16;
    float value;
    std::memcpy(&value, &word, sizeof value);
    return value;
  }
};
static_assert(sizeof(lucid_bfloat16) == 2, "bfloat16 must be two bytes");
static_assert(sizeof(lucid_half) == 2, "half must be two bytes");

// A buffer pointer that converts to whatever element pointer a kernel parameter declares, so
// one launcher serves every generated signature.
struct lucid_any_pointer {
  void* address;
  template <typename U>
  operator U*() const {
    return static_cast<U*>(address);
  }
};
