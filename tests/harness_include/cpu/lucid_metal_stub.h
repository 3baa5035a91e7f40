// Metal Shading Language keywords and types for a host compiler (see lucid_harness.h).
// Address-space qualifiers vanish; [[kernel]], [[buffer(i)]], [[thread_position_in_grid]] and
// [[host_name(...)]] are attributes g++ does not know and ignores (built with -Wno-attributes).
#pragma once

#include "lucid_harness.h"

#define device
#define constant
#define threadgroup

using float16_t = lucid_half;
using bfloat16_t = lucid_bfloat16;
