// Torch binding of the fused sLSTM kernels in slstm_kernels.cu (built by tirex/cuda_backend.py).
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

extern "C" int tirex_slstm_cuda_forward(const float* wx, const float* R, const float* bias, const float* state_in,
                                        float* state_out, float* y_out, float* saved_pre, float* saved_state, int H,
                                        int B, int T, int D, int fresh, int bf16, cudaStream_t stream);
extern "C" int tirex_slstm_cuda_backward(const float* grad_y, const float* grad_state, const float* RT,
                                         const float* state_in, const float* saved_pre, const float* saved_state,
                                         float* grad_wx, float* grad_state_in, int H, int B, int T, int D, int fresh,
                                         cudaStream_t stream);

static void check_input(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.scalar_type() == torch::kFloat32, name, " must be float32");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// wx (H, B, T, 4D), R (H, D, 4D), bias (H, 4D), state (4, H, B, D).
// Returns y (B, T, H, D), final state (4, H, B, D), and (if save) pre-activations and per-step states.
std::vector<torch::Tensor> forward(torch::Tensor wx, torch::Tensor R, torch::Tensor bias, torch::Tensor state,
                                   bool fresh, bool bf16, bool save) {
  check_input(wx, "wx");
  check_input(R, "R");
  check_input(bias, "bias");
  check_input(state, "state");
  const c10::cuda::CUDAGuard guard(wx.device());
  const int64_t H = wx.size(0), B = wx.size(1), T = wx.size(2), D = wx.size(3) / 4;
  auto y = torch::empty({B, T, H, D}, wx.options());
  auto state_out = torch::empty_like(state);
  torch::Tensor saved_pre, saved_state;
  if (save) {
    saved_pre = torch::empty_like(wx);
    saved_state = torch::empty({3, H, B, T, D}, wx.options());
  }
  const int err = tirex_slstm_cuda_forward(
      wx.data_ptr<float>(), R.data_ptr<float>(), bias.data_ptr<float>(), state.data_ptr<float>(),
      state_out.data_ptr<float>(), y.data_ptr<float>(), save ? saved_pre.data_ptr<float>() : nullptr,
      save ? saved_state.data_ptr<float>() : nullptr, (int)H, (int)B, (int)T, (int)D, fresh, bf16,
      c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == 0, "sLSTM CUDA forward failed: ", cudaGetErrorString((cudaError_t)err));
  if (save) return {y, state_out, saved_pre, saved_state};
  return {y, state_out};
}

// Returns grad_wx (H, B, T, 4D) and grad of the initial state (4, H, B, D).
std::vector<torch::Tensor> backward(torch::Tensor grad_y, torch::Tensor grad_state, torch::Tensor RT,
                                    torch::Tensor state, torch::Tensor saved_pre, torch::Tensor saved_state,
                                    bool fresh) {
  for (auto* t : {&grad_y, &grad_state, &RT, &state, &saved_pre, &saved_state}) check_input(*t, "backward input");
  const c10::cuda::CUDAGuard guard(grad_y.device());
  const int64_t H = saved_pre.size(0), B = saved_pre.size(1), T = saved_pre.size(2), D = saved_pre.size(3) / 4;
  auto grad_wx = torch::empty_like(saved_pre);
  auto grad_state_in = torch::empty_like(state);
  const int err = tirex_slstm_cuda_backward(
      grad_y.data_ptr<float>(), grad_state.data_ptr<float>(), RT.data_ptr<float>(), state.data_ptr<float>(),
      saved_pre.data_ptr<float>(), saved_state.data_ptr<float>(), grad_wx.data_ptr<float>(),
      grad_state_in.data_ptr<float>(), (int)H, (int)B, (int)T, (int)D, fresh, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == 0, "sLSTM CUDA backward failed: ", cudaGetErrorString((cudaError_t)err));
  return {grad_wx, grad_state_in};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "fused sLSTM recurrence forward (all steps)");
  m.def("backward", &backward, "fused sLSTM recurrence backward (all steps)");
}
