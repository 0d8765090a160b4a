"""The tiny layer (above training): huabu-tiny, the built-in model. Its scene and clip generators, tokenizer, the
three model stages and their assembly, ControlNet training on it, LoRA demonstration data, evaluations, shipping
add-ons beside it, and the shipped weights (huabu-tiny*/ folders)."""
