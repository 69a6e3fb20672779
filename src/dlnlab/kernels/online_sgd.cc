// Online SGD on a deep linear network, plain or with heavy-ball momentum: a whole block of steps
// for a group of runs in one call.
//
// The engine's compiled block kernels for dlnlab.dynamics.OnlineSGD and MomentumSGD online
// (docs/architecture.md, "Compiled block kernels"; docs/performance.md), registered with XLA
// through its FFI (jax.ffi) by dlnlab.dynamics.kernels. It computes the operations of the XLA
// step (dlnlab.dynamics._ops.minibatch_updates with runs on the trailing axis, and
// MomentumSGD.apply's velocity and weight updates) with the same
// multiply-adds fused (explicit FMA instructions where XLA:CPU emits them, and -ffp-contract=off
// so nothing else is fused), the same division by the batch size (times its rounded reciprocal),
// and every sum in index order. Where XLA:CPU sums in index order too, a run's weights are
// bit-identical to the XLA step's (tests/test_kernels.py compares them bit for bit); where it
// vectorises a sum in another order, they agree at float rounding.
//
// Why a kernel: at width 12 the XLA step is 16 kernels per step whose fixed cost (about 0.3 us
// each) is half the step. Here one call runs all the block's steps, a chunk of runs at a time,
// each chunk's weights gathered into contiguous L1-resident storage.
//
// Layout: weights W_l (d_l, d_{l-1}, R) with the runs R on the minor axis; the block's normals
// z (S, n_x + n_e, R) drawn by XLA (the counter-based draw of OnlineSGD.draw), per step the
// inputs z[:n_x] as (d_in, B) and the label-noise normals z[n_x:] as (d_out, B).
// Lanes: a chunk is 32 bytes of runs (8 float32 or 4 float64 runs), every run its own lane, so a
// run's arithmetic never depends on which or how many runs share its group.

#if !defined(__x86_64__) || !defined(__GNUC__) || defined(__clang__)
#error "dlnlab's kernels are written for GCC on x86-64 (AVX2 and FMA chosen at run time)"
#endif

#include <Python.h>
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// Everything up to the Python module is compiled for AVX2 and FMA; the module checks the CPU
// (`usable`) and dlnlab registers the handlers only where it has both.
#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace {

constexpr int kMaxLayers = 64;
constexpr int kBlock = 6;  // outputs computed together: independent FMA chains (latency hiding)

template <typename T>
struct Lanes {
  typedef T V __attribute__((vector_size(32)));
  static constexpr int kWidth = 32 / sizeof(T);
};

using Floats = Lanes<float>::V;
using Doubles = Lanes<double>::V;
#define DLNLAB_INLINE inline __attribute__((always_inline))

// The multiply-adds of the XLA step, each rounded once: a b + c and c - a b. Explicit, and the file
// is compiled with -ffp-contract=off, so no other operation is fused.
DLNLAB_INLINE Floats fmadd(Floats a, Floats b, Floats c) { return _mm256_fmadd_ps(a, b, c); }
DLNLAB_INLINE Doubles fmadd(Doubles a, Doubles b, Doubles c) { return _mm256_fmadd_pd(a, b, c); }
DLNLAB_INLINE Floats fnmadd(Floats a, Floats b, Floats c) { return _mm256_fnmadd_ps(a, b, c); }
DLNLAB_INLINE Doubles fnmadd(Doubles a, Doubles b, Doubles c) { return _mm256_fnmadd_pd(a, b, c); }
// a b - c, rounded once (momentum's velocity).
DLNLAB_INLINE Floats fmsub(Floats a, Floats b, Floats c) { return _mm256_fmsub_ps(a, b, c); }
DLNLAB_INLINE Doubles fmsub(Doubles a, Doubles b, Doubles c) { return _mm256_fmsub_pd(a, b, c); }

// Whether a <= b in every lane (false for a lane with a NaN).
DLNLAB_INLINE bool all_at_most(Floats a, Floats b) {
  return _mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_LE_OQ)) == 0xFF;
}
DLNLAB_INLINE bool all_at_most(Doubles a, Doubles b) {
  return _mm256_movemask_pd(_mm256_cmp_pd(a, b, _CMP_LE_OQ)) == 0xF;
}

template <typename V, typename T>
inline __attribute__((always_inline)) V splat(T value) {
  V v;
  for (int r = 0; r < int(sizeof(V) / sizeof(T)); ++r) v[r] = value;
  return v;
}

template <typename V>
inline __attribute__((always_inline)) V load(const void* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V>
inline __attribute__((always_inline)) void store(void* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

struct Problem {
  int layers;
  int64_t dims[kMaxLayers + 1];  // d_0 = d_in, ..., d_L = d_out
  int64_t batch;
  int64_t runs;                  // R, the minor axis
  int64_t normals;               // normals per step (n_x + n_e)
  bool whitened;
  bool label_noise;
  int32_t first_step;
  int32_t valid_steps;
};

// y[i][c] = sum_k m(i cols + k) x[k][c] (k = 0, 1, ... as FMAs from 0) for a (rows, cols)
// matrix whose entry e is the lane vector m(e); x, y arrays of (cols, B) and (rows, B) vectors.
template <typename V, typename Matrix>
inline __attribute__((always_inline)) void product(Matrix m, int64_t rows, int64_t cols,
                                                   int64_t batch, const V* x, V* y) {
  const V zero = V{};
  for (int64_t c = 0; c < batch; ++c) {
    int64_t i = 0;
    for (; i + kBlock <= rows; i += kBlock) {
      V acc[kBlock];
      for (int q = 0; q < kBlock; ++q) acc[q] = zero;
      for (int64_t k = 0; k < cols; ++k) {
        V a = x[k * batch + c];
        for (int q = 0; q < kBlock; ++q) acc[q] = fmadd(m((i + q) * cols + k), a, acc[q]);
      }
      for (int q = 0; q < kBlock; ++q) y[(i + q) * batch + c] = acc[q];
    }
    for (; i < rows; ++i) {
      V acc = zero;
      for (int64_t k = 0; k < cols; ++k) acc = fmadd(m(i * cols + k), x[k * batch + c], acc);
      y[i * batch + c] = acc;
    }
  }
}

// The product with a plain matrix (the task's, the same for every run) ...
template <typename V, typename T>
inline __attribute__((always_inline)) void plain_product(const T* m, int64_t rows, int64_t cols,
                                                         int64_t batch, const V* x, V* y) {
  product<V>([m](int64_t e) __attribute__((always_inline)) { return splat<V>(m[e]); }, rows, cols,
             batch, x, y);
}

// ... and with a per-run matrix w of lane vectors (a layer's weights).
template <typename V>
inline __attribute__((always_inline)) void run_product(const V* w, int64_t rows, int64_t cols,
                                                       int64_t batch, const V* x, V* y) {
  product<V>([w](int64_t e) __attribute__((always_inline)) { return w[e]; }, rows, cols, batch,
             x, y);
}

// One layer's backward step: next[j][c] = sum_i w[i, j] back[i][c] (from the weights before
// the update; only when `propagate`) and, with the update U[i, j] = sum_c back[i][c] a[j][c] (the
// batch sum as a left fold, _ops.batch_outer_sum):
// - SGD: w <- w - U (for B = 1 one fused multiply-subtract);
// - heavy-ball momentum (MomentumSGD.apply): w <- fma(mu, v, w - U) and v <- fma(mu, v, -U), as
//   XLA:CPU fuses (w - U) + mu v and mu v - U (for B = 1 w - U is again one fused
//   multiply-subtract, and U = back a is rounded once for the velocity).
template <typename V, bool Momentum>
inline __attribute__((always_inline)) void backward_layer(V* w, V* vel, V mu, int64_t rows,
                                                          int64_t cols, int64_t batch,
                                                          const V* back, const V* a, V* next,
                                                          bool propagate) {
  const V zero = V{};
  if (batch == 1) {
    int64_t j = 0;
    for (; j + kBlock <= cols; j += kBlock) {
      V acc[kBlock], aj[kBlock];
      for (int q = 0; q < kBlock; ++q) {
        acc[q] = zero;
        aj[q] = a[j + q];
      }
      for (int64_t i = 0; i < rows; ++i) {
        V b = back[i];
        V* p = w + i * cols + j;
        for (int q = 0; q < kBlock; ++q) {
          V wv = p[q];
          acc[q] = fmadd(wv, b, acc[q]);
          if (Momentum) {
            V* pv = vel + i * cols + j;
            V vv = pv[q];
            p[q] = fmadd(mu, vv, fnmadd(b, aj[q], wv));
            pv[q] = fmsub(mu, vv, b * aj[q]);
          } else {
            p[q] = fnmadd(b, aj[q], wv);
          }
        }
      }
      if (propagate)
        for (int q = 0; q < kBlock; ++q) next[j + q] = acc[q];
    }
    for (; j < cols; ++j) {
      V acc = zero, aj = a[j];
      for (int64_t i = 0; i < rows; ++i) {
        V b = back[i];
        V wv = w[i * cols + j];
        acc = fmadd(wv, b, acc);
        if (Momentum) {
          V vv = vel[i * cols + j];
          w[i * cols + j] = fmadd(mu, vv, fnmadd(b, aj, wv));
          vel[i * cols + j] = fmsub(mu, vv, b * aj);
        } else {
          w[i * cols + j] = fnmadd(b, aj, wv);
        }
      }
      if (propagate) next[j] = acc;
    }
    return;
  }
  for (int64_t j = 0; j < cols; ++j) {
    const V* aj = a + j * batch;
    if (propagate)
      for (int64_t c = 0; c < batch; ++c) next[j * batch + c] = zero;
    for (int64_t i = 0; i < rows; ++i) {
      const V* bi = back + i * batch;
      V wv = w[i * cols + j];
      if (propagate)
        for (int64_t c = 0; c < batch; ++c) next[j * batch + c] = fmadd(wv, bi[c], next[j * batch + c]);
      // XLA fuses the first two terms as fma(b_0, a_0, b_1 a_1), then adds one FMA a column.
      V update = bi[1] * aj[1];
      update = fmadd(bi[0], aj[0], update);
      for (int64_t c = 2; c < batch; ++c) update = fmadd(bi[c], aj[c], update);
      if (Momentum) {
        V vv = vel[i * cols + j];
        w[i * cols + j] = fmadd(mu, vv, wv - update);
        vel[i * cols + j] = fmsub(mu, vv, update);
      } else {
        w[i * cols + j] = wv - update;
      }
    }
  }
}

// The lanes of one element, src[0 .. lanes) (the other lanes zero), and back.
template <typename V, typename T>
inline __attribute__((always_inline)) V gather(const T* src, int lanes) {
  constexpr int W = sizeof(V) / sizeof(T);
  if (lanes == W) return load<V>(src);
  V v = V{};
  for (int r = 0; r < lanes; ++r) v[r] = src[r];
  return v;
}

template <typename V, typename T>
inline __attribute__((always_inline)) void scatter(T* dst, V v, int lanes) {
  constexpr int W = sizeof(V) / sizeof(T);
  if (lanes == W) return store<V>(dst, v);
  for (int r = 0; r < lanes; ++r) dst[r] = v[r];
}

// Scratch storage aligned for the lane vectors (64 bytes).
class Work {
 public:
  Work() = default;
  Work(const Work&) = delete;
  Work& operator=(const Work&) = delete;
  ~Work() { std::free(data_); }
  void* get(size_t bytes) {
    if (bytes > size_) {
      std::free(data_);
      size_ = (bytes + 63) / 64 * 64;
      data_ = std::aligned_alloc(64, size_);
      if (data_ == nullptr) size_ = 0;
    }
    return data_;
  }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

struct Inputs {
  const void* teacher;
  const void* input_sqrt;
  const void* label_sqrt;
  const void* normals;
  const void* learning_rate;
  const void* momentum;  // (R,) with momentum, else unused
  double threshold;
};

// All steps of the block for the runs [offset, offset + lanes) (lanes <= the vector width; the
// other lanes compute on zeros and are not written back).
template <typename T, bool Momentum>
inline __attribute__((always_inline)) bool run_chunk(const Problem& pb, const Inputs& in,
                                                     T* const* weights, T* const* velocity,
                                                     int32_t* diverged,
                                                     int64_t offset, int lanes,
                                                     Work& work) {
  using V = typename Lanes<T>::V;
  constexpr int W = Lanes<T>::kWidth;
  const int L = pb.layers;
  const int64_t B = pb.batch, R = pb.runs;
  const int64_t d_in = pb.dims[0], d_out = pb.dims[L];


  // Work storage: the chunk's weights (and velocities), then activations, targets, errors, the
  // next error.
  int64_t widest = 0, total = 0;
  int64_t wpos[kMaxLayers + 1], vpos[kMaxLayers + 1];
  for (int l = 0; l < L; ++l) {
    wpos[l] = total;
    total += pb.dims[l + 1] * pb.dims[l];
  }
  for (int l = 0; l < L; ++l) {
    vpos[l] = total;
    if (Momentum) total += pb.dims[l + 1] * pb.dims[l];
  }
  for (int l = 0; l <= L; ++l) widest = widest > pb.dims[l] ? widest : pb.dims[l];
  int64_t apos[kMaxLayers + 2];
  int64_t size = total;
  for (int l = 0; l <= L; ++l) {
    apos[l] = size;
    size += pb.dims[l] * B;
  }
  const int64_t zpos = size, ypos = zpos + widest * B, bpos = ypos + d_out * B,
                npos = bpos + widest * B, end = npos + widest * B;
  V* wk = static_cast<V*>(work.get(end * sizeof(V)));
  if (wk == nullptr) return false;

  for (int l = 0; l < L; ++l) {
    const int64_t count = pb.dims[l + 1] * pb.dims[l];
    for (int64_t e = 0; e < count; ++e)
      wk[wpos[l] + e] = gather<V>(weights[l] + e * R + offset, lanes);
    if (Momentum)
      for (int64_t e = 0; e < count; ++e)
        wk[vpos[l] + e] = gather<V>(velocity[l] + e * R + offset, lanes);
  }
  // lr / B and loss / B as XLA computes them: times the rounded reciprocal 1 / B.
  const T inverse_batch = T(1) / T(B);
  const V rate = gather<V>(static_cast<const T*>(in.learning_rate) + offset, lanes) * inverse_batch;
  const V mu = Momentum ? gather<V>(static_cast<const T*>(in.momentum) + offset, lanes) : V{};
  int32_t div[W];
  for (int r = 0; r < W; ++r) div[r] = r < lanes ? diverged[offset + r] : 0;
  const T threshold = T(in.threshold);
  const T* teacher = static_cast<const T*>(in.teacher);
  const T* normals = static_cast<const T*>(in.normals);

  for (int32_t s = 0; s < pb.valid_steps; ++s) {
    const T* zs = normals + (int64_t)s * pb.normals * R + offset;
    V* x = wk + apos[0];
    V* y = wk + ypos;
    if (pb.whitened) {
      for (int64_t e = 0; e < d_in * B; ++e) x[e] = gather<V>(zs + e * R, lanes);
    } else {
      V* z = wk + zpos;
      for (int64_t e = 0; e < d_in * B; ++e) z[e] = gather<V>(zs + e * R, lanes);
      plain_product<V>(static_cast<const T*>(in.input_sqrt), d_in, d_in, B, z, x);
    }
    plain_product<V>(teacher, d_out, d_in, B, x, y);
    if (pb.label_noise) {
      V* z = wk + zpos;
      V* noise = wk + npos;
      for (int64_t e = 0; e < d_out * B; ++e) z[e] = gather<V>(zs + (d_in * B + e) * R, lanes);
      plain_product<V>(static_cast<const T*>(in.label_sqrt), d_out, d_out, B, z, noise);
      for (int64_t e = 0; e < d_out * B; ++e) y[e] = y[e] + noise[e];
    }
    for (int l = 0; l < L; ++l)
      run_product<V>(wk + wpos[l], pb.dims[l + 1], pb.dims[l], B, wk + apos[l], wk + apos[l + 1]);
    V* back = wk + bpos;
    V loss = V{};
    const V* out = wk + apos[L];
    for (int64_t e = 0; e < d_out * B; ++e) {
      V err = out[e] - y[e];
      back[e] = err;
      loss = fmadd(err, err, loss);
    }
    const V value = splat<V>(T(0.5)) * loss * inverse_batch;
    if (!all_at_most(value, splat<V>(threshold)))   // NaN fails too (ordered comparison)
      for (int r = 0; r < W; ++r)
        if (div[r] < 0 && !(value[r] <= threshold))   // int32 step counter, wrapping as XLA's
          div[r] = int32_t(uint32_t(pb.first_step) + uint32_t(s));
    for (int64_t e = 0; e < d_out * B; ++e) back[e] = back[e] * rate;
    V* next = wk + npos;
    for (int l = L - 1; l >= 0; --l) {
      const int64_t rows = pb.dims[l + 1], cols = pb.dims[l];
      V* wl = wk + wpos[l];
      backward_layer<V, Momentum>(wl, wk + vpos[l], mu, rows, cols, B, back, wk + apos[l], next,
                                  l > 0);
      if (l == 0) break;
      // The XLA step orders this layer's update after its read through `_ops.after`: W - |v 0|
      // with v the next error's first element, which is W itself unless v is not finite; then
      // the run's layer is NaN.
      const V first = next[0];
      if (!all_at_most(first - first, V{}))           // x - x is 0 exactly when x is finite
        for (int r = 0; r < lanes; ++r)
          if (!std::isfinite(first[r]))
            for (int64_t e = 0; e < rows * cols; ++e) wl[e][r] = T(NAN);
      for (int64_t e = 0; e < cols * B; ++e) back[e] = next[e];
    }
  }

  for (int l = 0; l < L; ++l) {
    const int64_t count = pb.dims[l + 1] * pb.dims[l];
    for (int64_t e = 0; e < count; ++e)
      scatter<V>(weights[l] + e * R + offset, wk[wpos[l] + e], lanes);
    if (Momentum)
      for (int64_t e = 0; e < count; ++e)
        scatter<V>(velocity[l] + e * R + offset, wk[vpos[l] + e], lanes);
  }
  for (int r = 0; r < lanes; ++r) diverged[offset + r] = div[r];
  return true;
}

template <typename T, bool Momentum>
bool run_block(const Problem& pb, const Inputs& in, T* const* weights, T* const* velocity,
               int32_t* diverged) {
  constexpr int W = Lanes<T>::kWidth;
  Work work;
  for (int64_t offset = 0; offset < pb.runs; offset += W) {
    const int lanes = pb.runs - offset < W ? int(pb.runs - offset) : W;
    if (!run_chunk<T, Momentum>(pb, in, weights, velocity, diverged, offset, lanes, work))
      return false;
  }
  return true;
}

// The handler of both kernels: online SGD (Momentum = false) and online heavy-ball momentum SGD.
// Remaining arguments and results: the layers' weights, then (with momentum) their velocities.
// `momentum`: (R,) with momentum, unused otherwise.
template <typename T, bool Momentum>
ffi::Error online_block(ffi::AnyBuffer teacher, ffi::AnyBuffer input_sqrt,
                        ffi::AnyBuffer label_sqrt, ffi::AnyBuffer normals,
                        ffi::AnyBuffer learning_rate, ffi::AnyBuffer momentum,
                        ffi::AnyBuffer threshold, ffi::Buffer<ffi::S32> first_step,
                        ffi::Buffer<ffi::S32> valid_steps, ffi::Buffer<ffi::S32> diverged_in,
                        ffi::RemainingArgs state_in, ffi::Result<ffi::Buffer<ffi::S32>> diverged_out,
                        ffi::RemainingRets state_out, int64_t batch, bool whitened,
                        bool label_noise) {
  // Every input is checked before anything is written: a wrong shape or type is an error
  // (raised in Python by XLA), never an out-of-bounds read.
  constexpr ffi::DataType kType = sizeof(T) == 4 ? ffi::DataType::F32 : ffi::DataType::F64;
  constexpr int kParts = Momentum ? 2 : 1;  // weights (and velocities) per layer
  const std::string name = Momentum ? "online_momentum_block: " : "online_sgd_block: ";
  auto is = [&](const ffi::AnyBuffer& b, std::initializer_list<int64_t> shape) {
    auto d = b.dimensions();
    if (b.element_type() != kType || d.size() != shape.size()) return false;
    size_t i = 0;
    for (int64_t n : shape)
      if (d[i++] != n) return false;
    return true;
  };
  Problem pb{};
  const size_t buffers = state_in.size();
  pb.layers = int(buffers / kParts);
  if (pb.layers < 1 || pb.layers > kMaxLayers || buffers % kParts != 0 ||
      state_out.size() != buffers)
    return ffi::Error::InvalidArgument(
        name + "1 to 64 layers (weights, then velocities with momentum), as many outputs");
  if (batch < 1) return ffi::Error::InvalidArgument(name + "batch must be >= 1");
  pb.batch = batch;
  pb.runs = diverged_in.dimensions()[0];
  pb.whitened = whitened;
  pb.label_noise = label_noise;
  T* state[2 * kMaxLayers];
  void* sources[2 * kMaxLayers];
  size_t bytes[2 * kMaxLayers];
  for (size_t b = 0; b < buffers; ++b) {
    const int l = int(b % pb.layers);
    auto w = state_in.get<ffi::AnyBuffer>(b);
    auto out = state_out.get<ffi::AnyBuffer>(b);
    if (!w.has_value() || !out.has_value())
      return ffi::Error::InvalidArgument(name + "bad weight buffer");
    auto d = w->dimensions();
    if (d.size() != 3 || d[2] != pb.runs || w->element_type() != kType ||
        (*out)->element_type() != kType || (*out)->size_bytes() != w->size_bytes())
      return ffi::Error::InvalidArgument(name + "weights must be (d_l, d_l-1, runs)");
    if (b == 0) pb.dims[0] = d[1];
    if (b < size_t(pb.layers)) pb.dims[l + 1] = d[0];
    if (d[1] != pb.dims[l] || d[0] != pb.dims[l + 1])
      return ffi::Error::InvalidArgument(name + "layer shapes do not chain");
    state[b] = static_cast<T*>((*out)->untyped_data());
    sources[b] = w->untyped_data();
    bytes[b] = w->size_bytes();
  }
  const int64_t d_in = pb.dims[0], d_out = pb.dims[pb.layers];
  auto zd = normals.dimensions();
  const int64_t needed = (d_in + (label_noise ? d_out : 0)) * batch;
  if (normals.element_type() != kType || zd.size() != 3 || zd[2] != pb.runs || zd[1] < needed)
    return ffi::Error::InvalidArgument(name + "normals must be (steps, n, runs)");
  if (!is(teacher, {d_out, d_in}) || (!whitened && !is(input_sqrt, {d_in, d_in})) ||
      (label_noise && !is(label_sqrt, {d_out, d_out})) || !is(learning_rate, {pb.runs}) ||
      (Momentum && !is(momentum, {pb.runs})) || !is(threshold, {1}))
    return ffi::Error::InvalidArgument(name + "task matrices or rates of wrong shape");
  pb.normals = zd[1];
  pb.first_step = first_step.typed_data()[0];
  pb.valid_steps = valid_steps.typed_data()[0];
  if (pb.valid_steps < 0 || pb.valid_steps > zd[0])
    return ffi::Error::InvalidArgument(name + "valid steps out of range");
  for (size_t b = 0; b < buffers; ++b)
    if (state[b] != sources[b]) std::memcpy(state[b], sources[b], bytes[b]);
  int32_t* div = diverged_out->typed_data();
  if (div != diverged_in.typed_data()) std::memcpy(div, diverged_in.typed_data(), pb.runs * 4);
  Inputs in{teacher.untyped_data(),       input_sqrt.untyped_data(), label_sqrt.untyped_data(),
            normals.untyped_data(),       learning_rate.untyped_data(),
            momentum.untyped_data(),
            double(static_cast<const T*>(threshold.untyped_data())[0])};
  if (!run_block<T, Momentum>(pb, in, state, state + pb.layers, div))
    return ffi::Error::Internal(name + "out of memory for the work storage");
  return ffi::Error::Success();
}

}  // namespace

#define DLNLAB_BIND                                                                          \
  ffi::Ffi::Bind()                                                                           \
      .Arg<ffi::AnyBuffer>()                                                                 \
      .Arg<ffi::AnyBuffer>()                                                                 \
      .Arg<ffi::AnyBuffer>()                                                                 \
      .Arg<ffi::AnyBuffer>()                                                                 \
      .Arg<ffi::AnyBuffer>()                                                                 \
      .Arg<ffi::AnyBuffer>()                                                                 \
      .Arg<ffi::AnyBuffer>()                                                                 \
      .Arg<ffi::Buffer<ffi::S32>>()                                                          \
      .Arg<ffi::Buffer<ffi::S32>>()                                                          \
      .Arg<ffi::Buffer<ffi::S32>>()                                                          \
      .RemainingArgs()                                                                       \
      .Ret<ffi::Buffer<ffi::S32>>()                                                          \
      .RemainingRets()                                                                       \
      .Attr<int64_t>("batch")                                                                \
      .Attr<bool>("whitened")                                                                \
      .Attr<bool>("label_noise")

XLA_FFI_DEFINE_HANDLER_SYMBOL(dlnlab_online_sgd_block_f32, (online_block<float, false>),
                              DLNLAB_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(dlnlab_online_sgd_block_f64, (online_block<double, false>),
                              DLNLAB_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(dlnlab_online_momentum_block_f32, (online_block<float, true>),
                              DLNLAB_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(dlnlab_online_momentum_block_f64, (online_block<double, true>),
                              DLNLAB_BIND);

#pragma GCC pop_options

// The Python module dlnlab.dynamics._kernels: one PyCapsule per handler, for
// jax.ffi.register_ffi_target; `usable`: this CPU has AVX2 and FMA; `jaxlib_version`: the jaxlib
// whose FFI headers it was built against.
static PyObject* capsules(PyObject* module) {
#ifndef DLNLAB_JAXLIB_VERSION
#define DLNLAB_JAXLIB_VERSION "unknown"
#endif
  __builtin_cpu_init();
  const long usable = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (PyModule_AddStringConstant(module, "jaxlib_version", DLNLAB_JAXLIB_VERSION) < 0 ||
      PyModule_AddIntConstant(module, "usable", usable) < 0)
    return nullptr;
  const struct {
    const char* name;
    void* handler;
  } handlers[] = {
      {"online_sgd_block_f32", reinterpret_cast<void*>(dlnlab_online_sgd_block_f32)},
      {"online_sgd_block_f64", reinterpret_cast<void*>(dlnlab_online_sgd_block_f64)},
      {"online_momentum_block_f32", reinterpret_cast<void*>(dlnlab_online_momentum_block_f32)},
      {"online_momentum_block_f64", reinterpret_cast<void*>(dlnlab_online_momentum_block_f64)},
  };
  for (const auto& h : handlers) {
    PyObject* capsule = PyCapsule_New(h.handler, nullptr, nullptr);
    if (!capsule) return nullptr;
    if (PyModule_AddObject(module, h.name, capsule) < 0) {  // steals the reference on success
      Py_DECREF(capsule);
      return nullptr;
    }
  }
  return module;
}

static struct PyModuleDef kernels_module = {
    PyModuleDef_HEAD_INIT, "_kernels",
    "XLA FFI handlers of dlnlab's fused kernels (see dlnlab.dynamics.kernels).", -1, nullptr};

PyMODINIT_FUNC PyInit__kernels(void) {
  PyObject* module = PyModule_Create(&kernels_module);
  if (!module) return nullptr;
  PyObject* out = capsules(module);
  if (!out) Py_DECREF(module);
  return out;
}
