{
  description = "bitnet-xtask: pinned C++ references, model downloads, GPU preflight and cross-validation for BitNet / llama.cpp engines";

  # nixpkgs only; flake.lock pins it (nix/README.md names where the pin comes from).
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  # Thin: every output is made by nix/ (nix/default.nix for one system).
  outputs =
    { nixpkgs, ... }:
    let
      systems = (import ./nix/project.nix).systems.all;
      perSystem = nixpkgs.lib.genAttrs systems (system: import ./nix { inherit nixpkgs system; });
      collect = output: nixpkgs.lib.mapAttrs (_: outputs: outputs.${output}) perSystem;
    in
    {
      packages = collect "packages";
      apps = collect "apps";
      devShells = collect "devShells";
      checks = collect "checks";
      formatter = collect "formatter";
    };
}
