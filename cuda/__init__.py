"""CUDA sources of the fused sLSTM kernels (compiled on first use by tirex)."""
