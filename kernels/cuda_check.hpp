// CUDA_CHECK(expr): throws ferry::Error("file:line: expr: <cudaGetErrorString>") when a CUDA
// runtime call fails. A plain function call, not an assert, so it stays under NDEBUG.
#pragma once
#include <cuda_runtime_api.h>

#include <string>

#include "base/error.hpp"

namespace ferry {

inline void cuda_check(cudaError_t err, const char* expr, const char* file, int line) {
  if (err == cudaSuccess) return;
  throw Error(std::string(file) + ":" + std::to_string(line) + ": " + expr + ": " +
              cudaGetErrorString(err));
}

}  // namespace ferry

#define CUDA_CHECK(expr) ::ferry::cuda_check((expr), #expr, __FILE__, __LINE__)
