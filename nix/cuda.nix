# The CUDA toolchain of packages.llama-cpp-cuda and the `cuda` dev shell, from the one
# CUDA package set nix/default.nix chooses. The split packages, as llama.cpp's own
# .devops/nix/package.nix uses them (the merged `cudatoolkit` is deprecated and lacks
# libcudart_static.a, which CMake's CUDA compiler check links): nvcc runs on the build
# machine; the runtime, CUB/Thrust (<nv/target>) and cuBLAS are linked. Their setup hooks
# put every one of them on CUDAToolkit_ROOT, where CMake's FindCUDAToolkit looks, for the
# CMake that `xtask fetch-cpp` runs as for any other.
cudaPackages: {
  inherit (cudaPackages) backendStdenv flags;
  nativeBuildInputs = [ cudaPackages.cuda_nvcc ];
  buildInputs = [
    cudaPackages.cuda_cudart
    cudaPackages.cuda_cccl
    cudaPackages.libcublas
  ];
}
