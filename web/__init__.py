"""The web faces' parts: the HTTP routes, the door in front of every path, the Gradio events and wire shapes, start-up."""
