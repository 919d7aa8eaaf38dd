// 2-D convolutions and max-pooling for XLA's CPU backend, computed by oneDNN, as XLA FFI
// handlers.
//
// Layouts are the ones XLA hands over for a Flax convolution: activations NHWC, kernels HWIO
// (for groups > 1, HW(I/g)O with the output channels group-major, which oneDNN calls `hwigo`).
// Each handler writes straight into the buffer XLA owns; the kernel is reordered to oneDNN's
// preferred blocked layout on the way in (forward, data gradient) or out (weight gradient), and
// the weight gradient of a layer with 16 or more input maps per group reads x and dy reordered
// into oneDNN's blocked activation layouts.
//
//   gdjax_conv_fwd          y  = conv(x, w)
//   gdjax_conv_bwd_data     dx = conv_transpose(dy, w)      (x's shape given by `x_like`)
//   gdjax_conv_bwd_weights  dw = correlate(x, dy)           (w's shape given by `w_like`)
//
// Attributes: stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right, groups (int64).
//
//   gdjax_conv_bias_relu_fwd  y  = relu(conv(x, w) + b)  (bias and ReLU as oneDNN post-ops)
//
//   gdjax_max_pool_fwd      (y, workspace) = max_pool(x)    VALID windows, NHWC
//   gdjax_max_pool_bwd      dx = scatter of dy to each window's argmax (from the workspace)
//
// Attributes: window_h, window_w, stride_h, stride_w (int64).
//
//   gdjax_lrn_fwd           y  = lrn(x)   across channels, x: (rows, c) (NHWC flattened)
//   gdjax_lrn_bwd           dx = lrn'(x)ᵀ dy  (the forward recomputed into scratch first)
//
// Attributes: size (int64, odd), alpha, beta, k (float; alpha multiplies the plain sum of
// squares, as in the paper: oneDNN, which divides by size, is given alpha * size).

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dims = dnnl::memory::dims;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Geometries are plain structs of int64 fields: compared bytewise, hashed with FNV-1a.
template <typename G>
struct GeometryKey {
  bool operator()(const G& a, const G& b) const { return std::memcmp(&a, &b, sizeof(G)) == 0; }
  size_t operator()(const G& geo) const {
    const int64_t* p = reinterpret_cast<const int64_t*>(&geo);
    size_t h = 1469598103934665603ull;
    for (size_t i = 0; i < sizeof(G) / sizeof(int64_t); ++i) {
      h = (h ^ static_cast<size_t>(p[i])) * 1099511628211ull;
    }
    return h;
  }
};

// The plan (primitives) of one geometry, built on first use and kept for the process.
template <typename PlanT, typename G>
PlanT& CachedPlan(const G& g) {
  static std::mutex mu;
  static std::unordered_map<G, std::unique_ptr<PlanT>, GeometryKey<G>, GeometryKey<G>> plans;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = plans[g];
  if (!slot) slot = std::make_unique<PlanT>(g);
  return *slot;
}

struct Geometry {
  int64_t n, h, w, c;        // input
  int64_t kh, kw, o;         // kernel (o = all output channels)
  int64_t oh, ow;            // output
  int64_t sh, sw, pt, pb, pl, pr, g;
};

dnnl::memory::desc SrcDesc(const Geometry& g) { return {{g.n, g.c, g.h, g.w}, dt::f32, tag::nhwc}; }
dnnl::memory::desc DstDesc(const Geometry& g) {
  return {{g.n, g.o, g.oh, g.ow}, dt::f32, tag::nhwc};
}
dims WeightDims(const Geometry& g) {
  if (g.g == 1) return {g.o, g.c, g.kh, g.kw};
  return {g.g, g.o / g.g, g.c / g.g, g.kh, g.kw};
}
dnnl::memory::desc UserWeightDesc(const Geometry& g) {
  return {WeightDims(g), dt::f32, g.g == 1 ? tag::hwio : tag::hwigo};
}
dnnl::memory::desc AnyWeightDesc(const Geometry& g) { return {WeightDims(g), dt::f32, tag::any}; }
dnnl::memory::desc AnySrcDesc(const Geometry& g) {
  return {{g.n, g.c, g.h, g.w}, dt::f32, tag::nhwc};
}

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

class Scratch;

// A reorder from one layout to another, built only when they differ (`needed`).
struct Conversion {
  bool needed = false;
  dnnl::reorder::primitive_desc pd;
  dnnl::reorder reorder;

  Conversion() = default;
  Conversion(const dnnl::memory::desc& from, const dnnl::memory::desc& to) : needed(from != to) {
    if (!needed) return;
    pd = dnnl::reorder::primitive_desc(Engine(), from, Engine(), to, UserScratchpad());
    reorder = dnnl::reorder(pd);
  }
  // Reorders `from` into `to` (built, like every primitive here, with a user scratchpad).
  void Run(dnnl::stream& s, const dnnl::memory& from, const dnnl::memory& to) const;
  // `from` in the target layout: itself, or reordered into `buffer`.
  dnnl::memory Into(dnnl::stream& s, const dnnl::memory& from, Scratch& buffer) const;
};

dnnl::memory::desc BiasDesc(const Geometry& g) { return {{g.o}, dt::f32, tag::a}; }

// The forward primitive of one geometry on `src` (unpadded when `pad` is false), with or
// without a bias (the fused layer's post-ops come in `attr`).
dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g,
                                                      const dnnl::memory::desc& src, bool pad,
                                                      bool bias,
                                                      const dnnl::primitive_attr& attr) {
  const dims strides = {g.sh, g.sw}, dil = {0, 0};
  const dims pad_l = pad ? dims{g.pt, g.pl} : dims{0, 0};
  const dims pad_r = pad ? dims{g.pb, g.pr} : dims{0, 0};
  const auto prop = dnnl::prop_kind::forward_training;
  const auto alg = dnnl::algorithm::convolution_direct;
  if (bias) {
    return {Engine(), prop, alg, src, AnyWeightDesc(g), BiasDesc(g), DstDesc(g), strides,
            dil, pad_l, pad_r, attr};
  }
  return {Engine(), prop, alg, src, AnyWeightDesc(g), DstDesc(g), strides, dil, pad_l, pad_r,
          attr};
}

bool Gemm(const dnnl::convolution_forward::primitive_desc& pd) {
  return std::string(pd.impl_info_str()).find("gemm") != std::string::npos;
}

// A padded convolution that oneDNN would run as im2col + GEMM (3.2 does so for few input
// maps, e.g. AlexNet's conv1) runs on a direct kernel when the padding is in the input: x is
// copied into a zero-bordered buffer of ph x pw and convolved unpadded (torchvision conv1 at
// 224 px, batch 32, AVX2: 66 ms as GEMM, 28 ms direct). The plain and the fused (bias + ReLU)
// forward both take this route.
struct PrePadding {
  bool on = false;
  int64_t ph = 0, pw = 0, rows = 0, cols = 0;  // padded extent; rows/cols of x that are read
  dnnl::convolution_forward::primitive_desc pd;
  dnnl::convolution_forward fwd;
  Conversion copy_in, weights;  // x into the buffer's interior; the kernel

  PrePadding() = default;
  PrePadding(const Geometry& g, const dnnl::convolution_forward::primitive_desc& padded_gemm,
             bool bias, const dnnl::primitive_attr& attr) {
    if (!Gemm(padded_gemm) || !(g.pt || g.pb || g.pl || g.pr)) return;
    ph = (g.oh - 1) * g.sh + g.kh;
    pw = (g.ow - 1) * g.sw + g.kw;
    rows = std::min(g.h, ph - g.pt);
    cols = std::min(g.w, pw - g.pl);
    if (rows <= 0 || cols <= 0) return;
    const dnnl::memory::desc padded_src({g.n, g.c, ph, pw}, dt::f32, tag::nhwc);
    auto direct = ForwardDesc(g, padded_src, /*pad=*/false, bias, attr);
    if (Gemm(direct)) return;  // no direct kernel either way: keep the padded GEMM
    on = true;
    pd = direct;
    fwd = dnnl::convolution_forward(pd);
    const dims part = {g.n, g.c, rows, cols};
    copy_in = Conversion(SrcDesc(g).submemory_desc(part, {0, 0, 0, 0}),
                         padded_src.submemory_desc(part, {0, 0, g.pt, g.pl}));
    weights = Conversion(UserWeightDesc(g), pd.weights_desc());
  }

  // x copied into the zero-bordered per-thread buffer, as the memory `fwd` reads.
  dnnl::memory Source(const Geometry& g, dnnl::stream& s, const float* x) const;
};

// Everything one convolution needs, built once per geometry.
struct Plan {
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data::primitive_desc bwd_data_pd;
  dnnl::convolution_backward_data bwd_data;
  dnnl::convolution_backward_weights::primitive_desc bwd_weights_pd;
  dnnl::convolution_backward_weights bwd_weights;
  Conversion weights_fwd, weights_bwd, weights_out;  // kernel in (HWIO to oneDNN's), dw out
  // The weight gradient may read x and dy in oneDNN's blocked layouts, reordered in.
  Conversion src_in, diff_dst_in;
  PrePadding pre;  // the forward's route to a direct kernel, when it has one

  explicit Plan(const Geometry& g) {
    auto& eng = Engine();
    const dims strides = {g.sh, g.sw}, pad_l = {g.pt, g.pl}, pad_r = {g.pb, g.pr};
    const dims dil = {0, 0};
    auto attr = UserScratchpad();
    fwd_pd = ForwardDesc(g, SrcDesc(g), /*pad=*/true, /*bias=*/false, attr);
    fwd = dnnl::convolution_forward(fwd_pd);
    pre = PrePadding(g, fwd_pd, /*bias=*/false, attr);
    bwd_data_pd = dnnl::convolution_backward_data::primitive_desc(
        eng, dnnl::algorithm::convolution_direct, SrcDesc(g), AnyWeightDesc(g), DstDesc(g),
        strides, dil, pad_l, pad_r, fwd_pd, attr);
    bwd_data = dnnl::convolution_backward_data(bwd_data_pd);
    if (g.c / g.g >= 16) {
      // Past the first layer the weight gradient is faster on oneDNN's blocked layouts, the
      // reorders of x and dy included: 5-17% on AlexNet's conv2-5 with oneDNN 3.2 on AVX2
      // (experiments/onednn_weight_grad.cc); with 3 input maps it is slower.
      const dnnl::memory::desc any_src({g.n, g.c, g.h, g.w}, dt::f32, tag::any);
      const dnnl::memory::desc any_dst({g.n, g.o, g.oh, g.ow}, dt::f32, tag::any);
      auto hint = dnnl::convolution_forward::primitive_desc(
          eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, any_src,
          AnyWeightDesc(g), any_dst, strides, dil, pad_l, pad_r, attr);
      bwd_weights_pd = dnnl::convolution_backward_weights::primitive_desc(
          eng, dnnl::algorithm::convolution_direct, any_src, AnyWeightDesc(g), any_dst, strides,
          dil, pad_l, pad_r, hint, attr);
    } else {
      bwd_weights_pd = dnnl::convolution_backward_weights::primitive_desc(
          eng, dnnl::algorithm::convolution_direct, SrcDesc(g), AnyWeightDesc(g), DstDesc(g),
          strides, dil, pad_l, pad_r, fwd_pd, attr);
    }
    bwd_weights = dnnl::convolution_backward_weights(bwd_weights_pd);
    src_in = Conversion(SrcDesc(g), bwd_weights_pd.src_desc());
    diff_dst_in = Conversion(DstDesc(g), bwd_weights_pd.diff_dst_desc());
    const auto user = UserWeightDesc(g);
    weights_fwd = Conversion(user, fwd_pd.weights_desc());
    weights_bwd = Conversion(user, bwd_data_pd.weights_desc());
    weights_out = Conversion(bwd_weights_pd.diff_weights_desc(), user);
  }
};

// A per-thread, grow-only, 64-byte-aligned buffer: no allocation (or page faults) per call.
class Scratch {
 public:
  void* Get(size_t bytes) {
    if (bytes > size_) {
      std::free(data_);
      size_ = (bytes + 63) / 64 * 64;
      data_ = std::aligned_alloc(64, size_);
    }
    return data_;
  }
  ~Scratch() { std::free(data_); }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

// Reorders get their own scratchpad buffer: on an asynchronous (SYCL) stream a reorder may
// still be running when the convolution that follows grows `scratchpad_buffer`.
thread_local Scratch scratchpad_buffer, weights_buffer, reorder_buffer, src_buffer,
    diff_dst_buffer, padded_buffer, lrn_dst_buffer, lrn_workspace_buffer;

dnnl::memory ScratchpadMemory(const dnnl::memory::desc& desc) {
  return dnnl::memory(desc, Engine(), scratchpad_buffer.Get(desc.get_size() + 64));
}

// `desc` over memory XLA (or a Scratch buffer) owns.
dnnl::memory Wrap(const dnnl::memory::desc& desc, const void* data) {
  return dnnl::memory(desc, Engine(), const_cast<void*>(data));
}

// Runs one primitive on `args` and its scratchpad (from `pd`), to completion.
void Run(const dnnl::primitive& p, const dnnl::primitive_desc_base& pd,
         std::unordered_map<int, dnnl::memory> args) {
  dnnl::stream s(Engine(), dnnl::stream::flags::in_order);
  args.emplace(DNNL_ARG_SCRATCHPAD, ScratchpadMemory(pd.scratchpad_desc()));
  p.execute(s, args);
  s.wait();
}

ffi::Error MakeGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                        ffi::Span<const int64_t> y, int64_t sh, int64_t sw, int64_t pt,
                        int64_t pb, int64_t pl, int64_t pr, int64_t groups, Geometry* g) {
  if (x.size() != 4 || w.size() != 4 || y.size() != 4) {
    return ffi::Error::InvalidArgument("gdjax onednn conv: expected rank-4 NHWC/HWIO buffers");
  }
  *g = Geometry{x[0], x[1], x[2], x[3], w[0], w[1], w[3], y[1], y[2],
                sh,   sw,   pt,   pb,   pl,   pr,   groups};
  if (groups < 1 || x[3] != w[2] * groups || w[3] % groups || y[0] != x[0] || y[3] != w[3]) {
    return ffi::Error::InvalidArgument("gdjax onednn conv: inconsistent shapes or groups");
  }
  return ffi::Error::Success();
}

template <typename F>
ffi::Error Guard(F&& f) {
  try {
    f();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("gdjax onednn conv: ") + e.what());
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("gdjax onednn conv: ") + e.what());
  }
  return ffi::Error::Success();
}

void Conversion::Run(dnnl::stream& s, const dnnl::memory& from, const dnnl::memory& to) const {
  const auto desc = pd.scratchpad_desc();
  dnnl::memory scratch(desc, Engine(), reorder_buffer.Get(desc.get_size() + 64));
  reorder.execute(s, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}, {DNNL_ARG_SCRATCHPAD, scratch}});
}

dnnl::memory Conversion::Into(dnnl::stream& s, const dnnl::memory& from, Scratch& buffer) const {
  if (!needed) return from;
  const auto& d = pd.dst_desc();
  dnnl::memory to(d, Engine(), buffer.Get(d.get_size()));
  Run(s, from, to);
  return to;
}

// The kernel `w` (HWIO) as the memory a primitive wants: itself, or reordered into the
// per-thread buffer when the primitive prefers a blocked layout.
dnnl::memory WeightsIn(const Geometry& g, const float* w, const Conversion& c, dnnl::stream& s) {
  dnnl::memory user(UserWeightDesc(g), Engine(), const_cast<float*>(w));
  return c.Into(s, user, weights_buffer);
}

// Zeroes what the copy of x leaves alone in the n x ph x pw x c (NHWC) buffer: the rows above
// and below x's and the columns left and right of them.
void ZeroBorder(const Geometry& g, const PrePadding& p, float* buffer) {
  const size_t row = static_cast<size_t>(p.pw * g.c);
  for (int64_t n = 0; n < g.n; ++n) {
    float* image = buffer + n * p.ph * row;
    std::memset(image, 0, g.pt * row * sizeof(float));
    std::memset(image + (g.pt + p.rows) * row, 0, (p.ph - g.pt - p.rows) * row * sizeof(float));
    for (int64_t r = g.pt; r < g.pt + p.rows; ++r) {
      float* line = image + r * row;
      std::memset(line, 0, g.pl * g.c * sizeof(float));
      std::memset(line + (g.pl + p.cols) * g.c, 0, (p.pw - g.pl - p.cols) * g.c * sizeof(float));
    }
  }
}

dnnl::memory PrePadding::Source(const Geometry& g, dnnl::stream& s, const float* x) const {
  const auto& d = pd.src_desc();
  float* buffer = static_cast<float*>(padded_buffer.Get(d.get_size()));
  ZeroBorder(g, *this, buffer);
  dnnl::memory interior(copy_in.pd.dst_desc(), Engine(), buffer);
  copy_in.Run(s, Wrap(copy_in.pd.src_desc(), x), interior);
  return dnnl::memory(d, Engine(), buffer);
}

// One forward convolution (plain, or fused with `bias`) of x into y, through the pre-padded
// direct kernel where the plan has one.
void Forward(const Geometry& g, const dnnl::convolution_forward::primitive_desc& pd,
             const dnnl::convolution_forward& fwd, const Conversion& weights_in,
             const PrePadding& pre, const float* x, const float* w, const float* bias, float* y) {
  dnnl::stream s(Engine(), dnnl::stream::flags::in_order);
  const auto& used = pre.on ? pre.pd : pd;
  std::unordered_map<int, dnnl::memory> args = {
      {DNNL_ARG_SRC, pre.on ? pre.Source(g, s, x) : Wrap(SrcDesc(g), x)},
      {DNNL_ARG_WEIGHTS, WeightsIn(g, w, pre.on ? pre.weights : weights_in, s)},
      {DNNL_ARG_DST, Wrap(DstDesc(g), y)},
      {DNNL_ARG_SCRATCHPAD, ScratchpadMemory(used.scratchpad_desc())}};
  if (bias) args.emplace(DNNL_ARG_BIAS, Wrap(BiasDesc(g), bias));
  (pre.on ? pre.fwd : fwd).execute(s, args);
  s.wait();
}

ffi::Error ConvFwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                   int64_t pl, int64_t pr, int64_t groups) {
  Geometry g;
  if (auto e = MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, pt, pb, pl,
                            pr, groups, &g);
      e.failure()) {
    return e;
  }
  return Guard([&] {
    const Plan& p = CachedPlan<Plan>(g);
    Forward(g, p.fwd_pd, p.fwd, p.weights_fwd, p.pre, x.typed_data(), w.typed_data(), nullptr,
            y->typed_data());
  });
}

ffi::Error ConvBwdData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> dx, int64_t sh, int64_t sw, int64_t pt,
                       int64_t pb, int64_t pl, int64_t pr, int64_t groups) {
  Geometry g;
  if (auto e = MakeGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw, pt, pb,
                            pl, pr, groups, &g);
      e.failure()) {
    return e;
  }
  return Guard([&] {
    Plan& p = CachedPlan<Plan>(g);
    auto& eng = Engine();
    dnnl::stream s(eng, dnnl::stream::flags::in_order);
    auto wm = WeightsIn(g, w.typed_data(), p.weights_bwd, s);
    dnnl::memory diff_dst(DstDesc(g), eng, dy.typed_data());
    dnnl::memory diff_src(SrcDesc(g), eng, dx->typed_data());
    p.bwd_data.execute(s, {{DNNL_ARG_DIFF_DST, diff_dst},
                           {DNNL_ARG_WEIGHTS, wm},
                           {DNNL_ARG_DIFF_SRC, diff_src},
                           {DNNL_ARG_SCRATCHPAD,
                            ScratchpadMemory(p.bwd_data_pd.scratchpad_desc())}});
    s.wait();
  });
}

ffi::Error ConvBwdWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dw, int64_t sh, int64_t sw, int64_t pt,
                          int64_t pb, int64_t pl, int64_t pr, int64_t groups) {
  Geometry g;
  if (auto e = MakeGeometry(x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw, pt, pb,
                            pl, pr, groups, &g);
      e.failure()) {
    return e;
  }
  return Guard([&] {
    Plan& p = CachedPlan<Plan>(g);
    auto& eng = Engine();
    dnnl::stream s(eng, dnnl::stream::flags::in_order);
    dnnl::memory user_dw(UserWeightDesc(g), eng, dw->typed_data());
    dnnl::memory dwm = user_dw;
    if (p.weights_out.needed) {
      const auto& d = p.bwd_weights_pd.diff_weights_desc();
      dwm = dnnl::memory(d, eng, weights_buffer.Get(d.get_size()));
    }
    auto src = p.src_in.Into(s, dnnl::memory(SrcDesc(g), eng, x.typed_data()), src_buffer);
    auto diff_dst =
        p.diff_dst_in.Into(s, dnnl::memory(DstDesc(g), eng, dy.typed_data()), diff_dst_buffer);
    p.bwd_weights.execute(s, {{DNNL_ARG_SRC, src},
                              {DNNL_ARG_DIFF_DST, diff_dst},
                              {DNNL_ARG_DIFF_WEIGHTS, dwm},
                              {DNNL_ARG_SCRATCHPAD,
                               ScratchpadMemory(p.bwd_weights_pd.scratchpad_desc())}});
    if (p.weights_out.needed) p.weights_out.Run(s, dwm, user_dw);
    s.wait();
  });
}


// ---- Convolution + bias + ReLU in one primitive (post-ops). Its gradients are the plain
// convolution's, of dy masked by [y > 0]. ----------------------------------------------------

struct FusedPlan {
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_forward fwd;
  Conversion weights_in;
  PrePadding pre;

  explicit FusedPlan(const Geometry& g) {
    dnnl::post_ops ops;
    ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
    auto attr = UserScratchpad();
    attr.set_post_ops(ops);
    fwd_pd = ForwardDesc(g, SrcDesc(g), /*pad=*/true, /*bias=*/true, attr);
    fwd = dnnl::convolution_forward(fwd_pd);
    weights_in = Conversion(UserWeightDesc(g), fwd_pd.weights_desc());
    pre = PrePadding(g, fwd_pd, /*bias=*/true, attr);
  }
};

ffi::Error CheckBias(ffi::Span<const int64_t> b, const Geometry& g) {
  if (b.size() != 1 || b[0] != g.o) {
    return ffi::Error::InvalidArgument("gdjax onednn conv: the bias must have one entry per map");
  }
  return ffi::Error::Success();
}

ffi::Error ConvBiasReluFwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                           ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> y, int64_t sh,
                           int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                           int64_t groups) {
  Geometry g;
  if (auto e = MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, pt, pb, pl,
                            pr, groups, &g);
      e.failure()) {
    return e;
  }
  if (auto e = CheckBias(b.dimensions(), g); e.failure()) return e;
  return Guard([&] {
    const FusedPlan& p = CachedPlan<FusedPlan>(g);
    Forward(g, p.fwd_pd, p.fwd, p.weights_in, p.pre, x.typed_data(), w.typed_data(),
            b.typed_data(), y->typed_data());
  });
}

// ---- Max-pooling (VALID windows), NHWC. The forward keeps oneDNN's workspace (the argmax of
// each window, one byte per output element) for the backward. ------------------------------

struct PoolGeometry {
  int64_t n, h, w, c, oh, ow, kh, kw, sh, sw;
};

struct PoolPlan {
  dnnl::pooling_forward::primitive_desc fwd_pd;
  dnnl::pooling_forward fwd;
  dnnl::pooling_backward::primitive_desc bwd_pd;
  dnnl::pooling_backward bwd;

  explicit PoolPlan(const PoolGeometry& g) {
    auto& eng = Engine();
    const dnnl::memory::desc src({g.n, g.c, g.h, g.w}, dt::f32, tag::nhwc);
    const dnnl::memory::desc dst({g.n, g.c, g.oh, g.ow}, dt::f32, tag::nhwc);
    const dims strides = {g.sh, g.sw}, kernel = {g.kh, g.kw}, dil = {0, 0}, pad = {0, 0};
    auto attr = UserScratchpad();
    fwd_pd = dnnl::pooling_forward::primitive_desc(
        eng, dnnl::prop_kind::forward_training, dnnl::algorithm::pooling_max, src, dst, strides,
        kernel, dil, pad, pad, attr);
    fwd = dnnl::pooling_forward(fwd_pd);
    bwd_pd = dnnl::pooling_backward::primitive_desc(eng, dnnl::algorithm::pooling_max, src, dst,
                                                    strides, kernel, dil, pad, pad, fwd_pd,
                                                    attr);
    bwd = dnnl::pooling_backward(bwd_pd);
  }
};

ffi::Error MakePoolGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> y, int64_t kh,
                            int64_t kw, int64_t sh, int64_t sw, PoolGeometry* g) {
  if (x.size() != 4 || y.size() != 4 || x[0] != y[0] || x[3] != y[3] ||
      y[1] != (x[1] - kh) / sh + 1 || y[2] != (x[2] - kw) / sw + 1) {
    return ffi::Error::InvalidArgument("gdjax onednn max_pool: inconsistent NHWC shapes");
  }
  *g = PoolGeometry{x[0], x[1], x[2], x[3], y[1], y[2], kh, kw, sh, sw};
  return ffi::Error::Success();
}

ffi::Error MaxPoolFwd(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y,
                      ffi::ResultBuffer<ffi::U8> workspace, int64_t window_h, int64_t window_w,
                      int64_t stride_h, int64_t stride_w) {
  PoolGeometry g;
  if (auto e = MakePoolGeometry(x.dimensions(), y->dimensions(), window_h, window_w, stride_h,
                                stride_w, &g);
      e.failure()) {
    return e;
  }
  return Guard([&] {
    PoolPlan& p = CachedPlan<PoolPlan>(g);
    if (p.fwd_pd.workspace_desc().get_size() > workspace->size_bytes()) {
      throw std::runtime_error("max_pool workspace larger than one byte per output element");
    }
    Run(p.fwd, p.fwd_pd,
        {{DNNL_ARG_SRC, Wrap(p.fwd_pd.src_desc(), x.typed_data())},
         {DNNL_ARG_DST, Wrap(p.fwd_pd.dst_desc(), y->typed_data())},
         {DNNL_ARG_WORKSPACE, Wrap(p.fwd_pd.workspace_desc(), workspace->untyped_data())}});
  });
}

ffi::Error MaxPoolBwd(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::U8> workspace,
                      ffi::ResultBuffer<ffi::F32> dx, int64_t window_h, int64_t window_w,
                      int64_t stride_h, int64_t stride_w) {
  PoolGeometry g;
  if (auto e = MakePoolGeometry(dx->dimensions(), dy.dimensions(), window_h, window_w, stride_h,
                                stride_w, &g);
      e.failure()) {
    return e;
  }
  return Guard([&] {
    PoolPlan& p = CachedPlan<PoolPlan>(g);
    Run(p.bwd, p.bwd_pd,
        {{DNNL_ARG_DIFF_DST, Wrap(p.bwd_pd.diff_dst_desc(), dy.typed_data())},
         {DNNL_ARG_DIFF_SRC, Wrap(p.bwd_pd.diff_src_desc(), dx->typed_data())},
         {DNNL_ARG_WORKSPACE, Wrap(p.fwd_pd.workspace_desc(), workspace.untyped_data())}});
  });
}

// ---- Local response normalization across channels on (rows, c): each row (one pixel of one
// channel group) normalised on its own, as an nhwc tensor of shape (rows, c, 1, 1). ---------

struct LrnGeometry {
  int64_t rows, c, size;
  double alpha, beta, k;  // 8-byte fields like the rest: hashed and compared bytewise
};

struct LrnPlan {
  dnnl::lrn_forward::primitive_desc infer_pd, train_pd;
  dnnl::lrn_forward infer, train;
  dnnl::lrn_backward::primitive_desc bwd_pd;
  dnnl::lrn_backward bwd;

  explicit LrnPlan(const LrnGeometry& g) {
    auto& eng = Engine();
    const dnnl::memory::desc md({g.rows, g.c, 1, 1}, dt::f32, tag::nhwc);
    const auto algo = dnnl::algorithm::lrn_across_channels;
    const float alpha = static_cast<float>(g.alpha * g.size), beta = g.beta, k = g.k;
    auto attr = UserScratchpad();
    infer_pd = dnnl::lrn_forward::primitive_desc(eng, dnnl::prop_kind::forward_inference, algo,
                                                 md, md, g.size, alpha, beta, k, attr);
    infer = dnnl::lrn_forward(infer_pd);
    train_pd = dnnl::lrn_forward::primitive_desc(eng, dnnl::prop_kind::forward_training, algo,
                                                 md, md, g.size, alpha, beta, k, attr);
    train = dnnl::lrn_forward(train_pd);
    bwd_pd = dnnl::lrn_backward::primitive_desc(eng, algo, md, md, md, g.size, alpha, beta, k,
                                                train_pd, attr);
    bwd = dnnl::lrn_backward(bwd_pd);
  }
};

ffi::Error MakeLrnGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> y, int64_t size,
                           float alpha, float beta, float k, LrnGeometry* g) {
  if (x.size() != 2 || y.size() != 2 || x[0] != y[0] || x[1] != y[1] || size < 1 ||
      size % 2 == 0) {
    return ffi::Error::InvalidArgument("gdjax onednn lrn: expected (rows, c) and an odd size");
  }
  *g = LrnGeometry{x[0], x[1], size, alpha, beta, k};
  return ffi::Error::Success();
}

ffi::Error LrnFwd(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y, int64_t size,
                  float alpha, float beta, float k) {
  LrnGeometry g;
  if (auto e = MakeLrnGeometry(x.dimensions(), y->dimensions(), size, alpha, beta, k, &g);
      e.failure()) {
    return e;
  }
  return Guard([&] {
    LrnPlan& p = CachedPlan<LrnPlan>(g);
    Run(p.infer, p.infer_pd,
        {{DNNL_ARG_SRC, Wrap(p.infer_pd.src_desc(), x.typed_data())},
         {DNNL_ARG_DST, Wrap(p.infer_pd.dst_desc(), y->typed_data())}});
  });
}

ffi::Error LrnBwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                  ffi::ResultBuffer<ffi::F32> dx, int64_t size, float alpha, float beta,
                  float k) {
  LrnGeometry g;
  if (auto e = MakeLrnGeometry(x.dimensions(), dx->dimensions(), size, alpha, beta, k, &g);
      e.failure()) {
    return e;
  }
  return Guard([&] {
    LrnPlan& p = CachedPlan<LrnPlan>(g);
    const auto ws_desc = p.train_pd.workspace_desc();
    const dnnl::memory src = Wrap(p.train_pd.src_desc(), x.typed_data());
    const dnnl::memory ws = Wrap(ws_desc, lrn_workspace_buffer.Get(ws_desc.get_size() + 64));
    // The forward again, for its workspace (the residual is x alone, as on XLA's path).
    const auto dst_desc = p.train_pd.dst_desc();
    Run(p.train, p.train_pd,
        {{DNNL_ARG_SRC, src},
         {DNNL_ARG_DST, Wrap(dst_desc, lrn_dst_buffer.Get(dst_desc.get_size()))},
         {DNNL_ARG_WORKSPACE, ws}});
    Run(p.bwd, p.bwd_pd,
        {{DNNL_ARG_SRC, src},
         {DNNL_ARG_DIFF_DST, Wrap(p.bwd_pd.diff_dst_desc(), dy.typed_data())},
         {DNNL_ARG_DIFF_SRC, Wrap(p.bwd_pd.diff_src_desc(), dx->typed_data())},
         {DNNL_ARG_WORKSPACE, ws}});
  });
}

}  // namespace

#define GDJAX_CONV_ATTRS                                                           \
  .Attr<int64_t>("stride_h").Attr<int64_t>("stride_w").Attr<int64_t>("pad_top")    \
      .Attr<int64_t>("pad_bottom").Attr<int64_t>("pad_left").Attr<int64_t>("pad_right") \
      .Attr<int64_t>("groups")

XLA_FFI_DEFINE_HANDLER_SYMBOL(GdjaxConvFwd, ConvFwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() GDJAX_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(GdjaxConvBwdData, ConvBwdData,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() GDJAX_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(GdjaxConvBwdWeights, ConvBwdWeights,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() GDJAX_CONV_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(GdjaxConvBiasReluFwd, ConvBiasReluFwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() GDJAX_CONV_ATTRS);

#define GDJAX_POOL_ATTRS                                                           \
  .Attr<int64_t>("window_h").Attr<int64_t>("window_w").Attr<int64_t>("stride_h")   \
      .Attr<int64_t>("stride_w")

XLA_FFI_DEFINE_HANDLER_SYMBOL(GdjaxMaxPoolFwd, MaxPoolFwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::U8>>() GDJAX_POOL_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(GdjaxMaxPoolBwd, MaxPoolBwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() GDJAX_POOL_ATTRS);

#define GDJAX_LRN_ATTRS \
  .Attr<int64_t>("size").Attr<float>("alpha").Attr<float>("beta").Attr<float>("k")

XLA_FFI_DEFINE_HANDLER_SYMBOL(GdjaxLrnFwd, LrnFwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() GDJAX_LRN_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(GdjaxLrnBwd, LrnBwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() GDJAX_LRN_ATTRS);

// Which of oneDNN's LRN passes run a jit kernel (not its slow reference loops) for this
// geometry on this CPU: bit 0 the forward, bit 1 the backward; -1 when oneDNN refuses it.
// (oneDNN 3.2 on AVX2: a jit forward for c a multiple of 8, the backward only on AVX-512.)
extern "C" int GdjaxLrnKernels(int64_t rows, int64_t c, int64_t size, double alpha, double beta,
                               double k) {
  try {
    const LrnPlan& p = CachedPlan<LrnPlan>(LrnGeometry{rows, c, size, alpha, beta, k});
    const auto jit = [](const char* impl) { return std::strncmp(impl, "ref", 3) != 0; };
    return (jit(p.infer_pd.impl_info_str()) && jit(p.train_pd.impl_info_str()) ? 1 : 0) |
           (jit(p.bwd_pd.impl_info_str()) ? 2 : 0);
  } catch (const std::exception&) {
    return -1;
  }
}

// Creates the CPU engine and the primitives of one small grouped, strided, padded convolution
// and one max-pooling: returns 0 when oneDNN can serve them, else writes the reason into
// `message` (so that a broken installation shows at load time, not inside a computation).
extern "C" int GdjaxOnednnCheck(char* message, size_t size) {
  try {
    Geometry g{2, 7, 6, 4, 3, 3, 6, 4, 3, 2, 2, 1, 2, 1, 1, 2};
    CachedPlan<Plan>(g);
    CachedPlan<FusedPlan>(g);
    // ... and one whose weight gradient takes the blocked layouts (16+ input maps per group)
    CachedPlan<Plan>(Geometry{2, 5, 5, 32, 3, 3, 16, 5, 5, 1, 1, 1, 1, 1, 1, 2});
    CachedPlan<PoolPlan>(PoolGeometry{2, 7, 6, 4, 3, 2, 3, 3, 2, 2});
    return 0;
  } catch (const std::exception& e) {
    std::snprintf(message, size, "%s", e.what());
    return 1;
  }
}

extern "C" const char* GdjaxOnednnVersion() {
  static std::string v = [] {
    const dnnl_version_t* ver = dnnl_version();
    return std::to_string(ver->major) + "." + std::to_string(ver->minor) + "." +
           std::to_string(ver->patch);
  }();
  return v.c_str();
}
