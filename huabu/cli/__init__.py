"""The `huabu` command, the top face: `main.py` builds the parser from the registration functions in its COMMANDS
list and each other module registers one group of sub-commands. It may use every layer, starts the studio
(huabu.ui) and the server (huabu.server), and nothing imports it. Registration stays import-light: handlers import
torch and diffusers themselves."""
