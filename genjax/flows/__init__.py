"""Normalizing flows: invertible maps with tractable log-determinants.

`bijectors` holds the elementary bijections and the `Chain` combinator;
`coupling` holds the affine (RealNVP) and rational-quadratic spline (NSF)
coupling layers.
"""
