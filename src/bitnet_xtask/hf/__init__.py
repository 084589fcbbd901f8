"""Hugging Face checkpoints: a directory with config.json and safetensors weights, read
without torch (`checkpoint`), for the `hf:` crossval backend, the config audit and
full-crossval."""
