# `nix run .#<name> -- <args>`: one app per xtask command (nix/project.nix), plus `xtask`.
# crossval and full-crossval use the Nix-built references: their wrappers set
# XTASK_CPP_PREFIX_<REF> to the packages' store paths (unless the caller already set it),
# so nothing is built in the cache.
{
  lib,
  writeShellScriptBin,
  xtask,
  project,
  # command -> { <ref> = <package>; }, e.g. { crossval = { "llama.cpp" = llama-cpp; }; }
  prebuilt,
}:
let
  exports = lib.mapAttrsToList (
    ref: package:
    let
      variable = project.prebuilt.${ref};
    in
    ''export ${variable}="''${${variable}:-${package}}"''
  );

  wrapper =
    command:
    writeShellScriptBin command ''
      ${lib.concatLines (exports (prebuilt.${command} or { }))}
      exec ${lib.getExe xtask} ${command} "$@"
    '';

  app = description: program: {
    type = "app";
    inherit program;
    meta = { inherit description; };
  };

  xtaskApp = app project.description (lib.getExe xtask);
in
{
  xtask = xtaskApp;
  default = xtaskApp;
}
// lib.genAttrs project.commands (command: app "xtask ${command}" "${wrapper command}/bin/${command}")
