"""ASMG: adaptive sequential model generation for incrementally updated recommenders."""

__version__ = "0.1.0"
