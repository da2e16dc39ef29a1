"""Three-stage multi-task contrastive training of jina-clip-v2 (paper section 3)."""
