# The `xtask` application: pyproject.toml built with the pinned nixpkgs Python.
{
  lib,
  python,
  gguf,
  cmake,
  ninja,
  project,
  files,
}:
let
  # pyproject.toml's dependencies (less cmake and ninja, below) and its `dev` extra
  # (less ruff, which the shells and checks take from nixpkgs as a binary).
  dependencies = [
    python.pkgs.click
    python.pkgs.jsonschema
    python.pkgs.numpy
    python.pkgs.pyelftools
    python.pkgs.requests
    python.pkgs.tqdm
    python.pkgs.zstandard
    gguf
  ];
  # pyproject.toml's `hf` extra: the crossval ground truth (the `hf:` backend, twin
  # fixtures, the converter). Not in the app's closure; the default shell has it.
  hfDependencies = [
    python.pkgs.accelerate
    python.pkgs.protobuf
    python.pkgs.pyyaml
    python.pkgs.safetensors
    python.pkgs.sentencepiece
    python.pkgs.torch
    python.pkgs.transformers
  ];
  devDependencies = [
    python.pkgs.mypy
    python.pkgs.pytest
    python.pkgs.pytest-timeout
    # Most likely not in nixpkgs 25.11: then packaged here, from PyPI's sdist.
    (python.pkgs.types-jsonschema or (python.pkgs.callPackage ./types-jsonschema.nix { }))
    python.pkgs.tomli # mypy checks the Python 3.10 branch of models/catalog.py
    python.pkgs.types-requests
    python.pkgs.types-tqdm
  ];
in
python.pkgs.buildPythonApplication {
  inherit (project) pname version;
  pyproject = true;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = files.package;
  };

  build-system = [
    python.pkgs.setuptools
    python.pkgs.wheel
  ];
  inherit dependencies;
  # PyPI's cmake and ninja wheels are how pip users get pinned build tools; here the
  # pinned nixpkgs provides them, on PATH (cpp/build.py falls back to PATH).
  pythonRemoveDeps = [
    "cmake"
    "ninja"
  ];
  makeWrapperArgs = [
    "--prefix"
    "PATH"
    ":"
    (lib.makeBinPath [
      cmake
      ninja
    ])
  ];

  # The suite needs its servers and builds llama.cpp: it runs as checks.tests.
  doCheck = false;
  pythonImportsCheck = [
    "bitnet_xtask"
    "bitnet_xtask.cli"
  ];

  # The shells and checks build their Python environments from these.
  passthru = { inherit dependencies devDependencies hfDependencies; };

  meta = {
    inherit (project) description mainProgram;
    license = lib.licenses.mit;
  };
}
