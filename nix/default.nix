# Every output of the flake for one system; flake.nix only collects them.
{
  nixpkgs,
  system,
}:
let
  project = import ./project.nix;
  pkgs = nixpkgs.legacyPackages.${system};
  inherit (pkgs) lib;

  hasCpp = builtins.elem system project.systems.cpp;
  hasCuda = builtins.elem system project.systems.cuda;

  # CUDA is unfree: a second nixpkgs instance allows NVIDIA's CUDA licences and nothing
  # else, as llama.cpp's flake does; the default instance stays free-only.
  pkgsCuda =
    if hasCuda then
      import nixpkgs {
        inherit system;
        config = {
          cudaSupport = true;
          allowUnfreePredicate =
            package:
            builtins.all (
              license:
              license.free or false
              || builtins.elem (license.shortName or "") [
                "CUDA EULA"
                "cuDNN EULA"
                "cuSPARSELt EULA"
                "cuTENSOR EULA"
              ]
            ) (lib.toList (package.meta.license or [ ]));
        };
      }
    else
      null;

  # CUDA 12: one package set for llama-cpp-cuda and the cuda shell, its minor version and
  # libraries pinned by flake.lock.
  cuda = if hasCuda then import ./cuda.nix pkgsCuda.cudaPackages_12 else null;

  # pkgs.callPackage for a file that makes a set of outputs (apps, shells, checks):
  # lib.makeOverridable adds `override` and `overrideDerivation` to any set a callPackage
  # returns, which the flake would then offer as an app, a shell and a check.
  callOutputs =
    path: args: builtins.removeAttrs (pkgs.callPackage path args) [ "override" "overrideDerivation" ];

  files = import ./files.nix { inherit lib; };
  python = pkgs.${project.python};
  sources = pkgs.callPackage ./sources.nix { };
  gguf = pkgs.callPackage ./gguf.nix {
    inherit python;
    llamaCpp = sources."llama.cpp";
  };
  xtask = pkgs.callPackage ./package.nix {
    inherit
      python
      gguf
      project
      files
      ;
  };

  reference =
    callPackage: ref: args:
    callPackage ./cpp-reference.nix (
      {
        inherit xtask ref;
        source = sources.${ref};
      }
      // args
    );

  references =
    lib.optionalAttrs hasCpp {
      llama-cpp = reference pkgs.callPackage "llama.cpp" { };
      bitnet-cpp = reference pkgs.callPackage "bitnet.cpp" { };
    }
    // lib.optionalAttrs hasCuda {
      llama-cpp-cuda = reference pkgsCuda.callPackage "llama.cpp" {
        useCuda = true;
        inherit cuda;
      };
    };
in
{
  packages = {
    default = xtask;
    inherit xtask;
  }
  // references;

  apps = callOutputs ./apps.nix {
    inherit xtask project;
    prebuilt = lib.optionalAttrs hasCpp {
      crossval = {
        "llama.cpp" = references.llama-cpp;
      };
      full-crossval = {
        "llama.cpp" = references.llama-cpp;
        "bitnet.cpp" = references.bitnet-cpp;
      };
    };
  };

  devShells = callOutputs ./devshells.nix {
    inherit
      python
      xtask
      project
      cuda
      ;
  };

  checks = callOutputs ./checks.nix {
    inherit
      python
      xtask
      files
      sources
      references
      project
      ;
  };

  # treefmt with nixfmt: `nix fmt` formats the tree (plain nixfmt, given no file since
  # Nix 2.25, would wait on stdin); `nix fmt -- --ci` checks it.
  formatter = pkgs.nixfmt-tree;
}
