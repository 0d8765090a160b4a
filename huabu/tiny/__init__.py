"""huabu-tiny: the built-in small latent diffusion model, its data generator, training and evaluation."""
