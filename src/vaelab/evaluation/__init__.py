"""Evaluation maths and its figures: likelihood estimates, latent statistics, sample quality
(the digit classifier), plots. Below the Lightning layer: it imports no Lightning."""
