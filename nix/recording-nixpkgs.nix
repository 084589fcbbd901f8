# A recording stand-in for the nixpkgs flake input, for tests/test_nix.py only: nothing
# in the flake uses it. nixpkgs cannot be fetched where this project is developed, so
# the tests evaluate flake.nix and nix/ with the real nixpkgs lib of the pinned release
# and this in place of the package set: every package is a named stand-in, every builder
# returns its arguments (with what real builders add: a name, an outPath, the passthru).
# What the flake's own code decides (its outputs, the arguments it hands nixpkgs) is then
# evaluated for real; whether nixpkgs accepts those arguments is not (`nix-full` is).
{
  # The real nixpkgs lib.
  lib,
  # The names nix/ uses: `pkgs.<name>`, `python.pkgs.<name>`, `cudaPackages.<name>`.
  names,
  pythonNames,
  cudaNames,
  # system: pkgs: attributes to add to the package set (an interpreter, say).
  extra,
  # A directory whose default.nix is `import nixpkgs { system; ... }` of this.
  outPath,
}:
let
  package = name: {
    type = "derivation";
    inherit name;
    pname = name;
    outPath = "/stub/${name}";
    meta.mainProgram = name;
  };

  # What a builder makes of its arguments; `builtWith` names the builder.
  built =
    builtWith: attrs:
    let
      name = attrs.name or "${attrs.pname}-${attrs.version}";
    in
    attrs
    // (attrs.passthru or { })
    // {
      type = "derivation";
      inherit name builtWith;
      outPath = "/stub/${name}";
    };

  stdenvNamed = name: {
    inherit name;
    mkDerivation = built name;
  };

  pkgsFor =
    system:
    let
      # lib.callPackageWith, as pkgs.callPackage is; an argument the scope lacks is a package.
      callPackageWith =
        scope: fn: args:
        let
          f = if builtins.isFunction fn then fn else import fn;
          required = lib.filterAttrs (_: optional: !optional) (builtins.functionArgs f);
        in
        lib.callPackageWith (lib.mapAttrs (name: _: package name) required // scope) fn args;

      python = package "python3" // {
        pkgs = lib.genAttrs pythonNames package // {
          buildPythonApplication = built "buildPythonApplication";
          buildPythonPackage = built "buildPythonPackage";
          fetchPypi = args: built "fetchPypi" (args // { name = "${args.pname}-${args.version}.tar.gz"; });
          callPackage = callPackageWith python.pkgs;
        };
        withPackages =
          select:
          built "python.withPackages" {
            name = "python3-env";
            packages = select python.pkgs;
          };
      };

      stdenv = stdenvNamed "stdenv" // {
        hostPlatform = lib.systems.elaborate system;
      };

      mkShellWith = shellStdenv: {
        override = { stdenv }: mkShellWith stdenv;
        __functor = _: attrs: shellStdenv.mkDerivation ({ name = "shell"; } // attrs);
      };

      pkgs =
        lib.genAttrs names package
        // {
          inherit lib pkgs stdenv;
          clangStdenv = stdenvNamed "clangStdenv";
          callPackage = callPackageWith pkgs;
          python313 = python;
          mkShell = mkShellWith stdenv;
          runCommand =
            name: env: script:
            built "runCommand" (env // { inherit name script; });
          writeShellScriptBin = name: text: built "writeShellScriptBin" { inherit name text; };
          fetchurl = args: built "fetchurl" (args // { name = baseNameOf args.url; });
          fetchFromGitHub = args: built "fetchFromGitHub" (args // { name = "${args.repo}-source"; });
          cudaPackages_12 = lib.genAttrs cudaNames package // {
            backendStdenv = stdenvNamed "cudaPackages.backendStdenv";
            flags.cudaCapabilities = [
              "8.9"
              "9.0"
            ];
          };
        }
        // extra system pkgs;
    in
    pkgs;
in
{
  inherit lib outPath;
  legacyPackages = lib.genAttrs (import ./project.nix).systems.all pkgsFor;
}
