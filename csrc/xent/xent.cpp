// Torch binding of the CUDA fused vocab-parallel cross-entropy (kernels in
// csrc/xent/xent_kernels.cu, which includes no torch header). Python API identical to the CPU build
// (csrc/xent_cpu/xent_cpu.cpp), so megatron_ar.kernels.cross_entropy calls either the same way:
//
//   forward_stats(logits, target, vocab_start, vocab_end, cap, ignore_index,
//                 row_max, row_sumexp, target_logit)      -> None (fills the three fp32 [rows])
//   backward_(logits, target, row_max, row_sumexp, grad_loss, vocab_start, vocab_end, cap,
//             ignore_index)                               -> None (gradient written into logits)
//
// Kernels run on the current CUDA stream of the logits' device (what torch ops on those tensors
// would use), under a device guard for that device.
#include <torch/extension.h>

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>

cudaError_t mar_xent_forward(const void* logits, bool is_bf16, int64_t rows, int64_t n,
                             int64_t ld, const int64_t* target, int64_t vocab_start,
                             int64_t vocab_end, float cap, int64_t ignore_index, float* row_max,
                             float* row_sumexp, float* target_logit, cudaStream_t stream);
cudaError_t mar_xent_backward(void* logits, bool is_bf16, int64_t rows, int64_t n, int64_t ld,
                              const int64_t* target, const float* row_max,
                              const float* row_sumexp, const float* grad_loss,
                              int64_t vocab_start, int64_t vocab_end, float cap,
                              int64_t ignore_index, cudaStream_t stream);

namespace {

void check_common(const torch::Tensor& logits, const torch::Tensor& target) {
  TORCH_CHECK(logits.is_cuda(), "xent: logits must be a CUDA tensor");
  TORCH_CHECK(logits.dim() == 2, "xent: logits must be [rows, v_local], got ", logits.sizes());
  TORCH_CHECK(logits.stride(1) == 1, "xent: logits' last dim must be contiguous");
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kBFloat16,
              "xent: logits must be float32 or bfloat16, got ", logits.scalar_type());
  TORCH_CHECK(logits.size(0) <= INT32_MAX, "xent: more rows than a grid holds");
  TORCH_CHECK(target.scalar_type() == at::kLong && target.dim() == 1 && target.is_contiguous() &&
                  target.size(0) == logits.size(0) && target.device() == logits.device(),
              "xent: target must be a contiguous int64 [rows] tensor on the logits' device");
}

void check_row_vector(const torch::Tensor& t, const torch::Tensor& logits, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.dim() == 1 && t.is_contiguous() &&
                  t.size(0) == logits.size(0) && t.device() == logits.device(),
              "xent: ", name, " must be a contiguous float32 [rows] tensor on the logits' device");
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "xent: ", what, " launch failed: ", cudaGetErrorString(err));
}

void forward_stats(torch::Tensor logits, torch::Tensor target, int64_t vocab_start,
                   int64_t vocab_end, double cap, int64_t ignore_index, torch::Tensor row_max,
                   torch::Tensor row_sumexp, torch::Tensor target_logit) {
  check_common(logits, target);
  TORCH_CHECK(vocab_end - vocab_start == logits.size(1),
              "xent: vocab_end - vocab_start must equal logits.size(1)");
  check_row_vector(row_max, logits, "row_max");
  check_row_vector(row_sumexp, logits, "row_sumexp");
  check_row_vector(target_logit, logits, "target_logit");
  const c10::cuda::CUDAGuard guard(logits.device());
  check_launch(mar_xent_forward(logits.data_ptr(), logits.scalar_type() == at::kBFloat16,
                                logits.size(0), logits.size(1), logits.stride(0),
                                target.data_ptr<int64_t>(), vocab_start, vocab_end,
                                static_cast<float>(cap), ignore_index,
                                row_max.data_ptr<float>(), row_sumexp.data_ptr<float>(),
                                target_logit.data_ptr<float>(),
                                c10::cuda::getCurrentCUDAStream().stream()),
               "forward_stats");
}

void backward_(torch::Tensor logits, torch::Tensor target, torch::Tensor row_max,
               torch::Tensor row_sumexp,
               torch::Tensor grad_loss, int64_t vocab_start, int64_t vocab_end, double cap,
               int64_t ignore_index) {
  check_common(logits, target);
  TORCH_CHECK(vocab_end - vocab_start == logits.size(1),
              "xent: vocab_end - vocab_start must equal logits.size(1)");
  check_row_vector(row_max, logits, "row_max");
  check_row_vector(row_sumexp, logits, "row_sumexp");
  check_row_vector(grad_loss, logits, "grad_loss");
  const c10::cuda::CUDAGuard guard(logits.device());
  check_launch(mar_xent_backward(logits.data_ptr(), logits.scalar_type() == at::kBFloat16,
                                 logits.size(0), logits.size(1), logits.stride(0),
                                 target.data_ptr<int64_t>(), row_max.data_ptr<float>(),
                                 row_sumexp.data_ptr<float>(),
                                 grad_loss.data_ptr<float>(), vocab_start, vocab_end,
                                 static_cast<float>(cap), ignore_index,
                                 c10::cuda::getCurrentCUDAStream().stream()),
               "backward_");
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused vocab-parallel cross-entropy, CUDA build (csrc/include/mar/xent.h)";
  m.def("forward_stats", &forward_stats,
        "Per-row local (max, sum exp(z - max)) and target logit of the capped logits",
        py::arg("logits"), py::arg("target"), py::arg("vocab_start"), py::arg("vocab_end"),
        py::arg("cap"), py::arg("ignore_index"), py::arg("row_max"), py::arg("row_sumexp"),
        py::arg("target_logit"));
  m.def("backward_", &backward_, "Overwrite logits with d loss / d logits",
        py::arg("logits"), py::arg("target"), py::arg("row_max"),
        py::arg("row_sumexp"), py::arg("grad_loss"),
        py::arg("vocab_start"), py::arg("vocab_end"), py::arg("cap"), py::arg("ignore_index"));
}
