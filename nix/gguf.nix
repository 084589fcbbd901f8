# gguf (the GGUF reader/writer that gen-fixtures and crossval use), built from the
# gguf-py inside the pinned llama.cpp sdist: the file format library and the engine
# that reads the files come from one pin.
{
  python,
  llamaCpp,
}:
python.pkgs.buildPythonPackage {
  pname = "gguf";
  # The package's own version (gguf-py's pyproject.toml) is in the wheel; this names
  # the pin it comes from.
  version = "0-llama-cpp-python-${llamaCpp.pin.version}";
  pyproject = true;

  src = llamaCpp.src;
  setSourceRoot = "sourceRoot=$(echo */${llamaCpp.subdir}/gguf-py)";

  build-system = [ python.pkgs.poetry-core ];
  dependencies = [
    python.pkgs.numpy
    python.pkgs.pyyaml
    python.pkgs.requests
    python.pkgs.tqdm
  ];

  pythonImportsCheck = [ "gguf" ];
}
