"""Generative adversarial networks: a generator trained against a critic.

The intractable density p(x) is replaced by a sampler x = G(z), z ~ N(0, I),
trained so that a critic D cannot tell its samples from data (Goodfellow et al.
2014). There is no likelihood (`Model.log_prob` is None); the family is judged by
its samples (`genjax.metrics.mode_coverage` on mixtures of Gaussians, a
classifier's Fréchet distance on images).

One file per idea:

  nets     generator and critic networks: MLPs for 2-D data, a DCGAN-style
           convolutional pair for small images; optional spectral normalization
  losses   the critic and generator objectives (non-saturating, hinge,
           Wasserstein) and the gradient penalties (WGAN-GP, R1)
  model    the two-player `genjax.core.Model`: parameter groups, an update
           schedule of n_critic critic updates per generator update, and the
           spectral-norm power-iteration vectors as model state
"""
