"""`huabu train embedding`: textual inversion, one option per EmbeddingTrainConfig field.

Import-light: the training module (torch, diffusers) is imported by the handler.
"""

from __future__ import annotations

from huabu.cli.options import add_training_command
from huabu.training.embedding_config import EmbeddingTrainConfig

_HELP = {
    "data": "folder of training images; name.txt captions name the token (A1111's [name] works too)",
    "token": "the embedding's name, written in prompts (and its file name)",
    "init_word": "text whose token vectors the new vectors start from",
    "vectors": "vectors per token (A1111: 'Number of vectors per token')",
    "model": "huabu-tiny or a diffusers folder of an SD 1.x/2.x-shaped model",
    "max_norm": "scale each vector down to at most this length (huabu-tiny's word rows: 0.2-0.4); 0: no limit",
    "lr_schedule": "constant (after --warmup), or cosine down to 0.1 of --lr at --steps",
    "object_weight": "extra loss weight on pixels unlike the image's border colour, for objects on plain "
                     "backgrounds (0: plain loss)",
    "background_prior": "weight of a loss that keeps the prediction on background cells as it is with the "
                        "init word in the caption, so the vectors learn the object, not its backgrounds (0: off)",
    "resolution": "training image size in px (0: the model's own)",
    "timesteps": "uniform, or cubic (more of the noisy steps, where an object's shape is decided)",
    "sample_every": "also write NAME-STEP.safetensors and a sample image every so many steps (0: never)",
    "sample_prompt": "prompt of the sample images (default: the first caption)",
}


def register_train(stages) -> None:
    add_training_command(
        stages, "embedding", EmbeddingTrainConfig, _HELP, "huabu.training.embedding:train",
        help="train a textual inversion embedding on a folder of images",
        description="Textual inversion as A1111 trains it: new token vectors learn your images while the model stays "
                    "frozen. Resumes from the newest checkpoint in --out (Ctrl-C stops after writing one); writes "
                    "--out/TOKEN.safetensors, which prompts use from ~/.huabu/embeddings by its name.")
