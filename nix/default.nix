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

  python = pkgs.${project.python};
  sources = pkgs.callPackage ./sources.nix { };
  gguf = pkgs.callPackage ./gguf.nix {
    inherit python;
    llamaCpp = sources."llama.cpp";
  };
  xtask = pkgs.callPackage ./package.nix { inherit python gguf project; };

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
      # CUDA 12, the minor version and its libraries pinned by flake.lock.
      llama-cpp-cuda = reference pkgsCuda.callPackage "llama.cpp" {
        useCuda = true;
        cudaPackages = pkgsCuda.cudaPackages_12;
      };
    };
in
{
  packages = {
    default = xtask;
    inherit xtask;
  }
  // references;

  apps = pkgs.callPackage ./apps.nix {
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

  devShells = pkgs.callPackage ./devshells.nix {
    inherit
      python
      xtask
      project
      pkgsCuda
      ;
  };

  checks = pkgs.callPackage ./checks.nix {
    inherit
      python
      xtask
      sources
      references
      project
      ;
  };

  formatter = pkgs.nixfmt;
}
