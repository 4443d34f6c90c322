"""Plots: attention maps over images and question words."""

from .attention import plot_attention

__all__ = ["plot_attention"]
