"""Pure tensor operations for any-size upscaling: colour correction, tile grids and tiled VAE passes."""
