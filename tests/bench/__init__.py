"""Every bench's core on a tiny input, so none rots unseen."""
