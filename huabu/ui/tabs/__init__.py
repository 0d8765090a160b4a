"""One module per studio tab; each builds its components inside the current gradio context and wires its events."""
