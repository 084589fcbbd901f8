# The name of a fetch-cpp build directory under $XDG_CACHE_HOME/bitnet_cpp/, spelled as
# src/bitnet_xtask/cpp/layout.py's directory_name spells it (the one rule; the Nix packages
# install from the directory their `fetch-cpp --source` build leaves, whose revision is
# "local"). Pure: tests/test_issue12_cpp.py evaluates it against the Python function.
{
  ref,
  revision,
  backend,
  native ? false,
}:
"${ref}-${revision}-${backend}${if native then "-native" else ""}"
