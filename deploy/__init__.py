"""Deployment beyond one process: the Ray Serve app, the local cluster CLI (make ray-up / ray-down), its config."""
