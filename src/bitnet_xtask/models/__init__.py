"""`xtask models`: a pinned catalog, a lockfile, and what is on disk.

download-model carries the guarantees of one file (resume, verification, durability);
this package is the layer above it: named models (`catalog`), fetched together and
reproducibly (`fetch`, `lock`), checked (`verify`) and found (`inventory`).
"""
