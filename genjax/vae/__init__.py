"""Variational autoencoders: p(x) replaced by a bound through a latent variable.

A VAE writes p(x) = integral p(x|z) p(z) dz and trains an encoder q(z|x) with the
decoder by maximising the evidence lower bound (Kingma & Welling 2014, eq. 3);
its likelihood is the importance-weighted bound (Burda et al. 2016, eq. 8), a
lower bound on log p(x) that tightens as the number of samples k grows. A
VQ-VAE (van den Oord et al. 2017) replaces the Gaussian latent by the nearest
entry of a learned codebook.

One file per idea:

  likelihood  the exact discrete decoder likelihood: a 17-way (L-way) categorical
              per pixel, so -log p(x) is in nats of the discrete data
  bounds      diagonal-Gaussian densities, KL to N(0, I), free bits, the ELBO and
              the importance-weighted bound (computed in chunks of samples)
  nets        convolutional encoder and decoders for small images
  model       the Gaussian VAE (beta-VAE, free bits) as a `genjax.core.Model`, and
              its public `encode` / `decode`
  quantize    the vector quantizer: nearest code, straight-through estimator,
              EMA codebook updates, codebook perplexity
  vqvae       the VQ-VAE as a `genjax.core.Model` whose state is the EMA codebook
"""
