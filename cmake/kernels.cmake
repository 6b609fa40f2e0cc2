# Kernel libraries: inferline_kernels (CPU, always; OpenBLAS for sgemm) and, when CUDA was found,
# inferline_cuda linked into it. Included from the top-level CMakeLists.txt.

# ---- BLAS: OpenBLAS from the distribution (Debian: libopenblas-dev) -----------------------
# The Debian package ships cblas.h and a pthread-threaded libopenblas built for the host's
# dynamic arch detection; we ask for that vendor explicitly so a reference libblas picked by
# the alternatives system cannot slip in, and so openblas_set_num_threads() exists.
set(BLA_VENDOR OpenBLAS)
find_package(BLAS REQUIRED)
find_path(INFERLINE_CBLAS_INCLUDE_DIR cblas.h
  PATH_SUFFIXES openblas-pthread openblas openblas-openmp
  DOC "Directory holding OpenBLAS's cblas.h")
if(NOT INFERLINE_CBLAS_INCLUDE_DIR)
  message(FATAL_ERROR "cblas.h not found: install OpenBLAS headers (Debian: libopenblas-dev)")
endif()
message(STATUS "inferline: BLAS ${BLAS_LIBRARIES}, cblas.h in ${INFERLINE_CBLAS_INCLUDE_DIR}")

# ---- CPU kernels --------------------------------------------------------------------------
file(GLOB INFERLINE_KERNEL_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/cpp/src/kernels/*.cpp)
add_library(inferline_kernels STATIC ${INFERLINE_KERNEL_SOURCES})
target_include_directories(inferline_kernels PUBLIC ${PROJECT_SOURCE_DIR}/cpp/include
                                                    ${PROJECT_SOURCE_DIR}/cuda)
# cblas.h is PUBLIC: the benchmarks call cblas_sgemm directly as the baseline.
target_include_directories(inferline_kernels SYSTEM PUBLIC ${INFERLINE_CBLAS_INCLUDE_DIR})
# inferline_core: the native model backend implements inferline::backend and answers requests
# with blocks from the core's block_pool.
target_link_libraries(inferline_kernels PUBLIC inferline_core Threads::Threads BLAS::BLAS
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
  file(GLOB INFERLINE_CUDA_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/cuda/*.cu)
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
  target_link_libraries(inferline_cuda PUBLIC CUDA::cudart_static)
  target_compile_definitions(inferline_cuda PUBLIC INFERLINE_HAVE_CUDA=1)
  target_link_libraries(inferline_kernels PUBLIC inferline_cuda)
endif()
