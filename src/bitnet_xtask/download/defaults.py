"""The reference guide's defaults, importable without loading the HTTP stack."""

DEFAULT_REPO = "microsoft/bitnet-b1.58-2B-4T-gguf"
DEFAULT_FILE = "ggml-model-i2_s.gguf"
