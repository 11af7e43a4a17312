// Shared by lmlab's C++ kernels (native_kernels.cpp, efficient/gemv_kernel.cpp): lmlab.core.jit_extension
// prepends this file to each source before compiling it, so a change here rebuilds both.
#include <immintrin.h>
#include <algorithm>
#include <cstdint>

namespace {

inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

// Every loop over rows (R), activation rows (M), chains (C) or nibble index is fully unrolled, so the
// accumulator arrays live in registers (without the pragma GCC kept them on the stack: ~1.6x slower).
#define UNROLL _Pragma("GCC unroll 16")

// Software prefetch, linear: a block of R rows is R * ldw contiguous bytes, read as R interleaved streams
// that are each too short (GPT-2: 768 bytes) for the hardware prefetcher to lock on (measured: int8 from
// DRAM at ~3 GB/s on one core without this, ~9 GB/s with it, as fast as a plain sum over the bytes). So as
// the kernel moves through a block, it prefetches the bytes kPrefetchAhead past its linear position.
constexpr int64_t kPrefetchAhead = 4096;

struct LinearPrefetch {
  const char* next;  // next line to prefetch
  const char* limit;  // end of this thread's rows
  inline void upto(const char* pos) {  // prefetch every line before pos + kPrefetchAhead
    const char* target = std::min(pos + kPrefetchAhead, limit);
    for (; next < target; next += 64) _mm_prefetch(next, _MM_HINT_T0);
  }
};

constexpr int64_t kGrainRows = 64;  // rows per parallel task at least: small layers still split in two

}  // namespace
