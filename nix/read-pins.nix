# Reads a pins.json (the format of src/bitnet_xtask/cpp/pins.json) into the arguments
# of the nixpkgs fetchers; nix/pins.nix applies it to the project's file. Pure: needs no
# nixpkgs. Each pin becomes the arguments of the fetcher that checks the hash Python
# checks:
#   pypi-sdist -> fetchurl { url; sha256; }              the index's sha256 of the file
#   github     -> fetchFromGitHub { owner; repo; rev; hash; }  the NAR hash of the tree
# The validation mirrors cpp/pins.py, so a bad pin fails evaluation with the same words.
pinsFile:
let
  document = builtins.fromJSON (builtins.readFile pinsFile);

  fail = name: what: throw "pins.json: ${name}: ${what}";
  matches = regex: value: builtins.isString value && builtins.match regex value != null;
  field =
    name: pin: key:
    if pin ? ${key} then pin.${key} else fail name "missing field '${key}'";

  github =
    name: pin:
    let
      rev = field name pin "rev";
      hash = field name pin "hash";
    in
    if !matches "[0-9a-f]{40}" rev then
      fail name "rev must be a full 40-hex commit, got ${builtins.toJSON rev}"
    else if !matches "sha256-[A-Za-z0-9+/]{43}=" hash then
      fail name "hash must be an SRI sha256 (sha256-...=), got ${builtins.toJSON hash}"
    else
      {
        kind = "github";
        fetcher = "fetchFromGitHub";
        args = {
          owner = field name pin "owner";
          repo = field name pin "repo";
          inherit rev hash;
        };
        # Placed at these paths inside the tree, as cpp/source.py does.
        submodules = builtins.mapAttrs (path: github "${name}/${path}") (pin.submodules or { });
      };

  sdist =
    name: pin:
    let
      url = field name pin "url";
      sha256 = field name pin "sha256";
    in
    if !matches "[0-9a-f]{64}" sha256 then
      fail name "sha256 must be 64 lowercase hex digits"
    else if !matches "https://.*" url then
      fail name "url must be https"
    else
      {
        kind = "pypi-sdist";
        fetcher = "fetchurl";
        args = { inherit url sha256; };
        package = field name pin "package";
        version = field name pin "version";
        # The reference's tree inside the unpacked sdist.
        subdir = field name pin "subdir";
        upstream = pin.upstream or { };
      };

  pin =
    name: data:
    let
      kind = field name data "kind";
    in
    if kind == "github" then
      github name data
    else if kind == "pypi-sdist" then
      sdist name data
    else
      fail name "unknown kind ${builtins.toJSON kind}";
in
if (document.version or null) != 1 then
  throw "pins.json version ${builtins.toJSON (document.version or null)} is not supported"
else
  builtins.mapAttrs pin document.references
