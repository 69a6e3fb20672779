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
// Layout: weights W_l (d_l, d_{l-1}, R) with the runs R on the minor axis, and the runs' key
// words (2, R). Each step's n_x + n_e normals z are drawn here, bit for bit OnlineSGD.draw's
// (the counter-based Threefry draw and jax.random.normal's float32 transform with XLA:CPU's
// operations; see "The block's normals" below): the inputs z[:n_x] as (d_in, B) and the
// label-noise normals z[n_x:] as (d_out, B). Drawn by XLA instead, they cost about as much
// arithmetic and one more pass through memory and XLA kernel (docs/performance.md).
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

// ---- The block's normals, drawn here: dlnlab.dynamics._ops.counter_normals, to the bit ----
// Normal j of step n of a run is the Threefry-2x32 block (n, stream 2^24 + (j mod half)) of the
// run's key (word j < half the block's first output, word half + j its second, half =
// ceil(count / 2)), turned into a normal as jax.random.normal does: a uniform u in (-1, 1) from
// the word's top 23 bits, then sqrt(2) erfinv(u) in float32, with XLA:CPU's own operations: its
// erf_inv expansion (Giles' polynomials in w = -log1p(-u^2)), its log1p (a rational function
// below |x| = 0.41421357, else log(1 + x)) and its log_f32 (a Cephes-style polynomial), with the
// fused multiply-adds that XLA:CPU's LLVM contracts (read off its optimised IR and machine
// code, jaxlib 0.10.2: XLA_FLAGS=--xla_dump_to). tests/test_kernels.py compares all 2^23 inputs
// with the installed jax bit for bit: a jaxlib whose XLA:CPU evaluates these functions otherwise
// fails that test (the kernel and the XLA step would then draw normals an ulp apart).
using Words = Lanes<uint32_t>::V;
using Ints = Lanes<int32_t>::V;

DLNLAB_INLINE Floats bits_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return splat<Floats>(f);
}
DLNLAB_INLINE Floats select(Floats mask, Floats yes, Floats no) {
  return _mm256_blendv_ps(no, yes, mask);
}

// The normals of N lane vectors of random words, the operations interleaved.
template <int N>
DLNLAB_INLINE void normals_from_bits(const Words* bits, Floats* out) {
  const Floats one = bits_float(0x3F800000), minus_one = bits_float(0xBF800000);
  const Floats magnitude = (Floats)(splat<Words>(0x7FFFFFFFu));
  Floats u[N], t[N], log1p[N];
  for (int n = 0; n < N; ++n) {
    // 2 (f - 1) - 1 with f in [1, 2) from the top 23 bits (one FMA), at least -1 + 2^-24.
    const Floats f = (Floats)((bits[n] >> 9) | 0x3F800000u);
    u[n] = _mm256_max_ps(fmadd(f + minus_one, bits_float(0x40000000), minus_one),
                         bits_float(0xBF7FFFFF));
    t[n] = u[n] * (-u[n]);
  }
  for (int n = 0; n < N; ++n) {
    // log(1 + t): 1 + t is in [2^-23, 1], so none of log_f32's special cases arise (nor its
    // clamp to the smallest normal number).
    const Words ab = (Words)(t[n] + one);
    const Ints exponent = (Ints)(ab >> 23) - 127;
    const Floats m = (Floats)((ab & 0x807FFFFFu) | 0x3F000000u);
    const Floats small = _mm256_cmp_ps(m, bits_float(0x3F3504F3), _CMP_LT_OQ);
    const Floats e = (_mm256_cvtepi32_ps((__m256i)exponent) + one) - _mm256_and_ps(small, one);
    const Floats x = (m + minus_one) + _mm256_and_ps(small, m);
    const Floats x2 = x * x, x3 = x2 * x;
    Floats pa = fmadd(x, bits_float(0x3D9021BB), bits_float(0xBDEBD1B8));
    Floats pb = fmadd(x, bits_float(0xBDFE5D4F), bits_float(0x3E11E9BF));
    Floats pc = fmadd(x, bits_float(0x3E4CCEAC), bits_float(0xBE7FFFFC));
    pa = fmadd(pa, x, bits_float(0x3DEF251A));
    pb = fmadd(pb, x, bits_float(0xBE2AAE50));
    pc = fmadd(pc, x, bits_float(0x3EAAAAAA));
    pb = fmadd(x3, pa, pb);
    pb = fmadd(x3, pb, pc);
    const Floats tail = fmadd(x3, pb, e * bits_float(0xB95E8083));
    const Floats log = fmadd(e, bits_float(0x3F318000),
                             fnmadd(bits_float(0x3F000000), x2, x) + tail);
    // log1p(t) = t - t^2 / 2 + t^3 P(t) / Q(t) for |t| < 0.41421357 (XLA starts P and Q at
    // t 0 + c, which is c exactly: t <= 0 is finite).
    static constexpr uint32_t kQ[6] = {0x417101AD, 0x42A6185B, 0x435DC32D,
                                       0x439A8CA3, 0x43586D8A, 0x42707982};
    static constexpr uint32_t kP[6] = {0x3EFF40C5, 0x40D284FA, 0x41EF4B9C,
                                       0x4273CC76, 0x426473AD, 0x41A05101};
    Floats q = one, p = bits_float(0x383DE04B);
    for (int i = 0; i < 6; ++i) {
      q = fmadd(q, t[n], bits_float(kQ[i]));
      p = fmadd(p, t[n], bits_float(kP[i]));
    }
    const Floats t2 = t[n] * t[n];
    const Floats series = fnmadd(bits_float(0x3F000000), t2, (t[n] * t2) * (p / q));
    const Floats near = _mm256_cmp_ps(_mm256_and_ps(t[n], magnitude), bits_float(0x3ED413CD),
                                      _CMP_LT_OQ);
    log1p[n] = select(near, t[n] + series, log);
  }
  // erfinv(u) = u P(z): z = w - 2.5 for w = -log1p(-u^2) < 5, else sqrt(w) - 3.
  static constexpr uint32_t kCentral[9] = {0x32F16588, 0x34B84B36, 0xB66C7357,
                                           0xB6935AC1, 0x396532DB, 0xBAA45408,
                                           0xBB88E4EF, 0x3E7C8F63, 0x3FC02E2F};
  static constexpr uint32_t kTail[9] = {0xB951F09B, 0x38D3B56B, 0x3AB0DC72,
                                        0xBB70BDE7, 0x3BBC127B, 0xBBF9C5D7,
                                        0x3C1AA57E, 0x3F8036DB, 0x40354F7E};
  // |u| < 1, so XLA's erfinv(+-1) = +-inf case never arises.
  Floats central[N];
  int all_central = 0xFF;
  for (int n = 0; n < N; ++n) {
    central[n] = _mm256_cmp_ps(log1p[n], bits_float(0xC0A00000), _CMP_GT_OQ);
    all_central &= _mm256_movemask_ps(central[n]);
  }
  if (all_central == 0xFF) {
    // Every lane central (all but about 3% of 8-lane vectors): XLA's selects would pick the
    // central branch in each lane, so compute only it.
    for (int n = 0; n < N; ++n) {
      const Floats z = bits_float(0xC0200000) - log1p[n];
      Floats c = bits_float(kCentral[0]);
      for (int i = 1; i < 9; ++i) c = fmadd(z, c, bits_float(kCentral[i]));
      out[n] = (u[n] * c) * bits_float(0x3FB504F3);
    }
    return;
  }
  for (int n = 0; n < N; ++n) {
    const Floats z = select(central[n], bits_float(0xC0200000) - log1p[n],
                            _mm256_sqrt_ps(-log1p[n]) + bits_float(0xC0400000));
    Floats c = select(central[n], bits_float(kCentral[0]), bits_float(kTail[0]));
    for (int i = 1; i < 9; ++i)
      c = fmadd(z, c, select(central[n], bits_float(kCentral[i]), bits_float(kTail[i])));
    out[n] = (u[n] * c) * bits_float(0x3FB504F3);
  }
}

template <int Bits>
DLNLAB_INLINE Words rotate_left(Words x) {
  return (x << Bits) | (x >> (32 - Bits));
}

template <int N, int R0, int R1, int R2, int R3>
DLNLAB_INLINE void threefry_rounds(Words* x0, Words* x1) {
  for (int n = 0; n < N; ++n) { x0[n] += x1[n]; x1[n] = x0[n] ^ rotate_left<R0>(x1[n]); }
  for (int n = 0; n < N; ++n) { x0[n] += x1[n]; x1[n] = x0[n] ^ rotate_left<R1>(x1[n]); }
  for (int n = 0; n < N; ++n) { x0[n] += x1[n]; x1[n] = x0[n] ^ rotate_left<R2>(x1[n]); }
  for (int n = 0; n < N; ++n) { x0[n] += x1[n]; x1[n] = x0[n] ^ rotate_left<R3>(x1[n]); }
}

template <int N>
DLNLAB_INLINE void threefry_inject(Words* x0, Words* x1, Words a, Words b, uint32_t round) {
  for (int n = 0; n < N; ++n) {
    x0[n] += a;
    x1[n] += b + round;
  }
}

// Threefry-2x32, 20 rounds (dlnlab.dynamics._ops.threefry2x32), on N lane vectors of counters
// (x0, x1) in place, lane r with the key (k0[r], k1[r]).
template <int N>
DLNLAB_INLINE void threefry(Words k0, Words k1, Words* x0, Words* x1) {
  const Words k2 = k0 ^ k1 ^ 0x1BD11BDAu;
  for (int n = 0; n < N; ++n) {
    x0[n] += k0;
    x1[n] += k1;
  }
  threefry_rounds<N, 13, 15, 26, 6>(x0, x1);
  threefry_inject<N>(x0, x1, k1, k2, 1);
  threefry_rounds<N, 17, 29, 16, 24>(x0, x1);
  threefry_inject<N>(x0, x1, k2, k0, 2);
  threefry_rounds<N, 13, 15, 26, 6>(x0, x1);
  threefry_inject<N>(x0, x1, k0, k1, 3);
  threefry_rounds<N, 17, 29, 16, 24>(x0, x1);
  threefry_inject<N>(x0, x1, k1, k2, 4);
  threefry_rounds<N, 13, 15, 26, 6>(x0, x1);
  threefry_inject<N>(x0, x1, k2, k0, 5);
}

// Part p of a lane vector of float32 normals as a vector of T: float32 the whole (p = 0), float64
// its half p (the lanes of a float64 chunk's 4 runs for two blocks).
template <typename V>
V normal_part(Floats f, int p);
template <>
DLNLAB_INLINE Floats normal_part<Floats>(Floats f, int) { return f; }
template <>
DLNLAB_INLINE Doubles normal_part<Doubles>(Floats f, int p) {
  return (Doubles)_mm256_cvtps_pd(p == 0 ? _mm256_castps256_ps128(f)
                                         : _mm256_extractf128_ps(f, 1));
}

// G lane vectors of blocks from block index j: lane r of vector g is block j + g P + r / W (W
// runs a vector of T, P = 8 / W blocks per lane vector).
template <typename T, int G>
DLNLAB_INLINE void draw_blocks(Words k0, Words k1, uint32_t step, uint32_t first_counter,
                               int64_t j, int64_t half, int64_t count,
                               typename Lanes<T>::V* out) {
  constexpr int W = Lanes<T>::kWidth, P = 8 / W;
  Words x0[G], x1[G], lane_block;
  for (int r = 0; r < 8; ++r) lane_block[r] = uint32_t(r / W);
  for (int g = 0; g < G; ++g) {
    x0[g] = splat<Words>(step);
    x1[g] = splat<Words>(first_counter + uint32_t(j + g * P)) + lane_block;
  }
  threefry<G>(k0, k1, x0, x1);
  Floats first[G], second[G];
  normals_from_bits<G>(x0, first);
  normals_from_bits<G>(x1, second);
  for (int g = 0; g < G; ++g)
    for (int p = 0; p < P; ++p) {
      const int64_t block = j + g * P + p;
      if (block < half) out[block] = normal_part<typename Lanes<T>::V>(first[g], p);
      if (half + block < count)
        out[half + block] = normal_part<typename Lanes<T>::V>(second[g], p);
    }
}

// The `count` normals of one step (counter `step`, stream `stream`) for a chunk of runs whose
// keys are (k0, k1) (float64: the chunk's 4 runs' keys in both halves): out[0 .. count).
template <typename T>
DLNLAB_INLINE void draw_normals(Words k0, Words k1, uint32_t step, uint32_t stream,
                                int64_t count, typename Lanes<T>::V* out) {
  constexpr int P = 8 / Lanes<T>::kWidth;
  const int64_t half = (count + 1) / 2;
  const uint32_t first_counter = stream << 24;
  int64_t j = 0;
  for (; j + 4 * P <= half; j += 4 * P)
    draw_blocks<T, 4>(k0, k1, step, first_counter, j, half, count, out);
  for (; j + 2 * P <= half; j += 2 * P)
    draw_blocks<T, 2>(k0, k1, step, first_counter, j, half, count, out);
  for (; j < half; j += P) draw_blocks<T, 1>(k0, k1, step, first_counter, j, half, count, out);
}

// The key words of a chunk's runs [offset, offset + lanes) as lane vectors (zero keys in unused
// lanes; float64: the 4 runs in both halves).
template <typename T>
DLNLAB_INLINE void chunk_keys(const uint32_t* words, int64_t runs, int64_t offset, int lanes,
                              Words* k0, Words* k1) {
  constexpr int W = Lanes<T>::kWidth;
  *k0 = Words{};
  *k1 = Words{};
  for (int r = 0; r < 8; ++r)
    if (r % W < lanes) {
      (*k0)[r] = words[offset + r % W];
      (*k1)[r] = words[runs + offset + r % W];
    }
}

struct Problem {
  int layers;
  int64_t dims[kMaxLayers + 1];  // d_0 = d_in, ..., d_L = d_out
  int64_t batch;
  int64_t runs;                  // R, the minor axis
  int64_t normals;               // normals per step (n_x + n_e)
  uint32_t stream;               // the draw's stream (counter_normals)
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
// the update; only when `Propagate`) and, with the update U[i, j] = sum_c back[i][c] a[j][c] (the
// batch sum as a left fold, _ops.batch_outer_sum):
// - SGD: w <- w - U (for B = 1 one fused multiply-subtract);
// - heavy-ball momentum (MomentumSGD.apply): w <- fma(mu, v, w - U) and v <- fma(mu, v, -U), as
//   XLA:CPU fuses (w - U) + mu v and mu v - U (for B = 1 w - U is again one fused
//   multiply-subtract, and U = back a is rounded once for the velocity).
template <typename V, bool Momentum, bool Propagate>
inline __attribute__((always_inline)) void backward_layer(V* w, V* vel, V mu, int64_t rows,
                                                          int64_t cols, int64_t batch,
                                                          const V* back, const V* a, V* next) {
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
          if (Propagate) acc[q] = fmadd(wv, b, acc[q]);
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
      if (Propagate)
        for (int q = 0; q < kBlock; ++q) next[j + q] = acc[q];
    }
    for (; j < cols; ++j) {
      V acc = zero, aj = a[j];
      for (int64_t i = 0; i < rows; ++i) {
        V b = back[i];
        V wv = w[i * cols + j];
        if (Propagate) acc = fmadd(wv, b, acc);
        if (Momentum) {
          V vv = vel[i * cols + j];
          w[i * cols + j] = fmadd(mu, vv, fnmadd(b, aj, wv));
          vel[i * cols + j] = fmsub(mu, vv, b * aj);
        } else {
          w[i * cols + j] = fnmadd(b, aj, wv);
        }
      }
      if (Propagate) next[j] = acc;
    }
    return;
  }
  for (int64_t j = 0; j < cols; ++j) {
    const V* aj = a + j * batch;
    if (Propagate)
      for (int64_t c = 0; c < batch; ++c) next[j * batch + c] = zero;
    for (int64_t i = 0; i < rows; ++i) {
      const V* bi = back + i * batch;
      V wv = w[i * cols + j];
      if (Propagate)
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
  const uint32_t* words;  // (2, R): the runs' key words
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
  const int64_t ypos = size, bpos = ypos + d_out * B,
                npos = bpos + widest * B, drawpos = npos + widest * B, end = drawpos + pb.normals;
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
  Words k0, k1;
  chunk_keys<T>(in.words, R, offset, lanes, &k0, &k1);
  V* zs = wk + drawpos;

  for (int32_t s = 0; s < pb.valid_steps; ++s) {
    // The step's normals (OnlineSGD.draw): inputs zs[:d_in B], then the label noise.
    draw_normals<T>(k0, k1, uint32_t(pb.first_step) + uint32_t(s), pb.stream, pb.normals, zs);
    V* x = wk + apos[0];
    V* y = wk + ypos;
    if (pb.whitened) {
      for (int64_t e = 0; e < d_in * B; ++e) x[e] = zs[e];
    } else {
      plain_product<V>(static_cast<const T*>(in.input_sqrt), d_in, d_in, B, zs, x);
    }
    plain_product<V>(teacher, d_out, d_in, B, x, y);
    if (pb.label_noise) {
      V* noise = wk + npos;
      plain_product<V>(static_cast<const T*>(in.label_sqrt), d_out, d_out, B, zs + d_in * B,
                       noise);
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
      if (l == 0) {   // the first layer's error is not propagated further
        backward_layer<V, Momentum, false>(wl, wk + vpos[l], mu, rows, cols, B, back, wk + apos[l],
                                           next);
        break;
      }
      backward_layer<V, Momentum, true>(wl, wk + vpos[l], mu, rows, cols, B, back, wk + apos[l],
                                        next);
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
                        ffi::AnyBuffer label_sqrt, ffi::Buffer<ffi::U32> words,
                        ffi::AnyBuffer learning_rate, ffi::AnyBuffer momentum,
                        ffi::AnyBuffer threshold, ffi::Buffer<ffi::S32> first_step,
                        ffi::Buffer<ffi::S32> valid_steps, ffi::Buffer<ffi::S32> diverged_in,
                        ffi::RemainingArgs state_in, ffi::Result<ffi::Buffer<ffi::S32>> diverged_out,
                        ffi::RemainingRets state_out, int64_t batch, bool whitened,
                        bool label_noise, int64_t stream) {
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
  if (diverged_in.dimensions().size() != 1 || diverged_out->element_count() !=
      diverged_in.element_count() || first_step.element_count() != 1 ||
      valid_steps.element_count() != 1)
    return ffi::Error::InvalidArgument(
        name + "diverged must be (runs,) in and out, first and valid steps one number each");
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
  auto kd = words.dimensions();
  if (kd.size() != 2 || kd[0] != 2 || kd[1] != pb.runs)
    return ffi::Error::InvalidArgument(name + "key words must be (2, runs) uint32");
  if (stream < 0 || stream > 255) return ffi::Error::InvalidArgument(name + "stream must be 0-255");
  if (!is(teacher, {d_out, d_in}) || (!whitened && !is(input_sqrt, {d_in, d_in})) ||
      (label_noise && !is(label_sqrt, {d_out, d_out})) || !is(learning_rate, {pb.runs}) ||
      (Momentum && !is(momentum, {pb.runs})) || !is(threshold, {1}))
    return ffi::Error::InvalidArgument(name + "task matrices or rates of wrong shape");
  pb.normals = (d_in + (label_noise ? d_out : 0)) * batch;
  pb.stream = uint32_t(stream);
  pb.first_step = first_step.typed_data()[0];
  pb.valid_steps = valid_steps.typed_data()[0];
  if (pb.valid_steps < 0) return ffi::Error::InvalidArgument(name + "valid steps out of range");
  for (size_t b = 0; b < buffers; ++b)
    if (state[b] != sources[b]) std::memcpy(state[b], sources[b], bytes[b]);
  int32_t* div = diverged_out->typed_data();
  if (div != diverged_in.typed_data()) std::memcpy(div, diverged_in.typed_data(), pb.runs * 4);
  Inputs in{teacher.untyped_data(),       input_sqrt.untyped_data(), label_sqrt.untyped_data(),
            words.typed_data(),           learning_rate.untyped_data(),
            momentum.untyped_data(),
            double(static_cast<const T*>(threshold.untyped_data())[0])};
  if (!run_block<T, Momentum>(pb, in, state, state + pb.layers, div))
    return ffi::Error::Internal(name + "out of memory for the work storage");
  return ffi::Error::Success();
}

// The normals the kernels draw, for tests: (steps, count, R) of T from key words (2, R), the
// steps' counters first_step, first_step + 1, ... (as online_block draws them).
template <typename T>
ffi::Error draw_handler(ffi::Buffer<ffi::U32> words, ffi::Buffer<ffi::S32> first_step,
                        ffi::Result<ffi::AnyBuffer> out, int64_t count, int64_t stream) {
  using V = typename Lanes<T>::V;
  constexpr int W = Lanes<T>::kWidth;
  auto kd = words.dimensions();
  auto od = out->dimensions();
  constexpr ffi::DataType kType = sizeof(T) == 4 ? ffi::DataType::F32 : ffi::DataType::F64;
  if (kd.size() != 2 || kd[0] != 2 || od.size() != 3 || od[1] != count || od[2] != kd[1] ||
      out->element_type() != kType || first_step.element_count() != 1 || count < 1 ||
      stream < 0 || stream > 255)
    return ffi::Error::InvalidArgument(
        "online_normals: words (2, R) uint32, one first step, out (steps, count, R) of the dtype");
  const int64_t runs = kd[1], steps = od[0];
  T* dst = static_cast<T*>(out->untyped_data());
  Work work;
  V* z = static_cast<V*>(work.get(count * sizeof(V)));
  if (z == nullptr) return ffi::Error::Internal("online_normals: out of memory");
  for (int64_t offset = 0; offset < runs; offset += W) {
    const int lanes = runs - offset < W ? int(runs - offset) : W;
    Words k0, k1;
    chunk_keys<T>(words.typed_data(), runs, offset, lanes, &k0, &k1);
    for (int64_t s = 0; s < steps; ++s) {
      draw_normals<T>(k0, k1, uint32_t(first_step.typed_data()[0]) + uint32_t(s),
                      uint32_t(stream), count, z);
      for (int64_t e = 0; e < count; ++e) scatter<V>(dst + (s * count + e) * runs + offset, z[e], lanes);
    }
  }
  return ffi::Error::Success();
}

// The float32 normal of each 32-bit word (jax.random.normal's transform), for tests.
ffi::Error bits_handler(ffi::Buffer<ffi::U32> bits, ffi::ResultBuffer<ffi::F32> out) {
  const int64_t n = bits.element_count();
  if (int64_t(out->element_count()) != n) return ffi::Error::InvalidArgument("bits_to_normals: sizes");
  for (int64_t i = 0; i < n; i += 8) {
    Words w = Words{};
    const int lanes = n - i < 8 ? int(n - i) : 8;
    for (int r = 0; r < lanes; ++r) w[r] = bits.typed_data()[i + r];
    Floats f;
    normals_from_bits<1>(&w, &f);
    scatter<Floats>(out->typed_data() + i, f, lanes);
  }
  return ffi::Error::Success();
}

}  // namespace

#define DLNLAB_DRAW_BIND                                                                     \
  ffi::Ffi::Bind()                                                                           \
      .Arg<ffi::Buffer<ffi::U32>>()                                                          \
      .Arg<ffi::Buffer<ffi::S32>>()                                                          \
      .Ret<ffi::AnyBuffer>()                                                                 \
      .Attr<int64_t>("count")                                                                \
      .Attr<int64_t>("stream")

XLA_FFI_DEFINE_HANDLER_SYMBOL(dlnlab_online_normals_f32, draw_handler<float>, DLNLAB_DRAW_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(dlnlab_online_normals_f64, draw_handler<double>, DLNLAB_DRAW_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(dlnlab_bits_to_normals_f32, bits_handler,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

#define DLNLAB_BIND                                                                          \
  ffi::Ffi::Bind()                                                                           \
      .Arg<ffi::AnyBuffer>()                                                                 \
      .Arg<ffi::AnyBuffer>()                                                                 \
      .Arg<ffi::AnyBuffer>()                                                                 \
      .Arg<ffi::Buffer<ffi::U32>>()                                                          \
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
      .Attr<bool>("label_noise")                                                             \
      .Attr<int64_t>("stream")

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
      {"online_normals_f32", reinterpret_cast<void*>(dlnlab_online_normals_f32)},
      {"online_normals_f64", reinterpret_cast<void*>(dlnlab_online_normals_f64)},
      {"bits_to_normals_f32", reinterpret_cast<void*>(dlnlab_bits_to_normals_f32)},
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
