// Minimal stand-in, for nvcc and NVRTC, for the header MLX's CUDA backend includes first in
// every custom kernel (MLX's own is built into the CUDA wheel's libmlx.so, not shipped as a
// file): the half, bfloat16 and fixed-width integer types that generated signatures name.
// NVRTC has no host C++ library, so the integers come from libcu++ (CCCL, in the toolkit).
#pragma once

#include <cuda/std/cstdint>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

using cuda::std::int16_t;
using cuda::std::int32_t;
using cuda::std::int64_t;
using cuda::std::int8_t;
using cuda::std::uint16_t;
using cuda::std::uint32_t;
using cuda::std::uint64_t;
using cuda::std::uint8_t;
