#include "kernels/cuda_graph.hpp"

#include "kernels/cuda_check.hpp"

namespace ferry {

CudaGraph::~CudaGraph() {
  if (exec_) cudaGraphExecDestroy(exec_);
}

void CudaGraph::begin(cudaStream_t s) {
  CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
}

void CudaGraph::launch(cudaStream_t s) {
  cudaGraph_t graph = nullptr;
  CUDA_CHECK(cudaStreamEndCapture(s, &graph));
  struct Owned {  // the recording, freed however this ends
    cudaGraph_t g;
    ~Owned() { cudaGraphDestroy(g); }
  } owned{graph};
  if (exec_) {
    cudaGraphExecUpdateResultInfo info{};
    const cudaError_t updated = cudaGraphExecUpdate(exec_, graph, &info);
    if (updated == cudaSuccess) {
      ++stats_.updates;
    } else if (updated == cudaErrorGraphExecUpdateFailure) {  // another topology: instantiate
      cudaGetLastError();
      cudaGraphExecDestroy(exec_);
      exec_ = nullptr;
    } else {
      CUDA_CHECK(updated);
    }
  }
  if (!exec_) {
    CUDA_CHECK(cudaGraphInstantiateWithFlags(&exec_, graph, 0));
    ++stats_.builds;
  }
  CUDA_CHECK(cudaGraphLaunch(exec_, s));
  ++stats_.launches;
}

void CudaGraph::abandon(cudaStream_t s) noexcept {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(s, &status) == cudaSuccess && status != cudaStreamCaptureStatusNone) {
    cudaGraph_t graph = nullptr;
    cudaStreamEndCapture(s, &graph);
    if (graph) cudaGraphDestroy(graph);
  }
  cudaGetLastError();
}

}  // namespace ferry
