"""Figures and reports made from run directories (curves, image grids, HTML)."""
