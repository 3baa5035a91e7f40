// Host stand-in for the header MLX's CUDA backend includes first in every custom kernel
// (MLX builds its own into libmlx.so). CUDA keywords vanish; the launch built-ins are globals
// the harness sets before calling the kernel once per (block, thread).
#pragma once

#include "lucid_harness.h"

#define __global__
#define __device__
#define __grid_constant__

using __half = lucid_half;
using __nv_bfloat16 = lucid_bfloat16;

inline uint3 threadIdx;
inline uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;
