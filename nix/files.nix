# The project's files that each Nix build reads, as lib.fileset file sets: one place,
# so that the package and the checks cannot disagree about what the source is. Needs only
# nixpkgs' lib (tests/test_nix.py evaluates it with the real lib of the pinned release).
{ lib }:
let
  package = lib.fileset.unions [
    ../pyproject.toml
    ../README.md
    ../src
  ];
in
{
  # What the wheel is built from, so that editing tests or nix/ does not rebuild it.
  inherit package;

  # What the checks read: the package, its tests, the local servers that tests and
  # benchmarks share (testing/), benchmarks and check scripts, and the flake itself
  # (tests/test_nix.py reads flake.nix, flake.lock and nix/ in every run).
  # Everything Git tracks but .ci/ and .gitignore.
  checks = lib.fileset.unions [
    package
    ../tests
    ../testing
    ../bench
    ../checks
    ../scripts
    ../flake.nix
    ../flake.lock
    ./.
  ];
}
