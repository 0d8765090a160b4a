"""huabu's one training loop (loop.py) and the recipes that run in it (LoRA, ControlNet, motion modules; huabu-tiny's
own stages live in huabu.tiny), with the pieces they share: schedules, checkpoints, SD noise and text encoding."""
