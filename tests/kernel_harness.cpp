// Test harness: calls one C function of the CPU kernel (tirex/_cpu_kernel/slstm_cpu.cpp, compiled into this
// program with -include) on raw little-endian arrays from stdin and writes the results to stdout. It lets
// tests/test_cpu_dispatch.py run the kernel built for another architecture (64-bit ARM under qemu-user)
// and compare its bits with the ones the same calls give on the machine running the tests.
//
//   gemm M N K mode threads has_bias     in: A (M*K) B0 (K*N) [B1 (K*N), mode 3] [bias (N)] C0 (M*N)
//                                        out: C (M*N float32; bfloat16 bits for mode 4)
//   slstm H B T D fresh bf16 norm threads
//                                        in: wx (H*B*T*4D) R (H*D*4D) bias (H*4D) state (4*H*B*D)
//                                            [norm_w (H*D) residual (B*T*H*D), norm 1]
//                                        out: y (B*T*H*D) state (4*H*B*D)
//   rms_norm rows dim heads out_bf16     in: x (rows*dim) w (dim)     out: rows*dim float32 / bfloat16 bits
//   silu_mul rows hidden                 in: gate, up (rows*hidden)   out: rows*hidden float32
//   blocks N H B T D F kept fresh bf16 threads   (E = H*D; tirex_blocks_forward, no bfloat16 pairs)
//                                        in: stream (B*T*E), then per block: norm_slstm (E) projection (H*D*4D)
//                                            R (H*D*4D) bias (H*4D) group_norm (E) norm_ffn (E) gate, up (E*F)
//                                            down (F*E) state (4*H*B*D)
//                                        out: the output rows (B*kept*E), then every block's state
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

std::vector<float> read_floats(size_t n) {
  std::vector<float> v(n);
  if (n && std::fread(v.data(), sizeof(float), n, stdin) != n) {
    std::fprintf(stderr, "short input: wanted %zu floats\n", n);
    std::exit(2);
  }
  return v;
}

template <typename T>
void write(const std::vector<T>& v) { std::fwrite(v.data(), sizeof(T), v.size(), stdout); }

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  const std::string fn = argv[1];
  std::vector<long> a;
  for (int i = 2; i < argc; ++i) a.push_back(std::atol(argv[i]));
  if (fn == "gemm" && a.size() == 6) {
    const long M = a[0], N = a[1], K = a[2], mode = a[3], threads = a[4], has_bias = a[5];
    auto A = read_floats(M * K), B0 = read_floats(K * N);
    auto B1 = read_floats(mode == 3 ? K * N : 0), bias = read_floats(has_bias ? N : 0);
    auto C = read_floats(M * N);
    std::vector<uint16_t> C16(mode == 4 ? M * N : 0);
    const int status = tirex_gemm(A.data(), K, B0.data(), mode == 3 ? B1.data() : nullptr, N,
                                  has_bias ? bias.data() : nullptr, mode == 4 ? static_cast<void*>(C16.data()) : C.data(),
                                  N, M, N, K, mode, threads);
    if (mode == 4) write(C16); else write(C);
    return status;
  }
  if (fn == "slstm" && a.size() == 8) {
    const long H = a[0], B = a[1], T = a[2], D = a[3], fresh = a[4], bf16 = a[5], norm = a[6], threads = a[7];
    auto wx = read_floats(H * B * T * 4 * D), R = read_floats(H * D * 4 * D), bias = read_floats(H * 4 * D);
    auto state = read_floats(4 * H * B * D);
    auto norm_w = read_floats(norm ? H * D : 0), residual = read_floats(norm ? B * T * H * D : 0);
    std::vector<float> y(B * T * H * D);
    const int status = tirex_slstm_forward(wx.data(), 0, R.data(), nullptr, bias.data(), state.data(), y.data(),
                                           norm ? norm_w.data() : nullptr, norm ? residual.data() : nullptr, 1e-5f,
                                           H, B, T, D, fresh, bf16, threads, nullptr, 0);
    write(y);
    write(state);
    return status;
  }
  if (fn == "rms_norm" && a.size() == 4) {
    const long rows = a[0], dim = a[1], heads = a[2], out_bf16 = a[3];
    auto x = read_floats(rows * dim), w = read_floats(dim);
    std::vector<float> out(rows * dim);
    std::vector<uint16_t> out16(rows * dim);
    tirex_rms_norm(x.data(), w.data(), out_bf16 ? static_cast<void*>(out16.data()) : out.data(), rows, dim, 1e-6f,
                   out_bf16, heads, 1);
    if (out_bf16) write(out16); else write(out);
    return 0;
  }
  if (fn == "silu_mul" && a.size() == 2) {
    const long rows = a[0], hidden = a[1];
    auto gate = read_floats(rows * hidden), up = read_floats(rows * hidden);
    std::vector<float> out(rows * hidden);
    tirex_silu_mul(gate.data(), up.data(), out.data(), rows, hidden, 1);
    write(out);
    return 0;
  }
  if (fn == "blocks" && a.size() == 10) {
    const long N = a[0], H = a[1], B = a[2], T = a[3], D = a[4], F = a[5], kept = a[6], fresh = a[7], bf16 = a[8],
               threads = a[9], E = H * D;
    auto stream_a = read_floats(B * T * E);
    std::vector<float> stream_b(B * T * E), last(B * kept * E), norm(B * T * E);
    std::vector<float> scratch(std::max(H * B * T * 4 * D, std::min(B * T, 2048L) * F));
    std::vector<std::vector<float>> w;  // per block: the ten weight arrays, then the state
    std::vector<TirexBlock> blocks;
    std::vector<float*> states, nulls(N, nullptr);
    for (long i = 0; i < N; ++i) {
      for (long n : {E, H * D * 4 * D, H * D * 4 * D, H * 4 * D, E, E, E * F, E * F, F * E, 4 * H * B * D})
        w.push_back(read_floats(n));
      std::vector<float>* b = &w[w.size() - 10];
      blocks.push_back(TirexBlock{b[0].data(), b[1].data(), b[2].data(), nullptr, b[3].data(), b[4].data(),
                                  b[5].data(), b[6].data(), b[7].data(), b[8].data(), 1e-6f, 1e-6f,
                                  static_cast<int>(H), static_cast<int>(D), static_cast<int>(F), static_cast<int>(bf16)});
      states.push_back(b[9].data());
    }
    const int status = tirex_blocks_forward(blocks.data(), N, states.data(), nulls.data(), nulls.data(),
                                            stream_a.data(), stream_b.data(), last.data(), norm.data(), scratch.data(),
                                            B, T, E, kept, fresh, 0, 1e-5f, 2048, threads);
    if (kept < T) write(last); else write(N % 2 == 0 ? stream_a : stream_b);
    for (float* st : states) write(std::vector<float>(st, st + 4 * H * B * D));
    return status;
  }
  std::fprintf(stderr, "unknown call %s with %zu arguments\n", fn.c_str(), a.size());
  return 2;
}
