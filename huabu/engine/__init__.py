"""The engine layer (above core): everything that runs a model. `Engine` (generate.py) is the one generation path
for stills and video; around it the model registry and pipeline cache, schedulers, prompt syntax and encoding
(prompts/), LoRA loading, ControlNet and its preprocessors (control/), video pipelines, motion words and image
metrics. Imports only huabu.core.
"""
