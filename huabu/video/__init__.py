"""Video beyond the engine: export (mp4/webm/gif), measures, moving scenes, and motion-module training."""
