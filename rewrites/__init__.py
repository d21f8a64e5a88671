"""Graph rewrites from plaintext TensorFlow ops to tf-puma protocols (issue 4)."""
