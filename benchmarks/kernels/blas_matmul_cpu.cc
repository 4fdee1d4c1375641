// Float32 matrix products on the CPU from OpenBLAS, called through XLA's FFI: an experiment of
// benchmarks/blas_products.py, not used by training (docs/benchmarks.md, finding 21).
//
// XLA:CPU's own matrix multiply was 5-15% slower than OpenBLAS on the dense layers' shapes of the throughput
// benchmark on a 2-core AVX-512 machine. Each call here splits the product into one panel of rows (or of
// columns, for wide outputs) per thread of XLA's intra-op pool. OpenBLAS runs with one thread on each panel,
// so the product shares XLA's threads instead of starting its own. Built against scipy-openblas32, whose
// symbols carry the prefix scipy_.
//
// Operands are row-major. transpose_lhs / transpose_rhs say that the stored arrays are the transposes of
// the factors: C[M, N] = op(A) op(B), with A stored [M, K] or [K, M] and B stored [K, N] or [N, K].

#include <algorithm>
#include <cstdint>

#include "../../models/kernels/parallel_for.h"
#include "cblas.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Below this many multiply-adds a product runs on the calling thread alone, where handing a panel to
// another thread would likely cost more than it saves (an estimate, not tuned).
constexpr int64_t kSplitMultiplyAdds = int64_t{1} << 20;
// Panel edges are multiples of 16 floats, the width of one AVX-512 register.
constexpr int64_t kRowAlign = 16;
constexpr int64_t kColAlign = 16;

int64_t PanelEdge(int64_t extent, int64_t panels, int64_t align) {
  const int64_t even = (extent + panels - 1) / panels;
  return (even + align - 1) / align * align;
}

ffi::Error MatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                      ffi::ResultBuffer<ffi::F32> c, bool transpose_lhs, bool transpose_rhs) {
  const auto a_dims = a.dimensions();
  const auto b_dims = b.dimensions();
  const auto c_dims = c->dimensions();
  if (a_dims.size() != 2 || b_dims.size() != 2 || c_dims.size() != 2) {
    return ffi::Error::InvalidArgument("matmul operands and result must be 2-D");
  }
  const int64_t m = transpose_lhs ? a_dims[1] : a_dims[0];
  const int64_t k = transpose_lhs ? a_dims[0] : a_dims[1];
  const int64_t n = transpose_rhs ? b_dims[0] : b_dims[1];
  const int64_t k_rhs = transpose_rhs ? b_dims[1] : b_dims[0];
  if (k != k_rhs || c_dims[0] != m || c_dims[1] != n) {
    return ffi::Error::InvalidArgument("matmul shapes do not agree");
  }
  const float* a_data = a.typed_data();
  const float* b_data = b.typed_data();
  float* c_data = c->typed_data();
  const int lda = static_cast<int>(a_dims[1]);
  const int ldb = static_cast<int>(b_dims[1]);
  const int ldc = static_cast<int>(n);
  const CBLAS_TRANSPOSE op_a = transpose_lhs ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE op_b = transpose_rhs ? CblasTrans : CblasNoTrans;

  if (k == 0) {
    std::fill(c_data, c_data + m * n, 0.0f);
    return ffi::Error::Success();
  }
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t panels = m * n * k < kSplitMultiplyAdds ? 1 : threads;
  if (panels == 1) {
    scipy_cblas_sgemm(CblasRowMajor, op_a, op_b, m, n, k, 1.0f, a_data, lda, b_data, ldb, 0.0f, c_data, ldc);
    return ffi::Error::Success();
  }

  // Split the longer side of C, so that each panel keeps the shape OpenBLAS blocks well.
  if (m >= n) {
    const int64_t edge = PanelEdge(m, panels, kRowAlign);
    const int64_t tasks = (m + edge - 1) / edge;
    scaling_kernels::ParallelFor(pool, tasks, [&](int64_t task) {
      const int64_t row = task * edge;
      const int64_t rows = std::min(edge, m - row);
      const float* a_panel = transpose_lhs ? a_data + row : a_data + row * lda;
      scipy_cblas_sgemm(CblasRowMajor, op_a, op_b, rows, n, k, 1.0f, a_panel, lda, b_data, ldb, 0.0f,
                  c_data + row * ldc, ldc);
    });
  } else {
    const int64_t edge = PanelEdge(n, panels, kColAlign);
    const int64_t tasks = (n + edge - 1) / edge;
    scaling_kernels::ParallelFor(pool, tasks, [&](int64_t task) {
      const int64_t col = task * edge;
      const int64_t cols = std::min(edge, n - col);
      const float* b_panel = transpose_rhs ? b_data + col * ldb : b_data + col;
      scipy_cblas_sgemm(CblasRowMajor, op_a, op_b, m, cols, k, 1.0f, a_data, lda, b_panel, ldb, 0.0f,
                  c_data + col, ldc);
    });
  }
  return ffi::Error::Success();
}

}  // namespace

// OpenBLAS starts with one thread per core, so this sets it to one: each panel runs on its caller's thread.
extern "C" void ScalingMatmulInit() { scipy_openblas_set_num_threads(1); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(ScalingMatmul, MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("transpose_lhs")
                                  .Attr<bool>("transpose_rhs"));
