// Torch binding of the fused RMSNorm CUDA kernels (megatron_ar._ext.rmsnorm): checks the
// tensors, allocates outputs and the dw workspace with torch's caching allocator, and calls the
// launchers of rmsnorm.cu on the current stream. Same Python API as the CPU build
// (csrc/rmsnorm_cpu/rmsnorm_cpu.cpp):
//
//   forward(x, residual|None, weight|None, kind, mode, eps) -> (out, h|None, rstd)
//   backward(dout, dh|None, xin, weight|None, rstd, kind) -> (dx, dw fp32|None)
#include <torch/extension.h>

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "rmsnorm_launch.h"

namespace {

namespace K = mar::rmsnorm_cuda;

void check_rows(const torch::Tensor& t, const char* name, const torch::Tensor& like) {
  TORCH_CHECK(t.is_cuda() && t.device() == like.device(), "rmsnorm: ", name,
              " must be on ", like.device());
  TORCH_CHECK(t.is_contiguous(), "rmsnorm: ", name, " must be contiguous");
  TORCH_CHECK(t.sizes() == like.sizes(), "rmsnorm: ", name, " has shape ", t.sizes(),
              ", expected ", like.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "rmsnorm: ", name, " has dtype ",
              t.scalar_type(), ", expected ", like.scalar_type());
}

K::DType code(at::ScalarType t, const char* name) {
  TORCH_CHECK(t == at::kFloat || t == at::kBFloat16, "rmsnorm: ", name,
              " must be fp32 or bf16, got ", t);
  return t == at::kFloat ? K::kFloat32 : K::kBFloat16;
}

const void* opt_ptr(const c10::optional<torch::Tensor>& t) {
  return (t.has_value() && t->defined()) ? t->data_ptr() : nullptr;
}

K::DType check_weight(const c10::optional<torch::Tensor>& w, int64_t kind, int64_t n,
                      const torch::Tensor& like) {
  TORCH_CHECK(kind >= 0 && kind <= 2, "rmsnorm: kind must be 0 (none), 1 (w) or 2 (1+w)");
  if (kind == 0) return K::kFloat32;
  TORCH_CHECK(w.has_value() && w->defined(), "rmsnorm: kind ", kind, " needs a weight");
  TORCH_CHECK(w->device() == like.device() && w->is_contiguous() && w->dim() == 1 &&
                  w->size(0) == n,
              "rmsnorm: weight must be a contiguous vector of ", n, " elements on ",
              like.device());
  return code(w->scalar_type(), "weight");
}

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "rmsnorm: ", what, " failed: ", cudaGetErrorString(err));
}

std::tuple<torch::Tensor, c10::optional<torch::Tensor>, torch::Tensor> forward(
    const torch::Tensor& x, const c10::optional<torch::Tensor>& residual,
    const c10::optional<torch::Tensor>& weight, int64_t kind, int64_t mode, double eps) {
  TORCH_CHECK(x.dim() == 2, "rmsnorm: x must be [rows, n]");
  TORCH_CHECK(mode >= 0 && mode <= 2, "rmsnorm: mode must be 0 (none), 1 (add_after) or 2 "
              "(add_before)");
  check_rows(x, "x", x);
  const int64_t rows = x.size(0), n = x.size(1);
  TORCH_CHECK(n > 0, "rmsnorm: empty rows");
  if (mode != 0) {
    TORCH_CHECK(residual.has_value() && residual->defined(), "rmsnorm: mode ", mode,
                " needs a residual");
    check_rows(*residual, "residual", x);
  }
  const K::DType wt = check_weight(weight, kind, n, x);
  const c10::cuda::CUDAGuard guard(x.device());
  auto out = torch::empty_like(x);
  c10::optional<torch::Tensor> h;
  if (mode == 2) h = torch::empty_like(x);
  auto rstd = torch::empty({rows}, x.options().dtype(at::kFloat));
  check_cuda(K::forward(code(x.scalar_type(), "x"), wt, x.data_ptr(),
                        mode != 0 ? residual->data_ptr() : nullptr, opt_ptr(weight),
                        static_cast<int>(kind), static_cast<int>(mode), static_cast<float>(eps),
                        rows, n, out.data_ptr(), h.has_value() ? h->data_ptr() : nullptr,
                        rstd.data_ptr<float>(), c10::cuda::getCurrentCUDAStream()),
             "forward kernel");
  return {out, h, rstd};
}

std::tuple<torch::Tensor, c10::optional<torch::Tensor>> backward(
    const torch::Tensor& dout, const c10::optional<torch::Tensor>& dh, const torch::Tensor& xin,
    const c10::optional<torch::Tensor>& weight, const torch::Tensor& rstd, int64_t kind) {
  TORCH_CHECK(xin.dim() == 2, "rmsnorm: xin must be [rows, n]");
  check_rows(xin, "xin", xin);
  check_rows(dout, "dout", xin);
  if (dh.has_value() && dh->defined()) check_rows(*dh, "dh", xin);
  const int64_t rows = xin.size(0), n = xin.size(1);
  const K::DType wt = check_weight(weight, kind, n, xin);
  TORCH_CHECK(rstd.device() == xin.device() && rstd.scalar_type() == at::kFloat &&
                  rstd.is_contiguous() && rstd.numel() == rows,
              "rmsnorm: rstd must be a contiguous fp32 vector of ", rows, " elements");
  const c10::cuda::CUDAGuard guard(xin.device());
  auto dx = torch::empty_like(xin);
  const bool has_w = kind != 0;
  const int64_t blocks = K::backward_blocks(rows);
  auto f32 = xin.options().dtype(at::kFloat);
  torch::Tensor partial = has_w ? torch::empty({blocks, n}, f32) : torch::Tensor();
  torch::Tensor dw = has_w ? torch::empty({n}, f32) : torch::Tensor();
  check_cuda(K::backward(code(xin.scalar_type(), "xin"), wt, dout.data_ptr(), opt_ptr(dh),
                         xin.data_ptr(), opt_ptr(weight), rstd.data_ptr<float>(),
                         static_cast<int>(kind), rows, n, dx.data_ptr(),
                         has_w ? partial.data_ptr<float>() : nullptr, blocks,
                         has_w ? dw.data_ptr<float>() : nullptr,
                         c10::cuda::getCurrentCUDAStream()),
             "backward kernel");
  if (!has_w) return {dx, c10::nullopt};
  return {dx, dw};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused RMSNorm (+ residual add), CUDA kernels of csrc/include/mar/rmsnorm.h";
  m.def("forward", &forward, "forward(x, residual, weight, kind, mode, eps) -> (out, h, rstd)",
        py::arg("x"), py::arg("residual"), py::arg("weight"), py::arg("kind"), py::arg("mode"),
        py::arg("eps"));
  m.def("backward", &backward, "backward(dout, dh, xin, weight, rstd, kind) -> (dx, dw)",
        py::arg("dout"), py::arg("dh"), py::arg("xin"), py::arg("weight"), py::arg("rstd"),
        py::arg("kind"));
}
