// The convolution weight gradient of AlexNet's layers on oneDNN, reading x and dy in NHWC (as
// XLA hands them over) against reordering both into oneDNN's blocked layouts first, timed
// alternately in one process (median of 14); the reorders count against the blocked variant.
// This measurement set the rule in gdjax/models/_onednn_conv.cc (blocked from 16 input maps per
// group on).
//
// Build and run against the oneDNN of the `onednn` extra (the venv's prefix):
//   P=$(python -c "import sys; print(sys.prefix)")   # or $GDJAX_ONEDNN_ROOT
//   c++ -O2 -std=c++17 experiments/onednn_weight_grad.cc -I$P/include -L$P/lib -ldnnl \
//       -Wl,-rpath,$P/lib -o /tmp/weight_grad && /tmp/weight_grad

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"

using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;

namespace {

engine eng(engine::kind::cpu, 0);
stream strm(eng);

double Milliseconds(const std::function<void()>& f) {
  auto t = std::chrono::steady_clock::now();
  f();
  strm.wait();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

memory Filled(const memory::desc& d) {
  memory m(d, eng);
  float* p = static_cast<float*>(m.get_data_handle());
  for (size_t i = 0; i < d.get_size() / sizeof(float); ++i) p[i] = (i % 7) * 0.1f - 0.3f;
  return m;
}

struct Layer {
  const char* name;
  int n, c, h, o, k, stride, pad, oh, groups;
};

}  // namespace

int main() {
  const std::vector<Layer> layers = {
      {"torchvision conv1 b32", 32, 3, 224, 64, 11, 4, 2, 55, 1},
      {"torchvision conv2 b32", 32, 64, 27, 192, 5, 1, 2, 27, 1},
      {"torchvision conv3 b32", 32, 192, 13, 384, 3, 1, 1, 13, 1},
      {"torchvision conv4 b32", 32, 384, 13, 256, 3, 1, 1, 13, 1},
      {"torchvision conv5 b32", 32, 256, 13, 256, 3, 1, 1, 13, 1},
      {"small conv2 b128 (2 towers)", 128, 32, 16, 64, 5, 1, 2, 16, 2},
      {"small conv3 b128", 128, 64, 8, 96, 3, 1, 1, 8, 1},
  };
  std::printf("%-28s %12s %22s %7s\n", "layer", "NHWC ms", "blocked+reorders ms", "ratio");
  for (const Layer& l : layers) {
    const memory::dims src = {l.n, l.c, l.h, l.h}, dst = {l.n, l.o, l.oh, l.oh};
    const memory::dims strides = {l.stride, l.stride}, pad = {l.pad, l.pad}, dil = {0, 0};
    const memory::dims wei = l.groups == 1
                                 ? memory::dims{l.o, l.c, l.k, l.k}
                                 : memory::dims{l.groups, l.o / l.groups, l.c / l.groups, l.k, l.k};
    const memory::desc any_wei(wei, dt::f32, tag::any);
    const memory::desc nhwc_src(src, dt::f32, tag::nhwc), nhwc_dst(dst, dt::f32, tag::nhwc);
    const memory::desc any_src(src, dt::f32, tag::any), any_dst(dst, dt::f32, tag::any);
    const auto alg = algorithm::convolution_direct;
    auto hint_nhwc = convolution_forward::primitive_desc(
        eng, prop_kind::forward_training, alg, nhwc_src, any_wei, nhwc_dst, strides, dil, pad, pad);
    auto hint_any = convolution_forward::primitive_desc(
        eng, prop_kind::forward_training, alg, any_src, any_wei, any_dst, strides, dil, pad, pad);
    auto on_nhwc = convolution_backward_weights::primitive_desc(
        eng, alg, nhwc_src, any_wei, nhwc_dst, strides, dil, pad, pad, hint_nhwc);
    auto on_blocked = convolution_backward_weights::primitive_desc(
        eng, alg, any_src, any_wei, any_dst, strides, dil, pad, pad, hint_any);
    memory x = Filled(nhwc_src), dy = Filled(nhwc_dst);
    memory xb = Filled(on_blocked.src_desc()), dyb = Filled(on_blocked.diff_dst_desc());
    memory dw0 = Filled(on_nhwc.diff_weights_desc()), dw1 = Filled(on_blocked.diff_weights_desc());
    convolution_backward_weights nhwc(on_nhwc), blocked(on_blocked);
    reorder x_in(x, xb), dy_in(dy, dyb);
    std::vector<double> a, b;
    for (int r = 0; r < 14; ++r) {
      a.push_back(Milliseconds([&] {
        nhwc.execute(strm, {{DNNL_ARG_SRC, x}, {DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_DIFF_WEIGHTS, dw0}});
      }));
      b.push_back(Milliseconds([&] {
        x_in.execute(strm, x, xb);
        dy_in.execute(strm, dy, dyb);
        blocked.execute(strm,
                        {{DNNL_ARG_SRC, xb}, {DNNL_ARG_DIFF_DST, dyb}, {DNNL_ARG_DIFF_WEIGHTS, dw1}});
      }));
    }
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    std::printf("%-28s %12.1f %22.1f %7.2f\n", l.name, a[7], b[7], a[7] / b[7]);
    std::fflush(stdout);
  }
  const dnnl_version_t* v = dnnl_version();
  std::printf("oneDNN %d.%d.%d\n", v->major, v->minor, v->patch);
}
