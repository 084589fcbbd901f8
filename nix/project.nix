# What the flake needs to know about the project, read from pyproject.toml where it is
# written there, and the few choices that belong to the Nix side alone. Pure: needs no
# nixpkgs (`nix-instantiate --eval --strict --json nix/project.nix`).
let
  pyproject = builtins.fromTOML (builtins.readFile ../pyproject.toml);
  project = pyproject.project;

  # requires-python ">=3.10" -> the nixpkgs attribute "python310".
  minimum = builtins.match ">=[[:space:]]*([0-9]+)\\.([0-9]+)[^,]*" project.requires-python;
  minPython =
    if minimum == null then
      throw "nix/project.nix: cannot read a minimum from requires-python = ${builtins.toJSON project.requires-python}"
    else
      "python${builtins.elemAt minimum 0}${builtins.elemAt minimum 1}";

  lower = builtins.genList (i: builtins.substring i 1 "abcdefghijklmnopqrstuvwxyz.") 27;
  upper = builtins.genList (i: builtins.substring i 1 "ABCDEFGHIJKLMNOPQRSTUVWXYZ_") 27;
  upperSnake = builtins.replaceStrings lower upper;
in
{
  pname = project.name;
  inherit (project) version description;
  requiresPython = project.requires-python;
  mainProgram = builtins.head (builtins.attrNames project.scripts);

  # The interpreter of the packages, checks and default shell: the pinned nixpkgs'
  # default python3, named so that a nixpkgs update cannot change it silently.
  python = "python313";
  # The oldest supported Python, from requires-python (the min-python shell).
  inherit minPython;

  # Every output where the packages allow: the C++ references are built by
  # `xtask fetch-cpp`, whose receipts read ELF files (Linux); CUDA only on x86_64-linux.
  systems = {
    all = [
      "x86_64-linux"
      "aarch64-linux"
      "aarch64-darwin"
    ];
    cpp = [
      "x86_64-linux"
      "aarch64-linux"
    ];
    cuda = [ "x86_64-linux" ];
  };

  # One `nix run .#<name> -- <args>` app per `xtask <name>` command, plus `xtask` itself.
  commands = [
    "download-model"
    "preflight"
    "gpu-preflight"
    "fetch-cpp"
    "crossval"
    "full-crossval"
    "gen-fixtures"
    "clean-cache"
    "models"
  ];

  # The variable that hands a Nix-built reference to crossval, one per pinned reference:
  # "XTASK_CPP_PREFIX_" + the name with "." -> "_", upper-cased (crossval/backends.py's
  # PREFIX_ENV and find_build; tests/test_nix.py checks they agree).
  prebuilt = builtins.mapAttrs (ref: _: "XTASK_CPP_PREFIX_" + upperSnake ref) (import ./pins.nix);
}
