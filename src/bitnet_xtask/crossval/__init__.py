"""Cross-validation: run the same tokens through several implementations, compare logits."""
