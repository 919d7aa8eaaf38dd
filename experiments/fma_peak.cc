// The cores' float32 multiply-add peak, measured: every OpenMP thread runs 12 independent
// chains of fused multiply-adds (enough to keep two FMA pipes busy at a latency of 4-5 cycles),
// 256-bit (AVX2 + FMA) and, where the CPU has it, 512-bit (AVX-512F). Best of 5 runs, in
// GFLOP/s (one FMA = 2 FLOPs per lane). No convolution or GEMM can beat the number for its
// instruction set; `experiments/onednn_profile.py --peak` prints each convolution's share of it.
//
//   c++ -O2 -mavx2 -mfma -fopenmp experiments/fma_peak.cc -o /tmp/fma_peak
//   /tmp/fma_peak [iterations per thread, default 200000000]
//
// The 512-bit loop is compiled for AVX-512F by a target attribute and only runs where
// __builtin_cpu_supports("avx512f") says so, so the binary runs on any AVX2 machine.

#include <immintrin.h>
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

constexpr int kChains = 12;

double Gflops(long iterations, int lanes, double seconds) {
  return 2.0 * kChains * lanes * iterations * omp_get_max_threads() / seconds / 1e9;
}

// One timed run: every thread runs kChains chains of `iterations` FMAs on vector type V.
// A macro, not a template, so that each instruction set's copy carries its own target.
#define GDJAX_FMA_RUN(V, SET, FMA)                                                    \
  float sink = 0;                                                                     \
  const auto start = std::chrono::steady_clock::now();                                \
  _Pragma("omp parallel reduction(+ : sink)") {                                       \
    V acc[kChains];                                                                   \
    for (int j = 0; j < kChains; ++j) acc[j] = SET(1.0f + 0.1f * j);                  \
    const V b = SET(0.999999f), c = SET(1e-7f);                                       \
    for (long i = 0; i < iterations; ++i) {                                           \
      _Pragma("GCC unroll 12") for (int j = 0; j < kChains; ++j) acc[j] =             \
          FMA(acc[j], b, c);                                                          \
    }                                                                                 \
    for (int j = 1; j < kChains; ++j) acc[0] = FMA(acc[0], b, acc[j]);                \
    float lanes[sizeof(V) / sizeof(float)];                                           \
    std::memcpy(lanes, &acc[0], sizeof(V));                                           \
    sink += lanes[0]; /* the chains' results are used: the loop cannot be dropped */  \
  }                                                                                   \
  const double seconds =                                                              \
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); \
  if (sink == 0.5f) std::printf(" ");                                                 \
  return Gflops(iterations, sizeof(V) / sizeof(float), seconds);

double Run256(long iterations) { GDJAX_FMA_RUN(__m256, _mm256_set1_ps, _mm256_fmadd_ps) }

__attribute__((target("avx512f"))) double Run512(long iterations) {
  GDJAX_FMA_RUN(__m512, _mm512_set1_ps, _mm512_fmadd_ps)
}

double Best(double (*run)(long), long iterations) {
  double best = 0;
  for (int i = 0; i < 5; ++i) {
    const double gflops = run(iterations);
    if (gflops > best) best = gflops;
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const long iterations = argc > 1 ? std::atol(argv[1]) : 200000000L;
  if (iterations <= 0) {
    std::fprintf(stderr, "usage: %s [iterations per thread, > 0]\n", argv[0]);
    return 2;
  }
  std::printf("threads %d\n", omp_get_max_threads());
  std::printf("AVX2 256-bit FMA: %.1f GFLOP/s\n", Best(Run256, iterations));
  if (__builtin_cpu_supports("avx512f")) {
    std::printf("AVX-512 512-bit FMA: %.1f GFLOP/s\n", Best(Run512, iterations));
  } else {
    std::printf("AVX-512 512-bit FMA: not on this CPU\n");
  }
  return 0;
}
