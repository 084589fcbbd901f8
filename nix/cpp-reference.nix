# A pinned C++ reference (llama.cpp or bitnet.cpp) with the xtask-logits harness, built
# by `xtask fetch-cpp --source` itself: the CMake flags, bitnet.cpp's generated kernel
# header, the harness and the receipt are exactly those of a fetch-cpp build, from one
# place (src/bitnet_xtask/cpp/build.py); Nix supplies the pinned source and toolchain.
#
# The output is laid out like a fetch-cpp build directory, which is what crossval reads
# through XTASK_CPP_PREFIX_<REF> (nix/README.md):
#   bin/          the CLI (llama-cli or bitnet-llama-cli), xtask-logits, shared libraries
#   receipt.json  fetch-cpp's receipt (paths rewritten to this output)
#   build.log     every command fetch-cpp ran and its output
#
# Variants come from arguments, as in llama.cpp's own package.nix:
#   .override { cudaCapabilities = [ "8.9" ]; }  (packages.llama-cpp-cuda: useCuda = true
#   and the CUDA toolchain of nix/cuda.nix)
{
  lib,
  stdenv,
  clangStdenv,
  autoAddDriverRunpath,
  xtask,
  source,
  ref,
  useCuda ? false,
  # nix/cuda.nix applied to a CUDA package set; needed with useCuda.
  cuda ? null,
  cudaCapabilities ? (cuda.flags.cudaCapabilities or [ ]),
}:
let
  backend = if useCuda then "cuda" else "cpu";
  # bitnet.cpp's CMakeLists refuses any compiler but Clang; nvcc needs its host compiler.
  effectiveStdenv =
    if useCuda then
      cuda.backendStdenv
    else if ref == "bitnet.cpp" then
      clangStdenv
    else
      stdenv;
  # "8.9" -> --cuda-arch 89 (fetch-cpp's spelling of CMAKE_CUDA_ARCHITECTURES).
  cudaArchFlags = lib.optionalString useCuda (
    lib.concatMapStrings (
      capability: " --cuda-arch ${lib.replaceStrings [ "." ] [ "" ] capability}"
    ) cudaCapabilities
  );
  # Where `fetch-cpp --source` builds: the revision "local", the name cpp/layout.py's.
  buildName = import ./build-directory.nix {
    inherit ref backend;
    revision = "local";
  };
  buildDirectory = "$XDG_CACHE_HOME/bitnet_cpp/${buildName}";
in
assert lib.assertMsg (!(useCuda && ref == "bitnet.cpp")) "bitnet.cpp is built for the CPU only";
assert lib.assertMsg (useCuda -> cuda != null) "useCuda needs cuda (nix/cuda.nix)";
effectiveStdenv.mkDerivation {
  pname = "${lib.replaceStrings [ "." ] [ "-" ] ref}${lib.optionalString useCuda "-cuda"}";
  inherit (source) version;

  src = source.src;
  setSourceRoot = lib.optionalString (source.subdir != null) "sourceRoot=$(echo */${source.subdir})";

  nativeBuildInputs = [
    xtask
  ]
  ++ lib.optionals useCuda (cuda.nativeBuildInputs ++ [ autoAddDriverRunpath ]);
  buildInputs = lib.optionals useCuda cuda.buildInputs;

  # fetch-cpp configures and builds: CMake and Ninja come on PATH with xtask, so no CMake
  # or Ninja setup hook takes over a phase. The generic configurePhase still runs (it finds
  # no ./configure) with its hooks, as the CUDA packages' setup expects.
  buildPhase = ''
    runHook preBuild
    export HOME="$TMPDIR/home" XDG_CACHE_HOME="$TMPDIR/cache"
    mkdir -p "$HOME"
    jobs="''${NIX_BUILD_CORES:-0}"
    [ "$jobs" -ge 1 ] || jobs="$(nproc)"
    xtask fetch-cpp --ref ${ref} --source "$PWD" --backend ${backend}${cudaArchFlags} --jobs "$jobs"
    runHook postBuild
  '';

  installPhase = ''
    runHook preInstall
    build="${buildDirectory}"
    mkdir -p "$out"
    cp -a "$build/bin" "$out/bin"
    cp "$build/receipt.json" "$build/build.log" "$out/"
    substituteInPlace "$out/receipt.json" --replace-fail "$build" "$out"
    # The binaries find their libraries next to themselves ($ORIGIN); the build tree's
    # directories, which CMake also put into RPATH, are gone after this build.
    for file in "$out"/bin/*; do
      if [ -L "$file" ] || ! isELF "$file"; then continue; fi
      rpath=$(patchelf --print-rpath "$file" | tr ':' '\n' | { grep -v -e '^$' -e "^$NIX_BUILD_TOP" || true; } | paste -sd: -)
      patchelf --set-rpath "$rpath" "$file"
    done
    runHook postInstall
  '';

  passthru = {
    inherit ref backend;
  }
  // lib.optionalAttrs useCuda { inherit cudaCapabilities; };

  meta = {
    description = "${ref} (${backend}) built by xtask fetch-cpp, with the xtask-logits harness";
    mainProgram = "xtask-logits";
    platforms = lib.platforms.linux;
  };
}
