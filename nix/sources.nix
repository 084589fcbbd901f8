# The pinned sources as derivations, fetched with the fetcher and hash nix/pins.nix names:
# the same bytes `xtask fetch-cpp` downloads and verifies (cpp/source.py).
{
  lib,
  fetchurl,
  fetchFromGitHub,
  runCommand,
}:
let
  pins = import ./pins.nix;

  fetch = pin: if pin.fetcher == "fetchurl" then fetchurl pin.args else fetchFromGitHub pin.args;

  # A GitHub tree with its submodules' trees copied to their paths, replacing the empty
  # directories GitHub's tarball has there (what cpp/source.py does).
  githubTree =
    name: pin:
    if pin.submodules == { } then
      fetch pin
    else
      runCommand "${name}-source" { } (
        ''
          cp -r ${fetch pin} $out
          chmod -R u+w $out
        ''
        + lib.concatStrings (
          lib.mapAttrsToList (path: submodule: ''
            rm -rf "$out/${path}"
            mkdir -p "$(dirname "$out/${path}")"
            cp -r ${githubTree "${name}-${baseNameOf path}" submodule} "$out/${path}"
            chmod -R u+w "$out/${path}"
          '') pin.submodules
        )
      );

  source =
    name: pin:
    if pin.kind == "pypi-sdist" then
      {
        inherit pin;
        # The sdist itself; consumers unpack it and enter `subdir`.
        src = fetch pin;
        inherit (pin) subdir;
        # The vendored llama.cpp's commit (read from the sdist's CHANGELOG into the pin):
        # the sdist's own version is llama-cpp-python's, not llama.cpp's.
        version = "0-unstable-${
          pin.upstream.rev or (throw "pins.json: ${name}: no upstream.rev (the commit the sdist vendors)")
        }";
      }
    else
      {
        inherit pin;
        src = githubTree (lib.replaceStrings [ "." ] [ "-" ] name) pin;
        subdir = null;
        version = "0-unstable-${builtins.substring 0 12 pin.args.rev}";
      };
in
lib.mapAttrs source pins
