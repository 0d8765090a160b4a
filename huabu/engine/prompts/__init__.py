"""Prompts, in the engine layer: A1111 prompt syntax (syntax.py), weighted chunked encoding with per-step
schedules (encode.py) and the prompt book of parts and style templates (book/)."""
