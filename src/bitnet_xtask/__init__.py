"""bitnet-xtask: reliable workflows for BitNet / llama.cpp inference engines."""

__version__ = "0.1.0"
