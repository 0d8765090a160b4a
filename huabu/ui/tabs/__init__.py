"""The studio's tabs (ui face), one module each; each builds its components inside the current gradio context and
wires its events to huabu.ui.app.Studio."""
