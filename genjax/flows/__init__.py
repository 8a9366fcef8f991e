"""Normalizing flows: invertible maps with tractable log-determinants, and flows
defined by ODEs.

`bijectors` holds the elementary bijections and the `Chain` combinator;
`coupling` the affine (RealNVP) and rational-quadratic spline (NSF) coupling
layers; `realnvp` assembled RealNVP and multi-scale Glow models; `cnf` FFJORD
continuous normalizing flows; `matching` flow matching, rectified flow and reflow.
The ODE-based ones integrate and compute likelihoods through `genjax.integrate`.
"""
