"""The core layer, the bottom of huabu (see ARCHITECTURE.md): errors, settings, request models, the sampler and
ControlNet-unit vocabularies, atomic writes, A1111 infotext (pnginfo) and the gallery index.

Plain data and files only (pydantic, Pillow, sqlite3; no torch or diffusers), so every layer and face imports it
cheaply. It imports nothing from the other layers.
"""
