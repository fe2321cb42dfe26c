"""Evaluation: image and component metrics against the original pipeline (`evaluate`), and the choice of the
smallest checkpoint that meets quality thresholds (`select`)."""
