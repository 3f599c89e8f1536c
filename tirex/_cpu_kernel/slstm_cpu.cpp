// The sLSTM recurrence on CPU: every time step of one layer in a single call; the fused norms and
// activations around it; the weight matmuls (tirex_gemm); one thread pool.
//
// Plain C ABI (no torch headers) so that it compiles in about a second on first use; the Python side
// (tirex/cpu_kernel.py, tirex/backends.py) passes raw float32 pointers of contiguous tensors.
//
// One source, compiled once per instruction-set level (tirex/cpu_kernel.py picks the level from what the
// CPU reports and passes -DTIREX_LEVEL with the matching compiler flags):
//   0 portable  plain C++, no intrinsics: builds with any C++17 compiler on any CPU (ARM included)
//   1 avx2      AVX2 + FMA: hand-written weight matmuls, recurrent product from bfloat16 pairs
//   2 avx512    AVX-512 F/BW/DQ/VL: the same with 512-bit vectors
// Every level computes each matmul output (weights and recurrent product) as the same chain of fused
// multiply-adds over k in ascending order (std::fma on the portable level), whatever the number of rows
// and the thread count, and every reduction in a fixed order: a row's result never depends on the other
// rows (batch independence), and all levels give the same bits.
//
// Work is split into independent items (head, block of batch rows): the recurrence never mixes
// heads or batch rows, so each item runs all T steps without synchronising with the others.
//
// Numerics follow the reference's emulation of a bfloat16 kernel when BF16 is true: the input
// pre-activations, the recurrent matmul result and the four states are rounded to bfloat16
// (round-to-nearest-even on the float32 bits) at every step; everything else is float32 in the same
// op order as the torch path. Compile with -ffp-contract=off so that the gate math is not fused
// into FMAs the torch path does not use. The transcendental functions below are branch-free
// polynomial versions (Cephes-style, about 1 ulp) so that the compiler vectorises the gate loop.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include <unistd.h>

#ifndef TIREX_LEVEL
#define TIREX_LEVEL 0
#endif

#if TIREX_LEVEL >= 1
#if !defined(__AVX2__) || !defined(__FMA__)
#error "TIREX_LEVEL >= 1 needs -mavx2 -mfma"
#endif
#include <immintrin.h>
#endif
#if defined(TIREX_EMULATE) && TIREX_LEVEL >= 2
// Tests only (tirex.cpu_kernel.select(level, emulate=True)): the 512-bit code on a CPU without AVX-512, its
// intrinsics implemented by SIMDe (https://github.com/simd-everywhere/simde) as pairs of native 256-bit ones
// (built with -mavx2 -mfma, so every FMA is still one rounding and every lane gives the hardware's bits).
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#elif TIREX_LEVEL >= 2 && !(defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__))
#error "TIREX_LEVEL >= 2 needs -mavx512f -mavx512bw -mavx512dq -mavx512vl"
#endif

#define TIREX_AVX2 (TIREX_LEVEL == 1)     // the 256-bit kernels
#define TIREX_AVX512 (TIREX_LEVEL >= 2)   // the 512-bit kernels

namespace {

inline float from_bits(uint32_t b) { float f; std::memcpy(&f, &b, 4); return f; }
inline uint32_t to_bits(float f) { uint32_t b; std::memcpy(&b, &f, 4); return b; }

// Nearest bfloat16 value (ties to even), as a float. NaN stays NaN.
inline float round_bf16(float x) {
  uint32_t b = to_bits(x);
  uint32_t r = (b + 0x7FFFu + ((b >> 16) & 1u)) & 0xFFFF0000u;
  return x != x ? x : from_bits(r);
}

template <bool BF16> inline float rnd(float x) { return BF16 ? round_bf16(x) : x; }

inline float bf16_to_float(uint16_t b) { return from_bits(static_cast<uint32_t>(b) << 16); }
inline uint16_t float_to_bf16(float x) {  // NaN stays NaN (a quiet one), whatever its payload
  return x != x ? static_cast<uint16_t>((to_bits(x) >> 16) | 0x0040u) : static_cast<uint16_t>(to_bits(round_bf16(x)) >> 16);
}

// exp(x): Cody-Waite reduction, degree-6 polynomial, 2^n applied in two halves so that results
// down to the subnormal range stay exact-ish. NaN propagates.
inline float exp_f(float x) {
  float xc = std::min(std::max(x, -103.0f), 88.72f);
  float n = std::floor(xc * 1.44269504088896341f + 0.5f);
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float r2 = r * r;
  float p = (((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r +
              1.6666665459e-1f) * r + 5.0000001201e-1f) * r2 + r + 1.0f;
  int32_t ni = static_cast<int32_t>(n);
  int32_t n1 = ni / 2;
  int32_t n2 = ni - n1;
  float s1 = from_bits(static_cast<uint32_t>(n1 + 127) << 23);
  float s2 = from_bits(static_cast<uint32_t>(n2 + 127) << 23);
  float out = p * s1 * s2;
  return x != x ? x : out;
}

// log(1 + u) for u in [0, 1]: 1 + u = 2^e (1 + x) with |x| <= sqrt(2) - 1; e = 0 keeps x = u exactly.
inline float log1p_unit(float u) {
  bool big = u > 0.41421356f;
  float x = big ? (u - 1.0f) * 0.5f : u;
  float e = big ? 1.0f : 0.0f;
  float z = x * x;
  float y = ((((((((7.0376836292e-2f * x - 1.1514610310e-1f) * x + 1.1676998740e-1f) * x - 1.2420140846e-1f) * x +
                 1.4249322787e-1f) * x - 1.6668057665e-1f) * x + 2.0000714765e-1f) * x - 2.4999993993e-1f) * x +
            3.3333331174e-1f) * x * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return x + y + 0.693359375f * e;
}

inline float logsigmoid_f(float x) { return std::min(x, 0.0f) - log1p_unit(exp_f(-std::fabs(x))); }
inline float sigmoid_f(float x) { return 1.0f / (1.0f + exp_f(-x)); }

inline float tanh_f(float x) {
  float a = std::fabs(x);
  float s = x * x;
  float small = ((((-5.70498872745e-3f * s + 2.06390887954e-2f) * s - 5.37397155531e-2f) * s + 1.33314422036e-1f) * s -
                 3.33332819422e-1f) * s * x + x;
  float big = std::copysign(1.0f - 2.0f / (exp_f(2.0f * a) + 1.0f), x);
  return a < 0.625f ? small : big;
}

// acc[RB][G] = y[RB][D] @ R[D][G], column blocks of CB kept in registers.
template <int RB, int CB>
inline void matmul_rows(const float* y, const float* R, float* acc, int D, int G) {
  for (int j0 = 0; j0 < G; j0 += CB) {
    float a[RB][CB] = {};
    for (int k = 0; k < D; ++k) {
      const float* r = R + static_cast<size_t>(k) * G + j0;
      for (int bi = 0; bi < RB; ++bi) {
        const float yv = y[bi * D + k];
        for (int jj = 0; jj < CB; ++jj) a[bi][jj] = __builtin_fmaf(yv, r[jj], a[bi][jj]);
      }
    }
    for (int bi = 0; bi < RB; ++bi)
      for (int jj = 0; jj < CB; ++jj) acc[bi * G + j0 + jj] = a[bi][jj];
  }
}



#if TIREX_AVX2 || TIREX_AVX512
// 8 (AVX2) or 16 (AVX-512) float lanes: the few operations the hand-written products need.
#if TIREX_AVX512
struct Lanes {
  using F = __m512;
  using I = __m512i;
  static constexpr int W = 16;
  static F zero() { return _mm512_setzero_ps(); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static F set1(const float* p) { return _mm512_set1_ps(*p); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static I load_words(const uint32_t* p) { return _mm512_loadu_si512(p); }
  static F low_half(I w) { return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)); }
  static F high_half(I w) { return _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u)))); }
};
#else
struct Lanes {
  using F = __m256;
  using I = __m256i;
  static constexpr int W = 8;
  static F zero() { return _mm256_setzero_ps(); }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static F set1(const float* p) { return _mm256_broadcast_ss(p); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static I load_words(const uint32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static F low_half(I w) { return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)); }
  static F high_half(I w) { return _mm256_castsi256_ps(_mm256_and_si256(w, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u)))); }
};
#endif

// acc[RB][G] = y[RB][D] @ R[D][G] with R as bfloat16 pairs: 32-bit words holding R[2i][c] in the low and
// R[2i + 1][c] in the high half, in blocks of kPairBlock columns: Rp (G / kPairBlock, D / 2, kPairBlock),
// so that each column block is one contiguous stretch the hardware prefetchers stream in. Shifting the
// low half up gives R[2i][c] as a float32, masking off the low half gives R[2i + 1][c]. The products
// and their order (k ascending, one FMA chain per column) are those of the float32 loop matmul_rows,
// so the results are bitwise the same. Half the bytes of the float32 matrix: at batch 1 the
// recurrence is bound by reading R every step.
constexpr int kPairBlock = 8 * Lanes::W;
template <int RB, int NV>
inline void matmul_rows_pairs(const float* y, const uint32_t* Rp, float* acc, int D, int G) {
  using L = Lanes;
  static_assert(kPairBlock % (L::W * NV) == 0, "column blocks of the product must not straddle pair blocks");
  const int half = D / 2;
  for (int j0 = 0; j0 < G; j0 += L::W * NV) {
    typename L::F a[RB][NV];
    for (int bi = 0; bi < RB; ++bi)
      for (int v = 0; v < NV; ++v) a[bi][v] = L::zero();
    const uint32_t* block = Rp + static_cast<size_t>(j0 / kPairBlock) * half * kPairBlock + j0 % kPairBlock;
    for (int i = 0; i < half; ++i) {
      const uint32_t* r = block + static_cast<size_t>(i) * kPairBlock;
      if constexpr (RB == 1) {  // widen one vector at a time: 8 accumulators + 8 x 2 widened ones would spill
        const typename L::F y0 = L::set1(y + 2 * i), y1 = L::set1(y + 2 * i + 1);
        for (int v = 0; v < NV; ++v) {
          const typename L::I w = L::load_words(r + L::W * v);
          a[0][v] = L::fma(y0, L::low_half(w), a[0][v]);
          a[0][v] = L::fma(y1, L::high_half(w), a[0][v]);
        }
        continue;
      }
      typename L::F even[NV], odd[NV];
      for (int v = 0; v < NV; ++v) {
        const typename L::I w = L::load_words(r + L::W * v);
        even[v] = L::low_half(w);
        odd[v] = L::high_half(w);
      }
      for (int bi = 0; bi < RB; ++bi) {
        const typename L::F y0 = L::set1(y + bi * D + 2 * i);
        const typename L::F y1 = L::set1(y + bi * D + 2 * i + 1);
        for (int v = 0; v < NV; ++v) {
          a[bi][v] = L::fma(y0, even[v], a[bi][v]);
          a[bi][v] = L::fma(y1, odd[v], a[bi][v]);
        }
      }
    }
    for (int bi = 0; bi < RB; ++bi)
      for (int v = 0; v < NV; ++v) L::store(acc + bi * G + j0 + L::W * v, a[bi][v]);
  }
}

// acc[RB][G] = y[RB][D] @ R[D][G] for a float32 R (the float32 recurrence): matmul_rows with explicit vectors,
// RB rows x NV vectors of columns in registers (the generic loop's 4 x 64 accumulators do not fit AVX2's 16
// registers and spill). The same products in the same order (k ascending, one FMA chain per column from
// zero): bitwise the results of matmul_rows.
template <int RB, int NV>
inline void matmul_rows_vec(const float* y, const float* R, float* acc, int D, int G) {
  using L = Lanes;
  for (int j0 = 0; j0 < G; j0 += L::W * NV) {
    typename L::F a[RB][NV];
    for (int bi = 0; bi < RB; ++bi)
      for (int v = 0; v < NV; ++v) a[bi][v] = L::zero();
    for (int k = 0; k < D; ++k) {
      const float* r = R + static_cast<size_t>(k) * G + j0;
      typename L::F rv[NV];
      for (int v = 0; v < NV; ++v) rv[v] = L::load(r + L::W * v);
      for (int bi = 0; bi < RB; ++bi) {
        const typename L::F yv = L::set1(y + bi * D + k);
        for (int v = 0; v < NV; ++v) a[bi][v] = L::fma(yv, rv[v], a[bi][v]);
      }
    }
    for (int bi = 0; bi < RB; ++bi)
      for (int v = 0; v < NV; ++v) L::store(acc + bi * G + j0 + L::W * v, a[bi][v]);
  }
}
#endif

struct Problem {
  const float* wx;    // (H, B, T, 4D), raw (rounded here); null when wx_bf16 is given
  const uint16_t* wx_bf16;  // the same as bfloat16 bits (fast mode: the projection's bfloat16 output)
  const float* R;     // (H, D, 4D), already rounded by the caller when BF16
  const uint16_t* R_pairs;  // (H, D / 2, 4D, 2) bfloat16 bits of R, or null: the AVX512-BF16 product (BF16 only)
  const float* bias;  // (H, 4D)
  float* state;       // (4, H, B, D): y, c, n, m; read at the start (unless fresh), written at the end
  float* out;         // (B, T, H, D): y of every step, or the block output (see norm_w)
  const float* norm_w;    // (H, D) or null: write residual + group_norm(y) * (1 + norm_w) instead of y
  const float* residual;  // (B, T, H, D) or null: added to the normalised output
  float eps;
  int H, B, T, D;
  bool fresh;         // state is zero and the first step initialises the stabiliser m with i~
  float* snap;        // (4, H, B, D) or null: the state after the first snap_t steps, in the layout of state
  int snap_t;
};

// sum of x[j] - shift (squared when SQUARE) in a fixed order: 16 interleaved partial sums, a fixed tree,
// then the tail. This order vectorises on every level and gives every level the same bits (the RMS norm's
// sum of squares, the recurrence's group norm: one long chain of dependent adds there would cost a step
// more than its gate math).
template <bool SQUARE>
inline float fixed_order_sum(const float* x, int n, float shift) {
  float part[16] = {};
  int j = 0;
  for (; j + 16 <= n; j += 16)
    for (int l = 0; l < 16; ++l) {
      const float d = x[j + l] - shift;
      part[l] += SQUARE ? d * d : d;
    }
  for (int w = 8; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) part[l] += part[l + w];
  float sum = part[0];
  for (; j < n; ++j) sum += SQUARE ? (x[j] - shift) * (x[j] - shift) : x[j] - shift;
  return sum;
}

// out = residual + ((y - mean) / sqrt(var + eps)) * (1 + w) over one head's D values (a per-head group norm).
inline void group_norm_row(const float* y, const float* w, const float* residual, float* out, int D, float eps) {
  const float mean = fixed_order_sum<false>(y, D, 0.0f) / D;
  const float sq = fixed_order_sum<true>(y, D, mean);
  const float rstd = 1.0f / std::sqrt(sq / D + eps);
  if (residual) {
#pragma omp simd
    for (int u = 0; u < D; ++u) out[u] = residual[u] + ((y[u] - mean) * rstd) * (1.0f + w[u]);
  } else {
#pragma omp simd
    for (int u = 0; u < D; ++u) out[u] = ((y[u] - mean) * rstd) * (1.0f + w[u]);
  }
}

#if TIREX_AVX2 || TIREX_AVX512
// matmul_rows_vec's register block: 4 rows x 16 (AVX2) or 64 (AVX-512) columns; 8 or 16 accumulators.
constexpr int kVecRB = 4;
constexpr int kVecNV = TIREX_AVX512 ? 4 : 2;
constexpr int kVecNV1 = TIREX_AVX512 ? 4 : 8;  // a single row: 4 or 8 independent chains (64 columns)
#endif

// One item: head h, batch rows [b0, b1), all time steps.
template <bool BF16>
void run_item(const Problem& p, int h, int b0, int b1) {
  const int D = p.D, G = 4 * D, nb = b1 - b0;
  const size_t HBD = static_cast<size_t>(p.H) * p.B * D;
  std::vector<float> y(nb * D), c(nb * D), n(nb * D), m(nb * D), acc(nb * G), wx_f(G);
  for (int s = 0; s < 4 && !p.fresh; ++s) {  // a fresh sequence starts from zeros (vectors are zeroed)
    float* dst = s == 0 ? y.data() : s == 1 ? c.data() : s == 2 ? n.data() : m.data();
    std::memcpy(dst, p.state + s * HBD + (static_cast<size_t>(h) * p.B + b0) * D, sizeof(float) * nb * D);
  }
  const float* R = p.R + static_cast<size_t>(h) * D * G;
  const float* bias = p.bias + static_cast<size_t>(h) * G;
  // The product is chosen per call, never per row (a row's result must not depend on its neighbours).
#if TIREX_AVX2 || TIREX_AVX512
  const bool pairs = BF16 && p.R_pairs != nullptr && G % kPairBlock == 0 && D % 2 == 0;
#endif
  for (int t = 0; t < p.T; ++t) {
    int bi = 0;
#if TIREX_AVX2 || TIREX_AVX512
    if (pairs) {
      const uint32_t* Rp = reinterpret_cast<const uint32_t*>(p.R_pairs + static_cast<size_t>(h) * D * G);
      for (; bi + 4 <= nb; bi += 4) matmul_rows_pairs<4, (TIREX_AVX512 ? 4 : 2)>(y.data() + bi * D, Rp, acc.data() + bi * G, D, G);
      for (; bi < nb; ++bi) matmul_rows_pairs<1, 8>(y.data() + bi * D, Rp, acc.data() + bi * G, D, G);
    } else if (G % (Lanes::W * kVecNV) == 0) {
      for (; bi + kVecRB <= nb; bi += kVecRB) matmul_rows_vec<kVecRB, kVecNV>(y.data() + bi * D, R, acc.data() + bi * G, D, G);
      if (G % (Lanes::W * kVecNV1) == 0)
        for (; bi < nb; ++bi) matmul_rows_vec<1, kVecNV1>(y.data() + bi * D, R, acc.data() + bi * G, D, G);
      else
        for (; bi < nb; ++bi) matmul_rows_vec<1, kVecNV>(y.data() + bi * D, R, acc.data() + bi * G, D, G);
    } else
#endif
    if (G % 64 == 0) {
      for (; bi + 4 <= nb; bi += 4) matmul_rows<4, 64>(y.data() + bi * D, R, acc.data() + bi * G, D, G);
      for (; bi < nb; ++bi) matmul_rows<1, 64>(y.data() + bi * D, R, acc.data() + bi * G, D, G);
    } else {
      for (; bi + 4 <= nb; bi += 4) matmul_rows<4, 32>(y.data() + bi * D, R, acc.data() + bi * G, D, G);
      for (; bi < nb; ++bi) matmul_rows<1, 32>(y.data() + bi * D, R, acc.data() + bi * G, D, G);
    }
    const bool first = p.fresh && t == 0;
    for (bi = 0; bi < nb; ++bi) {
      const int b = b0 + bi;
      const size_t wx_row = ((static_cast<size_t>(h) * p.B + b) * p.T + t) * G;
      if (p.wx_bf16) {  // widen once; bfloat16 values are already rounded
        for (int j = 0; j < G; ++j) wx_f[j] = bf16_to_float(p.wx_bf16[wx_row + j]);
      }
      const float* wx = p.wx_bf16 ? wx_f.data() : p.wx + wx_row;
      const float* ry = acc.data() + bi * G;
      float* yb = y.data() + bi * D;
      float* cb = c.data() + bi * D;
      float* nbv = n.data() + bi * D;
      float* mb = m.data() + bi * D;
      float* out = p.out + ((static_cast<size_t>(b) * p.T + t) * p.H + h) * D;
#pragma omp simd
      for (int u = 0; u < D; ++u) {
        const float ip = rnd<BF16>(wx[u]) + rnd<BF16>(ry[u]) + bias[u];
        const float fp = rnd<BF16>(wx[D + u]) + rnd<BF16>(ry[D + u]) + bias[D + u];
        const float zp = rnd<BF16>(wx[2 * D + u]) + rnd<BF16>(ry[2 * D + u]) + bias[2 * D + u];
        const float op = rnd<BF16>(wx[3 * D + u]) + rnd<BF16>(ry[3 * D + u]) + bias[3 * D + u];
        const float log_f = mb[u] + logsigmoid_f(std::min(fp, 15.0f));
        const float m_new = first ? ip : std::max(ip, log_f);
        // One of ip - m_new, log_f - m_new is exactly 0 (its gate is exp(0) = 1; at the first step that is
        // the input gate), so a single exp of their sum serves both gates.
        const float di = ip - m_new, df = log_f - m_new;
        const float e = std::min(exp_f(di + df), 1.0f);
        const float ig = di == 0.0f ? 1.0f : e;
        const float fg = di == 0.0f ? e : 1.0f;
        const float c_new = fg * cb[u] + ig * tanh_f(zp);
        const float n_new = fg * nbv[u] + ig;
        const float y_new = sigmoid_f(op) * c_new / n_new;
        yb[u] = rnd<BF16>(y_new);
        cb[u] = rnd<BF16>(c_new);
        nbv[u] = rnd<BF16>(n_new);
        mb[u] = rnd<BF16>(m_new);
        out[u] = yb[u];
      }
      if (p.norm_w) {
        const size_t off = ((static_cast<size_t>(b) * p.T + t) * p.H + h) * D;
        group_norm_row(yb, p.norm_w + static_cast<size_t>(h) * D, p.residual ? p.residual + off : nullptr, out, D,
                       p.eps);
      }
    }
    if (p.snap && t + 1 == p.snap_t) {
      for (int s = 0; s < 4; ++s) {
        const float* src = s == 0 ? y.data() : s == 1 ? c.data() : s == 2 ? n.data() : m.data();
        std::memcpy(p.snap + s * HBD + (static_cast<size_t>(h) * p.B + b0) * D, src, sizeof(float) * nb * D);
      }
    }
  }
  for (int s = 0; s < 4; ++s) {
    const float* src = s == 0 ? y.data() : s == 1 ? c.data() : s == 2 ? n.data() : m.data();
    std::memcpy(p.state + s * HBD + (static_cast<size_t>(h) * p.B + b0) * D, src, sizeof(float) * nb * D);
  }
}

// ---- weight matmuls: C (M x N) = A (M x K) @ B (K x N), B row-major with row stride ldb ------------------
// B is an nn.Linear weight as tirex.inference.use_matmul_layout_ stores it (column-major, so W^T is
// row-major): no second copy of the weights. Work items are groups of column panels (split across
// threads by columns: each thread reads only its share of the weights) and chunks of kRowChunk rows.
// Per panel and block of rows of B, the panel's columns are copied into a contiguous L1 buffer and a
// register block of rows x panel columns runs over the rows of the chunk. Every output is one chain of
// fused multiply-adds over k = 0, 1, ..., K - 1 starting from zero, on every level, for any number of
// rows, any row block and any thread count: a row's result never depends on the other rows.
// Epilogues fuse what follows the matmul in the model:
enum GemmMode { kStore = 0, kAccumulate = 1, kRelu = 2, kSwiGlu = 3, kStoreBf16 = 4 };
//   kStore:      C = A B (+ bias)        kAccumulate: C += A B (+ bias)        kRelu: C = max(A B + bias, 0)
//   kSwiGlu:     C = silu(A G) * (A U): B0 = G and B1 = U (both K x N); a panel holds gate and up columns.
//   kStoreBf16:  C = bfloat16(A B (+ bias)), C holding bfloat16 bits (ldc in elements): the input
//                pre-activations of the bfloat16-emulating recurrence, which rounds them so anyway.

struct Gemm {
  const float* A; long lda;
  const float* B0; const float* B1; long ldb;
  const float* bias;
  void* C; long ldc;
  int M, N, K, mode;
};

// The finished sums of `width` outputs of one row (columns j0 ...) into c, per g.mode; for kSwiGlu the
// up projection's sums follow `up` floats after the gate's.
inline void epilogue(const Gemm& g, const float* acc, int up, int row, int j0, int width) {
  const float* bias = g.bias ? g.bias + j0 : nullptr;
  if (g.mode == kStoreBf16) {
    uint16_t* c = static_cast<uint16_t*>(g.C) + row * g.ldc + j0;
#pragma omp simd
    for (int j = 0; j < width; ++j) c[j] = float_to_bf16(bias ? acc[j] + bias[j] : acc[j]);
    return;
  }
  float* c = static_cast<float*>(g.C) + row * g.ldc + j0;
  switch (g.mode) {
    case kSwiGlu:
#pragma omp simd
      for (int j = 0; j < width; ++j) c[j] = (acc[j] / (1.0f + exp_f(-acc[j]))) * acc[up + j];
      break;
    case kStore:
      if (bias) {
#pragma omp simd
        for (int j = 0; j < width; ++j) c[j] = acc[j] + bias[j];
      } else {
        std::memcpy(c, acc, sizeof(float) * width);
      }
      break;
    case kAccumulate:
      if (bias) {
#pragma omp simd
        for (int j = 0; j < width; ++j) c[j] += acc[j] + bias[j];
      } else {
#pragma omp simd
        for (int j = 0; j < width; ++j) c[j] += acc[j];
      }
      break;
    default:  // kRelu
      if (bias) {
#pragma omp simd
        for (int j = 0; j < width; ++j) c[j] = std::max(acc[j] + bias[j], 0.0f);
      } else {
#pragma omp simd
        for (int j = 0; j < width; ++j) c[j] = std::max(acc[j], 0.0f);
      }
  }
}

#if TIREX_AVX2
// AVX2 + FMA (tuned on AMD Zen 3): 16-column panels, a 6 x 16 register block (12 accumulators, two
// loads of B and six broadcasts of A per k; 8 + 8 gate and up columns for kSwiGlu). Meanwhile the same
// rows of the panel kPrefetch panels further right are prefetched (rows of B are a page or more apart,
// which the hardware prefetchers do not follow), a share per 6-row block and one row per k step: issued
// in one burst they fill the miss queues and stall (4-6% slower per FFN).
constexpr int kPanel = 16;      // output columns per panel
constexpr int kKBlock = 256;    // 256 x 16 floats of B: 16 KB of L1
constexpr int kRowChunk = 96;   // rows of A per pass over the panels: 96 x 512 floats stay in L2
constexpr int kPrefetch = 2;

// Prefetch work handed to a micro-kernel: rows [begin, end) of the panel kPrefetch panels ahead, one row
// (one or two lines) per k step, so that the requests trickle out instead of filling the miss queues.
struct Ahead {
  const float* b0; const float* b1; long ldb; int begin, end;
};

template <int MR>
inline void micro_kernel(const float* A, long lda, const float* Bp, int kc, float* acc, bool first,
                         const Ahead& ahead) {
  __m256 c0[MR], c1[MR];
  for (int i = 0; i < MR; ++i) {
    c0[i] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(acc + i * 16);
    c1[i] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(acc + i * 16 + 8);
  }
  const int prefetches = ahead.b0 ? std::min(kc, ahead.end - ahead.begin) : 0;
  for (int k = 0; k < kc; ++k) {
    if (k < prefetches) {
      _mm_prefetch(reinterpret_cast<const char*>(ahead.b0 + (ahead.begin + k) * ahead.ldb), _MM_HINT_T0);
      if (ahead.b1) _mm_prefetch(reinterpret_cast<const char*>(ahead.b1 + (ahead.begin + k) * ahead.ldb), _MM_HINT_T0);
    }
    const __m256 b0 = _mm256_load_ps(Bp + k * 16);
    const __m256 b1 = _mm256_load_ps(Bp + k * 16 + 8);
    for (int i = 0; i < MR; ++i) {
      const __m256 a = _mm256_broadcast_ss(A + i * lda + k);
      c0[i] = _mm256_fmadd_ps(a, b0, c0[i]);
      c1[i] = _mm256_fmadd_ps(a, b1, c1[i]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    _mm256_storeu_ps(acc + i * 16, c0[i]);
    _mm256_storeu_ps(acc + i * 16 + 8, c1[i]);
  }
}

inline void micro_any(int mr, const float* A, long lda, const float* Bp, int kc, float* acc, bool first,
                      const Ahead& ahead) {
  switch (mr) {
    case 6: micro_kernel<6>(A, lda, Bp, kc, acc, first, ahead); break;
    case 5: micro_kernel<5>(A, lda, Bp, kc, acc, first, ahead); break;
    case 4: micro_kernel<4>(A, lda, Bp, kc, acc, first, ahead); break;
    case 3: micro_kernel<3>(A, lda, Bp, kc, acc, first, ahead); break;
    case 2: micro_kernel<2>(A, lda, Bp, kc, acc, first, ahead); break;
    default: micro_kernel<1>(A, lda, Bp, kc, acc, first, ahead); break;
  }
}

// Output columns [j0, j0 + width) of rows [r0, r1) (at most kRowChunk rows); width = 16 (8 for kSwiGlu)
// except at the right edge, where the panel is zero-padded.
void gemm_panel(const Gemm& g, int r0, int r1, int j0) {
  const bool swiglu = g.mode == kSwiGlu;
  const int step = swiglu ? 8 : 16;
  const int width = std::min(step, g.N - j0);
  const float* B0 = g.B0 + j0;
  const float* B1 = swiglu ? g.B1 + j0 : g.B0 + j0 + 8;
  const bool ahead = j0 + (kPrefetch + 1) * step <= g.N;
  alignas(32) float panel[kKBlock * 16];
  alignas(32) float acc[kRowChunk * 16];
  // Blocks of 6 rows only (the 6-row block is the efficient one: 64 rows as 10 x 6 + 4 measured ~12%
  // slower than 66 rows as 11 x 6): when 6 does not divide the row count, the last block overlaps the one
  // before it. Its rows are the same FMA chains, so the overlapping results are identical, and only the
  // rows not written yet are stored (kAccumulate must add once).
  const int blocks = r1 - r0 <= 6 ? 1 : (r1 - r0 + 5) / 6;
  auto block_row = [&](int b) { return r1 - r0 <= 6 ? r0 : std::min(r0 + 6 * b, r1 - 6); };
  for (int k0 = 0; k0 < g.K; k0 += kKBlock) {
    const int kc = std::min(kKBlock, g.K - k0);
    if (width == step) {
      for (int k = 0; k < kc; ++k) {
        const float* b0 = B0 + static_cast<long>(k0 + k) * g.ldb;
        const float* b1 = B1 + static_cast<long>(k0 + k) * g.ldb;
        _mm256_store_ps(panel + k * 16, _mm256_loadu_ps(b0));
        _mm256_store_ps(panel + k * 16 + 8, _mm256_loadu_ps(b1));
      }
    } else {
      std::fill(panel, panel + kc * 16, 0.0f);
      for (int k = 0; k < kc; ++k)
        for (int j = 0; j < width; ++j) {
          panel[k * 16 + j] = B0[static_cast<long>(k0 + k) * g.ldb + j];
          if (swiglu) panel[k * 16 + 8 + j] = B1[static_cast<long>(k0 + k) * g.ldb + j];
        }
    }
    const int share = (kc + blocks - 1) / blocks;  // rows of the panel ahead each block prefetches
    for (int b = 0; b < blocks; ++b) {
      Ahead pf{nullptr, nullptr, g.ldb, b * share, std::min(kc, (b + 1) * share)};
      if (ahead) {
        pf.b0 = B0 + static_cast<long>(k0) * g.ldb + kPrefetch * step;
        pf.b1 = swiglu ? B1 + static_cast<long>(k0) * g.ldb + kPrefetch * step : nullptr;
      }
      micro_any(std::min(6, r1 - r0), g.A + static_cast<long>(block_row(b)) * g.lda + k0, g.lda, panel, kc,
                acc + b * 6 * 16, k0 == 0, pf);
    }
  }
  for (int b = 0; b < blocks; ++b) {
    const int first = block_row(b), from = b == 0 ? first : std::max(first, block_row(b - 1) + 6);
    for (int i = from; i < std::min(r1, first + 6); ++i)
      epilogue(g, acc + (b * 6 + i - first) * 16, 8, i, j0, width);
  }
}

// Rows [r0, r1) of output columns [j0, j0 + 64) (32 gate and 32 up columns for kSwiGlu) straight from B,
// for matmuls of fewer than 6 rows (a one-token head, a stream update), which are bound by reading B
// once: per output the same FMA chain over k as micro_kernel, so a row's result never depends on how
// many rows share the matmul.
void gemm_columns(const Gemm& g, int r0, int r1, int j0) {
  const bool swiglu = g.mode == kSwiGlu;
  const int step = swiglu ? 32 : 64;
  const int width = std::min(step, g.N - j0);
  for (int i = r0; i < r1; ++i) {
    const float* a = g.A + static_cast<long>(i) * g.lda;
    alignas(32) float acc[64];
    if (width == step) {
      __m256 c[8];
      for (int v = 0; v < 8; ++v) c[v] = _mm256_setzero_ps();
      for (int k = 0; k < g.K; ++k) {
        const float* b0 = g.B0 + static_cast<long>(k) * g.ldb + j0;
        const float* b1 = swiglu ? g.B1 + static_cast<long>(k) * g.ldb + j0 : b0 + 32;
        if (k + 8 < g.K) {  // rows of B are far apart: fetch 8 rows ahead
          for (int l = 0; l < 2; ++l) {
            _mm_prefetch(reinterpret_cast<const char*>(b0 + 8 * g.ldb + 16 * l), _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(b1 + 8 * g.ldb + 16 * l), _MM_HINT_T0);
          }
        }
        const __m256 av = _mm256_broadcast_ss(a + k);
        for (int v = 0; v < 4; ++v) c[v] = _mm256_fmadd_ps(av, _mm256_loadu_ps(b0 + 8 * v), c[v]);
        for (int v = 0; v < 4; ++v) c[4 + v] = _mm256_fmadd_ps(av, _mm256_loadu_ps(b1 + 8 * v), c[4 + v]);
      }
      for (int v = 0; v < 8; ++v) _mm256_store_ps(acc + 8 * v, c[v]);
    } else {
      const int half = swiglu ? 32 : 0;
      for (int j = 0; j < width; ++j) {
        float s0 = 0.0f, s1 = 0.0f;
        for (int k = 0; k < g.K; ++k) {
          s0 = __builtin_fmaf(a[k], g.B0[static_cast<long>(k) * g.ldb + j0 + j], s0);
          if (swiglu) s1 = __builtin_fmaf(a[k], g.B1[static_cast<long>(k) * g.ldb + j0 + j], s1);
        }
        acc[j] = s0;
        if (swiglu) acc[half + j] = s1;
      }
    }
    epilogue(g, acc, 32, i, j0, width);
  }
}
#else
// AVX-512 (512-bit lanes) and portable (plain C++) matmuls: panels of kPanel columns (gate and up halves
// for kSwiGlu), packed per block of kKBlock rows of B with software prefetches of the rows ahead (rows of
// B are a page or more apart, which the hardware prefetchers do not follow), and an MR x kPanel register
// block.
#if TIREX_AVX512
constexpr int kNV = 4;          // vectors of 16 floats per panel row: 64 columns
constexpr int kMR = 6;          // rows per register block: 24 accumulators of 32 registers
constexpr int kKBlock = 128;    // 128 x 64 floats of B: 32 KB of the 48 KB L1 (64-192 measured the same)
struct Vec {
  __m512 v;
  static constexpr int W = 16;
  static Vec zero() { return {_mm512_setzero_ps()}; }
  static Vec load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static Vec set1(float x) { return {_mm512_set1_ps(x)}; }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  static Vec fma(Vec a, Vec b, Vec c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
};
inline void prefetch(const float* p) { _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0); }
inline void prefetch_l2(const float* p) { _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T1); }
#else
constexpr int kNV = 2;          // 2 x 8 floats per panel row: 16 columns (NEON: 4 registers each)
constexpr int kMR = 4;
constexpr int kKBlock = 256;
struct Vec {  // std::fma per lane: the compiler maps it to the CPU's vector FMA where there is one
  float v[8];
  static constexpr int W = 8;
  static Vec zero() { Vec r; for (int l = 0; l < 8; ++l) r.v[l] = 0.0f; return r; }
  static Vec load(const float* p) { Vec r; for (int l = 0; l < 8; ++l) r.v[l] = p[l]; return r; }
  static Vec set1(float x) { Vec r; for (int l = 0; l < 8; ++l) r.v[l] = x; return r; }
  void store(float* p) const { for (int l = 0; l < 8; ++l) p[l] = v[l]; }
  static Vec fma(Vec a, Vec b, Vec c) { Vec r; for (int l = 0; l < 8; ++l) r.v[l] = std::fma(a.v[l], b.v[l], c.v[l]); return r; }
};
inline void prefetch(const float* p) { __builtin_prefetch(p); }
inline void prefetch_l2(const float* p) { __builtin_prefetch(p, 0, 2); }
#endif
constexpr int kPanel = kNV * Vec::W;
// Rows of A per pass over the panels. Each pass packs every panel of B again (from L3 or memory, rows of B
// far apart), so larger passes pack less often: 192 rather than 96 rows is 7% faster per 2048-row
// feed-forward matmul on one Sapphire Rapids core; the register blocks' accumulators (192 x 64 floats)
// stay in L1/L2.
constexpr int kRowChunk = 192;

// Where a register block reads its panel: the packed copy, or (the first block of a k-block) the rows of B
// themselves, columns [0, kPanel / 2) from `low` and [kPanel / 2, kPanel) from `high` (row stride ldb),
// which it copies into the packed panel on the way: packing costs no pass of its own.
struct Source {
  const float* low; const float* high; long ldb;
};

// Prefetch work handed to a micro-kernel: rows [begin, end) of the panel this thread does next, columns
// [0, kPanel / 2) from `low` and the other half from `high` (row stride ldb), into L2, one cache line per
// k step: issued in bursts (a block's share at once) the requests fill the miss queues and stall.
struct Ahead {
  const float* low; const float* high; long ldb; int begin, end;
};
constexpr int kHalfLines = kPanel * 2 / 64 > 0 ? kPanel * 2 / 64 : 1;  // cache lines per half row of a panel
constexpr int kLinesPerRow = 2 * kHalfLines;

// acc (MR x kPanel) [+]= A (MR rows, stride lda) x panel (kc x kPanel, contiguous)
template <int MR, bool PACK>
inline void micro_kernel(const float* A, long lda, float* Bp, int kc, float* acc, bool first, const Source& src,
                         const Ahead& ahead) {
  constexpr int H = kNV / 2;
  Vec c[MR][kNV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < kNV; ++v) c[i][v] = first ? Vec::zero() : Vec::load(acc + i * kPanel + v * Vec::W);
  const int lines = ahead.low ? (ahead.end - ahead.begin) * kLinesPerRow : 0;
  for (int k = 0; k < kc; ++k) {
    if (k < lines) {
      const int row = ahead.begin + k / kLinesPerRow, part = k % kLinesPerRow;
      prefetch_l2((part < kHalfLines ? ahead.low : ahead.high) + row * ahead.ldb + (part % kHalfLines) * 16);
    }
    Vec b[kNV];
    if constexpr (PACK) {
      const float* low = src.low + k * src.ldb;
      const float* high = src.high + k * src.ldb;
      if (k + 8 < kc) {  // rows of B are far apart: fetch 8 rows ahead, one line per 16 floats
        for (int l = 0; l < kPanel / 2; l += 16) {
          prefetch(low + 8 * src.ldb + l);
          prefetch(high + 8 * src.ldb + l);
        }
      }
      for (int v = 0; v < H; ++v) b[v] = Vec::load(low + v * Vec::W);
      for (int v = 0; v < H; ++v) b[H + v] = Vec::load(high + v * Vec::W);
      for (int v = 0; v < kNV; ++v) b[v].store(Bp + k * kPanel + v * Vec::W);
    } else {
      for (int v = 0; v < kNV; ++v) b[v] = Vec::load(Bp + k * kPanel + v * Vec::W);
    }
    for (int i = 0; i < MR; ++i) {
      const Vec a = Vec::set1(A[i * lda + k]);
      for (int v = 0; v < kNV; ++v) c[i][v] = Vec::fma(a, b[v], c[i][v]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < kNV; ++v) c[i][v].store(acc + i * kPanel + v * Vec::W);
}

template <bool PACK, int MR = kMR>
inline void micro_any(int mr, const float* A, long lda, float* Bp, int kc, float* acc, bool first, const Source& src,
                      const Ahead& ahead) {
  if constexpr (MR > 1) {
    if (mr < MR) return micro_any<PACK, MR - 1>(mr, A, lda, Bp, kc, acc, first, src, ahead);
  }
  micro_kernel<MR, PACK>(A, lda, Bp, kc, acc, first, src, ahead);
}

// Output columns [j0, j0 + step) of rows [r0, r1) (at most kRowChunk rows), step = kPanel (kPanel / 2 for
// kSwiGlu); at the right edge the panel is zero-padded. Blocks of kMR rows, the last one of the rows left.
// While the register blocks run, the same rows of the panel at column `next` (the one this thread does
// next; -1: none) are prefetched into L2, a share before each block, so that its packing reads L2.
void gemm_panel(const Gemm& g, int r0, int r1, int j0, int next) {
  const bool swiglu = g.mode == kSwiGlu;
  const int step = swiglu ? kPanel / 2 : kPanel;
  const int width = std::min(step, g.N - j0);
  const bool ahead = next >= 0 && next + step <= g.N;
  const float* B0 = g.B0 + j0;
  const float* B1 = swiglu ? g.B1 + j0 : nullptr;
  alignas(64) float panel[kKBlock * kPanel];
  alignas(64) float acc[kRowChunk * kPanel];
  const int rows = r1 - r0;
  const int blocks = (rows + kMR - 1) / kMR;
  auto block_rows = [&](int b) { return std::min(kMR, rows - kMR * b); };  // the last block: the rows left
  for (int k0 = 0; k0 < g.K; k0 += kKBlock) {
    const int kc = std::min(kKBlock, g.K - k0);
    const bool fused = width == step;  // full panel: the first register block packs it
    const Source src{B0 + static_cast<long>(k0) * g.ldb,
                     swiglu ? B1 + static_cast<long>(k0) * g.ldb : B0 + static_cast<long>(k0) * g.ldb + kPanel / 2,
                     g.ldb};
    for (int k = 0; k < kc && !fused; ++k) {  // the zero-padded edge panel
      const float* b0 = B0 + static_cast<long>(k0 + k) * g.ldb;
      const float* b1 = swiglu ? B1 + static_cast<long>(k0 + k) * g.ldb : nullptr;
      float* dst = panel + k * kPanel;
      for (int j = 0; j < kPanel; ++j) dst[j] = 0.0f;
      for (int j = 0; j < width; ++j) {
        dst[j] = b0[j];
        if (swiglu) dst[step + j] = b1[j];
      }
    }
    const int share = (kc + blocks - 1) / blocks;
    for (int b = 0; b < blocks; ++b) {
      Ahead pre{nullptr, nullptr, g.ldb, 0, 0};
      if (ahead) {
        pre.low = g.B0 + next;
        pre.high = swiglu ? g.B1 + next : g.B0 + next + kPanel / 2;
        pre.begin = k0 + std::min(kc, b * share);
        pre.end = k0 + std::min(kc, (b + 1) * share);
      }
      const float* a = g.A + static_cast<long>(r0 + kMR * b) * g.lda + k0;
      if (fused && b == 0)
        micro_any<true>(block_rows(b), a, g.lda, panel, kc, acc, k0 == 0, src, pre);
      else
        micro_any<false>(block_rows(b), a, g.lda, panel, kc, acc + b * kMR * kPanel, k0 == 0, src, pre);
    }
  }
  for (int i = r0; i < r1; ++i) epilogue(g, acc + (i - r0) * kPanel, step, i, j0, width);
}

// Rows [r0, r1) of output columns [j0, j0 + step) straight from B, for matmuls of fewer than kMR rows
// (a one-token head, a stream update), which are bound by reading B once: per output the same FMA chain
// as micro_kernel.
void gemm_columns(const Gemm& g, int r0, int r1, int j0) {
  const bool swiglu = g.mode == kSwiGlu;
  const int step = swiglu ? kPanel / 2 : kPanel;
  const int width = std::min(step, g.N - j0);
  for (int i = r0; i < r1; ++i) {
    const float* a = g.A + static_cast<long>(i) * g.lda;
    alignas(64) float acc[kPanel];
    if (width == step) {
      Vec c[kNV];
      for (int v = 0; v < kNV; ++v) c[v] = Vec::zero();
      const int half = swiglu ? kNV / 2 : kNV;
      for (int k = 0; k < g.K; ++k) {
        const float* b0 = g.B0 + static_cast<long>(k) * g.ldb + j0;
        const float* b1 = swiglu ? g.B1 + static_cast<long>(k) * g.ldb + j0 : b0 + step / 2;
        if (k + 8 < g.K) {
          for (int l = 0; l < step; l += 16) {
            prefetch(b0 + 8 * g.ldb + l);
            if (swiglu) prefetch(b1 + 8 * g.ldb + l);
          }
        }
        const Vec av = Vec::set1(a[k]);
        if (swiglu) {
          for (int v = 0; v < half; ++v) c[v] = Vec::fma(av, Vec::load(b0 + Vec::W * v), c[v]);
          for (int v = 0; v < half; ++v) c[half + v] = Vec::fma(av, Vec::load(b1 + Vec::W * v), c[half + v]);
        } else {
          for (int v = 0; v < kNV; ++v) c[v] = Vec::fma(av, Vec::load(b0 + Vec::W * v), c[v]);
        }
      }
      for (int v = 0; v < kNV; ++v) c[v].store(acc + Vec::W * v);
    } else {
      for (int j = 0; j < width; ++j) {
        float s0 = 0.0f, s1 = 0.0f;
        for (int k = 0; k < g.K; ++k) {
          s0 = std::fma(a[k], g.B0[static_cast<long>(k) * g.ldb + j0 + j], s0);
          if (swiglu) s1 = std::fma(a[k], g.B1[static_cast<long>(k) * g.ldb + j0 + j], s1);
        }
        acc[j] = s0;
        if (swiglu) acc[step + j] = s1;
      }
    }
    epilogue(g, acc, step, i, j0, width);
  }
}
#endif  // TIREX_AVX2

// A persistent pool of worker threads. run(n, threads, fn) calls fn(i) for every i in [0, n) on the caller
// and up to threads - 1 workers. Items are claimed one at a time with a compare-and-swap on
// (job generation, next item); the caller itself does every item that no worker has claimed and then
// waits only for items a worker has started. A worker that the OS does not schedule in time (another
// process holds the core) therefore costs nothing: there is no join, and no thread start per call.
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

class Pool {
 public:
  void run(int n, int threads, const std::function<void(int)>& fn) {
    if (threads <= 1 || n <= 1) {
      for (int i = 0; i < n; ++i) fn(i);
      return;
    }
    std::unique_lock<std::mutex> job(job_mutex_, std::try_to_lock);
    if (!job.owns_lock()) {  // another Python thread's job is running: do this one alone
      for (int i = 0; i < n; ++i) fn(i);
      return;
    }
    uint32_t gen;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      while (static_cast<int>(workers_.size()) < threads - 1) {
        workers_.emplace_back([this] { worker(); });
        workers_.back().detach();  // the pool lives as long as the process
      }
      fn_ = &fn;
      n_ = n;
      allowed_ = threads - 1;
      done_.store(0);
      gen = ++gen_;
      joined_.store(static_cast<uint64_t>(gen) << 32);
      state_.store(static_cast<uint64_t>(gen) << 32, std::memory_order_release);
    }
    wake_.notify_all();
    claim(gen);
    for (int spins = 0; done_.load(std::memory_order_acquire) < n; ++spins)
      if (spins > 64) std::this_thread::yield();
  }

 private:
  void claim(uint32_t gen) {
    for (;;) {
      uint64_t s = state_.load(std::memory_order_acquire);
      if ((s >> 32) != gen) return;
      const uint32_t i = static_cast<uint32_t>(s);
      if (static_cast<int>(i) >= n_) return;
      if (!state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel)) continue;
      (*fn_)(static_cast<int>(i));  // the job outlives every claimed item: run() waits for them
      done_.fetch_add(1, std::memory_order_release);
    }
  }

  // After a job a worker watches for the next one for kSpin before it sleeps. A forward calls the kernels
  // back to back with some tens of microseconds of Python between them, and waking a sleeping thread
  // takes longer than that on a virtual machine (measured on a 2-vCPU Sapphire Rapids VM: 35 us median,
  // 105-130 us p99; 0.2 us for a watching thread), during which the caller works alone. Batch-1
  // forecast at the published size, two threads: 37.9 -> 36.2 ms. The watch is bounded, so an idle
  // process sleeps, and a busy machine loses at most kSpin of a core per gap.
  static constexpr auto kSpin = std::chrono::microseconds(300);

  void worker() {
    uint32_t seen = 0;
    for (;;) {
      uint32_t next = static_cast<uint32_t>(state_.load(std::memory_order_acquire) >> 32);
      if (next == seen) {
        const auto until = std::chrono::steady_clock::now() + kSpin;
        for (int i = 0; next == seen; ++i) {
          cpu_relax();
          next = static_cast<uint32_t>(state_.load(std::memory_order_acquire) >> 32);
          if ((i & 63) == 63 && std::chrono::steady_clock::now() > until) break;
        }
      }
      if (next == seen) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return gen_ != seen; });
        next = gen_;
      }
      seen = next;
      if (join(seen)) claim(seen);
    }
  }

  // Take one of the job's worker places (at most threads - 1 workers take part); false if they are
  // taken or job `gen` is over (joined_ holds the generation in its high half, the count in the low).
  bool join(uint32_t gen) {
    uint64_t j = joined_.load(std::memory_order_acquire);
    for (;;) {
      if ((j >> 32) != gen || static_cast<int>(static_cast<uint32_t>(j)) >= allowed_) return false;
      if (joined_.compare_exchange_weak(j, j + 1, std::memory_order_acq_rel)) return true;
    }
  }

  std::mutex job_mutex_, mutex_;
  std::condition_variable wake_;
  std::vector<std::thread> workers_;
  const std::function<void(int)>* fn_ = nullptr;
  int n_ = 0, allowed_ = 0;
  uint32_t gen_ = 0;
  std::atomic<uint64_t> state_{0};
  std::atomic<uint64_t> joined_{0};
  std::atomic<int> done_{0};
};

Pool& pool() {
  // a forked child has none of its parent's worker threads: it starts a pool of its own
  static Pool* instance = new Pool;
  static pid_t owner = getpid();
  if (owner != getpid()) {
    owner = getpid();
    instance = new Pool;
  }
  return *instance;
}

// fn(begin, end) over [0, n) in blocks of `grain`, handed out dynamically to up to num_threads threads.
template <class F>
void parallel_for(int n, int grain, int num_threads, F fn) {
  const int blocks = (n + grain - 1) / grain;  // callers pick grains of ~0.1 ms or more
  const int workers = std::max(1, std::min(num_threads, blocks));
  pool().run(blocks, workers, [&](int i) { fn(i * grain, std::min(n, (i + 1) * grain)); });
}

// Several independent matmuls as one job for the thread pool: the items of all of them are handed out
// together (the head-wise input projections: four small matmuls, each too small to split well alone).
void run_gemms(const Gemm* gs, int count, int num_threads) {
#if TIREX_AVX2
  constexpr int kSmallRows = 6, kColumnStep = 64;
#else
  constexpr int kSmallRows = kMR, kColumnStep = kPanel;
#endif
  // Items of each matmul. Fewer rows than a register block: blocks of columns straight from B (bound by
  // reading B once). Else (row chunk, group of column panels); on AVX-512 and portable, within a group
  // each panel's weights are prefetched while the one before it runs.
  struct Items { int first, groups, step; std::vector<int> starts; bool small; };
  std::vector<Items> items(count);
  double work = 0;  // multiply-adds, a matmul of few rows counted as 8 (it streams all of B anyway)
  for (int m = 0; m < count; ++m) {
    const Gemm& g = gs[m];
    work += static_cast<double>(std::max(g.M, 8)) * g.N * g.K * (g.mode == kSwiGlu ? 2 : 1);
  }
  const int threads = work < 2e6 ? 1 : std::max(1, num_threads);
  int total = 0;
  for (int m = 0; m < count; ++m) {
    const Gemm& g = gs[m];
    Items& it = items[m];
    it.first = total;
    it.small = g.M < kSmallRows;
    if (g.M <= 0 || g.N <= 0 || g.K <= 0) {
      it.groups = 0;
      continue;
    }
    if (it.small) {
      it.step = g.mode == kSwiGlu ? kColumnStep / 2 : kColumnStep;
      it.groups = (g.N + it.step - 1) / it.step;
      total += it.groups;
      continue;
    }
    it.step = g.mode == kSwiGlu ? kPanel / 2 : kPanel;
    const int panels = (g.N + it.step - 1) / it.step;
    const int chunks = (g.M + kRowChunk - 1) / kRowChunk;
#if TIREX_AVX2
    // groups of about 1M multiply-adds or more
    const long per_panel = static_cast<long>(std::min(g.M, kRowChunk)) * g.K * it.step;
    const int group_panels = std::max(1, static_cast<int>(1000000 / std::max(per_panel, 1L)));
    const int wanted = (panels + group_panels - 1) / group_panels;
#else
    // about four groups per thread over all chunks and matmuls; for a single matmul, items (row chunks x
    // groups) a multiple of the thread count, so that the threads end together (one chunk: a batch-1
    // forward; 11 chunks: 2048 rows, which alone would leave one of two threads a chunk short)
    const int per_job = 4 * threads;
    int wanted = std::max(1, (per_job + chunks * count - 1) / (chunks * count));
    if (threads > 1 && count == 1) {
      while ((chunks * wanted) % threads != 0) ++wanted;
    }
#endif
    it.groups = std::max(1, std::min(panels, wanted));
    // groups as even as can be, the larger ones first (claimed first, so the last items are the short ones)
    it.starts.resize(it.groups + 1);
    const int base = panels / it.groups, extra = panels % it.groups;
    it.starts[0] = 0;
    for (int q = 0; q < it.groups; ++q) it.starts[q + 1] = it.starts[q] + base + (q < extra ? 1 : 0);
    total += chunks * it.groups;
  }
  if (total == 0) return;
  pool().run(total, std::min(threads, total), [&](int w) {
    int m = 0;
    while (m + 1 < count && items[m + 1].first <= w) ++m;
    const Gemm& g = gs[m];
    const Items& it = items[m];
    const int local = w - it.first;
    if (it.small) {
      gemm_columns(g, 0, g.M, local * it.step);
      return;
    }
    const int ci = local / it.groups, gi = local % it.groups;
    const int r0 = ci * kRowChunk, r1 = std::min(g.M, r0 + kRowChunk);
    const int last = it.starts[gi + 1];
    for (int q = it.starts[gi]; q < last; ++q) {
#if TIREX_AVX2
      gemm_panel(g, r0, r1, q * it.step);
#else
      gemm_panel(g, r0, r1, q * it.step, q + 1 < last ? (q + 1) * it.step : -1);
#endif
    }
  });
}

}  // namespace

extern "C" {

// out = x * rsqrt(mean(x^2) + eps) * w, row by row. x: (rows, dim); out: float32, or bfloat16 bits
// (rounded to nearest even) when out_bf16 is set (the fast mode's matmul input). With heads > 1 the
// output is head-major, (heads, rows, dim / heads): the layout of the head-wise input projection.
void tirex_rms_norm(const float* x, const float* w, void* out, int rows, int dim, float eps, int out_bf16, int heads,
                    int num_threads) {
  const int hd = dim / heads;
  parallel_for(rows, 64, num_threads, [&](int r0, int r1) {
    for (int r = r0; r < r1; ++r) {
      const float* xr = x + static_cast<size_t>(r) * dim;
      const float sq = fixed_order_sum<true>(xr, dim, 0.0f);
      const float inv = 1.0f / std::sqrt(sq / dim + eps);
      for (int h = 0; h < heads; ++h) {
        const size_t dst = (static_cast<size_t>(h) * rows + r) * hd;
        const float* xh = xr + h * hd;
        const float* wh = w + h * hd;
        if (out_bf16) {
          uint16_t* o = static_cast<uint16_t*>(out) + dst;
#pragma omp simd
          for (int j = 0; j < hd; ++j) o[j] = float_to_bf16((xh[j] * inv) * wh[j]);
        } else {
          float* o = static_cast<float*>(out) + dst;
#pragma omp simd
          for (int j = 0; j < hd; ++j) o[j] = (xh[j] * inv) * wh[j];
        }
      }
    }
  });
}

// bfloat16 variant for the fast mode: out = bf16(silu(gate) * up), all bfloat16 bits; out may be gate.
void tirex_silu_mul_bf16(const uint16_t* gate, const uint16_t* up, uint16_t* out, long n, int num_threads) {
  const int grain = 1 << 15;
  const int blocks = static_cast<int>((n + grain - 1) / grain);
  parallel_for(blocks, 1, num_threads, [&](int b0, int b1) {
    const long end = std::min<long>(n, static_cast<long>(b1) * grain);
#pragma omp simd
    for (long j = static_cast<long>(b0) * grain; j < end; ++j) {
      const float g = bf16_to_float(gate[j]);
      out[j] = float_to_bf16((g / (1.0f + exp_f(-g))) * bf16_to_float(up[j]));
    }
  });
}

// x += float(y) for y in bfloat16 bits (the fast mode's residual add), n elements.
void tirex_add_bf16(float* x, const uint16_t* y, long n, int num_threads) {
  const int grain = 1 << 15;
  const int blocks = static_cast<int>((n + grain - 1) / grain);
  parallel_for(blocks, 1, num_threads, [&](int b0, int b1) {
    const long end = std::min<long>(n, static_cast<long>(b1) * grain);
#pragma omp simd
    for (long j = static_cast<long>(b0) * grain; j < end; ++j) x[j] += bf16_to_float(y[j]);
  });
}

// out = silu(gate) * up, all (rows, hidden); out may be gate itself.
void tirex_silu_mul(const float* gate, const float* up, float* out, int rows, int hidden, int num_threads) {
  parallel_for(rows, 32, num_threads, [&](int r0, int r1) {
    const size_t begin = static_cast<size_t>(r0) * hidden, end = static_cast<size_t>(r1) * hidden;
#pragma omp simd
    for (size_t j = begin; j < end; ++j) out[j] = (gate[j] / (1.0f + exp_f(-gate[j]))) * up[j];
  });
}

// The instruction-set level this library was compiled for (0 portable, 1 avx2, 2 avx512, 3 avx512_bf16).
int tirex_level() { return TIREX_LEVEL; }

// 1 if the compiler maps std::fma to an FMA instruction; else (an x86-64 CPU before AVX2, built portable)
// each one is a library call, and the Python side leaves the weight matmuls to torch.
int tirex_native_fma() {
#if defined(__FMA__) || defined(__FP_FAST_FMAF) || defined(__aarch64__)
  return 1;
#else
  return 0;
#endif
}

// Kept for callers of earlier versions: every level has the matmuls now.
int tirex_has_gemm() { return 1; }

// C = A @ B with the epilogue `mode` (see GemmMode): A (M x K, row stride lda), B0 / B1 (K x N, row
// stride ldb; B1 only for kSwiGlu), bias (N) or null, C (M x N, row stride ldc; float32, or bfloat16 bits
// for kStoreBf16). Returns 0.
int tirex_gemm(const float* A, long lda, const float* B0, const float* B1, long ldb, const float* bias, void* C,
               long ldc, int M, int N, int K, int mode, int num_threads) {
  if (M <= 0 || N <= 0 || K <= 0) return 0;
  const Gemm g{A, lda, B0, B1, ldb, bias, C, ldc, M, N, K, mode};
  run_gemms(&g, 1, num_threads);
  return 0;
}

// The head-wise form: for h in [0, heads), C[h] = A[h] @ B[h] with mode kStore or kStoreBf16 (no bias),
// A[h] at A + h * a_head (M x K, row stride lda), B[h] at B + h * b_head (K x N, row stride ldb), C[h] at
// element offset h * c_head (M x N, row stride ldc). One job for all heads. Returns 0.
int tirex_gemm_heads(const float* A, long lda, long a_head, const float* B, long ldb, long b_head, void* C, long ldc,
                     long c_head, int heads, int M, int N, int K, int mode, int num_threads) {
  if (heads <= 0 || M <= 0 || N <= 0 || K <= 0) return 0;
  if (mode != kStore && mode != kStoreBf16) return 1;
  std::vector<Gemm> gs;
  for (int h = 0; h < heads; ++h) {
    void* c = mode == kStoreBf16 ? static_cast<void*>(static_cast<uint16_t*>(C) + h * c_head)
                                 : static_cast<void*>(static_cast<float*>(C) + h * c_head);
    gs.push_back(Gemm{A + h * a_head, lda, B + h * b_head, nullptr, ldb, nullptr, c, ldc, M, N, K, mode});
  }
  run_gemms(gs.data(), heads, num_threads);
  return 0;
}

// 0: the recurrent product never uses AVX512-BF16 dot products (measured on a Sapphire Rapids core: 7%
// faster than widening the pairs for single rows, 23% slower for blocks of rows, and summing pairs of k
// would make results differ from the other levels). Kept for callers of earlier versions.
int tirex_has_bf16_dot() { return 0; }

// 1 if the recurrence reads R_pairs when given (AVX2 / AVX-512 widening), else 0.
int tirex_uses_bf16_pairs() { return TIREX_LEVEL >= 1; }

// The column block of the R_pairs layout (H, 4D / block, D / 2, block, 2); 0 where none is read.
int tirex_bf16_pairs_block() {
#if TIREX_AVX2 || TIREX_AVX512
  return kPairBlock;
#else
  return 0;
#endif
}

// With norm_w non-null the output is residual + group_norm(y) * (1 + norm_w) (residual may be null).
// wx is float32, or bfloat16 bits when wx_is_bf16 is set. With snap non-null the state after the first
// snap_t steps (1 <= snap_t <= T) is also written there, in the layout of state.
// R_pairs: optional bfloat16 repacking of R (layout: tirex_bf16_pairs_block), used when bf16 is set.
int tirex_slstm_forward(const void* wx, int wx_is_bf16, const float* R, const uint16_t* R_pairs, const float* bias,
                        float* state, float* out, const float* norm_w, const float* residual, float eps, int H, int B,
                        int T, int D, int fresh, int bf16, int num_threads, float* snap, int snap_t) {
  if (D % 8 != 0 || H <= 0 || B <= 0 || T <= 0) return 1;
  if (snap && (snap_t < 1 || snap_t > T)) return 1;
  Problem p{wx_is_bf16 ? nullptr : static_cast<const float*>(wx),
            wx_is_bf16 ? static_cast<const uint16_t*>(wx) : nullptr,
            R, R_pairs, bias, state, out, norm_w, residual, eps, H, B, T, D, fresh != 0, snap, snap_t};
  const int rows = 8;  // batch rows per item: a multiple of the 4-row matmul block
  std::vector<std::pair<int, int>> items;  // (head, first row)
  for (int h = 0; h < H; ++h)
    for (int b0 = 0; b0 < B; b0 += rows) items.emplace_back(h, b0);
  // Below ~8M multiply-adds (a tenth of a millisecond) handing out work costs more than it saves. Small
  // forwards pass torch's full thread count here (tirex.inference.kernel_threads).
  const double multiply_adds = static_cast<double>(H) * B * T * D * 4.0 * D;
  const int wanted = multiply_adds < 8e6 ? 1 : num_threads;
  const int workers = std::max(1, std::min<int>(wanted, static_cast<int>(items.size())));
  // dynamic hand-out (see Pool): a thread slowed by other load simply takes fewer items
  pool().run(static_cast<int>(items.size()), workers, [&](int i) {
    const int h = items[i].first, b0 = items[i].second, b1 = std::min(B, b0 + rows);
    if (bf16) run_item<true>(p, h, b0, b1); else run_item<false>(p, h, b0, b1);
  });
  return 0;
}

// One sLSTM block's operands for tirex_blocks_forward (tirex.cpu_forward.BlockOperands mirrors it).
struct TirexBlock {
  const float* norm_slstm;  // (E) RMSNorm weight before the sLSTM layer
  const float* projection;  // (H, D, 4D) head-wise input projections, row-major
  const float* recurrent;   // (H, D, 4D) as tirex_slstm_forward's R
  const uint16_t* pairs;    // its bfloat16 pairs, or null
  const float* bias;        // (H, 4, D)
  const float* group_norm;  // (E) the group norm's weight
  const float* norm_ffn;    // (E) RMSNorm weight before the feed-forward
  const float* gate;        // (E, F) row-major (the transpose of nn.Linear's weight)
  const float* up;          // (E, F)
  const float* down;        // (F, E)
  float eps_slstm, eps_ffn;
  int heads, head_dim, ffn_dim, bf16;  // bf16: bfloat16-rounded pre-activations and recurrence
};

// TiRexModel's blocks on the residual stream of B series x T tokens, as tirex.cpu_forward runs them one
// call at a time (the same calls, the same order: the same bits), without returning to Python between
// them. The stream starts in stream_a (B * T, E); block i reads one of stream_a / stream_b and writes the
// other. The last block's feed-forward runs on the last `kept` tokens of each series only: with kept < T
// they are first copied to `last` (B * kept, E), where the output then is; else the output is in stream_a
// for an even number of blocks, stream_b for an odd. Per block i: states[i] (4, H, B, D) the starting state
// (unless fresh) and the final one, snaps[i] the state after snap_t steps (or null), hidden[i] a copy of the
// block's output (B, T, E) (or null). norm: max(B * T, chunk) * E floats; scratch: the larger of the
// pre-activations (H * B * T * 4D, in bfloat16 where bf16) and chunk * F floats. The feed-forward runs on
// chunks of `chunk` rows. Returns 0, or the failing call's status.
int tirex_blocks_forward(const TirexBlock* blocks, int n_blocks, float* const* states, float* const* snaps,
                         float* const* hidden, float* stream_a, float* stream_b, float* last, float* norm,
                         void* scratch, int B, int T, int E, int kept, int fresh, int snap_t, float group_eps,
                         int chunk, int num_threads) {
  const int rows = B * T;
  for (int i = 0; i < n_blocks; ++i) {
    const TirexBlock& b = blocks[i];
    const int H = b.heads, D = b.head_dim, F = b.ffn_dim;
    float* h = i % 2 == 0 ? stream_a : stream_b;
    float* out = i % 2 == 0 ? stream_b : stream_a;
    tirex_rms_norm(h, b.norm_slstm, norm, rows, E, b.eps_slstm, 0, H, num_threads);
    int status = tirex_gemm_heads(norm, D, static_cast<long>(rows) * D, b.projection, 4 * D,
                                  static_cast<long>(D) * 4 * D, scratch, 4 * D, static_cast<long>(rows) * 4 * D, H,
                                  rows, 4 * D, D, b.bf16 ? kStoreBf16 : kStore, num_threads);
    if (status != 0) return status;
    status = tirex_slstm_forward(scratch, b.bf16, b.recurrent, b.pairs, b.bias, states[i], out, b.group_norm, h,
                                 group_eps, H, B, T, D, fresh, b.bf16, num_threads, snaps[i], snaps[i] ? snap_t : 0);
    if (status != 0) return status;
    float* x = out;
    int x_rows = rows;
    if (i == n_blocks - 1 && kept < T) {  // the feed-forward only where the head will read
      for (int s = 0; s < B; ++s)
        std::memcpy(last + static_cast<size_t>(s) * kept * E, out + (static_cast<size_t>(s) * T + T - kept) * E,
                    sizeof(float) * kept * E);
      x = last;
      x_rows = B * kept;
    }
    for (int start = 0; start < x_rows; start += chunk) {
      const int m = std::min(chunk, x_rows - start);
      float* xs = x + static_cast<size_t>(start) * E;
      tirex_rms_norm(xs, b.norm_ffn, norm, m, E, b.eps_ffn, 0, 1, num_threads);
      tirex_gemm(norm, E, b.gate, b.up, F, nullptr, scratch, F, m, F, E, kSwiGlu, num_threads);
      tirex_gemm(static_cast<const float*>(scratch), F, b.down, nullptr, E, nullptr, xs, E, m, E, F, kAccumulate,
                 num_threads);
    }
    if (hidden[i]) std::memcpy(hidden[i], x, sizeof(float) * static_cast<size_t>(x_rows) * E);
  }
  return 0;
}

}  // extern "C"
