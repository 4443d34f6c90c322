"""Plots: attention maps over images and question words."""

from .attention import cnn_layout, plot_attention

__all__ = ["plot_attention", "cnn_layout"]
