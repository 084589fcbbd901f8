# `nix develop` (default), `nix develop .#min-python`, `nix develop .#cuda`.
{
  lib,
  pkgs,
  python,
  xtask,
  project,
  # nix/cuda.nix applied to the flake's CUDA package set, or null where there is none.
  cuda,
}:
let
  # `xtask` from the working tree (src/ is on PYTHONPATH), not from the store.
  xtaskFromTree = pkgs.writeShellScriptBin project.mainProgram ''exec python -m bitnet_xtask "$@"'';

  default = pkgs.mkShell {
    packages = [
      (python.withPackages (_: xtask.dependencies ++ xtask.devDependencies ++ xtask.hfDependencies))
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
      # `treefmt`, what `nix fmt` runs, and nixfmt itself (tests/test_nix.py uses it)
      pkgs.nixfmt-tree
      pkgs.nixfmt
    ];
    # stdenv's compiler wrappers drop -march=native unless NIX_ENFORCE_NO_NATIVE=0, which
    # would make `xtask fetch-cpp --native` here silently portable. (The packages and
    # checks keep stdenv's default: the tests' GGML_NATIVE=ON build is portable there.)
    shellHook = ''
      export PYTHONPATH="$PWD/src''${PYTHONPATH:+:$PYTHONPATH}"
      export NIX_ENFORCE_NO_NATIVE=0
    '';
  };

  # nixpkgs drops old interpreters (python310 is gone from master), leaving nothing or an
  # alias that throws: either way min-python says so, below.
  minPython = pkgs.${project.minPython} or null;
  hasMinPython = (builtins.tryEval minPython).success && minPython != null;
in
{
  inherit default;

  # The oldest Python pyproject.toml allows (like a Rust project's MSRV shell): a venv
  # with this package and its dev extras from PyPI, on the interpreter from nixpkgs.
  min-python =
    lib.throwIfNot hasMinPython
      "devShells.min-python: requires-python ${builtins.toJSON project.requiresPython} names ${project.minPython}, which this nixpkgs no longer has; raise requires-python in pyproject.toml or pin an older nixpkgs"
      (
        pkgs.mkShell {
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
        }
      );
}
// lib.optionalAttrs (cuda != null) {
  # The default shell plus llama-cpp-cuda's CUDA toolchain (nix/cuda.nix) and nvcc's host
  # compiler; the CUDA packages' setup hooks set CUDAToolkit_ROOT for CMake.
  cuda = (pkgs.mkShell.override { stdenv = cuda.backendStdenv; }) {
    inputsFrom = [ default ];
    packages = cuda.nativeBuildInputs;
    inherit (cuda) buildInputs;
  };
}
