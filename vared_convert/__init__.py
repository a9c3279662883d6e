"""vared: input-dependent (VA-RED²) video models from any pretrained 3D CNN."""
