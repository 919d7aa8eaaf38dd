// The convolution weight gradient of AlexNet's layers on oneDNN, four ways, timed alternately
// in one process (median of 14):
//   NHWC     x and dy read in NHWC, as XLA hands them over (oneDNN's first choice for that);
//   blocked  x and dy reordered into oneDNN's blocked layouts first (the reorders counted);
//   GEMM     x and dy in NHWC on oneDNN's im2col + GEMM implementation (`x64:gemm:jit`,
//            found among the NHWC primitive's implementations with next_impl());
//   as fwd   the weight gradient as a forward convolution: dw[o,i,a,b] = sum over n,h,w of
//            dy[n,h,w,o] x[n, s*h + a - p, s*w + b - p, i] is a convolution of x seen as a batch
//            of C images of N channels with dy seen as O kernels of OH x OW taps (dilated by
//            the stride), out k x k; x, dy and the result transposed by reorders (counted).
//            Ungrouped layers only.
// The first two set the rule in gdjax/models/_onednn_conv.cc (blocked from 16 input maps per
// group on); the third and fourth were measured against it on AVX2 (2026-12-06, README: not
// kept).
// Layers of the three variants at the batches `experiments/bench.py` runs; the paper's and
// small's grouped layers as two groups.
//
// Build and run against the oneDNN of the `onednn` extra (the venv's prefix):
//   P=$(python -c "import sys; print(sys.prefix)")   # or $GDJAX_ONEDNN_ROOT
//   c++ -O2 -std=c++17 experiments/onednn_weight_grad.cc -I$P/include -L$P/lib -ldnnl \
//       -Wl,-rpath,$P/lib -o /tmp/weight_grad && /tmp/weight_grad
// Held to AVX2 on an AVX-512 machine: ONEDNN_MAX_CPU_ISA=AVX2 /tmp/weight_grad

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
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
      {"torchvision conv2 b128", 128, 64, 27, 192, 5, 1, 2, 27, 1},
      {"torchvision conv3 b128", 128, 192, 13, 384, 3, 1, 1, 13, 1},
      {"torchvision conv4 b128", 128, 384, 13, 256, 3, 1, 1, 13, 1},
      {"torchvision conv5 b128", 128, 256, 13, 256, 3, 1, 1, 13, 1},
      {"paper conv2 b32", 32, 96, 27, 256, 5, 1, 2, 27, 2},
      {"paper conv3 b32", 32, 256, 13, 384, 3, 1, 1, 13, 1},
      {"paper conv4 b32", 32, 384, 13, 384, 3, 1, 1, 13, 2},
      {"paper conv5 b32", 32, 384, 13, 256, 3, 1, 1, 13, 2},
      {"small conv2 b128", 128, 32, 16, 64, 5, 1, 2, 16, 2},
      {"small conv3 b128", 128, 64, 8, 96, 3, 1, 1, 8, 1},
      {"small conv4 b128", 128, 96, 8, 96, 3, 1, 1, 8, 2},
      {"small conv5 b128", 128, 96, 8, 64, 3, 1, 1, 8, 2},
  };
  std::printf("%-24s %9s %9s %9s %9s  %s\n", "layer", "NHWC ms", "blocked", "GEMM", "as fwd",
              "(implementations: NHWC, blocked, GEMM, as fwd)");
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
    auto on_gemm = on_nhwc;
    while (std::string(on_gemm.impl_info_str()).find("gemm") == std::string::npos) {
      if (!on_gemm.next_impl()) break;
    }
    memory x = Filled(nhwc_src), dy = Filled(nhwc_dst);
    memory xb = Filled(on_blocked.src_desc()), dyb = Filled(on_blocked.diff_dst_desc());
    memory dw0 = Filled(on_nhwc.diff_weights_desc()), dw1 = Filled(on_blocked.diff_weights_desc());
    memory dw2 = Filled(on_gemm.diff_weights_desc());
    convolution_backward_weights nhwc(on_nhwc), blocked(on_blocked), gemm(on_gemm);
    reorder x_in(x, xb), dy_in(dy, dyb);
    // The weight gradient as a forward convolution (ungrouped layers): x viewed as {C, N, H, W}
    // and dy as {O, N, OH, OW} through the strides of their NHWC buffers; out {C, O, k, k},
    // written into an HWIO buffer (what XLA wants back) through the strides of that view.
    const bool as_fwd = l.groups == 1;
    const memory::dim hw = l.h * l.h, ohw = l.oh * l.oh;
    const memory::dim right = l.k + (l.oh - 1) * l.stride - l.h - l.pad;  // out k x k
    const memory::desc x_view({l.c, l.n, l.h, l.h}, dt::f32, {1, hw * l.c, l.h * l.c, l.c});
    const memory::desc dy_view({l.o, l.n, l.oh, l.oh}, dt::f32, {1, ohw * l.o, l.oh * l.o, l.o});
    const memory::desc dw_view({l.c, l.o, l.k, l.k}, dt::f32,
                               {l.o, 1, l.k * l.c * l.o, l.c * l.o});
    auto fwd_pd = as_fwd ? convolution_forward::primitive_desc(
                               eng, prop_kind::forward_inference, alg,
                               memory::desc({l.c, l.n, l.h, l.h}, dt::f32, tag::any),
                               memory::desc({l.o, l.n, l.oh, l.oh}, dt::f32, tag::any),
                               memory::desc({l.c, l.o, l.k, l.k}, dt::f32, tag::any),
                               {1, 1}, {l.stride - 1, l.stride - 1}, pad, {right, right})
                         : convolution_forward::primitive_desc();
    memory xv, dyv, xf, dyf, dwf, dw3;
    convolution_forward fwd;
    reorder x_t, dy_t, dw_t;
    if (as_fwd) {
      xf = Filled(fwd_pd.src_desc());
      dyf = Filled(fwd_pd.weights_desc());
      dwf = Filled(fwd_pd.dst_desc());
      dw3 = Filled(dw_view);
      fwd = convolution_forward(fwd_pd);
      xv = memory(x_view, eng, x.get_data_handle());
      dyv = memory(dy_view, eng, dy.get_data_handle());
      x_t = reorder(xv, xf);
      dy_t = reorder(dyv, dyf);
      dw_t = reorder(dwf, dw3);
    }
    std::vector<double> a, b, c, d;
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
      c.push_back(Milliseconds([&] {
        gemm.execute(strm, {{DNNL_ARG_SRC, x}, {DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_DIFF_WEIGHTS, dw2}});
      }));
      if (as_fwd) {
        d.push_back(Milliseconds([&] {
          x_t.execute(strm, xv, xf);
          dy_t.execute(strm, dyv, dyf);
          fwd.execute(strm, {{DNNL_ARG_SRC, xf}, {DNNL_ARG_WEIGHTS, dyf}, {DNNL_ARG_DST, dwf}});
          dw_t.execute(strm, dwf, dw3);
        }));
      }
    }
    for (auto* v : {&a, &b, &c, &d}) std::sort(v->begin(), v->end());
    char fwd_ms[64] = "        -";
    if (as_fwd) {  // the same numbers as the weight-gradient primitive's, in the same order
      memory ref(memory::desc({l.o, l.c, l.k, l.k}, dt::f32, {1, l.o, l.k * l.c * l.o, l.c * l.o}),
                 eng);
      reorder(dw0, ref).execute(strm, dw0, ref);
      strm.wait();
      const float* p = static_cast<const float*>(ref.get_data_handle());
      const float* q = static_cast<const float*>(dw3.get_data_handle());
      double diff = 0, scale = 0;
      for (memory::dim i = 0; i < l.o * l.c * l.k * l.k; ++i) {
        diff = std::max(diff, static_cast<double>(std::abs(p[i] - q[i])));
        scale = std::max(scale, static_cast<double>(std::abs(p[i])));
      }
      std::snprintf(fwd_ms, sizeof fwd_ms, "%9.1f (max diff %.0e of %.0e)", d[7], diff, scale);
    }
    std::printf("%-24s %9.1f %9.1f %9.1f %s  (%s, %s, %s, %s)\n", l.name, a[7], b[7], c[7], fwd_ms,
                on_nhwc.impl_info_str(), on_blocked.impl_info_str(), on_gemm.impl_info_str(),
                as_fwd ? fwd_pd.impl_info_str() : "-");
    std::fflush(stdout);
  }
  const dnnl_version_t* v = dnnl_version();
  std::printf("oneDNN %d.%d.%d\n", v->major, v->minor, v->patch);
}
