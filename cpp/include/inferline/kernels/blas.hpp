// One spelling for the OpenBLAS calls, whichever OpenBLAS the build found (see kernels.cmake).
#pragma once

#include <cblas.h>

#ifdef INFERLINE_SCIPY_OPENBLAS
/// scipy-openblas32 prefixes every symbol with `scipy_`.
#define INFERLINE_BLAS(name) scipy_##name
#else
/// The system OpenBLAS: the plain names.
#define INFERLINE_BLAS(name) name
#endif
