"""LoRA: training from a folder of images (train.py), the kohya and diffusers file formats (formats.py), and the
installed-LoRA listing (library.py). Applying LoRAs at generation time lives in huabu.engine.loras."""
