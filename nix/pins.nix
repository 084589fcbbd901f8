# The pinned C++ references, read from the one pins.json that Python reads too
# (src/bitnet_xtask/cpp/pins.json): no URL, revision or hash is written in nix/.
#
# Pure: needs no nixpkgs, so `nix-instantiate --eval --strict --json nix/pins.nix` works
# on any machine with Nix; checks/nix.sh compares that output with Python's reading of
# the same file (tests/test_nix.py).
import ./read-pins.nix ../src/bitnet_xtask/cpp/pins.json
