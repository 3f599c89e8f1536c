// Fused sLSTM recurrence kernels: all time steps of one layer in one launch, heads in parallel.
//
// Layouts (all float32, contiguous):
//   wx          (H, B, T, 4D)  input pre-activations, gate-major on the last axis (i, f, z, o)
//   R           (H, D, 4D)     recurrent matrix; RT (H, 4D, D) its transpose (backward)
//   bias        (H, 4D)
//   state       (4, H, B, D)   y, c, n, m
//   y_out       (B, T, H, D)   hidden output of every step
//   saved_pre   (H, B, T, 4D)  gate pre-activations (training only)
//   saved_state (3, H, B, T, D) c, n, m after every step (training only)
//
// One thread block owns one head and RB batch rows for all T steps; thread (u, r) owns unit u of
// row r and computes all four gates of that unit, so the gate math needs no communication. The
// previous y of the block's rows lives in shared memory (double-buffered: one barrier per step).
// With bfloat16 emulation the recurrent weights are held in shared memory as bfloat16 (exact: the
// reference rounds R to bfloat16 anyway), 4D * D * 2 bytes = 128 KiB at head_dim 128; in float32
// mode (training) R is read through L2.
//
// Numerics match tirex.slstm.slstm_recurrence_torch: in emulation mode the input pre-activations,
// the recurrent matmul result and all four states are rounded to bfloat16 (nearest-even) every step.
// The backward kernel is the exact gradient of the float32 recurrence (the bfloat16 roundings are
// treated as identity, as autograd does for dtype casts). Weight and bias gradients are reductions
// over (batch, time) done by the caller with one batched matmul.
//
// No torch headers here: this file compiles on its own with nvcc (see tests/test_cuda_compile.py).

#include <cuda_runtime.h>
#include <stdint.h>

namespace {

__device__ __forceinline__ float round_bf16(float x) {
  uint32_t b = __float_as_uint(x);
  uint32_t r = (b + 0x7FFFu + ((b >> 16) & 1u)) & 0xFFFF0000u;
  return x != x ? x : __uint_as_float(r);
}

__device__ __forceinline__ uint16_t to_bf16_bits(float x) { return (uint16_t)(__float_as_uint(round_bf16(x)) >> 16); }
__device__ __forceinline__ float from_bf16_bits(uint16_t b) { return __uint_as_float(((uint32_t)b) << 16); }

__device__ __forceinline__ float rnd(float x, bool bf16) { return bf16 ? round_bf16(x) : x; }

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float logsigmoidf_(float x) { return fminf(x, 0.0f) - log1pf(expf(-fabsf(x))); }

// RB batch rows per block; blockDim = (D, RB).
template <int RB, bool R_IN_SHARED>
__global__ void slstm_forward_kernel(const float* __restrict__ wx, const float* __restrict__ R,
                                     const float* __restrict__ bias, const float* __restrict__ state_in,
                                     float* __restrict__ state_out, float* __restrict__ y_out,
                                     float* __restrict__ saved_pre, float* __restrict__ saved_state, int H, int B,
                                     int T, int D, bool fresh, bool bf16) {
  extern __shared__ unsigned char smem[];
  const int G = 4 * D;
  const int h = blockIdx.x;
  const int u = threadIdx.x;
  const int r = threadIdx.y;
  const int b = blockIdx.y * RB + r;
  const bool active = b < B;
  float* y_s = reinterpret_cast<float*>(smem);  // [2][RB][D]
  uint16_t* R_s = reinterpret_cast<uint16_t*>(smem + sizeof(float) * 2 * RB * D);  // [D][G] bfloat16
  const float* Rh = R + (size_t)h * D * G;

  if (R_IN_SHARED) {
    for (int idx = threadIdx.y * D + threadIdx.x; idx < D * G; idx += RB * D) R_s[idx] = to_bf16_bits(Rh[idx]);
  }
  const size_t HBD = (size_t)H * B * D;
  const size_t sidx = ((size_t)h * B + b) * D + u;
  float y = 0.f, c = 0.f, n = 0.f, m = 0.f;
  if (active && !fresh) {
    y = state_in[sidx];
    c = state_in[HBD + sidx];
    n = state_in[2 * HBD + sidx];
    m = state_in[3 * HBD + sidx];
  }
  y_s[r * D + u] = y;
  float bi_[4];
#pragma unroll
  for (int g = 0; g < 4; ++g) bi_[g] = bias[(size_t)h * G + g * D + u];
  __syncthreads();

  for (int t = 0; t < T; ++t) {
    const float* yp = y_s + (t & 1) * RB * D + r * D;
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    for (int k = 0; k < D; ++k) {
      const float yk = yp[k];
#pragma unroll
      for (int g = 0; g < 4; ++g) {
        const float w = R_IN_SHARED ? from_bf16_bits(R_s[k * G + g * D + u]) : rnd(__ldg(Rh + (size_t)k * G + g * D + u), bf16);
        acc[g] = fmaf(yk, w, acc[g]);
      }
    }
    if (active) {
      const size_t row = (((size_t)h * B + b) * T + t) * G;
      float pre[4];
#pragma unroll
      for (int g = 0; g < 4; ++g) pre[g] = __fadd_rn(__fadd_rn(rnd(wx[row + g * D + u], bf16), rnd(acc[g], bf16)), bi_[g]);
      const float log_f = __fadd_rn(m, logsigmoidf_(fminf(pre[1], 15.0f)));
      const bool first = fresh && t == 0;
      const float m_new = first ? pre[0] : fmaxf(pre[0], log_f);
      const float ig = fminf(expf(__fsub_rn(pre[0], m_new)), 1.0f);
      const float fg = fminf(expf(__fsub_rn(log_f, m_new)), 1.0f);
      const float c_new = __fadd_rn(__fmul_rn(fg, c), __fmul_rn(ig, tanhf(pre[2])));
      const float n_new = __fadd_rn(__fmul_rn(fg, n), ig);
      const float y_new = __fdiv_rn(__fmul_rn(sigmoidf_(pre[3]), c_new), n_new);
      y = rnd(y_new, bf16);
      c = rnd(c_new, bf16);
      n = rnd(n_new, bf16);
      m = rnd(m_new, bf16);
      y_out[(((size_t)b * T + t) * H + h) * D + u] = y;
      if (saved_pre != nullptr) {
#pragma unroll
        for (int g = 0; g < 4; ++g) saved_pre[row + g * D + u] = pre[g];
        const size_t srow = (((size_t)h * B + b) * T + t) * D + u;
        const size_t HBTD = (size_t)H * B * T * D;
        saved_state[srow] = c;
        saved_state[HBTD + srow] = n;
        saved_state[2 * HBTD + srow] = m;
      }
    }
    y_s[((t + 1) & 1) * RB * D + r * D + u] = y;
    __syncthreads();
  }
  if (active) {
    state_out[sidx] = y;
    state_out[HBD + sidx] = c;
    state_out[2 * HBD + sidx] = n;
    state_out[3 * HBD + sidx] = m;
  }
}

// Backward through all steps, t = T-1 .. 0. grad_y (B, T, H, D); grad_state (4, H, B, D) gradient of
// the final state (may be zeros). Writes grad_wx (H, B, T, 4D) (= gradient of the pre-activations,
// also the bias / R gradient's factor) and grad_state_in (4, H, B, D).
template <int RB>
__global__ void slstm_backward_kernel(const float* __restrict__ grad_y, const float* __restrict__ grad_state,
                                      const float* __restrict__ RT, const float* __restrict__ state_in,
                                      const float* __restrict__ saved_pre, const float* __restrict__ saved_state,
                                      float* __restrict__ grad_wx, float* __restrict__ grad_state_in, int H, int B,
                                      int T, int D, bool fresh) {
  extern __shared__ unsigned char smem[];
  const int G = 4 * D;
  const int h = blockIdx.x;
  const int u = threadIdx.x;
  const int r = threadIdx.y;
  const int b = blockIdx.y * RB + r;
  const bool active = b < B;
  float* gpre_s = reinterpret_cast<float*>(smem);  // [2][RB][G]
  const float* RTh = RT + (size_t)h * G * D;
  const size_t HBD = (size_t)H * B * D;
  const size_t HBTD = (size_t)H * B * T * D;
  const size_t sidx = ((size_t)h * B + b) * D + u;

  float gy_rec = 0.f, gc = 0.f, gn = 0.f, gm = 0.f;
  if (active) {
    gy_rec = grad_state[sidx];
    gc = grad_state[HBD + sidx];
    gn = grad_state[2 * HBD + sidx];
    gm = grad_state[3 * HBD + sidx];
  }
  for (int t = T - 1; t >= 0; --t) {
    float* gpre_buf = gpre_s + (t & 1) * RB * G + r * G;
    if (active) {
      const size_t row = (((size_t)h * B + b) * T + t) * G;
      const size_t srow = (((size_t)h * B + b) * T + t) * D + u;
      float c_prev, n_prev, m_prev;
      if (t > 0) {
        c_prev = saved_state[srow - D];
        n_prev = saved_state[HBTD + srow - D];
        m_prev = saved_state[2 * HBTD + srow - D];
      } else if (fresh) {
        c_prev = n_prev = m_prev = 0.f;
      } else {
        c_prev = state_in[HBD + sidx];
        n_prev = state_in[2 * HBD + sidx];
        m_prev = state_in[3 * HBD + sidx];
      }
      const float ip = saved_pre[row + u], fp = saved_pre[row + D + u];
      const float zp = saved_pre[row + 2 * D + u], op = saved_pre[row + 3 * D + u];
      // recompute the step
      const float fpc = fminf(fp, 15.0f);
      const float log_f = m_prev + logsigmoidf_(fpc);
      const bool first = fresh && t == 0;
      const float m_new = first ? ip : fmaxf(ip, log_f);
      const float ei = expf(ip - m_new), ef = expf(log_f - m_new);
      const float ig = fminf(ei, 1.0f), fg = fminf(ef, 1.0f);
      const float tz = tanhf(zp);
      const float so = sigmoidf_(op);
      const float c_new = fg * c_prev + ig * tz;
      const float n_new = fg * n_prev + ig;
      // gradients
      const float gy = grad_y[(((size_t)b * T + t) * H + h) * D + u] + gy_rec;
      const float g_so = gy * c_new / n_new;
      gc += gy * so / n_new;
      gn -= gy * so * c_new / (n_new * n_new);
      const float gf = gc * c_prev + gn * n_prev;
      const float gi = gc * tz + gn;
      const float gz = gc * ig * (1.0f - tz * tz);
      const float go = g_so * so * (1.0f - so);
      const float gai = ei <= 1.0f ? gi * ei : 0.f;  // clamp(max=1) passes the gradient where not clipped
      const float gaf = ef <= 1.0f ? gf * ef : 0.f;
      float gip = gai, glogf = gaf;
      const float gmn = gm - gai - gaf;  // m_new enters both exponents with a minus sign
      if (first || ip > log_f) {
        gip += gmn;
      } else if (ip < log_f) {
        glogf += gmn;
      } else {  // tie: torch.maximum splits the gradient
        gip += 0.5f * gmn;
        glogf += 0.5f * gmn;
      }
      const float gfp = fp <= 15.0f ? glogf * sigmoidf_(-fpc) : 0.f;  // d logsigmoid(x)/dx = sigmoid(-x)
      gm = glogf;  // d log_f / d m_prev = 1
      gc = gc * fg;
      gn = gn * fg;
      gpre_buf[u] = gip;
      gpre_buf[D + u] = gfp;
      gpre_buf[2 * D + u] = gz;
      gpre_buf[3 * D + u] = go;
      grad_wx[row + u] = gip;
      grad_wx[row + D + u] = gfp;
      grad_wx[row + 2 * D + u] = gz;
      grad_wx[row + 3 * D + u] = go;
    } else {
      for (int g = 0; g < 4; ++g) gpre_buf[g * D + u] = 0.f;
    }
    __syncthreads();
    // gradient reaching the previous y through the recurrent matmul: gpre (1 x G) @ R^T (G x D)
    float acc = 0.f;
    for (int j = 0; j < G; ++j) acc = fmaf(gpre_buf[j], __ldg(RTh + (size_t)j * D + u), acc);
    gy_rec = acc;
  }
  if (active) {
    grad_state_in[sidx] = gy_rec;
    grad_state_in[HBD + sidx] = gc;
    grad_state_in[2 * HBD + sidx] = gn;
    grad_state_in[3 * HBD + sidx] = gm;
  }
}

constexpr int ROWS = 4;  // batch rows per block

}  // namespace

// Host launchers (C ABI for the torch binding). They return a cudaError_t value as int.
extern "C" int tirex_slstm_cuda_forward(const float* wx, const float* R, const float* bias, const float* state_in,
                                        float* state_out, float* y_out, float* saved_pre, float* saved_state, int H,
                                        int B, int T, int D, int fresh, int bf16, cudaStream_t stream) {
  if (D > 1024 / ROWS) return (int)cudaErrorInvalidValue;
  dim3 grid(H, (B + ROWS - 1) / ROWS), block(D, ROWS);
  size_t base = sizeof(float) * 2 * ROWS * D;
  size_t with_r = base + sizeof(uint16_t) * (size_t)D * 4 * D;
  int device = 0, optin = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (bf16 && with_r <= (size_t)optin) {
    auto kernel = slstm_forward_kernel<ROWS, true>;
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)with_r);
    kernel<<<grid, block, with_r, stream>>>(wx, R, bias, state_in, state_out, y_out, saved_pre, saved_state, H, B, T,
                                            D, fresh != 0, true);
  } else {
    slstm_forward_kernel<ROWS, false><<<grid, block, base, stream>>>(wx, R, bias, state_in, state_out, y_out, saved_pre,
                                                                     saved_state, H, B, T, D, fresh != 0, bf16 != 0);
  }
  return (int)cudaGetLastError();
}

extern "C" int tirex_slstm_cuda_backward(const float* grad_y, const float* grad_state, const float* RT,
                                         const float* state_in, const float* saved_pre, const float* saved_state,
                                         float* grad_wx, float* grad_state_in, int H, int B, int T, int D, int fresh,
                                         cudaStream_t stream) {
  if (D > 1024 / ROWS) return (int)cudaErrorInvalidValue;
  dim3 grid(H, (B + ROWS - 1) / ROWS), block(D, ROWS);
  size_t shared = sizeof(float) * 2 * ROWS * 4 * D;
  auto kernel = slstm_backward_kernel<ROWS>;
  if (shared > 48 * 1024) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shared);
  kernel<<<grid, block, shared, stream>>>(grad_y, grad_state, RT, state_in, saved_pre, saved_state, grad_wx,
                                          grad_state_in, H, B, T, D, fresh != 0);
  return (int)cudaGetLastError();
}
