# types-jsonschema (typeshed's stubs for jsonschema, which mypy --strict needs), from its
# PyPI sdist. It is most likely not in the pinned nixpkgs (it appears in nixpkgs master in
# 2026, after the 25.11 branch-off; not verifiable without fetching nixpkgs), so
# nix/package.nix uses this only when the pinned nixpkgs lacks the attribute.
# The version is the one `pip install -e '.[dev]'` installed when it was pinned; the hash
# is that of the file `pip download --no-deps --no-binary :all: types-jsonschema==<version>`
# fetched from PyPI (tests/test_nix.py downloads it again and compares).
{
  buildPythonPackage,
  fetchPypi,
  setuptools,
  referencing,
}:
buildPythonPackage rec {
  pname = "types-jsonschema";
  version = "4.26.0.20261006";
  pyproject = true;

  src = fetchPypi {
    pname = "types_jsonschema";
    inherit version;
    hash = "sha256-PrfbYbaBnUCt39qscXPnSQcafUqaQ5TwyERZjshLJQA=";
  };

  # The sdist asks for a newer setuptools than nixpkgs 25.11 has; any setuptools builds a
  # stubs-only wheel.
  postPatch = ''
    sed -i 's/"setuptools>=[^"]*"/"setuptools"/' pyproject.toml
  '';

  build-system = [ setuptools ];
  dependencies = [ referencing ];

  # Stubs only: nothing to import or test; mypy in checks.lint is what uses them.
  doCheck = false;
}
