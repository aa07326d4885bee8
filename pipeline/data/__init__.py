"""Data: image decoding, identity folders and manifests, LFW pairs, splits, in-memory face tensors."""
