"""Normalizing flows: invertible maps with tractable log-determinants, and flows
defined by ODEs.

One file per idea:

  bijectors    the elementary bijections, the `Chain` combinator and the standard
               normal base density
  coupling     the affine (RealNVP) and rational-quadratic spline (NSF) coupling layers
  realnvp      assembled RealNVP and multi-scale Glow models
  ode          the flow ODE dx/dt = v(x, t): sampling and exact likelihoods
  cnf          FFJORD continuous normalizing flows
  paths        flow matching's schedulers and affine probability paths
  ot_coupling  mini-batch optimal-transport pairing of noise and data
  matching     the flow matching loss and model
  rectified    reflow, straightness and one-step distillation

Time runs from t = 0 (standard normal noise) to t = 1 (data) in all of them. The
ODE-based ones integrate and compute likelihoods through `genjax.integrate`.
"""
