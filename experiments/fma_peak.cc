// The cores' float32 multiply-add peak, measured: every thread runs 12 independent chains of
// fused multiply-adds (enough to keep two FMA pipes busy at a latency of 4-5 cycles), 256-bit
// (AVX2 + FMA) and, where the CPU has it, 512-bit (AVX-512F). Best of 5 runs, in GFLOP/s (one
// FMA = 2 FLOPs per lane). No convolution or GEMM can beat the number for its instruction set;
// `experiments/onednn_profile.py --peak` prints each convolution's share of it.
//
//   c++ -O2 -std=c++17 -mavx2 -mfma -pthread experiments/fma_peak.cc -o /tmp/fma_peak
//   /tmp/fma_peak [iterations per thread, default 200000000] [threads, default: every core]
//
// Give it as many threads as the kernels it is compared with use (oneDNN: OMP_NUM_THREADS,
// else every core). The 512-bit loop is compiled for AVX-512F by a target attribute and only
// runs where __builtin_cpu_supports("avx512f") says so, so the binary runs on any AVX2 machine.

#include <immintrin.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace {

constexpr int kChains = 12;

// One thread's work: kChains chains of `iterations` FMAs on vector type V; returns a lane of
// the result so that the loop cannot be dropped. A macro, not a template, so that each
// instruction set's copy carries its own target attribute.
#define GDJAX_FMA_CHAINS(V, SET, FMA)                                             \
  V acc[kChains];                                                                 \
  for (int j = 0; j < kChains; ++j) acc[j] = SET(1.0f + 0.1f * j);                \
  const V b = SET(0.999999f), c = SET(1e-7f);                                     \
  for (long i = 0; i < iterations; ++i) {                                         \
    _Pragma("GCC unroll 12") for (int j = 0; j < kChains; ++j) acc[j] =           \
        FMA(acc[j], b, c);                                                        \
  }                                                                               \
  for (int j = 1; j < kChains; ++j) acc[0] = FMA(acc[0], b, acc[j]);              \
  float lanes[sizeof(V) / sizeof(float)];                                         \
  std::memcpy(lanes, &acc[0], sizeof(V));                                         \
  return lanes[0];

float Chains256(long iterations) { GDJAX_FMA_CHAINS(__m256, _mm256_set1_ps, _mm256_fmadd_ps) }

__attribute__((target("avx512f"))) float Chains512(long iterations) {
  GDJAX_FMA_CHAINS(__m512, _mm512_set1_ps, _mm512_fmadd_ps)
}

// GFLOP/s of `threads` threads running `chains` at once, best of 5.
double Peak(float (*chains)(long), int lanes, long iterations, int threads) {
  double best = 0;
  for (int run = 0; run < 5; ++run) {
    std::vector<float> sinks(threads);
    std::vector<std::thread> pool;
    const auto start = std::chrono::steady_clock::now();
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] { sinks[t] = chains(iterations); });
    }
    for (std::thread& t : pool) t.join();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double gflops = 2.0 * kChains * lanes * iterations * threads / seconds / 1e9;
    if (gflops > best) best = gflops;
    for (float s : sinks) {
      if (s == 0.5f) std::printf(" ");  // the results are used
    }
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const long iterations = argc > 1 ? std::atol(argv[1]) : 200000000L;
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  const int threads = argc > 2 ? std::atoi(argv[2]) : (cores > 0 ? cores : 1);
  if (iterations <= 0 || threads <= 0 || argc > 3) {
    std::fprintf(stderr, "usage: %s [iterations per thread, > 0] [threads, > 0]\n", argv[0]);
    return 2;
  }
  std::printf("threads %d\n", threads);
  std::printf("AVX2 256-bit FMA: %.1f GFLOP/s\n", Peak(Chains256, 8, iterations, threads));
  if (__builtin_cpu_supports("avx512f")) {
    std::printf("AVX-512 512-bit FMA: %.1f GFLOP/s\n", Peak(Chains512, 16, iterations, threads));
  } else {
    std::printf("AVX-512 512-bit FMA: not on this CPU\n");
  }
  return 0;
}
