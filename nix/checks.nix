# `nix flake check`: each check runs the same checks/<name>.sh that
# `scripts/ci-local.sh <name>` runs, in the sandbox, with the pinned toolchain.
#
# A check is two derivations, because a failed derivation keeps no output: `report` runs
# the script and always succeeds, keeping its log, its reports (the JUnit XML, the
# receipts) and its exit status; the check itself fails when that status is not 0,
# printing the log's tail, and otherwise is a link to the report. So the log of a failed
# check is in `nix build .#checks.<system>.<name>.report`.
{
  lib,
  pkgs,
  python,
  xtask,
  files,
  sources,
  references,
  project,
}:
let
  src = lib.fileset.toSource {
    root = ../.;
    fileset = files.checks;
  };

  pythonEnv = python.withPackages (_: xtask.dependencies ++ xtask.devDependencies);

  report =
    name:
    {
      nativeBuildInputs ? [ ],
      ...
    }@attrs:
    pkgs.stdenv.mkDerivation (
      attrs
      // {
        name = "xtask-check-${name}-report";
        inherit src;
        nativeBuildInputs = [ pythonEnv ] ++ nativeBuildInputs;
        # The tests start servers on 127.0.0.1.
        __darwinAllowLocalNetworking = true;
        dontConfigure = true;
        buildPhase = ''
          runHook preBuild
          export HOME="$TMPDIR/home" XDG_CACHE_HOME="$TMPDIR/cache" PYTHONPATH="$PWD/src"
          mkdir -p "$HOME" reports
          echo 0 >reports/status
          { bash checks/${name}.sh 2>&1 || echo "$?" >reports/status; } | tee reports/${name}.log
          runHook postBuild
        '';
        installPhase = ''
          runHook preInstall
          cp -r reports "$out"
          runHook postInstall
        '';
      }
    );

  check =
    name: attrs:
    let
      result = report name attrs;
    in
    pkgs.runCommand "xtask-check-${name}" { passthru.report = result; } ''
      status=$(cat ${result}/status)
      if [ "$status" != 0 ]; then
        tail -n 40 ${result}/${name}.log >&2
        echo "checks/${name}.sh failed (exit $status); log and reports: ${result}" >&2
        exit "$status"
      fi
      ln -s ${result} "$out"
    '';
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
      # bitnet.cpp's CMakeLists accepts only Clang
      pkgs.clang
      pkgs.nginx
      pkgs.tinyproxy
      pkgs.openssl
      pkgs.git
      # pgrep (tests/test_gpu_detect.py)
      pkgs.procps
    ];
    # The GPU stand-ins start with `#!/usr/bin/env python3`; the sandbox has no /usr/bin/env.
    postPatch = ''
      patchShebangs --build tests/standins
    '';
    env = {
      # The fetch-cpp tests serve this sdist from their nginx instead of asking PyPI.
      XTASK_TEST_LLAMA_SDIST = "${sources."llama.cpp".src}";
      # The WebGPU probe's test asks the real Vulkan loader, which finds Mesa's lavapipe
      # (a CPU device) through this manifest.
      LD_LIBRARY_PATH = lib.makeLibraryPath [ pkgs.vulkan-loader ];
      VK_DRIVER_FILES = "${pkgs.mesa}/share/vulkan/icd.d/lvp_icd.${pkgs.stdenv.hostPlatform.uname.processor}.json";
    };
    # bitnet.cpp's tests build the pinned source; fetch-cpp generates its kernel header
    # inside the tree, so they get a writable copy.
    preBuild = ''
      cp -r ${sources."bitnet.cpp".src} "$TMPDIR/BitNet"
      chmod -R u+w "$TMPDIR/BitNet"
      export XTASK_TEST_BITNET_SOURCE="$TMPDIR/BitNet"
    '';
  };
}
// lib.optionalAttrs (references ? llama-cpp) {
  # gen-fixtures -> crossval against the Nix-built llama.cpp.
  receipts = check "receipts" {
    env.${project.prebuilt."llama.cpp"} = "${references.llama-cpp}";
  };
}
