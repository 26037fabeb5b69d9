"""Image and video input/output: robust image reading/writing and one frame-source abstraction."""
