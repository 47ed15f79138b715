"""Chest X-ray active-learning workbench core."""
