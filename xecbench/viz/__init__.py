"""Plots: single faces, the unfolded six-face event display, side-by-side comparisons."""

from .display import FaceArtists, draw_face, event_display, face_panels, flat_coords

__all__ = ["FaceArtists", "draw_face", "event_display", "face_panels", "flat_coords"]
