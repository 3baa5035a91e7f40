// Minimal stand-in, for nvcc, for the header MLX's CUDA backend includes first in every custom
// kernel (MLX's own is built into the CUDA wheel's libmlx.so, not shipped as a file): the
// half, bfloat16 and fixed-width integer types that generated kernel signatures name.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
