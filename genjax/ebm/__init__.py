"""Energy-based models: p(x) = exp(-E(x)) / Z with a learned energy E.

The intractable normaliser Z is avoided in training three ways, on the same
energy network (`make_ebm_model`):

    cd    contrastive divergence with short-run SGLD chains from a persistent
          replay buffer (Du & Mordatch 2019), the buffer being model state
    ssm   sliced score matching on s(x) = -grad E(x) (Song et al. 2019)
    dsm   denoising score matching at one small noise level (Vincent 2011)

and paid for only at evaluation: on 2-D data log Z comes from quadrature of
exp(-E) over a box (`partition`), giving a normalised density and an honest NLL.

Modules: `nets` (energy networks), `losses` (the three objectives), `replay`
(the persistent buffer), `partition` (quadrature of Z), `model` (the factory).
"""
