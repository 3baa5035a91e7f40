// Host stand-in for CUDA's <cooperative_groups.h>: the generated source only aliases its
// namespace (namespace cg = cooperative_groups).
#pragma once

namespace cooperative_groups {}
