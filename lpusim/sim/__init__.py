"""The simulator: decode (Python/numpy), a reference interpreter, and Numba kernels."""
