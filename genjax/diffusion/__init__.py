"""Score-based diffusion: SDEs, losses, samplers and likelihoods (Song et al. 2021)."""
