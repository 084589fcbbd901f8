# `nix develop` (default), `nix develop .#min-python`, `nix develop .#cuda`.
{
  lib,
  pkgs,
  pkgsCuda,
  python,
  xtask,
  project,
}:
let
  # `xtask` from the working tree (src/ is on PYTHONPATH), not from the store.
  xtaskFromTree = pkgs.writeShellScriptBin project.mainProgram ''exec python -m bitnet_xtask "$@"'';

  default = pkgs.mkShell {
    packages = [
      (python.withPackages (_: xtask.dependencies ++ xtask.devDependencies))
      xtaskFromTree
      pkgs.ruff
      # fetch-cpp's toolchain; bitnet.cpp needs Clang: CC=clang CXX=clang++
      pkgs.cmake
      pkgs.ninja
      pkgs.clang
      # the real peers of the download tests
      pkgs.nginx
      pkgs.tinyproxy
      pkgs.openssl
      pkgs.git
      pkgs.nixfmt
    ];
    shellHook = ''
      export PYTHONPATH="$PWD/src''${PYTHONPATH:+:$PYTHONPATH}"
    '';
  };

  minPython = pkgs.${project.minPython};
in
{
  inherit default;

  # The oldest Python pyproject.toml allows (like a Rust project's MSRV shell): a venv
  # with this package and its dev extras from PyPI, on the interpreter from nixpkgs.
  min-python = pkgs.mkShell {
    packages = [
      minPython
      minPython.pkgs.venvShellHook
      pkgs.cmake
      pkgs.ninja
    ];
    venvDir = ".venv-${project.minPython}";
    postVenvCreation = ''
      pip install -e '.[dev]'
      # CMake and Ninja come from the pinned nixpkgs, as in the package (nix/package.nix);
      # cpp/build.py finds them on PATH.
      pip uninstall -y cmake ninja
    '';
    postShellHook = ''
      python --version
    '';
  };
}
// lib.optionalAttrs (pkgsCuda != null) {
  # The default shell plus the pinned CUDA toolkit and nvcc's host compiler.
  cuda = (pkgsCuda.mkShell.override { stdenv = pkgsCuda.cudaPackages.backendStdenv; }) {
    inputsFrom = [ default ];
    packages = [ pkgsCuda.cudaPackages.cudatoolkit ];
    env = {
      CUDAToolkit_ROOT = "${pkgsCuda.cudaPackages.cudatoolkit}";
      CUDACXX = "${pkgsCuda.cudaPackages.cudatoolkit}/bin/nvcc";
    };
  };
}
