"""The generation engine: model registry, pipeline cache, samplers, and the one generation path."""
