# Kernel libraries: inferline_kernels (CPU, always; OpenBLAS for sgemm) and, when CUDA was found,
# inferline_cuda linked into it; then inferline_native, the native model backend on top of the
# kernels and the core. Included from the top-level CMakeLists.txt.

# ---- BLAS: OpenBLAS ----------------------------------------------------------------------
# First choice: the distribution's OpenBLAS (Debian: libopenblas-dev), which ships cblas.h and a
# pthread-threaded libopenblas with dynamic arch detection; we ask for that vendor explicitly so
# a reference libblas picked by the alternatives system cannot slip in. Without it (a fresh
# machine), the OpenBLAS that PyPI ships for building against, scipy-openblas32 (a build and
# run-time dependency of the package), is used: its symbols carry a `scipy_` prefix, which
# cpp/src/kernels/blas.hpp maps, and the module finds its library through an RPATH relative to
# site-packages.
set(INFERLINE_BLAS "AUTO" CACHE STRING "OpenBLAS to use: AUTO (system, else scipy-openblas32), SYSTEM, PYPI")
set(INFERLINE_BLAS_PYPI OFF)
if(NOT INFERLINE_BLAS STREQUAL "PYPI")
  set(BLA_VENDOR OpenBLAS)
  find_package(BLAS QUIET)
  find_path(INFERLINE_CBLAS_INCLUDE_DIR cblas.h
    PATH_SUFFIXES openblas-pthread openblas openblas-openmp
    DOC "Directory holding OpenBLAS's cblas.h")
endif()
if(BLAS_FOUND AND INFERLINE_CBLAS_INCLUDE_DIR)
  add_library(inferline_blas INTERFACE)
  target_link_libraries(inferline_blas INTERFACE BLAS::BLAS)
  target_include_directories(inferline_blas SYSTEM INTERFACE ${INFERLINE_CBLAS_INCLUDE_DIR})
  message(STATUS "inferline: BLAS ${BLAS_LIBRARIES}, cblas.h in ${INFERLINE_CBLAS_INCLUDE_DIR}")
elseif(INFERLINE_BLAS STREQUAL "SYSTEM")
  message(FATAL_ERROR "INFERLINE_BLAS=SYSTEM but OpenBLAS was not found (Debian: libopenblas-dev)")
else()
  find_package(Python 3.10 REQUIRED COMPONENTS Interpreter)
  execute_process(
    COMMAND ${Python_EXECUTABLE} -c
      "import scipy_openblas32 as s; print(s.get_include_dir()); print(s.get_lib_dir())"
    OUTPUT_VARIABLE _sob OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _sob_rc)
  if(NOT _sob_rc EQUAL 0)
    message(FATAL_ERROR "No OpenBLAS: install the system one (Debian: libopenblas-dev) or "
                        "`pip install scipy-openblas32` into ${Python_EXECUTABLE}'s environment")
  endif()
  string(REPLACE "\n" ";" _sob "${_sob}")
  list(GET _sob 0 _sob_include)
  list(GET _sob 1 _sob_lib)
  find_library(INFERLINE_SCIPY_OPENBLAS_LIB scipy_openblas PATHS ${_sob_lib} NO_DEFAULT_PATH REQUIRED)
  add_library(inferline_blas INTERFACE)
  target_link_libraries(inferline_blas INTERFACE ${INFERLINE_SCIPY_OPENBLAS_LIB})
  target_include_directories(inferline_blas SYSTEM INTERFACE ${_sob_include})
  target_compile_definitions(inferline_blas INTERFACE INFERLINE_SCIPY_OPENBLAS=1)
  set(INFERLINE_BLAS_PYPI ON)
  message(STATUS "inferline: BLAS from scipy-openblas32 (${INFERLINE_SCIPY_OPENBLAS_LIB})")
endif()

# ---- CPU kernels --------------------------------------------------------------------------
file(GLOB INFERLINE_KERNEL_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/cpp/src/kernels/*.cpp)
add_library(inferline_kernels STATIC ${INFERLINE_KERNEL_SOURCES})
target_include_directories(inferline_kernels PUBLIC ${PROJECT_SOURCE_DIR}/cpp/include
                                                    ${PROJECT_SOURCE_DIR}/cuda)
# No scheduler here: the native model (which implements inferline::backend) is inferline_native.
# inferline_blas is PUBLIC: the benchmarks call sgemm directly as the baseline.
target_link_libraries(inferline_kernels PUBLIC Threads::Threads inferline_blas
                                        PRIVATE inferline_options)
if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  # -fopenmp-simd honours `#pragma omp simd reduction` (vectorised sums without -ffast-math) and
  # needs no OpenMP runtime. -O3 even in RelWithDebInfo: the kernels rely on the vectoriser.
  target_compile_options(inferline_kernels PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-fopenmp-simd>
    $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<NOT:$<CONFIG:Debug>>>:-O3>)
endif()

# ---- CUDA kernels -------------------------------------------------------------------------
if(INFERLINE_HAVE_CUDA)
  # *.cpp: host-only parts (cublaslt.cpp dlopens cuBLASLt, so nothing links it).
  file(GLOB INFERLINE_CUDA_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/cuda/*.cu
                                                     ${PROJECT_SOURCE_DIR}/cuda/*.cpp)
  add_library(inferline_cuda STATIC ${INFERLINE_CUDA_SOURCES})
  target_include_directories(inferline_cuda PUBLIC ${PROJECT_SOURCE_DIR}/cpp/include
                                                   ${PROJECT_SOURCE_DIR}/cuda)
  set_target_properties(inferline_cuda PROPERTIES CUDA_SEPARABLE_COMPILATION OFF
                                                  CUDA_RUNTIME_LIBRARY Static
                                                  CUDA_STANDARD 20
                                                  CUDA_STANDARD_REQUIRED ON)
  # No --use_fast_math: the shared math (fp16 packing, exp) relies on IEEE float without
  # flush-to-zero, exactly like the host build the tests check it against.
  target_compile_options(inferline_cuda PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra --Werror=all-warnings>)
  # cudart is linked statically so the wheel needs no CUDA runtime; no driver means CPU only.
  target_link_libraries(inferline_cuda PUBLIC CUDA::cudart_static
                                       PRIVATE ${CMAKE_DL_LIBS} inferline_options)
  target_compile_definitions(inferline_cuda PUBLIC INFERLINE_HAVE_CUDA=1)
  target_link_libraries(inferline_kernels PUBLIC inferline_cuda)
endif()

# ---- native model backend -----------------------------------------------------------------
# The native model implements inferline::backend and answers requests with blocks from the
# core's block_pool, so it depends on both the kernels and the core (which know nothing of it).
# Its CUDA executor is exec_cuda.cpp in CUDA builds and the small exec_no_cuda.cpp otherwise,
# so no source needs #ifdef INFERLINE_HAVE_CUDA.
file(GLOB INFERLINE_NATIVE_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/cpp/src/native/*.cpp)
if(INFERLINE_HAVE_CUDA)
  list(FILTER INFERLINE_NATIVE_SOURCES EXCLUDE REGEX "/exec_no_cuda\\.cpp$")
else()
  list(FILTER INFERLINE_NATIVE_SOURCES EXCLUDE REGEX "/exec_cuda\\.cpp$")
endif()
add_library(inferline_native STATIC ${INFERLINE_NATIVE_SOURCES})
target_link_libraries(inferline_native PUBLIC inferline_kernels inferline_core
                                       PRIVATE inferline_options)

# ---- native text encoder ------------------------------------------------------------------
# BERT-style sentence encoder (cpp/src/encoder): CPU executor always; the CUDA executor
# encoder_cuda.cpp in CUDA builds, else encoder_no_cuda.cpp, whose make_cuda_encoder throws
# "built without CUDA" (as exec_no_cuda.cpp does for native models).
file(GLOB INFERLINE_ENCODER_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/cpp/src/encoder/*.cpp)
if(INFERLINE_HAVE_CUDA)
  list(FILTER INFERLINE_ENCODER_SOURCES EXCLUDE REGEX "/encoder_no_cuda\\.cpp$")
else()
  list(FILTER INFERLINE_ENCODER_SOURCES EXCLUDE REGEX "/encoder_cuda\\.cpp$")
endif()
add_library(inferline_encoder STATIC ${INFERLINE_ENCODER_SOURCES})
target_link_libraries(inferline_encoder PUBLIC inferline_native inferline_kernels inferline_core
                                        PRIVATE inferline_options)
target_include_directories(inferline_encoder PRIVATE ${PROJECT_SOURCE_DIR}/cpp/src)
if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  target_compile_options(inferline_encoder PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-fopenmp-simd>
    $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<NOT:$<CONFIG:Debug>>>:-O3>)
endif()
