// Fused causal self-attention for the CPU, forward and backward, called from JAX through XLA's FFI.
//
// XLA:CPU runs attention as about ten separate kernels per block of queries (score product, maximum,
// exponent, sum, scaling, value product, and as many again in the backward pass), each writing its result
// to memory. Here one task per (batch row, key/value head) keeps its keys and values in contiguous buffers,
// and each block of 64 queries goes from scores to output while the scores are still in cache
// (docs/benchmarks.md, "Training throughput", finding 17).
//
// The backward pass recomputes the softmax weights from the saved log-sum-exp of each query's scores and
// uses dS = P (dP - D), D = rowsum(dO * O) (Dao et al. 2022, arXiv:2205.14135, appendix B.2).
//
// Layouts are the model's: q and out [B, L, H, E], k and v [B, L, K, E], RoPE cosines and sines [B, L, E/2]
// (empty without RoPE), log-sum-exp [B, H, L], all float32 and row-major. Query head h reads key/value
// head h / G, with G = H / K.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "parallel_for.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Queries per block. A block's scores take 64 x keys x 4 bytes: 64 KB at 256 keys, 1 MB at 4,096.
constexpr int64_t kQueryBlock = 64;
constexpr int64_t kRows = 8;         // rows of the register tile in `Product`
constexpr int64_t kLanes = 16;       // floats in one vector of `Vec`

// 16 floats; on CPUs without 512-bit vectors the compiler splits each operation in two.
typedef float Vec __attribute__((vector_size(64), aligned(4)));

int64_t RoundUp(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

inline Vec Zero() { return Vec{}; }
inline Vec Load(const float* p) { return *reinterpret_cast<const Vec*>(p); }
inline void Store(float* p, Vec v) { *reinterpret_cast<Vec*>(p) = v; }

// exp(x) within 2 ulp, for x <= 0: x = n ln 2 + r with |r| <= ln 2 / 2, exp(r) from a degree 6 polynomial
// (the Cephes expf coefficients), 2^n written into the exponent bits. Below -87, where float32 underflows,
// the result is 0. Written on whole vectors because the C library's expf is a function call per element.
inline Vec Exp(Vec x) {
  const Vec low = Zero() - 87.0f;
  const Vec clamped = x < low ? low : x;
  // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer in float arithmetic.
  const Vec n = (clamped * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  Vec r = clamped - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  Vec p = Zero() + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  typedef int32_t IntVec __attribute__((vector_size(64)));
  const IntVec bits = (__builtin_convertvector(n, IntVec) + 127) << 23;
  Vec two_to_n;
  std::memcpy(&two_to_n, &bits, sizeof(two_to_n));
  return x < low ? Zero() : p * two_to_n;
}

// Horizontal sum and maximum of one vector, halving it three times rather than adding 16 lanes one after
// another. With the row sum taken in the exponent's pass, this took the forward pass at the demo's shapes
// (8 x 64 x 6 x 6 x 16, one core) from 0.48 to 0.42 ms.
typedef float Half __attribute__((vector_size(32)));
typedef float Quarter __attribute__((vector_size(16)));

// Folds v in halves with `op` (a sum or a maximum) down to one float.
template <typename Op>
inline float Reduce(Vec v, Op op) {
  Half low, high;
  std::memcpy(&low, &v, sizeof(low));
  std::memcpy(&high, reinterpret_cast<const char*>(&v) + sizeof(low), sizeof(high));
  const Half half = op(low, high);

  Quarter a, b;
  std::memcpy(&a, &half, sizeof(a));
  std::memcpy(&b, reinterpret_cast<const char*>(&half) + sizeof(a), sizeof(b));
  const Quarter quarter = op(a, b);
  return op(op(quarter[0], quarter[2]), op(quarter[1], quarter[3]));
}

inline float ReduceSum(Vec v) {
  return Reduce(v, [](auto x, auto y) { return x + y; });
}

inline float ReduceMax(Vec v) {
  return Reduce(v, [](auto x, auto y) { return x > y ? x : y; });
}

float Max(const float* x, int64_t n) {  // n a multiple of 16
  Vec acc = Load(x);
  for (int64_t j = kLanes; j < n; j += kLanes) {
    const Vec v = Load(x + j);
    acc = v > acc ? v : acc;
  }
  return ReduceMax(acc);
}

// Sets row[j] = exp(row[j] - shift) for the visible keys j < visible and 0 after them, and returns the sum
// of the row; n is a multiple of 16. Vectors past the last visible key are set to 0 without an exponent:
// in the diagonal block of queries, about a third of them.
float ExpRow(float* row, int64_t visible, int64_t n, float shift) {
  const int64_t computed = RoundUp(visible, kLanes);
  for (int64_t j = visible; j < computed; ++j) row[j] = -std::numeric_limits<float>::infinity();
  Vec sum = Zero();
  for (int64_t j = 0; j < computed; j += kLanes) {
    const Vec e = Exp(Load(row + j) - shift);
    Store(row + j, e);
    sum += e;
  }
  std::fill(row + computed, row + n, 0.0f);
  return ReduceSum(sum);
}

// Returns the dot product of two rows of n floats, n a multiple of 16.
float Dot(const float* x, const float* y, int64_t n) {
  Vec acc = Zero();
  for (int64_t j = 0; j < n; j += kLanes) acc += Load(x + j) * Load(y + j);
  return ReduceSum(acc);
}


// Buffers padded with zeros to whole tiles, so that the inner loops have no edge cases.
struct Padded {
  int64_t rows = 0, cols = 0;
  std::vector<float> data;
  void Reset(int64_t r, int64_t c) {
    rows = r;
    cols = c;
    data.assign(static_cast<size_t>(r * c), 0.0f);
  }
  // The same shape without clearing, for buffers that a product or a copy overwrites whole.
  void Resize(int64_t r, int64_t c) {
    rows = r;
    cols = c;
    if (data.size() < static_cast<size_t>(r * c)) data.resize(static_cast<size_t>(r * c));
  }
  float* Row(int64_t r) { return data.data() + r * cols; }
};

// C[8 x 16 NV] (+)= alpha * A[8 x depth] B[depth x 16 NV], with 8 NV vector accumulators in registers.
template <int NV>
inline void Tile(int64_t depth, const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
                 float alpha, bool accumulate) {
  Vec acc[kRows][NV] = {};
  for (int64_t p = 0; p < depth; ++p) {
    Vec bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = *reinterpret_cast<const Vec*>(b + p * ldb + kLanes * v);
    for (int r = 0; r < kRows; ++r) {
      const float s = a[r * lda + p];
      for (int v = 0; v < NV; ++v) acc[r][v] += s * bv[v];
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < NV; ++v) {
      Vec* out = reinterpret_cast<Vec*>(c + r * ldc + kLanes * v);
      *out = accumulate ? *out + alpha * acc[r][v] : alpha * acc[r][v];
    }
  }
}

// C[m x n] (+)= alpha * A[m x depth] B[depth x n], row-major, m a multiple of 8 and n of 16.
void Product(int64_t m, int64_t n, int64_t depth, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
             int64_t ldc, float alpha, bool accumulate) {
  for (int64_t i = 0; i < m; i += kRows) {
    int64_t j = 0;
    for (; j + 2 * kLanes <= n; j += 2 * kLanes) {
      Tile<2>(depth, a + i * lda, lda, b + j, ldb, c + i * ldc + j, ldc, alpha, accumulate);
    }
    if (j < n) Tile<1>(depth, a + i * lda, lda, b + j, ldb, c + i * ldc + j, ldc, alpha, accumulate);
  }
}

// dst[c][r] = src[r][c] for the first `rows` rows and `cols` columns.
void Transpose(int64_t rows, int64_t cols, const float* src, int64_t lds, float* dst, int64_t ldd) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
  }
}

struct Shape {
  int64_t batch, length, heads, kv_heads, head_dim;
  int64_t groups() const { return heads / kv_heads; }
  int64_t q_offset(int64_t b, int64_t t, int64_t h) const { return ((b * length + t) * heads + h) * head_dim; }
  int64_t kv_offset(int64_t b, int64_t t, int64_t k) const { return ((b * length + t) * kv_heads + k) * head_dim; }
};

ffi::Error ReadShape(const ffi::Buffer<ffi::F32>& q, const ffi::Buffer<ffi::F32>& k, const ffi::Buffer<ffi::F32>& v,
                     Shape* shape) {
  auto qd = q.dimensions();
  auto kd = k.dimensions();
  auto vd = v.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4) {
    return ffi::Error::InvalidArgument("attention inputs must be 4-D: q [B, L, H, E], k and v [B, L, K, E]");
  }
  *shape = Shape{qd[0], qd[1], qd[2], kd[2], qd[3]};
  const bool keys_match = kd[0] == qd[0] && kd[1] == qd[1] && kd[3] == qd[3] && kd[2] > 0 &&
                          shape->heads % shape->kv_heads == 0;
  const bool values_match = vd[0] == kd[0] && vd[1] == kd[1] && vd[2] == kd[2] && vd[3] == kd[3];
  if (!keys_match || !values_match) {
    return ffi::Error::InvalidArgument("k and v must both be [B, L, K, E] with K dividing the query heads");
  }
  return ffi::Error::Success();
}

// Checks that a backward-pass input has the shape the forward pass gave it.
ffi::Error CheckSame(const ffi::Buffer<ffi::F32>& x, std::initializer_list<int64_t> expected, const char* name) {
  auto dims = x.dimensions();
  if (dims.size() != expected.size() || !std::equal(expected.begin(), expected.end(), dims.begin())) {
    return ffi::Error::InvalidArgument(std::string(name) + " does not have the shape of the forward pass's output");
  }
  return ffi::Error::Success();
}

// Rotary position embeddings (RoPE): cosines and sines [B, L, E/2] of each position's angles, or none.
// Queries and keys are rotated as they are loaded, and their gradients rotated back as they are written,
// which is the rotation's transpose (the rotation by minus the angle).
struct Rope {
  const float* cos = nullptr;
  const float* sin = nullptr;
  int64_t length = 0, head_dim = 0, half = 0;

  bool on() const { return cos != nullptr; }

  // Writes the E values x of position t in batch row b into out, rotated by the angle (sign 1) or by
  // minus the angle (sign -1). Without RoPE it copies them.
  void Rotate(const float* x, int64_t b, int64_t t, float sign, float* out) const {
    if (!on()) {
      std::memcpy(out, x, head_dim * sizeof(float));
      return;
    }
    const float* c = cos + (b * length + t) * half;
    const float* sn = sin + (b * length + t) * half;
    for (int64_t p = 0; p < half; ++p) {
      const float even = x[2 * p], odd = x[2 * p + 1], signed_sin = sign * sn[p];
      out[2 * p] = even * c[p] - odd * signed_sin;
      out[2 * p + 1] = even * signed_sin + odd * c[p];
    }
  }
};

// No rotation, for values, outputs and their gradients.
Rope Plain(const Shape& s) {
  Rope rope;
  rope.length = s.length;
  rope.head_dim = s.head_dim;
  return rope;
}

ffi::Error ReadRope(const ffi::Buffer<ffi::F32>& cos, const ffi::Buffer<ffi::F32>& sin, const Shape& s, Rope* rope) {
  rope->length = s.length;
  rope->head_dim = s.head_dim;
  rope->half = s.head_dim / 2;
  if (cos.element_count() == 0) return ffi::Error::Success();  // a model without RoPE passes empty tables
  auto cd = cos.dimensions();
  auto sd = sin.dimensions();
  const bool matches = s.head_dim % 2 == 0 && cd.size() == 3 && sd.size() == 3 && cd[0] == s.batch &&
                       cd[1] == s.length && cd[2] == s.head_dim / 2 && sd[0] == cd[0] && sd[1] == cd[1] &&
                       sd[2] == cd[2];
  if (!matches) return ffi::Error::InvalidArgument("RoPE tables must be [B, L, E/2] with an even head_dim");
  rope->cos = cos.typed_data();
  rope->sin = sin.typed_data();
  return ffi::Error::Success();
}

// Keys or values of one (batch row, key/value head), rotated by `rope`: as rows [Lp x Ep] or transposed
// [E x Lp].
void GatherRows(const Shape& s, const float* x, int64_t b, int64_t kh, const Rope& rope, Padded* rows) {
  rows->Reset(RoundUp(s.length, 2 * kLanes), RoundUp(s.head_dim, kLanes));
  for (int64_t t = 0; t < s.length; ++t) rope.Rotate(x + s.kv_offset(b, t, kh), b, t, 1.0f, rows->Row(t));
}

void GatherColumns(const Shape& s, const float* x, int64_t b, int64_t kh, const Rope& rope, Padded* cols) {
  cols->Reset(s.head_dim, RoundUp(s.length, 2 * kLanes));
  std::vector<float> row(s.head_dim);
  for (int64_t t = 0; t < s.length; ++t) {
    rope.Rotate(x + s.kv_offset(b, t, kh), b, t, 1.0f, row.data());
    for (int64_t e = 0; e < s.head_dim; ++e) cols->Row(e)[t] = row[e];
  }
}

// Queries (or outputs, or their gradients) start .. start + rows - 1 of head h, rotated by `rope`, as rows
// [Rp x Ep].
void GatherQueries(const Shape& s, const float* x, int64_t b, int64_t h, int64_t start, int64_t rows,
                   const Rope& rope, Padded* out) {
  out->Reset(RoundUp(rows, kRows), RoundUp(s.head_dim, kLanes));
  for (int64_t i = 0; i < rows; ++i) rope.Rotate(x + s.q_offset(b, start + i, h), b, start + i, 1.0f, out->Row(i));
}

// Scores of a query block against keys 0 .. keys - 1, scaled by 1/sqrt(E), into `scores` [Rp x keys_p].
void BlockScores(const Shape& s, const Padded& queries, const Padded& keys_t, int64_t keys, Padded* scores) {
  const int64_t keys_p = RoundUp(keys, kLanes);
  scores->Resize(queries.rows, keys_p);
  Product(queries.rows, keys_p, s.head_dim, queries.data.data(), queries.cols, keys_t.data.data(), keys_t.cols,
          scores->data.data(), keys_p, 1.0f / std::sqrt(static_cast<float>(s.head_dim)), false);
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                       ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> cos, ffi::Buffer<ffi::F32> sin,
                       ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> lse) {
  Shape s;
  if (ffi::Error error = ReadShape(q, k, v, &s); error.failure()) return error;
  Rope rope;
  if (ffi::Error error = ReadRope(cos, sin, s, &rope); error.failure()) return error;
  const Rope plain = Plain(s);
  const float* qp = q.typed_data();
  const float* kp = k.typed_data();
  const float* vp = v.typed_data();
  float* op = out->typed_data();
  float* lp = lse->typed_data();

  scaling_kernels::ParallelFor(pool, s.batch * s.kv_heads, [&](int64_t task) {
    const int64_t b = task / s.kv_heads, kh = task % s.kv_heads;
    Padded keys_t, values, queries, weights, block_out;
    GatherColumns(s, kp, b, kh, rope, &keys_t);
    GatherRows(s, vp, b, kh, plain, &values);
    for (int64_t h = kh * s.groups(); h < (kh + 1) * s.groups(); ++h) {
      for (int64_t start = 0; start < s.length; start += kQueryBlock) {
        const int64_t rows = std::min(kQueryBlock, s.length - start), keys = start + rows;
        GatherQueries(s, qp, b, h, start, rows, rope, &queries);
        BlockScores(s, queries, keys_t, keys, &weights);

        // Softmax of each query's visible scores; later keys (and padding rows) get weight 0.
        std::vector<float> inverse_sum(queries.rows, 0.0f);
        for (int64_t i = 0; i < rows; ++i) {
          float* row = weights.Row(i);
          const int64_t visible = start + i + 1;
          std::fill(row + visible, row + RoundUp(visible, kLanes), -std::numeric_limits<float>::infinity());
          const float max = Max(row, RoundUp(visible, kLanes));
          const float sum = ExpRow(row, visible, weights.cols, max);
          inverse_sum[i] = 1.0f / sum;
          lp[(b * s.heads + h) * s.length + start + i] = max + std::log(sum);
        }
        for (int64_t i = rows; i < queries.rows; ++i) std::fill(weights.Row(i), weights.Row(i) + weights.cols, 0.0f);

        block_out.Resize(queries.rows, values.cols);
        Product(queries.rows, values.cols, weights.cols, weights.data.data(), weights.cols, values.data.data(),
                values.cols, block_out.data.data(), block_out.cols, 1.0f, false);
        for (int64_t i = 0; i < rows; ++i) {
          float* dst = op + s.q_offset(b, start + i, h);
          for (int64_t e = 0; e < s.head_dim; ++e) dst[e] = block_out.Row(i)[e] * inverse_sum[i];
        }
      }
    }
  });
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                        ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> cos, ffi::Buffer<ffi::F32> sin,
                        ffi::Buffer<ffi::F32> out, ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dout,
                        ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
                        ffi::ResultBuffer<ffi::F32> dv) {
  Shape s;
  if (ffi::Error error = ReadShape(q, k, v, &s); error.failure()) return error;
  Rope rope;
  if (ffi::Error error = ReadRope(cos, sin, s, &rope); error.failure()) return error;
  const Rope plain = Plain(s);
  for (ffi::Error error : {CheckSame(out, {s.batch, s.length, s.heads, s.head_dim}, "out"),
                           CheckSame(dout, {s.batch, s.length, s.heads, s.head_dim}, "dout"),
                           CheckSame(lse, {s.batch, s.heads, s.length}, "the log-sum-exp")}) {
    if (error.failure()) return error;
  }
  const float* qp = q.typed_data();
  const float* kp = k.typed_data();
  const float* vp = v.typed_data();
  const float* op = out.typed_data();
  const float* lp = lse.typed_data();
  const float* dop = dout.typed_data();
  float* dqp = dq->typed_data();
  float* dkp = dk->typed_data();
  float* dvp = dv->typed_data();
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));

  scaling_kernels::ParallelFor(pool, s.batch * s.kv_heads, [&](int64_t task) {
    const int64_t b = task / s.kv_heads, kh = task % s.kv_heads;
    // dK and dV are accumulated transposed, [Ep x Lp], so that each block adds a product whose small factor
    // (the block's Q^T or dO^T, [Ep x R]) is the one transposed, not the [R x keys] weights.
    Padded keys_t, keys, values_t, dkeys_t, dvalues_t, queries, outs, douts, weights, dweights, transposed, block_dq;
    GatherColumns(s, kp, b, kh, rope, &keys_t);
    GatherRows(s, kp, b, kh, rope, &keys);
    GatherColumns(s, vp, b, kh, plain, &values_t);
    dkeys_t.Reset(RoundUp(s.head_dim, kRows), keys.rows);
    dvalues_t.Reset(RoundUp(s.head_dim, kRows), keys.rows);

    for (int64_t h = kh * s.groups(); h < (kh + 1) * s.groups(); ++h) {
      for (int64_t start = 0; start < s.length; start += kQueryBlock) {
        const int64_t rows = std::min(kQueryBlock, s.length - start), visible_keys = start + rows;
        GatherQueries(s, qp, b, h, start, rows, rope, &queries);
        GatherQueries(s, op, b, h, start, rows, plain, &outs);
        GatherQueries(s, dop, b, h, start, rows, plain, &douts);
        BlockScores(s, queries, keys_t, visible_keys, &weights);
        const int64_t cols = weights.cols;

        // P from the saved log-sum-exp, and D = rowsum(dO * O).
        std::vector<float> delta(queries.rows, 0.0f);
        for (int64_t i = 0; i < rows; ++i) {
          float* row = weights.Row(i);
          const int64_t visible = start + i + 1;
          const float log_sum = lp[(b * s.heads + h) * s.length + start + i];
          ExpRow(row, visible, cols, log_sum);
          delta[i] = Dot(douts.Row(i), outs.Row(i), douts.cols);
        }

        // dS = P (dO V^T - D), kept in `dweights`.
        dweights.Resize(queries.rows, cols);
        Product(queries.rows, cols, s.head_dim, douts.data.data(), douts.cols, values_t.data.data(), values_t.cols,
                dweights.data.data(), cols, 1.0f, false);
        for (int64_t i = 0; i < queries.rows; ++i) {
          float* ds = dweights.Row(i);
          const float* p = weights.Row(i);
          for (int64_t j = 0; j < cols; ++j) ds[j] = p[j] * (ds[j] - delta[i]);
        }

        // dQ = scale dS K.
        block_dq.Resize(queries.rows, keys.cols);
        Product(queries.rows, keys.cols, cols, dweights.data.data(), cols, keys.data.data(), keys.cols,
                block_dq.data.data(), block_dq.cols, scale, false);
        for (int64_t i = 0; i < rows; ++i) {
          rope.Rotate(block_dq.Row(i), b, start + i, -1.0f, dqp + s.q_offset(b, start + i, h));
        }

        // dV += P^T dO and dK += scale dS^T Q over the block's keys.
        transposed.Reset(dkeys_t.rows, queries.rows);
        Transpose(queries.rows, s.head_dim, douts.data.data(), douts.cols, transposed.data.data(), queries.rows);
        Product(dvalues_t.rows, cols, queries.rows, transposed.data.data(), queries.rows, weights.data.data(), cols,
                dvalues_t.data.data(), dvalues_t.cols, 1.0f, true);
        Transpose(queries.rows, s.head_dim, queries.data.data(), queries.cols, transposed.data.data(), queries.rows);
        Product(dkeys_t.rows, cols, queries.rows, transposed.data.data(), queries.rows, dweights.data.data(), cols,
                dkeys_t.data.data(), dkeys_t.cols, scale, true);
      }
    }
    std::vector<float> dk_row(s.head_dim);
    for (int64_t t = 0; t < s.length; ++t) {
      float* dv_row = dvp + s.kv_offset(b, t, kh);
      for (int64_t e = 0; e < s.head_dim; ++e) {
        dk_row[e] = dkeys_t.Row(e)[t];
        dv_row[e] = dvalues_t.Row(e)[t];
      }
      rope.Rotate(dk_row.data(), b, t, -1.0f, dkp + s.kv_offset(b, t, kh));
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ScalingCausalAttentionForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(ScalingCausalAttentionBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
