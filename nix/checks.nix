# `nix flake check`: each check runs the same checks/<name>.sh that
# `scripts/ci-local.sh <name>` runs, in the sandbox, with the pinned toolchain, and
# leaves its log and reports (the JUnit XML, the receipts) in $out.
{
  lib,
  pkgs,
  python,
  xtask,
  sources,
  references,
  project,
}:
let
  # What the checks read: the project, not nix/ or the flake files.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../pyproject.toml
      ../README.md
      ../src
      ../tests
      ../bench
      ../checks
      ../scripts
    ];
  };

  pythonEnv = python.withPackages (_: xtask.dependencies ++ xtask.devDependencies);

  check =
    name:
    {
      nativeBuildInputs ? [ ],
      env ? { },
    }:
    pkgs.stdenv.mkDerivation {
      name = "xtask-check-${name}";
      inherit src env;
      nativeBuildInputs = [ pythonEnv ] ++ nativeBuildInputs;
      # The tests start servers on 127.0.0.1.
      __darwinAllowLocalNetworking = true;
      dontConfigure = true;
      buildPhase = ''
        runHook preBuild
        export HOME="$TMPDIR/home" XDG_CACHE_HOME="$TMPDIR/cache" PYTHONPATH="$PWD/src"
        mkdir -p "$HOME" reports
        set -o pipefail
        bash checks/${name}.sh 2>&1 | tee reports/${name}.log
        runHook postBuild
      '';
      installPhase = ''
        runHook preInstall
        cp -r reports "$out"
        runHook postInstall
      '';
    };
in
{
  lint = check "lint" { nativeBuildInputs = [ pkgs.ruff ]; };
}
# The suite's C++ builds and ELF inspection are Linux's (as in CI).
// lib.optionalAttrs pkgs.stdenv.hostPlatform.isLinux {
  tests = check "tests" {
    nativeBuildInputs = [
      pkgs.cmake
      pkgs.ninja
      pkgs.nginx
      pkgs.tinyproxy
      pkgs.openssl
      pkgs.git
    ];
    # The fetch-cpp tests serve this sdist from their nginx instead of asking PyPI.
    env.XTASK_TEST_LLAMA_SDIST = "${sources."llama.cpp".src}";
  };
}
// lib.optionalAttrs (references ? llama-cpp) {
  # gen-fixtures -> crossval against the Nix-built llama.cpp.
  receipts = check "receipts" {
    env.${project.prebuilt."llama.cpp"} = "${references.llama-cpp}";
  };
}
